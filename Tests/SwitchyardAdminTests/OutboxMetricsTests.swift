import Distributed
import Foundation
import SwitchyardABI
import SwitchyardAdmin
import SwitchyardConfig
import SwitchyardRuntime
import SwitchyardTestSupport
import Testing

/// A fire-and-forget service for calls made inside `system.transaction`.
@Resolvable
protocol Tally: DistributedActor where ActorSystem == SwitchyardActorSystem {
    distributed func add(_ value: Int) async throws
}

distributed actor TallyService: Tally {
    typealias ActorSystem = SwitchyardActorSystem
    let seen: Guarded<[Int]>

    init(actorSystem: ActorSystem, seen: Guarded<[Int]>) {
        self.actorSystem = actorSystem
        self.seen = seen
    }

    distributed func add(_ value: Int) { seen.withLock { $0.append(value) } }
}

/// The outbox's metrics as transactions.md names them, read where an operator reads them: the
/// admin endpoint's `/metrics`, which is the process's swift-metrics backend.
@Suite("Outbox metrics")
struct OutboxMetricsTests {
    @Test("/metrics counts what an outbox relayed and the publishes its transport refused, labelled with the outbox's name")
    func relayedAndFailed() async throws {
        let directory = try TemporaryDirectory()
        // The registry is the test process's: an outbox name no other test uses (they use "shop").
        AdminMetrics.bootstrap()  // before the system: it picks its metrics backend when created
        let yaml = """
            transports:
              work: { plugin: queue, config: { max_message_bytes: 2000 } }
            outboxes:
              tallies: { path: "\(directory.file("shop.db"))" }
            routes:
              Tally.*: { transport: work, mode: fire-and-forget }
            admin:
              listen: 127.0.0.1:0
            """
        let config = try SwitchyardConfig.parse(yaml: yaml, baseDirectory: directory.path, environment: [:])
        let system = try await offPool { try SwitchyardActorSystem(config: config, pluginDirectories: [BuildProducts.directory]) }
        let seen = Guarded<[Int]>([])
        try system.host("tally", as: $Tally.self) { TallyService(actorSystem: $0, seen: seen) }
        let admin = try AdminServer(system: system)
        let serving = Task { try await admin.run() }
        let port = try await admin.waitUntilListening()
        let tally = try $Tally.resolve(id: "tally", using: system)

        for value in 1...3 {
            try await system.transaction(on: "tallies") { _ in try await tally.add(value) }
        }
        #expect(await eventually { seen.withLock { $0.count } == 3 })
        // One the transport refuses (its header makes it larger than max_message_bytes): the relay
        // counts the failure and keeps the row.
        try await system.transaction(on: "tallies") { _ in
            try await Switchyard.withCallOptions(CallOptions(headers: ["pad": String(repeating: "x", count: 4000)])) { try await tally.add(4) }
        }

        func metric(_ name: String) async throws -> Double {
            let result = try await run("/usr/bin/curl", ["-s", "--max-time", "60", "http://127.0.0.1:\(port)/metrics"])
            let line = result.stdout.split(separator: "\n").first { $0.hasPrefix("\(name){") && $0.contains(#"outbox="tallies""#) }
            return line.flatMap { Double(String($0.split(separator: " ").last ?? "")) } ?? 0
        }
        var relayed = 0.0
        var failed = 0.0
        for _ in 0..<50 {
            relayed = try await metric("switchyard_outbox_relayed_total")
            failed = try await metric("switchyard_outbox_publish_failures_total")
            if relayed >= 3 && failed >= 1 { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(relayed == 3, "switchyard_outbox_relayed_total{outbox=\"tallies\"}")
        #expect(failed >= 1, "switchyard_outbox_publish_failures_total{outbox=\"tallies\"}")
        #expect(seen.withLock { $0.sorted() } == [1, 2, 3])  // handled concurrently: in any order

        await system.shutdown(deadline: .seconds(5))
        serving.cancel()
        _ = try? await serving.value
    }
}
