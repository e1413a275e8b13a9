import Foundation
import SwitchyardABI
import SwitchyardConformance
import SwitchyardHost
import SwitchyardLoader
import SwitchyardTestSupport
import SwitchyardWire
import Testing

@testable import SwitchyardRuntime

/// The RabbitMQ plugins against a real `rabbitmq-server` on loopback: one broker for the suite
/// (it takes seconds to start), and one of its own for the test that kills it. Under a sanitizer
/// only the tests that drive the plugin's own code run (conformance, typed calls); the broker's
/// crash, the demo's child process and the Python reader are the plain run's.
@Suite("RabbitMQ", .serialized, .enabled(if: RabbitMQServer.isInstalled, "needs Debian's rabbitmq-server package"))
struct RabbitMQTests {
    static let plainRunOnly = ConditionTrait.disabled(
        if: ProcessInfo.processInfo.environment["SWITCHYARD_SANITIZER"] != nil, "the plain run covers it; a sanitizer adds nothing to the broker's part")
    static func broker() async throws -> RabbitMQServer {
        try await offPool { try RabbitMQServer.shared.get() }
    }

    /// A transport of `plugin` with its own prefix, so tests sharing the broker never meet.
    static func transport(_ plugin: String, url: String, extra: String = "") throws -> Transport {
        let config = #"{"url": "\#(url)", "prefix": "t\#(UInt32.random(in: 0...UInt32.max))"\#(extra)}"#
        return try Transport(name: "rabbitmq-test", plugin: try BuildProducts.plugin(plugin), configJSON: config)
    }

    @Test("a heartbeat that is not whole seconds is refused, naming the key (AMQP negotiates seconds: 1.5s was read as 1s)")
    func heartbeatWholeSeconds() throws {
        let error = #expect(throws: TransportError.self) {
            try Transport(
                name: "rabbitmq-test", plugin: try BuildProducts.plugin("rabbitmq"), configJSON: #"{"url": "amqp://127.0.0.1:1", "heartbeat": "1500ms"}"#)
        }
        #expect(error?.message.contains("config key 'heartbeat'") == true && error?.message.contains("whole seconds") == true, "\(String(describing: error))")
    }

    @Test("max_message_bytes counts the whole message (body, id, channel, headers), as every transport does; nothing is sent")
    func sizeLimitCountsHeaders() async throws {
        let server = try await Self.broker()
        let transport = try Self.transport("rabbitmq", url: server.url, extra: #", "max_message_bytes": 1000"#)
        defer { transport.close() }
        try expectSizeLimitCountsWholeMessage(transport.client)
    }

    /// Classic queues too: they count attempts differently (no x-delivery-count, only
    /// "redelivered"), and the kit's attempt, release and visibility checks hold them to the same rules.
    @Test(
        "the conformance kit passes against a real rabbitmq-server, on quorum and on classic queues",
        arguments: [("rabbitmq", "quorum"), ("rabbitmq", "classic"), ("rabbitmq-topic", "quorum")])
    func conformance(_ name: String, _ queueType: String) async throws {
        let server = try await Self.broker()
        let plugin = try BuildProducts.plugin(name)
        let results = try await offPool {
            ConformanceSuite.forPlugin(plugin, configJSON: #"{"url": "\#(server.url)", "queue_type": "\#(queueType)"}"#, isolationKey: "prefix").run()
        }
        expectBundledConformance(results, "\(name) (\(queueType))", reportsChannels: false)
        let passed = results.filter { if case .passed = $0.outcome { true } else { false } }.count
        #expect(passed >= (name == "rabbitmq" ? 16 : 17), "\(results)")
    }

    @Test("typed calls over RabbitMQ: request-reply through rabbitmq, fan-out through rabbitmq-topic, the same code")
    func typedCalls() async throws {
        let server = try await Self.broker()
        try await EngineChecks.typedCalls(
            transportsYAML: """
                  jobs: { plugin: rabbitmq, config: { url: "\(server.url)", prefix: typed.jobs } }
                  events: { plugin: rabbitmq-topic, config: { url: "\(server.url)", prefix: typed.events } }
                """)
    }

    @Test("messages on the wire are CloudEvents in binary mode: cloudEvents_ headers, datacontenttype as content-type, read by pika", plainRunOnly)
    func cloudEventsOnTheWire() async throws {
        let server = try await Self.broker()
        let transport = try Transport(name: "wire", plugin: try BuildProducts.plugin("rabbitmq"), configJSON: #"{"url": "\#(server.url)", "prefix": "wire"}"#)
        defer { transport.close() }
        let envelope = Envelope(target: .init(name: "Greeter.greet(_:)", identifier: "$sGreeter"), arguments: Array("[{\"greeting\":\"hello\"}]".utf8), contentType: .json)
        try transport.client.publish(envelope.message(channel: "greetings"))
        try transport.client.publish(Message(id: "plain-1", channel: "greetings", body: Array("plain".utf8)))
        // A reader that knows nothing of Switchyard: pika and the CloudEvents Python SDK.
        let result = try await run("/usr/bin/env", ["bash", Repository.root + "/scripts/cloudevents-amqp-check", server.url, "wire.greetings"])
        #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        #expect(
            result.stdout.contains(
                "event 1: specversion=1.0 id=\(envelope.id) type=Greeter.greet(_:) source=\(Envelope.defaultSource) datacontenttype=application/json"),
            "\(result.stdout)")
        #expect(result.stdout.contains(#"data=[{'greeting': 'hello'}]"#), "\(result.stdout)")
        #expect(result.stdout.contains("event 2: specversion=1.0 id=plain-1 type=switchyard.message"), "\(result.stdout)")
    }

    @Test("TLS (amqps://): a broker whose certificate the configured CA signed is used; one it did not sign is refused with the reason")
    func tls() async throws {
        let server = try await Self.broker()
        let url = "amqps://guest:guest@localhost:\(server.tlsPort)/"
        let transport = try Self.transport("rabbitmq", url: url, extra: #", "tls": {"ca": "\#(server.caFile)"}"#)
        defer { transport.close() }
        let inbox = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "secret"), handler: inbox.handler(client: transport.client))
        try transport.client.publish(Message(id: "over-tls", channel: "secret", body: Array("hush".utf8)))
        #expect(await eventually(30) { inbox.received.contains { $0.message.id == "over-tls" } })
        // Without the test CA the broker's certificate is not trusted: a clear error at creation.
        let error = #expect(throws: TransportError.self) { _ = try Self.transport("rabbitmq", url: url) }
        #expect(error?.code == .unavailable, "\(String(describing: error))")
        #expect(error?.message.contains("cannot connect to RabbitMQ at amqps://localhost:\(server.tlsPort)/") == true, "\(String(describing: error))")
        #expect(error?.message.contains("guest") == false, "the error shows credentials: \(String(describing: error))")
    }

    /// RabbitMQ dead-letters an expired message itself (its per-message TTL) from the group's
    /// queue. The dead letter named no group, so a replay reached every group, and each group's
    /// expired copy did the same: G² deliveries.
    @Test("on rabbitmq-topic a message the broker expired in a group's queue is that group's dead letter")
    func brokerExpiryNamesTheGroup() async throws {
        let server = try await Self.broker()
        let transport = try Self.transport("rabbitmq-topic", url: server.url)
        defer { transport.close() }
        // The group's queue exists from its first subscription; with nobody reading it, the
        // message expires there.
        let subscription = try transport.client.subscribe(SubscribeOptions(channel: "events", group: "billing"), handler: Collector().handler(client: transport.client))
        try transport.client.unsubscribe(subscription)
        try transport.client.publish(Message(id: "stale", channel: "events", expiresAtNanos: wallClockNanoseconds() + 300_000_000))
        let dead = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "events.dlq"), handler: dead.handler(client: transport.client))
        #expect(await eventually(30) { dead.count >= 1 })
        let letter = try #require(dead.received.first?.message)
        #expect(letter.id == "stale" && letter.header(DeadLetterHeader.reason) == "expired", "\(letter.headers)")
        #expect(letter.header(DeadLetterHeader.group) == "billing", "\(letter.headers)")
    }

    @Test("a subscriber group's queue deleted on the broker comes back: the consumer reconnects and declares it again", plainRunOnly)
    func deletedQueueComesBack() async throws {
        let server = try await Self.broker()
        let prefix = "deleted\(UInt32.random(in: 0...UInt32.max))"
        let transport = try Transport(
            name: "deleted", plugin: try BuildProducts.plugin("rabbitmq-topic"), configJSON: #"{"url": "\#(server.url)", "prefix": "\#(prefix)"}"#)
        defer { transport.close() }
        let inbox = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "events", group: "audit"), handler: inbox.handler(client: transport.client))
        try transport.client.publish(Message(id: "before", channel: "events"))
        #expect(await eventually(30) { inbox.count == 1 })
        let deleted = try await offPool { try server.control(["delete_queue", "\(prefix).events~audit"]) }
        #expect(deleted.status == 0, "\(deleted.output)")
        // Published until one arrives: what is published before the group's queue is back has no
        // queue to go to (a topic drops it), as for a group that does not exist yet.
        var index = 0
        let arrived = await eventually(30) {
            index += 1
            try? transport.client.publish(Message(id: "after-\(index)", channel: "events"))
            usleep(100_000)
            return inbox.received.contains { $0.message.id.hasPrefix("after-") }
        }
        #expect(arrived, "no message reached the group after its queue was deleted and should have been declared again")
    }

    @Test("the broker SIGKILLed and restarted under load loses nothing acknowledged; unreachable, a publish fails clearly in time; consumers resume", plainRunOnly)
    func brokerKilled() async throws {
        let server = try await offPool { try RabbitMQServer() }
        let transport = try Self.transport("rabbitmq", url: server.url, extra: #", "publish_timeout": "2s", "connect_timeout": "1s""#)
        defer { transport.close() }
        let inbox = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "load"), handler: inbox.handler(client: transport.client))
        var acknowledged = Set<String>()
        for index in 0..<600 {
            if index == 200 {
                // RabbitMQ 3.10 loses a quorum queue killed within about a second of its creation
                // (it comes back a follower with an empty log, for good): docs/transports.md.
                try await Task.sleep(for: .seconds(5))
                server.kill()
                try await offPool { try server.start() }
            }
            let id = "m-\(index)"
            if await publishUntilAcknowledged(seconds: 60, { try transport.client.publish(Message(id: id, channel: "load", body: Array(id.utf8))) }) {
                acknowledged.insert(id)
            }
        }
        #expect(acknowledged.count == 600)
        #expect(await eventually(60) { acknowledged.isSubset(of: Set(inbox.received.map(\.message.id))) })
        let lost = acknowledged.subtracting(inbox.received.map(\.message.id))
        #expect(lost.isEmpty, "\(lost.count) acknowledged messages lost, e.g. \(lost.prefix(5))")

        server.kill()
        let started = ContinuousClock.now
        let error = #expect(throws: TransportError.self) { try transport.client.publish(Message(id: "during", channel: "load")) }
        #expect(error?.code == .timeout || error?.code == .unavailable, "\(String(describing: error))")
        #expect(error?.message.contains("RabbitMQ") == true, "\(String(describing: error))")
        #expect(ContinuousClock.now - started < .seconds(5), "publish took \(ContinuousClock.now - started) with the broker down")
        try await offPool { try server.start() }
        #expect(await publishUntilAcknowledged(seconds: 60, { try transport.client.publish(Message(id: "after", channel: "load", body: Array("after".utf8))) }))
        #expect(await eventually(30) { inbox.received.contains { $0.message.id == "after" } }, "the subscriber did not resume")
    }

    @Test("the example system runs over RabbitMQ from one command, with the same summary as the embedded run", plainRunOnly)
    func demo() async throws {
        let server = try await Self.broker()
        try await EngineChecks.demo(
            config: "rabbitmq.yaml", environment: ["RABBITMQ_URL": server.url], transport: "rabbitmq",
            brokerFault: { server.delayQueuesHoldingMessages(prefix: "orders.work.delay.") },
            brokerState: { (try? server.control(["list_queues", "name", "messages", "consumers"]).output) ?? "" })
    }
}
