import Distributed
import Foundation
import SwitchyardABI
import SwitchyardAdmin
import SwitchyardConfig
import SwitchyardRuntime
import SwitchyardTestServices
import SwitchyardTestSupport
import Synchronization
import Testing

/// The admin endpoint served over real HTTP on a free loopback port, for a system with a hosted
/// worker behind the in-memory queue plugin.
@Suite("Admin endpoint")
struct AdminEndpointTests {
    static let yaml = """
        transports:
          work: { plugin: queue }
        routes:
          Worker.*: { transport: work, deadline: 10s, encoding: json, readable_targets: true }
        admin:
          listen: 127.0.0.1:0

        """

    /// A running system with a worker hosted, its admin endpoint, and the endpoint's port.
    struct Running {
        let system: SwitchyardActorSystem
        let admin: AdminServer
        let serving: Task<Void, any Error>
        let port: Int

        /// `method path` with curl (a client independent of the server's library; Foundation's
        /// URLSession on Linux hangs on a 401 that carries `WWW-Authenticate`): status, body and
        /// headers (names lowercased).
        func get(
            _ path: String, token: String? = nil, basic: String? = nil, method: String = "GET", body: String? = nil, headers: [String] = [],
            formBody: String? = nil
        ) async throws -> (Int, String, [String: String]) {
            // 60 s guards against a hang only: these tests check answers, not latency (10 s fell
            // short under AddressSanitizer on a loaded CI machine).
            // HEAD with -I: with -X HEAD curl would wait for the body the length announces.
            var arguments = ["-s", "-S", "-i", "--max-time", "60"] + (method == "HEAD" ? ["-I"] : ["-X", method])
            if let body { arguments += ["-H", "Content-Type: application/json", "--data-binary", body] }
            if let formBody { arguments += ["--data-binary", formBody] }
            for header in headers { arguments += ["-H", header] }
            if let token { arguments += ["-H", "Authorization: Bearer \(token)"] }
            if let basic { arguments += ["-u", "operator:\(basic)"] }
            let result = try await run("/usr/bin/curl", arguments + ["http://127.0.0.1:\(port)\(path)"])
            guard result.status == 0, let split = result.stdout.range(of: "\r\n\r\n") else {
                throw CurlFailure(description: "curl \(path) failed (\(result.status)): \(result.stderr)")
            }
            let head = result.stdout[..<split.lowerBound].components(separatedBy: "\r\n")
            let status = Int(head.first?.split(separator: " ").dropFirst().first ?? "") ?? 0
            var headers: [String: String] = [:]
            for line in head.dropFirst() {
                guard let colon = line.firstIndex(of: ":") else { continue }
                headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
            return (status, String(result.stdout[split.upperBound...]), headers)
        }

        struct CurlFailure: Error, CustomStringConvertible { let description: String }

        func stop() async {
            await system.shutdown(deadline: .seconds(5))
            serving.cancel()
            _ = try? await serving.value
        }
    }

    static func start(token: String? = nil, yaml: String = Self.yaml, onFirstCall: @escaping @Sendable () -> Void = {}) async throws -> Running {
        AdminMetrics.bootstrap()  // before the system: it picks its metrics backend when created
        var parsed = try SwitchyardConfig.parse(yaml: yaml, baseDirectory: "/", environment: [:])
        parsed.admin?.token = token
        let config = parsed
        let system = try await offPool { try SwitchyardActorSystem(config: config, pluginDirectories: [BuildProducts.directory]) }
        try system.host("worker", as: $Worker.self) { WorkerService(actorSystem: $0, onFirstCall: onFirstCall) }
        let admin = try AdminServer(system: system)
        let serving = Task { try await admin.run() }
        let port = try await admin.waitUntilListening()
        return Running(system: system, admin: admin, serving: serving, port: port)
    }

    @Test("/metrics counts the leases the host extended: a call running past its transport's visibility timeout")
    func leaseMetrics() async throws {
        let running = try await Self.start(
            yaml: Self.yaml.replacingOccurrences(of: "work: { plugin: queue }", with: "work: { plugin: queue, config: { visibility_timeout: 400ms } }"))
        let worker = try $Worker.resolve(id: "worker", using: running.system)
        #expect(try await worker.work(7, milliseconds: 900) == 7)
        let (_, text, _) = try await running.get("/metrics")
        let line = text.split(separator: "\n").first { $0.hasPrefix("switchyard_leases_extended_total{") && $0.contains(#"transport="work""#) }
        let extended = line.flatMap { Double(String($0.split(separator: " ").last ?? "")) } ?? 0
        #expect(extended >= 1, "\(line.map(String.init) ?? "missing in:\n\(text)")")
        await running.stop()
    }

    @Test("/metrics is Prometheus text with the runtime's and the plugin's metrics; the JSON API shows the transport's counters")
    func metricsAndAPI() async throws {
        let running = try await Self.start()
        let worker = try $Worker.resolve(id: "worker", using: running.system)
        for value in 1...3 { #expect(try await worker.work(value, milliseconds: 0) == value) }

        let (status, text, headers) = try await running.get("/metrics")
        #expect(status == 200)
        #expect(headers["content-type"]?.hasPrefix("text/plain; version=0.0.4") == true)
        // Every line is a comment or `name{labels} value`, as Prometheus parses it.
        let sample = try Regex(#"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? -?[0-9.eE+-]+|NaN|[+-]Inf$"#)
        let lines = text.split(separator: "\n")
        #expect(!lines.isEmpty)
        for line in lines where !line.hasPrefix("#") {
            #expect(line.wholeMatch(of: sample) != nil, "not a Prometheus sample: \(line)")
        }
        let calls = lines.first { $0.hasPrefix("switchyard_calls_total{") && $0.contains(#"route="Worker.*""#) }
        let callCount = calls.flatMap { line -> Double? in Double(String(line.split(separator: " ").last ?? "")) } ?? 0
        #expect(callCount >= 3, "switchyard_calls_total for the route: \(calls.map(String.init) ?? "missing in:\n\(text)")")

        // Every counter operations.md lists for the queue exists from the first report, zero
        // included (an alert written against one must find a series).
        let counters = ["published", "delivered", "acked", "retried", "dead_lettered", "released", "expired"]
        var exposed = text
        for _ in 0..<50 where !counters.allSatisfy({ exposed.contains("switchyard_transport_\($0){transport=\"work\"}") }) {
            try await Task.sleep(for: .milliseconds(100))
            exposed = try await running.get("/metrics").1
        }
        for counter in counters {
            #expect(exposed.contains("switchyard_transport_\(counter){transport=\"work\"}"), "\(counter) missing in:\n\(exposed)")
        }

        // HEAD answers what GET would, without the body.
        let (headStatus, headBody, headHeaders) = try await running.get("/metrics", method: "HEAD")
        #expect(headStatus == 200 && headBody.isEmpty && headHeaders["content-type"]?.hasPrefix("text/plain") == true, "\(headStatus) \(headBody)")
        #expect(try await running.get("/no-such-page", method: "HEAD").0 == 404)
        let routesGet = try await running.get("/api/routes")
        let routesHead = try await running.get("/api/routes", method: "HEAD")
        #expect(routesHead.1.isEmpty && routesHead.2["content-length"] == String(routesGet.1.utf8.count), "HEAD's length is GET's: \(routesHead.2)")

        let (apiStatus, json, _) = try await running.get("/api/transports")
        #expect(apiStatus == 200)
        let transports = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [[String: Any]]
        let work = transports?.first { $0["name"] as? String == "work" }
        let stats = work?["stats"] as? [String: Any]
        #expect((stats?["published"] as? Int).map { $0 >= 3 } == true, "\(json)")
        #expect(work?["chain"] as? [String] == ["queue"])

        let (_, routes, _) = try await running.get("/api/routes")
        #expect(routes.contains(#""pattern" : "Worker.*""#), "\(routes)")
        #expect(routes.contains(#""prefetch" : 32"#), "the prefetch in effect (default: twice concurrency 16): \(routes)")
        let (_, services, _) = try await running.get("/api/services")
        #expect(services.contains(#""interfaces" : ["#) && services.contains("Worker"), "\(services)")
        #expect(services.contains(#""Worker.work(_:milliseconds:)""#), "the hosted methods by readable name: \(services)")
        let (pageStatus, page, pageHeaders) = try await running.get("/")
        #expect(pageStatus == 200)
        #expect(pageHeaders["content-type"]?.hasPrefix("text/html") == true)
        #expect(page.contains("<td>Worker.*</td>") && page.contains("<td>work</td>"), "\(page)")
        let call = try await running.get("/api/call", method: "POST", body: #"{"target": "Worker.work", "arguments": [1, 0]}"#)
        #expect(call.0 == 403 && call.1.contains("admin.token"), "a call needs a token even on loopback: \(call)")
        // The terminal view of the same counters.
        let terminal = try await run(BuildProducts.switchyard, ["stats", "--url", "http://127.0.0.1:\(running.port)", "--json"])
        #expect(terminal.status == 0, "\(terminal.stderr)")
        #expect(terminal.stdout.contains(#""name" : "work""#) && terminal.stdout.contains(#""published" : "#), "\(terminal.stdout)")
        // Per channel (ABI 1.9): a message nobody will take, held on the worker's channel, then
        // read through the API and the terminal.
        let parkedOn = try #require(running.system.transport(named: "work"))
        try parkedOn.client.publish(Message(id: "parked", channel: "parked-channel", body: [1]))
        let (channelsStatus, channelsJSON, _) = try await running.get("/api/channels")
        #expect(channelsStatus == 200)
        let held = try JSONSerialization.jsonObject(with: Data(channelsJSON.utf8)) as? [[String: Any]]
        let workChannels = held?.first { $0["transport"] as? String == "work" }?["channels"] as? [[String: Any]]
        let parked = workChannels?.first { $0["channel"] as? String == "parked-channel" }
        #expect(parked?["depth"] as? Int == 1 && parked?["in_flight"] as? Int == 0 && parked?["group"] as? String == "", "\(channelsJSON)")
        let perChannel = try await run(BuildProducts.switchyard, ["stats", "--channels", "--url", "http://127.0.0.1:\(running.port)"])
        #expect(perChannel.status == 0 && perChannel.stdout.contains("parked-channel"), "\(perChannel.stdout)\(perChannel.stderr)")
        let withPath = try await run(BuildProducts.switchyard, ["stats", "--channels", "--url", "http://127.0.0.1:\(running.port)/api"])
        #expect(withPath.status == 1 && withPath.stderr.contains("without a path"), "\(withPath.stderr)")
        let (missing, answer, _) = try await running.get("/etc/passwd")
        #expect(missing == 404)
        #expect(answer.contains("/metrics"), "the 404 lists the endpoints: \(answer)")
        await running.stop()
    }

    @Test("/health/ready turns 503 while the system drains; /health/live stays 200 until it stops")
    func healthFollowsDrain() async throws {
        let started = Atomic<Bool>(false)
        let running = try await Self.start { started.store(true, ordering: .releasing) }
        #expect(try await running.get("/health/ready").0 == 200)
        #expect(try await running.get("/health/live").0 == 200)
        let worker = try $Worker.resolve(id: "worker", using: running.system)
        // Keeps the drain busy long enough to see it: under AddressSanitizer on a loaded CI
        // machine, finding the 503 once took longer than a 1.5 s call (the drain had ended).
        let slow = Task { try await worker.work(7, milliseconds: 4000) }
        let system = running.system
        // Running, not just sent: a call still queued when the drain begins fails with
        // shuttingDown (200 ms of sleep fell short on a loaded machine).
        #expect(await eventually { started.load(ordering: .acquiring) })
        let draining = Task { await system.shutdown(deadline: Duration.seconds(10)) }
        var seen: (Int, String) = (0, "")
        for _ in 0..<100 {
            let (status, body, _) = try await running.get("/health/ready")
            seen = (status, body)
            if status == 503 { break }
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(seen.0 == 503 && seen.1.contains("draining"), "\(seen)")
        #expect(try await running.get("/health/live").0 == 200, "alive while draining")
        #expect(try await slow.value == 7, "the call in flight finished during the drain")
        await draining.value
        #expect(try await running.get("/health/live").0 == 503)
        #expect(try await running.get("/health/ready").1.contains("stopped"))
        running.serving.cancel()
    }

    @Test("with a token: refused without it and with a wrong one; accepted as bearer and as basic auth; nothing changes state")
    func tokenRules() async throws {
        let running = try await Self.start(token: "s3cret-token")
        let (none, noneBody, headers) = try await running.get("/metrics")
        #expect(none == 401)
        #expect(noneBody.contains("Authorization: Bearer"), "the refusal says what to send: \(noneBody)")
        #expect(headers["www-authenticate"]?.hasPrefix("Basic") == true, "\(headers)")
        #expect(try await running.get("/api/overview", token: "wrong").0 == 401)
        #expect(try await running.get("/api/overview", token: "s3cret-tokex").0 == 401)
        // A prefix of the token, and the token with more after it (the comparison runs over the
        // token's own length whatever is presented).
        #expect(try await running.get("/api/overview", token: "s3cret").0 == 401)
        #expect(try await running.get("/api/overview", token: "s3cret-token-and-more").0 == 401)
        #expect(try await running.get("/health/ready", token: "s3cret-token").0 == 200)
        #expect(try await running.get("/", basic: "s3cret-token").0 == 200)
        #expect(try await running.get("/nowhere", token: "s3cret-token").0 == 404)
        #expect(try await running.get("/nowhere").0 == 401, "unknown paths are refused before they are looked up")
        let posted = try await running.get("/api/overview", token: "s3cret-token", method: "POST")
        #expect(posted.0 == 405 && posted.2["allow"] == "GET, HEAD", "405 says which methods the path takes: \(posted)")
        // A path that is not there is 404 whatever the method (not 405 naming GET, which is 404 too).
        #expect(try await running.get("/nowhere", token: "s3cret-token", method: "POST").0 == 404)
        #expect(try await running.get("/api/dead-letters/work/worker/elsewhere", token: "s3cret-token", method: "DELETE").0 == 404)
        let getCall = try await running.get("/call", token: "s3cret-token")
        #expect(getCall.0 == 405 && getCall.2["allow"] == "POST", "\(getCall)")
        #expect(try await running.get("/api/overview", token: "s3cret-token", method: "DELETE").0 == 405)
        // A call by readable name, as the console's call form makes it: the token always.
        let called = try await running.get(
            "/api/call", token: "s3cret-token", method: "POST", body: #"{"target": "Worker.work", "actor": "worker", "arguments": [7, 0]}"#)
        #expect(called.0 == 200 && called.1 == #"{"result":7}"#, "\(called)")
        let unknown = try await running.get("/api/call", token: "s3cret-token", method: "POST", body: #"{"target": "Worker.nope", "arguments": []}"#)
        // The receiver refuses a method its interface lacks: the request's mistake, 400.
        #expect(unknown.0 == 400 && unknown.1.contains("has no method 'Worker.nope'"), "\(unknown)")
        // switchyard stats: refused with a wrong token (and says what to do, instead of hanging), read with the right one.
        let wrong = try await run(BuildProducts.switchyard, ["stats", "--url", "http://127.0.0.1:\(running.port)", "--token", "nope"])
        #expect(wrong.status == 1 && wrong.stderr.contains("--token"), "\(wrong.stderr)")
        var environment = ProcessInfo.processInfo.environment
        environment["SWITCHYARD_ADMIN_TOKEN"] = "s3cret-token"
        let right = try await run(BuildProducts.switchyard, ["stats", "--url", "http://127.0.0.1:\(running.port)"], environment: environment)
        #expect(right.status == 0 && right.stdout.contains("TRANSPORT") && right.stdout.contains("work"), "\(right.stdout)\(right.stderr)")
        await running.stop()
    }

    @Test("dead letters are listed, read decoded, replayed and purged over the API; without a token nothing changes")
    func deadLetters() async throws {
        for token in [nil, "dlq-token"] as [String?] {
            let running = try await Self.start(token: token)
            // Not a call envelope: the receiver dead-letters it with the reason.
            let work = try #require(running.system.transport(named: "work"))
            try work.client.publish(Message(id: "not-a-call", channel: "worker", body: Array("hello".utf8)))
            var listed = ""
            for _ in 0..<100 {
                listed = try await running.get("/api/dead-letters/work/worker", token: token).1
                if listed.contains("not-a-call") { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(listed.contains(#""id" : "not-a-call""#) && listed.contains(#""body" : "hello""#), "\(listed)")
            let (_, channels, _) = try await running.get("/api/dead-letters", token: token)
            #expect(channels.contains(#""dead_letter_channel" : "worker.dlq""#) && channels.contains(#""dead_lettered_since_start" : 1"#), "\(channels)")
            let (_, page, _) = try await running.get("/dead-letters/work/worker", token: token)
            #expect(page.contains("data-id=\"not-a-call\""), "\(page)")

            let replay = try await running.get(
                "/api/dead-letters/work/worker/replay", token: token, method: "POST", body: #"{"ids": ["not-a-call", "unknown-id"]}"#)
            if token == nil {
                #expect(replay.0 == 403 && replay.1.contains("admin.token"), "replay needs a token even on loopback: \(replay)")
                #expect(try await running.get("/api/dead-letters/work/worker", token: token).1.contains("not-a-call"), "nothing changed")
            } else {
                #expect(replay.0 == 200 && replay.1.contains(#""done" : 1"#) && replay.1.contains("unknown-id"), "\(replay)")
                let foreign = try await running.get(
                    "/dead-letters/work/worker/purge", token: token, method: "POST", headers: ["Origin: http://elsewhere.example"])
                #expect(foreign.0 == 403, "a form from another origin is refused: \(foreign)")
                let opaque = try await running.get("/dead-letters/work/worker/purge", token: token, method: "POST", headers: ["Origin: null"])
                #expect(opaque.0 == 403, "a form from a sandboxed frame or a data: page (Origin: null) is refused: \(opaque)")
                #expect(try await running.get("/api/dead-letters/work/worker/purge", token: token, method: "POST", body: "{}").0 == 400)
                // A body with a typo is said to be no JSON, not a selection of nothing.
                let garbled = try await running.get("/api/dead-letters/work/worker/purge", token: token, method: "POST", body: #"ids: ["x"]}"#)
                #expect(garbled.0 == 400 && garbled.1.contains("the body is not JSON"), "\(garbled)")
                // The wrong method: 405 with the methods the path takes (HTTP's Allow), not 404.
                let getReplay = try await running.get("/api/dead-letters/work/worker/replay", token: token)
                #expect(getReplay.0 == 405 && getReplay.2["allow"] == "POST", "\(getReplay)")
                let postList = try await running.get("/api/dead-letters/work/worker", token: token, method: "POST", body: "{}")
                #expect(postList.0 == 405 && postList.2["allow"] == "GET, HEAD", "\(postList)")
                let elsewhere = try await running.get("/api/dead-letters/work/worker/replya", token: token, method: "POST", body: "{}")
                #expect(
                    elsewhere.0 == 404 && elsewhere.1.contains(#"\/replay or …\/purge"#) && elsewhere.1.contains(#"the endpoints are \/api, \/metrics"#),
                    "a wrong path says where dead letters are and lists the endpoints: \(elsewhere)")
                // The replayed message is dead-lettered again (it still is not a call); purge it.
                var purged = false
                for _ in 0..<100 where !purged {
                    let (status, body, _) = try await running.get(
                        "/api/dead-letters/work/worker/purge", token: token, method: "POST", body: #"{"all": true}"#)
                    purged = status == 200 && body.contains(#""done" : 1"#)
                    if !purged { try await Task.sleep(for: .milliseconds(50)) }
                }
                #expect(purged)
                #expect(!(try await running.get("/api/dead-letters/work/worker", token: token).1.contains("not-a-call")))
            }
            await running.stop()
        }
    }

    @Test("on a topic, an id several groups dead-lettered needs a group: the API refuses it without one, and the page's rows act on their own group's copy")
    func topicDeadLettersByGroup() async throws {
        // A route makes the system create the transport (it creates only routed ones).
        let yaml = Self.yaml.replacingOccurrences(of: "  work: { plugin: queue }\n", with: "  work: { plugin: queue }\n  events: { plugin: topic }\n")
            .replacingOccurrences(of: "routes:\n", with: "routes:\n  Alerts.*: { transport: events, mode: fire-and-forget }\n")
        let token = "dlq-token"
        let running = try await Self.start(token: token, yaml: yaml)
        let events = try #require(running.system.transport(named: "events"))
        for group in ["a", "b"] {
            let client = events.client
            _ = try client.subscribe(SubscribeOptions(channel: "alerts", group: group)) { delivery, _ in
                try? client.settle(delivery, .deadLetter(reason: "failed in \(group)"))
                return .ok
            }
        }
        try events.client.publish(Message(id: "e-1", channel: "alerts"))
        func listed() async throws -> String { try await running.get("/api/dead-letters/events/alerts", token: token).1 }
        var both = ""
        for _ in 0..<100 where !(both.contains("failed in a") && both.contains("failed in b")) {
            try await Task.sleep(for: .milliseconds(50))
            both = try await listed()
        }
        #expect(both.contains("failed in a") && both.contains("failed in b"), "\(both)")
        func post(_ path: String, _ body: String) async throws -> (Int, String) {
            let (status, text, _) = try await running.get("/api/dead-letters/events/alerts/\(path)", token: token, method: "POST", body: body)
            return (status, text)
        }
        // Without a group: refused, naming the groups, and nothing purged.
        let refused = try await post("purge", #"{"ids": ["e-1"]}"#)
        #expect(refused.0 == 400 && refused.1.contains("groups: a, b") && refused.1.contains("nothing was done"), "\(refused)")
        #expect(try await listed().contains("failed in a"))
        // Ids and all together: refused (all would act on the whole channel).
        #expect(try await post("purge", #"{"ids": ["e-1"], "all": true}"#).0 == 400)
        // One group's copy: only that one goes.
        let purged = try await post("purge", #"{"ids": ["e-1"], "group": "a"}"#)
        #expect(purged.0 == 200 && purged.1.contains(#""done" : 1"#), "\(purged)")
        let left = try await listed()
        #expect(!left.contains("failed in a") && left.contains("failed in b"), "\(left)")
        // The page's row for b's copy posts that copy alone.
        let page = try await running.get("/dead-letters/events/alerts", token: token).1
        #expect(page.contains(#"name="letter""#) && page.contains("&quot;group&quot;:&quot;b&quot;"), "\(page)")
        let form = try await running.get(
            "/dead-letters/events/alerts/purge", token: token, method: "POST",
            headers: ["Content-Type: application/x-www-form-urlencoded"],
            formBody: "letter=" + (#"{"id":"e-1","group":"b"}"#.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""))
        #expect(form.0 == 303, "\(form)")
        #expect(!(try await listed().contains("e-1")))
        await running.stop()
    }

    @Test("an address beyond loopback without a token is refused, saying how to set one")
    func nonLoopbackNeedsToken() async throws {
        AdminMetrics.bootstrap()
        let config = try SwitchyardConfig.parse(yaml: "routes: {}\n", baseDirectory: "/", environment: [:])
        let system = try await offPool { try SwitchyardActorSystem(config: config, pluginDirectories: [BuildProducts.directory]) }
        let error = #expect(throws: AdminError.self) {
            _ = try AdminServer(system: system, settings: SwitchyardConfig.AdminSection(host: "0.0.0.0", port: 0, token: nil))
        }
        #expect(error?.description.contains("SWITCHYARD_ADMIN_TOKEN") == true, "\(error?.description ?? "")")
        await system.shutdown()
    }

    @Test("POST /api/call answers 422 when the handler throws, registered type or not; 400 for arguments the receiver refuses")
    func callStatusByCause() async throws {
        let yaml = Self.yaml.replacingOccurrences(
            of: "  Worker.*:", with: "  Ledger.*: { transport: work, deadline: 10s, encoding: json, readable_targets: true }\n  Worker.*:")
        let running = try await Self.start(token: "t0ken", yaml: yaml)
        running.system.registerError(InsufficientFunds.self)
        try running.system.host("ledger", as: $Ledger.self) { LedgerService(actorSystem: $0) }
        func call(_ body: String) async throws -> (Int, String) {
            let (status, text, _) = try await running.get("/api/call", token: "t0ken", method: "POST", body: body)
            return (status, text)
        }
        #expect(try await call(#"{"target": "Ledger.debit", "arguments": [40]}"#) == (200, #"{"result":60}"#))
        // The service answered with a failure of its own: the request was fine.
        let registered = try await call(#"{"target": "Ledger.debit", "arguments": [500]}"#)
        #expect(registered.0 == 422 && registered.1.contains("InsufficientFunds"), "\(registered)")
        let unregistered = try await call(#"{"target": "Ledger.debit", "arguments": [-1]}"#)
        #expect(unregistered.0 == 422 && unregistered.1.contains("NegativeAmount"), "\(unregistered)")
        // Arguments the method cannot take: the request's mistake.
        let wrongType = try await call(#"{"target": "Ledger.debit", "arguments": ["forty"]}"#)
        #expect(wrongType.0 == 400, "\(wrongType)")
        let noMethod = try await call(#"{"target": "Ledger", "arguments": []}"#)
        #expect(noMethod.0 == 400 && noMethod.1.contains("Interface.method"), "\(noMethod)")
        // A target nothing routes: 404.
        #expect(try await call(#"{"target": "Nowhere.go", "arguments": []}"#).0 == 404)
        // Headers ride along (CallOptions(headers:)); a name CloudEvents cannot carry is the request's mistake.
        #expect(try await call(#"{"target": "Ledger.tenant", "arguments": [], "headers": {"tenant": "acme"}}"#) == (200, #"{"result":"acme"}"#))
        let badHeader = try await call(#"{"target": "Ledger.debit", "arguments": [1], "headers": {"Tenant": "acme"}}"#)
        #expect(badHeader.0 == 400 && badHeader.1.contains("not a CloudEvents extension name"), "\(badHeader)")
        // switchyard stats against it: no token, then a wrong one, each said as it is.
        let url = "http://127.0.0.1:\(running.port)"
        let without = try await run(BuildProducts.switchyard, ["stats", "--url", url], environment: ["SWITCHYARD_ADMIN_TOKEN": ""])
        #expect(without.status == 1 && without.stderr.contains("the endpoint wants a token"), "\(without.stderr)")
        let wrong = try await run(BuildProducts.switchyard, ["stats", "--url", url, "--token", "nope"])
        #expect(wrong.status == 1 && wrong.stderr.contains("wrong token"), "\(wrong.stderr)")
        await running.stop()
    }

    @Test("POST /api/call calls a native module's function: arguments by its signature, the result as JSON")
    func nativeCall() async throws {
        let directory = try TemporaryDirectory()
        let library = directory.file("libnative.so")
        let compiled = try await CCompiler.compile(Repository.fixtures + "/native_module.c", to: library, flags: ["-std=c99", "-shared", "-fPIC"])
        #expect(compiled.status == 0, "\(compiled.stderr)")
        let running = try await Self.start(
            token: "t0ken",
            yaml: """
                transports:
                  work: { plugin: queue }
                native:
                  Math:
                    library: \(library)
                    functions:
                      add: { symbol: add_i32, signature: "i32(i32, i32)" }
                      greet: { signature: "str(str)", free: greet_free }
                routes:
                  Worker.*: { transport: work, deadline: 10s, encoding: json, readable_targets: true }
                  Math.*: { transport: work, deadline: 10s }
                admin:
                  listen: 127.0.0.1:0

                """)
        try running.system.hostNative()  // as switchyard run does
        let sum = try await running.get("/api/call", token: "t0ken", method: "POST", body: #"{"target": "Math.add", "arguments": [40, 2]}"#)
        #expect(sum.0 == 200 && sum.1 == #"{"result":42}"#, "\(sum)")
        let greeting = try await running.get("/api/call", token: "t0ken", method: "POST", body: #"{"target": "Math.greet", "arguments": ["you"]}"#)
        #expect(greeting.0 == 200 && greeting.1.contains("you"), "\(greeting)")
        let arity = try await running.get("/api/call", token: "t0ken", method: "POST", body: #"{"target": "Math.add", "arguments": [1]}"#)
        #expect(arity.0 == 400 && arity.1.contains("takes 2 argument(s)"), "\(arity)")
        #expect(try await running.get("/api/call", method: "POST", body: #"{"target": "Math.add", "arguments": [1, 2]}"#).0 == 401)
        // The overview names the module's interface, as it does a service's.
        let math = running.system.overview().services.first { $0.id == "Math" }
        #expect(math?.interfaces == ["Math"] && math?.methods.contains("Math.add") == true, "\(String(describing: math))")
        await running.stop()
    }

    @Test("a port already taken is an error that says so and what to do")
    func portInUse() async throws {
        let running = try await Self.start()
        let second = try AdminServer(system: running.system, settings: SwitchyardConfig.AdminSection(host: "127.0.0.1", port: running.port, token: nil))
        let error = await #expect(throws: AdminError.self) { try await second.run() }
        #expect(error?.description.contains("the port is in use") == true, "\(error?.description ?? "")")
        #expect(error?.description.contains("port 0 picks a free one") == true)
        // The check a host makes before it starts anything says the same; port 0 always passes.
        let checked = #expect(throws: AdminError.self) {
            try AdminServer.checkCanListen(SwitchyardConfig.AdminSection(host: "127.0.0.1", port: running.port, token: nil))
        }
        #expect(checked?.description == error?.description)
        try AdminServer.checkCanListen(SwitchyardConfig.AdminSection(host: "127.0.0.1", port: 0, token: nil))
        // An address this machine does not have (TEST-NET-1) says so and what to listen on
        // instead, unless the machine lets any address be bound (net.ipv4.ip_nonlocal_bind).
        do {
            try AdminServer.checkCanListen(SwitchyardConfig.AdminSection(host: "192.0.2.1", port: running.port, token: nil))
        } catch let error as AdminError {
            #expect(error.description.contains("not an address of this machine") && error.description.contains("127.0.0.1"), "\(error)")
        }
        await running.stop()
    }
}

/// The `admin:` section of the config.
/// A service whose handler fails with a registered error (``InsufficientFunds``) or an
/// unregistered one (``NegativeAmount``): what `POST /api/call` answers for each.
@Resolvable
protocol Ledger: DistributedActor where ActorSystem == SwitchyardActorSystem {
    distributed func debit(_ cents: Int) async throws -> Int
    /// The call's `tenant` header, as the handler sees it.
    distributed func tenant() async throws -> String
}

struct InsufficientFunds: Error, Codable { var short: Int }
struct NegativeAmount: Error {}

distributed actor LedgerService: Ledger {
    typealias ActorSystem = SwitchyardActorSystem
    distributed func debit(_ cents: Int) async throws -> Int {
        if cents < 0 { throw NegativeAmount() }
        if cents > 100 { throw InsufficientFunds(short: cents - 100) }
        return 100 - cents
    }

    distributed func tenant() async throws -> String { Switchyard.currentCall?.headers["tenant"] ?? "" }
}

@Suite("Admin config")
struct AdminConfigTests {
    func parse(_ admin: String, environment: [String: String] = [:]) throws(ConfigError) -> SwitchyardConfig.AdminSection? {
        try SwitchyardConfig.parse(yaml: "admin:\n" + admin, baseDirectory: "/", environment: environment).admin
    }

    @Test("defaults to loopback port 9464; IPv6 in brackets; localhost is 127.0.0.1")
    func addresses() throws {
        let plain = try parse("  {}\n")
        #expect(plain?.host == "127.0.0.1" && plain?.port == 9464 && plain?.token == nil)
        #expect(try parse("  listen: '[::1]:9000'\n")?.host == "::1")
        #expect(try parse("  listen: localhost:0\n")?.port == 0)
        #expect(try parse("  listen: 0.0.0.0:9464\n  token: abc\n")?.isLoopback == false)
        #expect(try parse("  listen: 0.0.0.0:9464\n", environment: ["SWITCHYARD_ADMIN_TOKEN": "from-env"])?.token == "from-env")
        #expect(try SwitchyardConfig.parse(yaml: "routes: {}\n", baseDirectory: "/").admin == nil, "off unless configured")
    }

    @Test("an address beyond loopback without a token reads, and is refused where it would be served, naming the key and line")
    func tokenCheckedWhereServed() throws {
        let section = try #require(try parse("  listen: 0.0.0.0:9464\n"))
        let problem = try #require(section.servingProblem(environment: [:]))
        #expect(problem.key == "admin.token" && problem.line == 2 && problem.message.contains("not loopback"), "\(problem)")
        #expect(section.servingProblem(environment: ["SWITCHYARD_ADMIN_TOKEN": "set-where-it-runs"]) == nil)
        #expect(try parse("  listen: 127.0.0.1:9464\n")?.servingProblem(environment: [:]) == nil)
    }

    @Test(
        "bad values name the key and say what to do",
        arguments: [
            ("  listen: 9464\n", "admin.listen", "HOST:PORT"),
            ("  listen: 127.0.0.1:99999\n", "admin.listen", "0 to 65535"),
            ("  listen: example.com:80\n", "admin.listen", "not an IP address"),
            ("  token: ''\n", "admin.token", "an unset environment variable?"),
            ("  port: 80\n", "admin.port", "unknown key"),
        ])
    func errors(_ yaml: String, _ key: String, _ message: String) {
        let error = #expect(throws: ConfigError.self) { try parse(yaml) }
        #expect(error?.key == key, "\(error.map { "\($0)" } ?? "")")
        #expect(error?.message.contains(message) == true, "\(error.map { "\($0)" } ?? "")")
    }
}
