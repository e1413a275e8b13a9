import Foundation
import SwitchyardABI
import SwitchyardConformance
import SwitchyardHost
import SwitchyardLoader
import SwitchyardRuntime
import Testing

/// The bundled transports pass the conformance suite in both modes, loaded from their .so files.
@Suite("Conformance of the bundled plugins")
struct ConformanceTests {
    static let cases: [(plugin: String, durable: Bool)] = [
        ("queue", false), ("queue", true), ("topic", false), ("topic", true), ("delay", false), ("delay", true),
        ("retry", false), ("retry", true), ("example-c", false), ("example-swift", false),
    ]

    static func plugin(_ name: String) throws -> LoadedPlugin {
        let catalog = PluginLoader().discover(in: [SearchDirectory(path: BuildProducts.directory, source: .executableDirectory)])
        return try #require(catalog.plugin(named: name))
    }

    @Test("passes every check its capabilities claim", arguments: cases)
    func conformance(_ plugin: String, _ durable: Bool) async throws {
        let dir = try TemporaryDirectory()
        let loaded = try Self.plugin(plugin)
        let inner = loaded.capabilities.contains(.wrapsInner) ? try Self.plugin("queue") : nil
        let results = try await offPool { ConformanceSuite.forPlugin(loaded, inner: inner, durableDirectory: durable ? dir.path : nil).run() }
        for result in results where result.failed { Issue.record("\(plugin)\(durable ? " durable" : ""): \(result)") }
        #expect(results.contains { if case .passed = $0.outcome { true } else { false } })
    }

    @Test("plugins test exits 0 for a passing plugin and prints what it ran")
    func cli() async throws {
        let result = try await run(BuildProducts.switchyard, ["plugins", "test", "topic", "--check", "fan-out", "--check", "dead-letter"])
        #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        #expect(result.stdout.contains("pass  fan-out"))
        #expect(result.stdout.contains("2 passed, 0 failed"))
    }
}

@Suite("Durable queue")
struct DurableQueueTests {
    static var probe: String { BuildProducts.path("switchyard-durability-probe") }

    @Test("every acknowledged publish survives the publisher being killed with SIGKILL")
    func survivesSIGKILL() async throws {
        let dir = try TemporaryDirectory()
        let db = dir.file("queue.db")
        // The rounds block on the child's output: off the cooperative pool.
        let acked = try await offPool { () throws -> Set<String> in
            var acked = Set<String>()
            for round in 0..<3 {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: Self.probe)
                process.arguments = [BuildProducts.directory, db, "100000", "r\(round)"]
                let out = Pipe()
                process.standardOutput = out
                try process.run()
                // Read acknowledgements until a random point, then kill it mid-stream.
                let stopAfter = Int.random(in: 20...200)
                var buffer = Data()
                var seen = 0
                while seen < stopAfter {
                    let chunk = out.fileHandleForReading.availableData
                    if chunk.isEmpty { break }
                    buffer.append(chunk)
                    seen = buffer.split(separator: UInt8(ascii: "\n")).count
                }
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
                buffer.append(out.fileHandleForReading.readDataToEndOfFile())
                let lines = String(decoding: buffer, as: UTF8.self).split(separator: "\n")
                acked.formUnion(lines.filter { $0.hasPrefix("acked ") }.map { String($0.dropFirst(6)) })
                #expect(process.terminationReason == .uncaughtSignal)
            }
            return acked
        }
        #expect(acked.count >= 60)
        let plugin = try ConformanceTests.plugin("queue")
        let transport = try Transport(name: "after-crash", plugin: plugin, configJSON: "{\"path\": \"\(db)\"}")
        defer { transport.close() }
        let inbox = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "durable", maxInFlight: 1000), handler: inbox.handler(client: transport.client))
        let deadline = Date().addingTimeInterval(20)
        while !acked.isSubset(of: Set(inbox.received.map(\.message.id))) && Date() < deadline { try await Task.sleep(for: .milliseconds(10)) }
        let received = Set(inbox.received.map(\.message.id))
        let lost = acked.subtracting(received)
        #expect(lost.isEmpty, "\(lost.count) acknowledged messages were lost, e.g. \(lost.prefix(5))")
        let sample = try #require(inbox.received.first { acked.contains($0.message.id) })
        #expect(String(decoding: sample.message.body, as: UTF8.self).hasPrefix("payload "))
    }

    @Test("a consumer in this process is woken by a producer in another process, without polling")
    func crossProcessWakeup() async throws {
        let dir = try TemporaryDirectory()
        let db = dir.file("shared.db")
        let plugin = try ConformanceTests.plugin("queue")
        let transport = try Transport(name: "consumer", plugin: plugin, configJSON: "{\"path\": \"\(db)\"}")
        defer { transport.close() }
        let inbox = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "durable"), handler: inbox.handler(client: transport.client))
        let result = try await run(Self.probe, [BuildProducts.directory, db, "20", "x"])
        #expect(result.status == 0, "\(result.stderr)")
        // Counted from the producer's exit, not its start: starting a process on a loaded machine
        // takes seconds, and that is not what this test is about.
        let producerDone = Date()
        #expect(await eventually(10) { inbox.count >= 20 }, "got \(inbox.count) of 20 from the other process")
        #expect(Date().timeIntervalSince(producerDone) < 3, "messages arrived \(Date().timeIntervalSince(producerDone)) s after the producer finished")
    }

    @Test("a file that is not SQLite, or another application's database, is refused with a clear error")
    func foreignFiles() async throws {
        let dir = try TemporaryDirectory()
        let plugin = try ConformanceTests.plugin("queue")
        try "definitely not sqlite, but long enough to look like a header ..........................................".write(
            toFile: dir.file("text.db"), atomically: true, encoding: .utf8)
        let notSQLite = #expect(throws: TransportError.self) { _ = try Transport(name: "t", plugin: plugin, configJSON: "{\"path\": \"\(dir.file("text.db"))\"}") }
        #expect(notSQLite?.message.contains("not a SQLite database") == true, "\(notSQLite?.message ?? "")")
        _ = try await run("/usr/bin/env", ["sqlite3", dir.file("other.db"), "CREATE TABLE invoices (id INTEGER);"])
        if FileManager.default.fileExists(atPath: dir.file("other.db")) {
            let foreign = #expect(throws: TransportError.self) { _ = try Transport(name: "t", plugin: plugin, configJSON: "{\"path\": \"\(dir.file("other.db"))\"}") }
            #expect(foreign?.message.contains("another application") == true, "\(foreign?.message ?? "")")
        }
        let topic = try ConformanceTests.plugin("topic")
        let queueFile = try Transport(name: "q", plugin: plugin, configJSON: "{\"path\": \"\(dir.file("q.db"))\"}")
        queueFile.close()
        let wrongKind = #expect(throws: TransportError.self) { _ = try Transport(name: "t", plugin: topic, configJSON: "{\"path\": \"\(dir.file("q.db"))\"}") }
        #expect(wrongKind?.message.contains("holds a queue store") == true, "\(wrongKind?.message ?? "")")
    }

    @Test(
        "malformed broker config names the key",
        arguments: [
            ("{\"capacity\": -1}", "'capacity'"), ("{\"visibility_timeout\": \"soon\"}", "'visibility_timeout'"),
            ("{\"max_in_flight\": 0}", "'max_in_flight'"), ("{\"retain\": 5}", "unknown config key 'retain'"),
            ("{\"full_wait\": 5}", "'full_wait'"),
        ])
    func badConfig(_ json: String, _ expected: String) throws {
        let plugin = try ConformanceTests.plugin("queue")
        let error = #expect(throws: TransportError.self) { _ = try Transport(name: "t", plugin: plugin, configJSON: json) }
        #expect(error?.code == .config)
        #expect(error?.message.contains(expected) == true, "\(error?.message ?? "")")
    }

    @Test("with full_wait, a publish to a full queue waits for room instead of failing")
    func fullWait() throws {
        let plugin = try ConformanceTests.plugin("queue")
        let transport = try Transport(name: "small", plugin: plugin, configJSON: #"{"capacity": 1, "full_wait": "2s"}"#)
        defer { transport.close() }
        let client = transport.client
        _ = try client.subscribe(SubscribeOptions(channel: "c")) { delivery, _ in
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(100)) { try? client.settle(delivery, .ack) }
            return .ok
        }
        let started = Date()
        for index in 0..<3 { try client.publish(Message(id: "w\(index)", channel: "c")) }
        let waited = Date().timeIntervalSince(started)
        #expect(waited >= 0.15 && waited < 2, "three publishes through a queue of capacity 1 took \(waited) s")
    }

    @Test("a full queue refuses a publish with a clear error, and nothing is dropped")
    func capacity() throws {
        let plugin = try ConformanceTests.plugin("queue")
        let transport = try Transport(name: "small", plugin: plugin, configJSON: "{\"capacity\": 3}")
        defer { transport.close() }
        for index in 0..<3 { try transport.client.publish(Message(id: "m\(index)", channel: "c")) }
        let full = #expect(throws: TransportError.self) { try transport.client.publish(Message(id: "m3", channel: "c")) }
        #expect(full?.code == .full)
        #expect(full?.message.contains("capacity of 3") == true)
        #expect(try transport.client.stats()?.depth == 3)
    }
}

@Suite("Decorators: retry policy and durable delay")
struct DecoratorTests {
    func retry(over queueConfig: String = "{}", policy: String) throws -> Transport {
        let inner = try Transport(name: "inner", plugin: try ConformanceTests.plugin("queue"), configJSON: queueConfig)
        return try Transport(name: "retry", plugin: try ConformanceTests.plugin("retry"), configJSON: policy, inner: inner)
    }

    @Test("a failing message is retried with backoff up to max_attempts, then dead-lettered with its history")
    func exhausts() async throws {
        let t = try retry(policy: #"{"max_attempts": 3, "initial_delay": "20ms", "max_delay": "40ms", "jitter": "none"}"#)
        defer { t.close() }
        let work = Collector()
        let dead = Collector()
        _ = try t.client.subscribe(
            SubscribeOptions(channel: "pay"),
            handler: work.handler(client: t.client) { _ in
                .retry(afterNanos: 0, reason: "card declined")
            })
        _ = try t.client.subscribe(SubscribeOptions(channel: "pay.dlq"), handler: dead.handler(client: t.client))
        try t.client.publish(Message(id: "order-1", channel: "pay"))
        #expect(await eventually(5) { dead.count >= 1 })
        #expect(work.received.map(\.message.attempt) == [1, 2, 3])
        let gaps = zip(work.received.dropFirst(), work.received).map { ($0.at - $1.at) / 1_000_000 }
        #expect(gaps.count == 2 && gaps[0] >= 19 && gaps[1] >= 39, "backoff gaps were \(gaps) ms; expected 20 then 40")
        let m = try #require(dead.received.first?.message)
        #expect(m.header("sy-dlq-reason") == "gave up after 3 attempts: card declined")
        #expect(m.header("sy-dlq-attempts") == "3")
        #expect((m.header("sy-dlq-history") ?? "").split(separator: "\n").count == 3)
    }

    @Test("a non-retryable failure is dead-lettered at once")
    func nonRetryable() async throws {
        let t = try retry(policy: #"{"non_retryable": ["ValidationError"]}"#)
        defer { t.close() }
        let work = Collector()
        let dead = Collector()
        _ = try t.client.subscribe(
            SubscribeOptions(channel: "pay"),
            handler: work.handler(client: t.client) { _ in
                .retry(afterNanos: 0, reason: "ValidationError: amount is negative")
            })
        _ = try t.client.subscribe(SubscribeOptions(channel: "pay.dlq"), handler: dead.handler(client: t.client))
        try t.client.publish(Message(id: "order-2", channel: "pay"))
        #expect(await eventually(5) { dead.count >= 1 })
        #expect(work.count == 1)
        #expect(dead.received.first?.message.header("sy-dlq-reason") == "not retryable: ValidationError: amount is negative")
    }

    @Test(
        "retry refuses bad policies and an inner transport that cannot redeliver",
        arguments: [
            (#"{"max_attempts": 0}"#, "'max_attempts'"), (#"{"jitter": "some"}"#, "'jitter'"),
            (#"{"initial_delay": "1s", "max_delay": "10ms"}"#, "'max_delay'"), (#"{"max_atempts": 3}"#, "unknown config key 'max_atempts'"),
        ])
    func badPolicy(_ policy: String, _ expected: String) throws {
        let error = #expect(throws: TransportError.self) { _ = try retry(policy: policy) }
        #expect(error?.code == .config)
        #expect(error?.message.contains(expected) == true, "\(error?.message ?? "")")
    }

    @Test("retry over a transport without timed redelivery is refused at creation")
    func innerWithoutRetry() throws {
        let inner = try Transport(name: "plain", plugin: try ConformanceTests.plugin("example-c"))
        let error = #expect(throws: TransportError.self) {
            _ = try Transport(name: "r", plugin: try ConformanceTests.plugin("retry"), inner: inner)
        }
        #expect(error?.message.contains("lacks") == true, "\(error?.message ?? "")")
    }

    @Test("a durable delay keeps held messages across a restart and delivers what came due meanwhile")
    func durableDelayRestart() async throws {
        let dir = try TemporaryDirectory()
        let delay = try ConformanceTests.plugin("delay")
        let queue = try ConformanceTests.plugin("queue")
        func open() throws -> Transport {
            let inner = try Transport(name: "q", plugin: queue, configJSON: #"{"path": "\#(dir.file("q.db"))"}"#)
            return try Transport(name: "d", plugin: delay, configJSON: #"{"path": "\#(dir.file("d.db"))"}"#, inner: inner)
        }
        var first: Transport? = try open()
        var soon = Message(id: "soon", channel: "remind")
        soon.deliverAtNanos = wallClockNanoseconds() + 300_000_000
        var later = Message(id: "later", channel: "remind")
        later.deliverAtNanos = wallClockNanoseconds() + 1_000_000_000
        try first!.client.publish(soon)
        try first!.client.publish(later)
        #expect(try first!.client.stats()?.depth == 2)
        first!.close()
        first = nil
        try await Task.sleep(for: .milliseconds(500))  // "soon" comes due while nothing runs
        let second = try open()
        defer { second.close() }
        let inbox = Collector()
        _ = try second.client.subscribe(SubscribeOptions(channel: "remind"), handler: inbox.handler(client: second.client))
        #expect(await eventually(5) { inbox.count >= 2 })
        #expect(inbox.received.map(\.message.id) == ["soon", "later"])
        #expect(inbox.received.last!.at >= later.deliverAtNanos, "'later' came early")
    }
}

@Suite("switchyard dlq")
struct DeadLetterToolTests {
    /// A durable queue with three dead letters on orders.dlq, configured as transport 'orders'.
    func setUp(_ dir: TemporaryDirectory) async throws -> String {
        let db = dir.file("orders.db")
        try """
        transports:
          orders:
            plugin: queue
            config:
              path: \(db)
              visibility_timeout: 30s
        """.write(toFile: dir.file("switchyard.yaml"), atomically: true, encoding: .utf8)
        let queue = try Transport(name: "orders", plugin: try ConformanceTests.plugin("queue"), configJSON: #"{"path": "\#(db)"}"#)
        defer { queue.close() }
        let inbox = Collector()
        _ = try queue.client.subscribe(
            SubscribeOptions(channel: "orders"),
            handler: inbox.handler(client: queue.client) { m in
                .deadLetter(reason: "payment declined for \(m.id)")
            })
        for id in ["o-1", "o-2", "o-3"] { try queue.client.publish(Message(id: id, channel: "orders", body: Array("order \(id)".utf8))) }
        #expect(await eventually(5) { inbox.count >= 3 })
        try await Task.sleep(for: .milliseconds(100))
        return dir.file("switchyard.yaml")
    }

    func dlq(_ arguments: [String], config: String) async throws -> ProcessResult {
        try await run(BuildProducts.switchyard, ["dlq"] + arguments + ["--config", config, "--transport", "orders", "--channel", "orders"])
    }

    @Test("list, show, replay and purge, end to end on a durable queue")
    func endToEnd() async throws {
        let dir = try TemporaryDirectory()
        let config = try await setUp(dir)
        struct Letter: Decodable { let id, reason, channel: String; let attempts: Int; let history: [String] }

        let list = try await dlq(["list", "--json"], config: config)
        #expect(list.status == 0, "\(list.stderr)")
        let letters = try JSONDecoder().decode([Letter].self, from: Data(list.stdout.utf8))
        #expect(Set(letters.map(\.id)) == ["o-1", "o-2", "o-3"])
        #expect(letters.first { $0.id == "o-2" }?.reason == "payment declined for o-2")
        #expect(letters.allSatisfy { $0.channel == "orders" && $0.attempts == 1 && $0.history.count == 1 })

        let show = try await dlq(["show", "o-1"], config: config)
        #expect(show.status == 0)
        #expect(show.stdout.contains("order o-1"))

        // Listing does not consume: the letters are still there.
        #expect(try JSONDecoder().decode([Letter].self, from: Data(try await dlq(["list", "--json"], config: config).stdout.utf8)).count == 3)

        let replay = try await dlq(["replay", "o-1"], config: config)
        #expect(replay.status == 0, "\(replay.stderr)")
        #expect(replay.stdout.contains("replayed 1 message"))

        let purge = try await dlq(["purge", "o-2"], config: config)
        #expect(purge.stdout.contains("purged 1 message"))

        let left = try JSONDecoder().decode([Letter].self, from: Data(try await dlq(["list", "--json"], config: config).stdout.utf8))
        #expect(left.map(\.id) == ["o-3"])

        // o-1 is back on its channel, clean, with its body.
        let queue = try Transport(name: "orders", plugin: try ConformanceTests.plugin("queue"), configJSON: #"{"path": "\#(dir.file("orders.db"))"}"#)
        defer { queue.close() }
        let inbox = Collector()
        _ = try queue.client.subscribe(SubscribeOptions(channel: "orders"), handler: inbox.handler(client: queue.client))
        #expect(await eventually(5) { inbox.count >= 1 })
        let back = try #require(inbox.received.first?.message)
        #expect(back.id == "o-1" && back.body == Array("order o-1".utf8) && back.attempt == 1)
        #expect(!back.headers.contains { $0.key.hasPrefix("sy-dlq-") })
    }

    @Test(
        "a dead-lettered typed call, shown decoded (call, arguments as JSON, attempts made, RFC 3339 times), on a transport with its own dead_letter_suffix; an expired one is flagged on replay and runs again with --fire-and-forget"
    )
    func typedCallDeadLetter() async throws {
        let dir = try TemporaryDirectory()
        let config = dir.file("switchyard.yaml")
        try """
        transports:
          orders: { plugin: queue, config: { path: "\(dir.file("orders.db"))", dead_letter_suffix: ".dead" } }
        routes:
          Shop.*: { transport: orders, deadline: 4s, retry: { max_attempts: 2, initial_delay: 1ms, jitter: none } }
        """.write(toFile: config, atomically: true, encoding: .utf8)
        let system = try SwitchyardActorSystem(configPath: config, pluginDirectories: [BuildProducts.directory])
        let ledger = Ledger()
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        let shop = try $Shop.resolve(id: "shop", using: system)
        let called = ContinuousClock.now
        await #expect(throws: SwitchyardError.self) { _ = try await shop.flaky("b", failures: 100) }
        #expect(ledger.count("flaky:b") == 2)
        func dlq(_ arguments: [String]) async throws -> ProcessResult {
            try await run(BuildProducts.switchyard, ["dlq"] + arguments + ["--config", config, "--transport", "orders", "--channel", "shop"])
        }
        struct Letter: Decodable { let id: String; let call, arguments: String?; let attempts: Int }
        let letters = try JSONDecoder().decode([Letter].self, from: Data(try await dlq(["list", "--json"]).stdout.utf8))
        let letter = try #require(letters.first)
        #expect(letters.count == 1 && letter.call == "Shop.flaky(_:failures:)" && letter.arguments == #"["b",100]"# && letter.attempts == 2)
        let show = try await dlq(["show", letter.id])
        #expect(show.status == 0, "\(show.stderr)")
        #expect(show.stdout.contains("call:            Shop.flaky(_:failures:)"), "\(show.stdout)")
        #expect(show.stdout.contains(#"arguments:       ["b",100] (application/x-switchyard-compact)"#), "\(show.stdout)")
        #expect(show.stdout.contains("attempts made:   2"), "\(show.stdout)")
        #expect(!show.stdout.contains("attempt:   1"))
        // History times in RFC 3339, not raw nanoseconds.
        let history = show.stdout.split(separator: "\n").filter { $0.hasPrefix("  attempt ") }
        #expect(history.count == 2 && history.allSatisfy { $0.contains("Z: ") && !$0.contains(" at 1") }, "\(history)")

        // The caller's 4 s deadline passes: a plain replay says it will come back expired.
        try await Task.sleep(until: called + .milliseconds(4200), clock: .continuous)
        let replay = try await dlq(["replay", "--all"])
        #expect(replay.stdout.contains("replayed 1 message") && replay.stdout.contains("deadline has passed") && replay.stdout.contains("--fire-and-forget"), "\(replay.stdout)")
        var back = 0
        for _ in 0..<50 where back == 0 {
            back = (try? JSONDecoder().decode([Letter].self, from: Data(try await dlq(["list", "--json"]).stdout.utf8)))?.count ?? 0
            if back == 0 { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(back == 1, "the expired call is dead-lettered again")
        #expect(ledger.count("flaky:b") == 2, "an expired call is not run")
        // As fire-and-forget it runs again (and, still failing, is retried and dead-lettered).
        let again = try await dlq(["replay", "--all", "--fire-and-forget"])
        #expect(again.stdout.contains("replayed 1 message as fire-and-forget"), "\(again.stdout)")
        #expect(await eventually { ledger.count("flaky:b") == 4 })
        await system.shutdown()
    }

    @Test("errors: unknown transport, no dead-letter support, unknown id")
    func errors() async throws {
        let dir = try TemporaryDirectory()
        let config = try await setUp(dir)
        let unknown = try await run(BuildProducts.switchyard, ["dlq", "list", "--config", config, "--transport", "nope", "--channel", "x"])
        #expect(unknown.status != 0)
        #expect(unknown.stderr.contains("no transport named 'nope'"))
        let missing = try await dlq(["show", "o-9"], config: config)
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("no dead letter with id 'o-9'"))
        try "transports:\n  plain:\n    plugin: example-c\n".write(toFile: dir.file("plain.yaml"), atomically: true, encoding: .utf8)
        let plain = try await run(BuildProducts.switchyard, ["dlq", "list", "--config", dir.file("plain.yaml"), "--transport", "plain", "--channel", "x"])
        #expect(plain.status != 0)
        #expect(plain.stderr.contains("has no dead-letter support"), "\(plain.stderr)")
    }
}

@Suite("Durable queue on a full disk")
struct FullDiskTests {
    /// A tiny tmpfs, mounted for the test (needs root and permission to mount; skipped otherwise).
    static let canMount: Bool = {
        guard geteuid() == 0, let dir = try? TemporaryDirectory() else { return false }
        let mounted = (try? run("/bin/mount", ["-t", "tmpfs", "-o", "size=64k", "tmpfs", dir.path]))?.status == 0
        if mounted { _ = try? run("/bin/umount", [dir.path]) }
        return mounted
    }()

    @Test(
        "publish fails with a clear error when the disk is full, and every acknowledged message is kept",
        .enabled(if: canMount, "needs root and tmpfs mounts"))
    func fullDisk() async throws {
        let mountPoint = try TemporaryDirectory()
        let rescue = try TemporaryDirectory()
        #expect(try await run("/bin/mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", mountPoint.path]).status == 0)
        defer { _ = try? run("/bin/umount", ["-l", mountPoint.path]) }
        let db = mountPoint.file("q.db")
        let queue = try Transport(name: "full", plugin: try ConformanceTests.plugin("queue"), configJSON: #"{"path": "\#(db)"}"#)
        var acked: [String] = []
        var failure: TransportError?
        for index in 0..<2_000 {
            do {
                try queue.client.publish(Message(id: "m\(index)", channel: "c", body: [UInt8](repeating: UInt8(index % 251), count: 1_000)))
                acked.append("m\(index)")
            } catch {
                failure = error
                break
            }
        }
        let error = try #require(failure, "2 MB fitted in a 1 MB filesystem?")
        #expect(error.code == .io)
        #expect(error.message.contains("full"), "\(error.message)")
        #expect(acked.count > 20)
        // Take the files somewhere with room, and read them back: every acknowledged message is there.
        for suffix in ["", "-wal"] where FileManager.default.fileExists(atPath: db + suffix) {
            try FileManager.default.copyItem(atPath: db + suffix, toPath: rescue.file("q.db" + suffix))
        }
        queue.close()
        let reopened = try Transport(name: "rescued", plugin: try ConformanceTests.plugin("queue"), configJSON: #"{"path": "\#(rescue.file("q.db"))"}"#)
        defer { reopened.close() }
        let inbox = Collector()
        _ = try reopened.client.subscribe(SubscribeOptions(channel: "c", maxInFlight: 5_000), handler: inbox.handler(client: reopened.client))
        #expect(await eventually(20) { inbox.count >= acked.count })
        #expect(Set(acked).isSubset(of: Set(inbox.received.map(\.message.id))))
    }
}
