import Foundation
import SwitchyardABI
import SwitchyardConfig
import SwitchyardConformance
import SwitchyardHost
import SwitchyardLoader
import SwitchyardTestServices
import SwitchyardTestSupport
import SwitchyardWire
import Synchronization
import Testing

@testable import SwitchyardRuntime

/// The NATS JetStream plugins against real `nats-server -js` processes on loopback.
@Suite("NATS JetStream", .serialized)
struct NATSTests {
    static func plugin(_ name: String) throws -> LoadedPlugin {
        try BuildProducts.plugin(name)
    }

    /// A transport of `plugin` on `urls`, retried while a fresh cluster elects its leaders.
    static func transport(_ plugin: String, urls: [String], extra: String = "", within seconds: Double = 30) async throws -> Transport {
        let stream = extra.contains("\"stream\"") ? "" : #", "stream": "T\#(UInt32.random(in: 0...UInt32.max))""#
        let config = #"{"servers": [\#(urls.map { "\"\($0)\"" }.joined(separator: ","))]\#(stream)\#(extra)}"#
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            do {
                return try Transport(name: "nats-test", plugin: try Self.plugin(plugin), configJSON: config)
            } catch {
                if Date() > deadline { throw error }
                try await Task.sleep(for: .milliseconds(250))
            }
        }
    }

    @Test("max_message_bytes counts the whole message (body, id, channel, headers), as every transport does; nothing is sent")
    func sizeLimitCountsHeaders() async throws {
        let directory = try TemporaryDirectory()
        let server = try NATSServer(storeDirectory: directory.path)
        let transport = try await Self.transport("nats", urls: [server.url], extra: #", "max_message_bytes": 1000"#)
        defer { transport.close() }
        try expectSizeLimitCountsWholeMessage(transport.client)
    }

    @Test("config values that would silently do nothing, or fail every publish, are refused at creation naming the key")
    func configRefusals() throws {
        for (extra, key) in [
            (#", "max_message_bytes": 0"#, "max_message_bytes"), (#", "max_bytes": 0"#, "max_bytes"),
            (#", "tls": {"cert": "/etc/client.pem"}"#, "tls.key"), (#", "tls": {"key": "/etc/client.key"}"#, "tls.cert"),
            (#", "password_env": "NATS_PASSWORD""#, "password_env"),
            (#", "credentials": "/nonexistent/user.creds""#, "credentials"),
        ] {
            // Refused before connecting: no server is needed (nor reached).
            let config = #"{"servers": ["nats://127.0.0.1:1"]\#(extra)}"#
            let error = #expect(throws: TransportError.self) { try Transport(name: "n", plugin: try Self.plugin("nats"), configJSON: config) }
            #expect(error?.code == .config, "\(extra): \(String(describing: error))")
            #expect(error?.message.contains("'\(key)'") == true, "\(extra): \(String(describing: error))")
        }
    }

    @Test("a header value with line breaks (a dead letter's history) arrives as it left: a NATS header is one line, so the plugin escapes them")
    func headerLineBreaks() async throws {
        let directory = try TemporaryDirectory()
        let server = try await offPool { try NATSServer(storeDirectory: directory.path) }
        let transport = try await Self.transport("nats", urls: [server.url])
        defer { transport.close() }
        let inbox = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "lines"), handler: inbox.handler(client: transport.client))
        let value = "attempt 1 at 5: first\nattempt 2 at 6: a \\n that was typed\r\nend \\"
        // A second value of the same key without a line break, but with a backslash: escaped too
        // (the reader unescapes by key), so it arrives as it left.
        let sent = [Header("note", value), Header("note", #"C:\new"#), Header("plain", #"a\nb"#)]
        try transport.client.publish(Message(id: "m1", channel: "lines", headers: sent, body: [1]))
        #expect(await eventually(30) { inbox.count >= 1 })
        let headers = inbox.received.first?.message.headers ?? []
        #expect(headers == sent, "arrived as it left, and the plugin's own headers are not handed on: \(headers)")
    }

    /// One message published and delivered through `transport`.
    static func roundTrip(_ transport: Transport, _ id: String) async throws {
        let inbox = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "auth"), handler: inbox.handler(client: transport.client))
        try transport.client.publish(Message(id: id, channel: "auth", body: Array(id.utf8)))
        #expect(await eventually { inbox.count >= 1 }, "\(id): nothing delivered")
        #expect(inbox.received.first?.message.body == Array(id.utf8))
    }

    /// Creating a transport with `config` fails: its error.
    static func refused(_ config: String) -> TransportError? {
        #expect(throws: TransportError.self) { try Transport(name: "nats-auth", plugin: try Self.plugin("nats"), configJSON: config) }
    }

    @Test("a server that asks for a token, a user and password, or TLS: the right ones connect and carry messages; wrong ones are refused at creation, saying what to check")
    func authenticationAndTLS() async throws {
        let directory = try TemporaryDirectory()
        setenv("SY_TEST_NATS_TOKEN", "s3cret-token", 1)
        setenv("SY_TEST_NATS_WRONG", "not-the-token", 1)
        setenv("SY_TEST_NATS_USER", "orders", 1)
        setenv("SY_TEST_NATS_PASSWORD", "pa55word", 1)

        let tokenServer = try NATSServer(storeDirectory: directory.file("token"), extraArguments: ["--auth", "s3cret-token"])
        do {
            let transport = try await Self.transport("nats", urls: [tokenServer.url], extra: #", "token_env": "SY_TEST_NATS_TOKEN""#, within: 5)
            defer { transport.close() }
            try await Self.roundTrip(transport, "token-1")
        }
        for extra in [#", "token_env": "SY_TEST_NATS_WRONG""#, ""] {
            let error = Self.refused(#"{"servers": ["\#(tokenServer.url)"], "stream": "A", "connect_timeout": "2s"\#(extra)}"#)
            #expect(error?.message.contains("authorization") == true && error?.message.contains("token_env") == true, "\(extra): \(String(describing: error))")
        }

        let userServer = try NATSServer(storeDirectory: directory.file("user"), extraArguments: ["--user", "orders", "--pass", "pa55word"])
        do {
            let transport = try await Self.transport(
                "nats", urls: [userServer.url], extra: #", "user_env": "SY_TEST_NATS_USER", "password_env": "SY_TEST_NATS_PASSWORD""#, within: 5)
            defer { transport.close() }
            try await Self.roundTrip(transport, "user-1")
        }
        let wrongUser = Self.refused(
            #"{"servers": ["\#(userServer.url)"], "stream": "B", "connect_timeout": "2s", "user_env": "SY_TEST_NATS_USER", "password_env": "SY_TEST_NATS_WRONG"}"#)
        #expect(wrongUser?.message.contains("authorization") == true && wrongUser?.message.contains("user_env") == true, "\(String(describing: wrongUser))")

        // A server certificate signed by a CA of the test's own, for 127.0.0.1; another CA besides.
        let certificates = try await run(
            "/usr/bin/env",
            [
                "bash", "-c",
                """
                set -e; cd \(directory.path)
                for ca in ca other; do
                    openssl req -x509 -newkey rsa:2048 -nodes -keyout $ca.key -out $ca.pem -days 1 -subj "/CN=switchyard test $ca" 2>/dev/null
                done
                openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=127.0.0.1" 2>/dev/null
                printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext
                openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile san.ext 2>/dev/null
                """,
            ])
        try #require(certificates.status == 0, "\(certificates.stderr)")
        let tlsServer = try NATSServer(
            storeDirectory: directory.file("tls"),
            extraArguments: ["--tls", "--tlscert", directory.file("server.pem"), "--tlskey", directory.file("server.key")])
        do {
            let transport = try await Self.transport("nats", urls: [tlsServer.url], extra: #", "tls": {"ca": "\#(directory.file("ca.pem"))"}"#, within: 5)
            defer { transport.close() }
            try await Self.roundTrip(transport, "tls-1")
        }
        let otherCA = Self.refused(
            #"{"servers": ["\#(tlsServer.url)"], "stream": "C", "connect_timeout": "2s", "tls": {"ca": "\#(directory.file("other.pem"))"}}"#)
        #expect(otherCA?.message.contains("certificate") == true && otherCA?.message.contains("tls.ca") == true, "\(String(describing: otherCA))")
        let missingCA = Self.refused(#"{"servers": ["\#(tlsServer.url)"], "stream": "D", "tls": {"ca": "\#(directory.file("nowhere.pem"))"}}"#)
        #expect(missingCA?.code == .config && missingCA?.message.contains("'tls.ca'") == true, "\(String(describing: missingCA))")
    }

    @Test("a stream at its max_bytes refuses publishes with .full (nothing read is dropped); a changed config updates an existing stream's limits, saying so")
    func streamLimits() async throws {
        let directory = try TemporaryDirectory()
        let server = try NATSServer(storeDirectory: directory.path)
        let stream = "LIMITS\(UInt32.random(in: 0...UInt32.max))"
        let small = try await Self.transport("nats", urls: [server.url], extra: #", "stream": "\#(stream)", "max_bytes": 4096"#)
        var refusal: TransportError?
        for index in 0..<200 {
            do {
                try small.client.publish(Message(id: "m\(index)", channel: "c", body: Array(repeating: 7, count: 200)))
            } catch {
                refusal = error
                break
            }
        }
        let refused = try #require(refusal, "200 messages of 200 bytes went into a 4 KiB stream")
        #expect(refused.code == .full, "\(refused)")
        #expect(refused.message.contains("max_bytes"), "\(refused)")
        // What was stored is all still there, oldest first: nothing was dropped to make room.
        let received = Collector()
        _ = try small.client.subscribe(SubscribeOptions(channel: "c"), handler: received.handler(client: small.client, settle: { _ in nil }))
        #expect(await eventually { received.count > 0 })
        #expect(received.received.first?.message.id == "m0")
        small.close()
        // The same stream under a config with other limits: updated in place, and logged.
        let log = CapturedLog()
        let config = #"{"servers": ["\#(server.url)"], "stream": "\#(stream)", "max_bytes": 1048576, "max_age": "1h"}"#
        let larger = try Transport(name: "nats-test", plugin: try Self.plugin("nats"), configJSON: config, logger: log.logger())
        let line = log.all.first { $0.contains("stream \(stream) updated to the config") }
        #expect(line?.contains("max_bytes 4096 → 1048576") == true && line?.contains("max_age") == true, "\(log.all)")
        try larger.client.publish(Message(id: "after", channel: "c", body: Array(repeating: 7, count: 200)))
        larger.close()
        // A max_age under JetStream's 2-minute duplicate window (for replies nobody waits for):
        // the window follows it, on an update and on a new stream (JetStream refuses a window
        // longer than the age: creating the stream failed).
        let shortLog = CapturedLog()
        let short = try Transport(
            name: "nats-test", plugin: try Self.plugin("nats"), configJSON: #"{"servers": ["\#(server.url)"], "stream": "\#(stream)", "max_age": "30s"}"#,
            logger: shortLog.logger())
        let updated = shortLog.all.first { $0.contains("stream \(stream) updated to the config") }
        #expect(updated?.contains("max_age 3600000 ms → 30000 ms") == true && updated?.contains("duplicate window 120000 ms → 30000 ms") == true, "\(shortLog.all)")
        try short.client.publish(Message(id: "short", channel: "c"))
        short.close()
        let fresh = try Transport(
            name: "nats-test", plugin: try Self.plugin("nats"), configJSON: #"{"servers": ["\#(server.url)"], "stream": "\#(stream)NEW", "max_age": "30s"}"#)
        defer { fresh.close() }
        try fresh.client.publish(Message(id: "fresh", channel: "c"))
    }

    @Test("typed calls over NATS: request-reply through nats, fan-out through nats-topic, the same code")
    func typedCallsOverNATS() async throws {
        let directory = try TemporaryDirectory()
        let server = try NATSServer(storeDirectory: directory.path)
        try await EngineChecks.typedCalls(
            transportsYAML: """
                  jobs: { plugin: nats, config: { servers: ["\(server.url)"], stream: TYPED } }
                  events: { plugin: nats-topic, config: { servers: ["\(server.url)"], stream: TYPED_EVENTS } }
                """)
    }

    /// JetStream drops a publish whose `Nats-Msg-Id` it saw in the last two minutes. A dead letter
    /// replayed soon after its message was first published keeps the message's id (for the
    /// receivers' inboxes): it must not be taken for a repeat, or the replay acknowledges the dead
    /// letter away while JetStream drops the message.
    @Test("a dead letter replayed within JetStream's de-duplication window is delivered again, not dropped as a repeat")
    func replayWithinDeduplicationWindow() async throws {
        let directory = try TemporaryDirectory()
        let server = try NATSServer(storeDirectory: directory.path)
        let transport = try await Self.transport("nats", urls: [server.url], extra: #", "stream": "REPLAY""#)
        defer { transport.close() }
        let client = transport.client
        try client.publish(Message(id: "once", channel: "work", body: Array("payload".utf8)))
        let first = Collector()
        let subscription = try client.subscribe(
            SubscribeOptions(channel: "work"), handler: first.handler(client: client, settle: { _ in .deadLetter(reason: "refused") }))
        #expect(first.wait(for: 1))
        try client.unsubscribe(subscription)
        let browser = try await offPool { try DeadLetterBrowser(client: client, channel: "work", deadLetterSuffix: ".dlq") }
        defer { browser.close() }
        let letter = try #require(browser.letter(id: "once"))
        try browser.replay(letter)
        let again = Collector()
        _ = try client.subscribe(SubscribeOptions(channel: "work"), handler: again.handler(client: client))
        #expect(again.wait(for: 1), "the replayed message never arrived: JetStream dropped it as a repeat of the first publish")
        #expect(again.received.first?.message.id == "once")
        #expect(again.received.first?.message.body == Array("payload".utf8))
    }

    @Test("messages on the wire are CloudEvents in binary mode: ce- attributes as NATS headers, the arguments as data")
    func cloudEventsOnTheWire() async throws {
        let directory = try TemporaryDirectory()
        let server = try NATSServer(storeDirectory: directory.path)
        let transport = try await Self.transport("nats", urls: [server.url], extra: #", "stream": "WIRE""#)
        defer { transport.close() }
        var arguments: [UInt8] = []
        try ArgumentEncoding.json.encode(["greeting": "hello"], appendingTo: &arguments)
        let envelope = Envelope(target: .init(name: "Greeter.greet(_:)", identifier: "$sGreeter"), arguments: Array("[{\"greeting\":\"hello\"}]".utf8), contentType: .json)
        try transport.client.publish(envelope.message(channel: "greetings"))
        try transport.client.publish(Message(id: "plain-1", channel: "greetings", body: Array("plain".utf8)))
        // A reader that knows nothing of Switchyard: the CloudEvents Python SDK over nats-py.
        let result = try await run("/usr/bin/env", ["bash", Repository.root + "/scripts/cloudevents-check", server.url, "sy.wire.ch.greetings", "WIRE"])
        #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        #expect(result.stdout.contains("event 1: specversion=1.0 id=\(envelope.id) type=Greeter.greet(_:) source=\(Envelope.defaultSource)"), "\(result.stdout)")
        #expect(result.stdout.contains(#"data={"greeting": "hello"}"#) || result.stdout.contains(#"data=[{'greeting': 'hello'}]"#), "\(result.stdout)")
        #expect(result.stdout.contains("event 2: specversion=1.0 id=plain-1 type=switchyard.message"), "\(result.stdout)")
    }

    @Test("any CloudEvents producer calls a Swift service by its readable name — the Python SDK over nats-py; a source the route does not list is dead-lettered with the reason")
    func pythonCallsByReadableName() async throws {
        let directory = try TemporaryDirectory()
        let server = try NATSServer(storeDirectory: directory.path)
        let yaml = """
            transports:
              jobs: { plugin: nats, config: { servers: ["\(server.url)"], stream: READABLE } }
            routes:
              Worker.*: { transport: jobs, encoding: json, readable_targets: { sources: [python-shop] } }

            """
        let config = try SwitchyardConfig.parse(yaml: yaml, baseDirectory: "/", environment: [:])
        let system = try await offPool { try SwitchyardActorSystem(config: config, pluginDirectories: [BuildProducts.directory]) }
        let worker = try system.host("worker", as: $Worker.self) { WorkerService(actorSystem: $0) }
        func call(from source: String) async throws {
            let result = try await run(
                "/usr/bin/env",
                ["bash", Repository.root + "/scripts/cloudevents-call", server.url, "sy.readable.ch.worker", "Worker.work(_:milliseconds:)", source, "[5, 0]"])
            #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        }
        try await call(from: "python-shop")
        var finished = 0
        for _ in 0..<200 where finished == 0 {
            finished = try await worker.finishedCount()
            if finished == 0 { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(finished == 1, "the Python event ran Worker.work")

        try await call(from: "somewhere-else")
        var reasons: [String] = []
        for _ in 0..<100 where reasons.isEmpty {
            let letters = try await system.deadLetters(transport: "jobs", channel: "worker")
            reasons = letters.letters.map { DeadLetterRecord($0.message).reason }
            letters.close()
            if reasons.isEmpty { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(reasons.contains { $0.contains("source 'somewhere-else' may not call Worker.work(_:milliseconds:)") }, "\(reasons)")
        #expect(try await worker.finishedCount() == 1, "the refused event did not run")
        await system.shutdown()
    }

    @Test("a server restarted under load: every acknowledged publish is delivered, unacked deliveries come back")
    func serverRestart() async throws {
        let directory = try TemporaryDirectory()
        let server = try NATSServer(storeDirectory: directory.path)
        let transport = try await Self.transport("nats", urls: [server.url], extra: #", "publish_timeout": "2s", "ack_wait": "2s""#)
        defer { transport.close() }
        let inbox = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "load"), handler: inbox.handler(client: transport.client))
        var acknowledged = Set<String>()
        for index in 0..<600 {
            if index == 200 {
                server.kill()
                try await Task.sleep(for: .milliseconds(300))
                try server.start()
            }
            let id = "m-\(index)"
            if await publishUntilAcknowledged({ try transport.client.publish(Message(id: id, channel: "load", body: Array(id.utf8))) }) { acknowledged.insert(id) }
        }
        #expect(acknowledged.count == 600)
        #expect(await eventually(60) { acknowledged.isSubset(of: Set(inbox.received.map(\.message.id))) })
        let lost = acknowledged.subtracting(inbox.received.map(\.message.id))
        #expect(lost.isEmpty, "\(lost.count) acknowledged messages lost, e.g. \(lost.prefix(5))")
    }

    @Test("a delivery whose ack wait ran out before its subscription ended is not counted as released: the next member sees attempt 2")
    func unsubscribeAfterLeaseRanOut() async throws {
        let directory = try TemporaryDirectory()
        let server = try NATSServer(storeDirectory: directory.path)
        let transport = try await Self.transport("nats", urls: [server.url], extra: #", "ack_wait": "1s""#)
        defer { transport.close() }
        // One in flight: the first subscriber holds the message and fetches nothing more, so its
        // redelivery waits for the next member.
        let first = Collector()
        let firstID = try transport.client.subscribe(
            SubscribeOptions(channel: "held", maxInFlight: 1), handler: first.handler(client: transport.client, settle: nil))
        try transport.client.publish(Message(id: "m-1", channel: "held"))
        #expect(first.wait(for: 1))
        try await Task.sleep(for: .milliseconds(1500))  // past its ack wait: JetStream hands it out again
        try transport.client.unsubscribe(firstID)
        let second = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "held"), handler: second.handler(client: transport.client))
        #expect(second.wait(for: 1, seconds: 15))
        #expect(second.received.first?.message.attempt == 2, "\(second.received.map { "\($0.message.id) \($0.message.attempt)" })")
    }

    @Test("the server unreachable: publish fails with a clear error after its deadline, never hangs; subscribers resume")
    func unreachable() async throws {
        let directory = try TemporaryDirectory()
        let server = try NATSServer(storeDirectory: directory.path)
        let transport = try await Self.transport("nats", urls: [server.url], extra: #", "publish_timeout": "1s""#)
        defer { transport.close() }
        let inbox = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "later"), handler: inbox.handler(client: transport.client))
        try transport.client.publish(Message(id: "before", channel: "later"))
        #expect(await eventually(30) { inbox.count == 1 })
        server.kill()
        let started = ContinuousClock.now
        let error = #expect(throws: TransportError.self) { try transport.client.publish(Message(id: "during", channel: "later")) }
        #expect(error?.code == .timeout || error?.code == .unavailable, "\(String(describing: error))")
        #expect(error?.message.contains("JetStream") == true || error?.message.contains("NATS") == true, "\(String(describing: error))")
        #expect(ContinuousClock.now - started < .seconds(5), "publish took \(ContinuousClock.now - started) with the server down")
        try server.start()
        #expect(await publishUntilAcknowledged({ try transport.client.publish(Message(id: "after", channel: "later", body: Array("after".utf8))) }))
        #expect(await eventually(30) { inbox.received.contains { $0.message.id == "after" } }, "the subscriber did not resume")
    }

    @Test("one node of a three-node cluster killed under load (replicas 3): no acknowledged publish is lost, consumers continue")
    func clusterNodeKilled() async throws {
        let cluster = try NATSCluster()
        let transport = try await Self.transport("nats", urls: cluster.urls, extra: #", "replicas": 3, "publish_timeout": "10s", "ack_wait": "5s""#, within: 60)
        defer { transport.close() }
        let inbox = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "ha"), handler: inbox.handler(client: transport.client))
        var acknowledged = Set<String>()
        for index in 0..<400 {
            if index == 100 { cluster.servers[0].kill() }
            let id = "ha-\(index)"
            if await publishUntilAcknowledged(seconds: 60, { try transport.client.publish(Message(id: id, channel: "ha", body: Array(id.utf8))) }) { acknowledged.insert(id) }
        }
        #expect(acknowledged.count == 400)
        #expect(await eventually(90) { acknowledged.isSubset(of: Set(inbox.received.map(\.message.id))) })
        let lost = acknowledged.subtracting(inbox.received.map(\.message.id))
        #expect(lost.isEmpty, "\(lost.count) acknowledged messages lost, e.g. \(lost.prefix(5))")
    }

    @Test("the example system runs over NATS from one command, with the same summary as the embedded run")
    func demoOverNATS() async throws {
        let directory = try TemporaryDirectory()
        let server = try NATSServer(storeDirectory: directory.path)
        try await EngineChecks.demo(config: "nats.yaml", environment: ["NATS_URL": server.url], transport: "nats")
    }

    @Test("switchyard plugins test nats takes the server from NATS_URL")
    func cliConformance() async throws {
        let directory = try TemporaryDirectory()
        let server = try NATSServer(storeDirectory: directory.path)
        var environment = ProcessInfo.processInfo.environment
        environment["NATS_URL"] = server.url
        let result = try await run(BuildProducts.switchyard, ["plugins", "test", "nats", "--isolation-key", "stream"], environment: environment)
        #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        // With deliver-batch, settle-batch, publish-and-settle (ABI 1.3), settle-on-delivery (1.4), extend-leases (1.6),
        // instance-capabilities (1.8), channel-stats (1.9), prefetch.
        #expect(result.stdout.contains("20 passed, 0 failed"), "\(result.stdout)")
        #expect(result.stdout.contains("pass  prefetch") && !result.stdout.contains("max_in_flight not honoured"), "\(result.stdout)")
    }
}

/// The conformance kit against the NATS plugins, each case with a server of its own. A suite of
/// its own, not `.serialized` as the one above: the kit's checks wait on timers most of the time,
/// and the two cases one after the other were the longest path of a whole test run (about 200 s
/// under ThreadSanitizer, where everything else ended by 165 s).
@Suite("NATS JetStream conformance")
struct NATSConformanceTests {
    @Test("the conformance kit passes against a real nats-server", arguments: ["nats", "nats-topic"])
    func conformance(_ name: String) async throws {
        let directory = try TemporaryDirectory()
        let server = try await offPool { try NATSServer(storeDirectory: directory.path) }
        let plugin = try NATSTests.plugin(name)
        let results = try await offPool {
            ConformanceSuite.forPlugin(plugin, configJSON: #"{"servers": ["\#(server.url)"]}"#, isolationKey: "stream").run()
        }
        expectBundledConformance(results, name)
        #expect(results.filter { if case .passed = $0.outcome { true } else { false } }.count >= 11)
    }
}
