import Distributed
import Foundation
import SwitchyardRuntime
import SwitchyardTestSupport
import Testing

/// Events fanned out on a topic; the `audit` group's handler fails its first `failures` runs.
@Resolvable
protocol Alerts: DistributedActor where ActorSystem == SwitchyardActorSystem {
    distributed func alert(_ id: Int) async throws
}

distributed actor AlertsService: Alerts {
    typealias ActorSystem = SwitchyardActorSystem
    let ledger: Ledger
    let group: String
    let failures: Int

    init(actorSystem: ActorSystem, ledger: Ledger, group: String, failures: Int) {
        self.actorSystem = actorSystem
        self.ledger = ledger
        self.group = group
        self.failures = failures
    }

    distributed func alert(_ id: Int) async throws {
        if ledger.bump("\(group):\(id)") <= failures { throw OutOfStock(item: "alert \(id) in \(group)") }
    }
}

/// `switchyard dlq` on typed calls: a dead-lettered call shown decoded and replayed.
@Suite("switchyard dlq on typed calls")
struct TypedDeadLetterTests {
    /// `yaml` written as the config file in `dir`, and a system started from it.
    static func start(_ yaml: String, in dir: TemporaryDirectory) async throws -> (config: String, system: SwitchyardActorSystem) {
        let config = dir.file("switchyard.yaml")
        try yaml.write(toFile: config, atomically: true, encoding: .utf8)
        let system = try await offPool { try SwitchyardActorSystem(configPath: config, pluginDirectories: [BuildProducts.directory]) }
        return (config, system)
    }

    /// `switchyard dlq ARGUMENTS` on `channel` of `transport` in `config`.
    static func dlq(_ arguments: [String], config: String, transport: String, channel: String) async throws -> ProcessResult {
        try await run(BuildProducts.switchyard, ["dlq"] + arguments + ["--config", config, "--transport", transport, "--channel", channel])
    }

    @Test(
        "a topic group's dead letter, replayed, runs again in that group only: the groups that handled it drop their copies",
        arguments: ["audit", ""])
    func topicReplayReachesItsGroupOnly(failingGroup: String) async throws {
        let dir = try TemporaryDirectory()
        let config = dir.file("switchyard.yaml")
        try """
        transports:
          events: { plugin: topic, config: { path: "\(dir.file("events.db"))" } }
        routes:
          Alerts.*: { transport: events, mode: fire-and-forget, retry: { max_attempts: 2, initial_delay: 1ms, jitter: none } }
        """.write(toFile: config, atomically: true, encoding: .utf8)
        let log = CapturedLog()
        var logger = log.logger("switchyard.runtime")
        logger.logLevel = .debug
        let systemLogger = logger
        let system = try await offPool {
            try SwitchyardActorSystem(configPath: config, pluginDirectories: [BuildProducts.directory], logger: systemLogger)
        }
        let ledger = Ledger()
        let groups = ["", "email", "audit"]  // "": an actor hosted without a group, the default one
        for group in groups {
            try system.host(SwitchyardActorID("alerts", group: group), as: $Alerts.self) {
                AlertsService(actorSystem: $0, ledger: ledger, group: group, failures: group == failingGroup ? 2 : 0)
            }
        }
        try await $Alerts.resolve(id: "alerts", using: system).alert(7)
        func dlq(_ arguments: [String]) async throws -> ProcessResult { try await Self.dlq(arguments, config: config, transport: "events", channel: "alerts") }
        struct Letter: Decodable { let id: String; let group: String? }
        var letters: [Letter] = []
        for _ in 0..<50 where letters.isEmpty {
            letters = (try? JSONDecoder().decode([Letter].self, from: Data(try await dlq(["list", "--json"]).stdout.utf8))) ?? []
            if letters.isEmpty { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(letters.map(\.group) == [failingGroup])
        let others = groups.filter { $0 != failingGroup }
        #expect(await eventually { others.allSatisfy { ledger.count("\($0):7") == 1 } })
        #expect(ledger.count("\(failingGroup):7") == 2)
        let listed = try await dlq(["list"])
        #expect(listed.stdout.contains("GROUP") && listed.stdout.contains(failingGroup.isEmpty ? "(default)" : failingGroup), "\(listed.stdout)")
        let replay = try await dlq(["replay", "--all"])
        #expect(replay.stdout.contains("replayed 1 message"), "\(replay.stdout) \(replay.stderr)")
        #expect(await eventually { ledger.count("\(failingGroup):7") == 3 }, "the failing group runs it again, and now succeeds")
        // The other groups' copies arrived and were dropped unread: seen in the log, not waited out.
        #expect(
            await eventually {
                let drops = log.all.filter { $0.contains("dropping a message replayed for another subscriber group") }
                return others.allSatisfy { group in drops.contains { $0.hasSuffix(" group=\(group)") } }
            }, "\(log.all.filter { $0.contains("replayed") })")
        #expect(others.allSatisfy { ledger.count("\($0):7") == 1 }, "the groups that handled it do not run it twice")
        await system.shutdown()
    }

    @Test(
        "a dead-lettered typed call, shown decoded (call, arguments as JSON, attempts made, RFC 3339 times), on a transport with its own dead_letter_suffix; an expired one is flagged on replay and runs again with --fire-and-forget"
    )
    func typedCallDeadLetter() async throws {
        let dir = try TemporaryDirectory()
        let (config, system) = try await Self.start(
            """
            transports:
              orders: { plugin: queue, config: { path: "\(dir.file("orders.db"))", dead_letter_suffix: ".dead" } }
            routes:
              Shop.*: { transport: orders, deadline: 15s, retry: { max_attempts: 2, initial_delay: 1ms, jitter: none } }
            """, in: dir)
        let ledger = Ledger()
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        let shop = try $Shop.resolve(id: "shop", using: system)
        let called = ContinuousClock.now
        await #expect(throws: SwitchyardError.self) { _ = try await shop.flaky("b", failures: 100) }
        #expect(ledger.count("flaky:b") == 2)
        func dlq(_ arguments: [String]) async throws -> ProcessResult { try await Self.dlq(arguments, config: config, transport: "orders", channel: "shop") }
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

        // The caller's 15 s deadline passes: a plain replay says it will come back expired. (15 s:
        // both attempts must run before it, on a machine busy with the other tests, under a
        // sanitizer too; 8 s once fell short in CI, the retry still waiting for its turn.)
        try await Task.sleep(until: called + .milliseconds(15200), clock: .continuous)
        let replay = try await dlq(["replay", "--all"])
        // The warning on standard error, the count on standard output (what a script reads).
        #expect(replay.stdout.contains("replayed 1 message") && !replay.stdout.contains("deadline has passed"), "\(replay.stdout)")
        #expect(replay.stderr.contains("deadline has passed") && replay.stderr.contains("--fire-and-forget"), "\(replay.stderr)")
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

    @Test(
        "a fire-and-forget call made with a deadline and dead-lettered as expired is flagged on replay, and runs with --fire-and-forget (which drops the deadline)"
    )
    func expiredFireAndForgetReplay() async throws {
        let dir = try TemporaryDirectory()
        let (config, system) = try await Self.start(
            """
            transports:
              events: { plugin: queue, config: { path: "\(dir.file("events.db"))" } }
            routes:
              Alerts.*: { transport: events, mode: fire-and-forget }
            """, in: dir)
        // Sent while nobody hosts the actor; its deadline passes before anyone can run it.
        try await Switchyard.withCallOptions(CallOptions(deadline: .milliseconds(200))) {
            try await $Alerts.resolve(id: "alerts", using: system).alert(5)
        }
        try await Task.sleep(for: .milliseconds(400))
        let ledger = Ledger()
        try system.host("alerts", as: $Alerts.self) { AlertsService(actorSystem: $0, ledger: ledger, group: "g", failures: 0) }
        func dlq(_ arguments: [String]) async throws -> ProcessResult { try await Self.dlq(arguments, config: config, transport: "events", channel: "alerts") }
        struct Letter: Decodable { let id: String; let reason: String }
        func letters() async throws -> [Letter] {
            (try? JSONDecoder().decode([Letter].self, from: Data(try await dlq(["list", "--json"]).stdout.utf8))) ?? []
        }
        var found: [Letter] = []
        for _ in 0..<100 where found.isEmpty {
            found = try await letters()
            if found.isEmpty { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(found.count == 1 && found.first?.reason.contains("expired") == true, "\(found.map(\.reason))")
        let show = try await dlq(["show", try #require(found.first).id])
        #expect(show.stdout.contains("fire-and-forget: nobody waits for its result, deadline ") && show.stdout.contains("(passed: "), "\(show.stdout)")

        // As it is, it would only expire again: replay says so.
        let replay = try await dlq(["replay", "--all"])
        #expect(replay.stderr.contains("deadline has passed") && replay.stderr.contains("--fire-and-forget"), "\(replay.stderr)")
        var back: [Letter] = []
        for _ in 0..<100 where back.isEmpty {
            back = try await letters()
            if back.isEmpty { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(back.count == 1, "the expired call is dead-lettered again")
        #expect(ledger.count("g:5") == 0, "an expired call is not run")
        // Without its deadline it runs.
        let again = try await dlq(["replay", "--all", "--fire-and-forget"])
        #expect(again.stdout.contains("replayed 1 message as fire-and-forget") && !again.stderr.contains("deadline has passed"), "\(again)")
        #expect(await eventually { ledger.count("g:5") == 1 })
        await system.shutdown()
    }
}
