import Foundation
import SwitchyardABI
import SwitchyardConformance
import SwitchyardHost
import SwitchyardLoader
import SwitchyardRuntime
import SwitchyardTestSupport
import SwitchyardTransportKit
import Testing

@Suite("Decorators: retry policy and durable delay")
struct DecoratorTests {
    func retry(over queueConfig: String = "{}", policy: String) throws -> Transport {
        let inner = try Transport(name: "inner", plugin: try BuildProducts.plugin("queue"), configJSON: queueConfig)
        return try Transport(name: "retry", plugin: try BuildProducts.plugin("retry"), configJSON: policy, inner: inner)
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
        #expect(await eventually { dead.count >= 1 })
        #expect(work.received.map(\.message.attempt) == [1, 2, 3])
        let gaps = zip(work.received.dropFirst(), work.received).map { ($0.at - $1.at) / 1_000_000 }
        #expect(gaps.count == 2 && gaps[0] >= 19 && gaps[1] >= 39, "backoff gaps were \(gaps) ms; expected 20 then 40")
        let m = try #require(dead.received.first?.message)
        #expect(m.header("sy-dlq-reason") == "gave up after 3 attempts: card declined")
        #expect(m.header("sy-dlq-attempts") == "3")
        #expect((m.header("sy-dlq-history") ?? "").split(separator: "\n").count == 3)
    }

    @Test(
        "a non-retryable failure is dead-lettered at once, listed by a reason prefix or by the thrown error's type",
        arguments: [
            ("ValidationError", "ValidationError: amount is negative"),
            ("ValidationError", "Payments.pay(_:) threw App.ValidationError: amount is negative"),
            ("App.ValidationError", "Payments.pay(_:) threw App.ValidationError: amount is negative"),
        ])
    func nonRetryable(listed: String, reason: String) async throws {
        let t = try retry(policy: #"{"non_retryable": ["\#(listed)"]}"#)
        defer { t.close() }
        let work = Collector()
        let dead = Collector()
        _ = try t.client.subscribe(
            SubscribeOptions(channel: "pay"),
            handler: work.handler(client: t.client) { _ in
                .retry(afterNanos: 0, reason: reason)
            })
        _ = try t.client.subscribe(SubscribeOptions(channel: "pay.dlq"), handler: dead.handler(client: t.client))
        try t.client.publish(Message(id: "order-2", channel: "pay"))
        #expect(await eventually { dead.count >= 1 })
        #expect(work.count == 1)
        #expect(dead.received.first?.message.header("sy-dlq-reason") == "not retryable: " + reason)
    }

    @Test("an entry naming another type, or only part of a type's name, does not make a failure non-retryable")
    func retryableDespiteSimilarNames() throws {
        let policy = try JSONDecoder().decode(RetryPolicy.self, from: Data(#"{"non_retryable": ["Error", "Stock"]}"#.utf8))
        #expect(policy.isRetryable("Shop.buy() threw App.OutOfStock: none left"))
        #expect(policy.isRetryable("Shop.buy() threw App.ValidationError: bad"))
        #expect(!policy.isRetryable("Error: at the start of the reason"))
        let byType = try JSONDecoder().decode(RetryPolicy.self, from: Data(#"{"non_retryable": ["OutOfStock"]}"#.utf8))
        #expect(!byType.isRetryable("Shop.buy() threw App.Shop.OutOfStock: none left"))
        #expect(byType.isRetryable("Shop.buy() threw App.NotOutOfStock: none left"))
    }

    @Test("an empty non_retryable entry (an unset ${VAR:-}) is refused, naming the key: it would match every failure")
    func emptyNonRetryableEntry() throws {
        for listed in [#"[""]"#, #"["OutOfStock", " "]"#] {
            let policy = try JSONDecoder().decode(RetryPolicy.self, from: Data(#"{"non_retryable": \#(listed)}"#.utf8))
            let error = #expect(throws: TransportError.self) { try policy.validate() }
            #expect(error?.message.contains("config key 'non_retryable'") == true, "\(String(describing: error))")
        }
    }

    @Test("max_delay unset follows an initial_delay above its 30 s default, instead of refusing a key nobody wrote")
    func maxDelayDefault() throws {
        let steady = try JSONDecoder().decode(RetryPolicy.self, from: Data(#"{"initial_delay": "1m", "jitter": "none"}"#.utf8))
        try steady.validate()
        #expect(steady.backoff(afterAttempt: 1) == 60_000_000_000 && steady.backoff(afterAttempt: 3) == 60_000_000_000)
        let usual = try JSONDecoder().decode(RetryPolicy.self, from: Data(#"{"jitter": "none"}"#.utf8))
        #expect(usual.backoff(afterAttempt: 20) == 30_000_000_000)
        try retry(policy: #"{"initial_delay": "1m"}"#).close()
    }

    @Test(
        "retry refuses bad policies and an inner transport that cannot redeliver",
        arguments: [
            (#"{"max_attempts": 0}"#, "'max_attempts'"), (#"{"jitter": "some"}"#, "'jitter'"),
            (#"{"initial_delay": "1s", "max_delay": "10ms"}"#, "'max_delay'"), (#"{"max_atempts": 3}"#, "unknown config key 'max_atempts'"),
            // YAML's `jitter: yes` reaches the plugin as a boolean: the fix is to quote a word.
            (#"{"jitter": true}"#, "config key 'jitter': expected a string (found bool): quote it if you meant the text"),
        ])
    func badPolicy(_ policy: String, _ expected: String) throws {
        let error = #expect(throws: TransportError.self) { _ = try retry(policy: policy) }
        #expect(error?.code == .config)
        #expect(error?.message.contains(expected) == true, "\(error?.message ?? "")")
    }

    @Test("retry over a transport without timed redelivery is refused at creation")
    func innerWithoutRetry() throws {
        let inner = try Transport(name: "plain", plugin: try BuildProducts.plugin("example-c"))
        let error = #expect(throws: TransportError.self) {
            _ = try Transport(name: "r", plugin: try BuildProducts.plugin("retry"), inner: inner)
        }
        #expect(error?.message.contains("lacks") == true, "\(error?.message ?? "")")
    }

    /// A durable delay (`d.db`) over a durable queue (`q.db`), both in `dir`: opened again on the
    /// same files, it is the same transport after a restart.
    func durableDelay(in dir: TemporaryDirectory) throws -> Transport {
        let inner = try Transport(name: "q", plugin: try BuildProducts.plugin("queue"), configJSON: #"{"path": "\#(dir.file("q.db"))"}"#)
        return try Transport(name: "d", plugin: try BuildProducts.plugin("delay"), configJSON: #"{"path": "\#(dir.file("d.db"))"}"#, inner: inner)
    }

    @Test("a durable delay keeps held messages across a restart and delivers what came due meanwhile")
    func durableDelayRestart() async throws {
        let dir = try TemporaryDirectory()
        func open() throws -> Transport { try durableDelay(in: dir) }
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
        #expect(await eventually { inbox.count >= 2 })
        #expect(inbox.received.map(\.message.id) == ["soon", "later"])
        #expect(inbox.received.last!.at >= later.deliverAtNanos, "'later' came early")
    }

    @Test("an unreadable held message stays in the delay store and the others due with it are delivered")
    func durableDelayUnreadableRow() async throws {
        let dir = try TemporaryDirectory()
        func open() throws -> Transport { try durableDelay(in: dir) }
        var first: Transport? = try open()
        for id in ["a", "b", "c"] {
            var message = Message(id: id, channel: "remind")
            message.deliverAtNanos = wallClockNanoseconds() + 400_000_000
            try first!.client.publish(message)
        }
        first!.close()
        first = nil
        // Damage one held message while nothing runs (as a bad sector or a stray write would).
        let damaged = try await run(
            "/usr/bin/env",
            [
                "python3", "-c",
                """
                import sqlite3; db = sqlite3.connect('\(dir.file("d.db"))')
                db.execute("UPDATE held SET message = x'00010203' WHERE seq = (SELECT MIN(seq) FROM held)"); db.commit()
                """,
            ])
        #expect(damaged.status == 0, "\(damaged.stderr)")
        let second = try open()
        defer { second.close() }
        let inbox = Collector()
        _ = try second.client.subscribe(SubscribeOptions(channel: "remind"), handler: inbox.handler(client: second.client))
        #expect(await eventually { inbox.count >= 2 })
        try await Task.sleep(for: .milliseconds(300))
        #expect(inbox.received.map(\.message.id) == ["b", "c"])
        let kept = try await run(
            "/usr/bin/env", ["python3", "-c", "import sqlite3; print(sqlite3.connect('\(dir.file("d.db"))').execute('SELECT COUNT(*) FROM held').fetchone()[0])"])
        #expect(kept.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "1", "the unreadable one is kept: \(kept.stdout)\(kept.stderr)")
    }
}
