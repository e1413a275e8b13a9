import Distributed
import Foundation
import Logging
import SwitchyardABI
import SwitchyardHost
import SwitchyardPluginKit
import SwitchyardTestSupport
import SwitchyardWire
import Synchronization
import Testing

@testable import SwitchyardRuntime

@Resolvable
protocol SlowWork: DistributedActor where ActorSystem == SwitchyardActorSystem {
    /// Takes `millis` to answer `id` on its first delivery, no time on a later one.
    distributed func work(_ id: Int, millis: Int) async throws -> Int
}

/// Records each run as (id, attempt) and takes as long as asked the first time.
distributed actor SlowWorker: SlowWork {
    typealias ActorSystem = SwitchyardActorSystem
    let runs: Guarded<[(id: Int, attempt: Int)]>

    init(actorSystem: ActorSystem, runs: Guarded<[(id: Int, attempt: Int)]>) {
        self.actorSystem = actorSystem
        self.runs = runs
    }

    distributed func work(_ id: Int, millis: Int) async throws -> Int {
        let attempt = Switchyard.currentCall?.attempt ?? 0
        runs.withLock { $0.append((id, attempt)) }
        // Slow on the first delivery only: a later one answers at once.
        if attempt <= 1 { try await Task.sleep(for: .milliseconds(millis)) }
        return id
    }
}

/// Hosts a ``SlowWorker`` as "slow" on `system`: what it ran, and a reference to it.
func hostSlowWorker(on system: SwitchyardActorSystem) throws -> (Guarded<[(id: Int, attempt: Int)]>, any SlowWork) {
    let runs = Guarded<[(id: Int, attempt: Int)]>([])
    try system.host("slow", as: $SlowWork.self) { SlowWorker(actorSystem: $0, runs: runs) }
    return (runs, try $SlowWork.resolve(id: "slow", using: system))
}

/// Leases of deliveries the host holds are extended (ABI 1.6 `extend`): a visibility timeout
/// shorter than a handler, and than the wait of calls queued behind it, delivers nothing twice.
@Suite("Lease renewal")
struct LeaseTests {
    @Test(
        "calls that run and wait longer than the visibility timeout keep their leases: each runs once, on its first delivery",
        arguments: ["memory", "sqlite", "process"])
    func slowCallsKeepTheirLeases(_ kind: String) async throws {
        let directory = try TemporaryDirectory()
        let path = kind == "sqlite" ? ", path: \"\(directory.file("work.db"))\"" : ""
        let isolation = kind == "process" ? ", isolation: { mode: process, host: \"\(BuildProducts.switchyard)\" }" : ""
        // A 2 s lease; three calls of 2.4 s each, one at a time: the last waits 4.8 s. (The keeper
        // extends at about half a lease, so a lease of 1 s left it 250 ms of slack, which a loaded
        // machine could eat.)
        let system = try await makeSystem(
            """
            transports:
              work: { plugin: queue, config: { visibility_timeout: 2s\(path) }\(isolation) }
            routes:
              SlowWork.*: { transport: work, concurrency: 1, deadline: 30s }
            """)
        let (runs, slow) = try hostSlowWorker(on: system)
        let answers = try await withThrowingTaskGroup(of: Int.self) { group in
            for id in 1...3 { group.addTask { try await slow.work(id, millis: 2400) } }
            return try await group.reduce(into: [Int]()) { $0.append($1) }
        }
        #expect(answers.sorted() == [1, 2, 3])
        // Past another lease: nothing comes again.
        try await Task.sleep(for: .milliseconds(2200))
        let seen = runs.withLock { $0 }
        #expect(seen.map(\.id).sorted() == [1, 2, 3], "runs: \(seen)")
        #expect(seen.allSatisfy { $0.attempt == 1 }, "runs: \(seen)")
        await system.shutdown()
    }

    @Test("a call held past its route's lease_renewal is no longer extended: its lease runs out and it is delivered again")
    func renewalEnds() async throws {
        let system = try await makeSystem(
            """
            transports:
              work: { plugin: queue, config: { visibility_timeout: 600ms } }
            routes:
              SlowWork.*: { transport: work, deadline: 30s, lease_renewal: 1s }
            """)
        let (runs, slow) = try hostSlowWorker(on: system)
        // Extended until 1 s after delivery, then its 600 ms lease runs out while it still runs:
        // the second delivery runs it again and answers at once (the first run's reply, with its
        // acknowledgement, fails: its delivery is gone).
        #expect(try await slow.work(7, millis: 3000) == 7)
        // The runs are recorded as handlers start, and a loaded machine may start the first
        // delivery's handler after the second's: compare attempts, not their order.
        let seen = runs.withLock { $0 }
        let attempts = Set(seen.map(\.attempt))
        #expect(seen.allSatisfy { $0.id == 7 } && attempts.isSuperset(of: [1, 2]), "runs: \(seen)")
        #expect(system.overview().routes.first?.leaseRenewalMs == 1000, "operators see it (/api/routes)")
        await system.shutdown()
    }

    @Test("the keeper extends only what has been held half a lease, never past a call's deadline, and forgets what the transport no longer knows")
    func keeperExtendsWhatIsDue() async throws {
        let system = try await makeSystem(
            """
            transports:
              work: { plugin: queue, config: { visibility_timeout: 10s } }
            routes:
              SlowWork.*: { transport: work }
            """)
        let transport = try #require(system.transports?["work"])
        #expect(LeaseKeeper.start(for: transport, channel: "slow", renewalNanos: 0, logger: system.logger) == nil, "lease_renewal: 0 extends nothing")
        let keeper = try #require(LeaseKeeper.start(for: transport, channel: "slow", renewalNanos: 300_000_000_000, logger: system.logger))
        defer { keeper.stop() }
        #expect(keeper.intervalNanos == 1_000_000_000, "a quarter of a 10 s lease, at most 1 s")
        let wallNow = WallClock.nowNanos()
        func taken(_ delivery: DeliveryID, deadline: Int64) -> Inbound {
            let envelope = Envelope(target: .init(name: "SlowWork.work(_:millis:)", identifier: ""), arguments: [], deadlineNanos: deadline)
            return Inbound(delivery: delivery, transport: transport, envelope: envelope, form: .compact, attempt: 1, group: "", cost: nil, leases: keeper)
        }
        let held = [taken(1, deadline: 0), taken(2, deadline: wallNow + 60_000_000_000), taken(3, deadline: wallNow + 1_000_000_000), taken(4, deadline: 0)]
        keeper.hold(Array(held[0..<3]))
        keeper.hold(held[3])
        keeper.letGo(held[3])
        // Not due yet (held less than half a lease); the one let go is dropped.
        #expect(keeper.extendDue() == 0)
        #expect(keeper.count == 3)
        // Due, 6 s on: the third's deadline has passed, so it is let go without a call; the
        // transport knows neither of the others, so they are let go too.
        #expect(keeper.extendDue(now: coarseMonotonicNanoseconds() + 6_000_000_000, wallNow: wallNow + 6_000_000_000) == 0)
        #expect(keeper.count == 0)
        #expect(held[0].leaseLetGo.load(ordering: .relaxed) && held[1].leaseLetGo.load(ordering: .relaxed))
        await system.shutdown()
    }

    @Test("a transport that cannot say how long its leases last at the start is asked again; what was held meanwhile is extended from its answer on")
    func keeperLearnsTheLeaseLater() async throws {
        let (lease, transport) = try UnsureLease.transport()
        defer { transport.close() }
        let keeper = try #require(
            LeaseKeeper.start(for: transport, channel: "slow", renewalNanos: 300_000_000_000, logger: Logger(label: "test")),
            "a keeper all the same, which asks again")
        defer { keeper.stop() }
        #expect(keeper.halfLease == 0 && keeper.intervalNanos == 1_000_000_000, "asks every second until it knows")
        let envelope = Envelope(target: .init(name: "SlowWork.work(_:millis:)", identifier: ""), arguments: [], deadlineNanos: 0)
        let inbound = Inbound(delivery: 1, transport: transport, envelope: envelope, form: .compact, attempt: 1, group: "", cost: nil, leases: keeper)
        keeper.hold(inbound)
        #expect(keeper.extendDue() == 0 && keeper.halfLease == 0 && keeper.count == 1, "still no answer: nothing extended, nothing learnt")
        lease.answer.withLock { $0 = 10_000_000_000 }
        // Known now: the delivery held meanwhile is due at once, and extended — by this look or
        // by the keeper's thread, whichever came first, once.
        keeper.extendDue()
        #expect(keeper.halfLease == 5_000_000_000)
        #expect(await eventually { lease.extended.withLock { $0 } == [1] })
        #expect(keeper.extendDue() == 0, "not due again for half a lease")
        #expect(keeper.count == 1 && !inbound.leaseLetGo.load(ordering: .relaxed))
    }

    @Test("a transport that answers later that its deliveries have no time limit: nothing is kept")
    func keeperLearnsThereIsNoLimit() async throws {
        let (lease, transport) = try UnsureLease.transport()
        defer { transport.close() }
        let keeper = try #require(LeaseKeeper.start(for: transport, channel: "slow", renewalNanos: 300_000_000_000, logger: Logger(label: "test")))
        defer { keeper.stop() }
        let envelope = Envelope(target: .init(name: "SlowWork.work(_:millis:)", identifier: ""), arguments: [], deadlineNanos: 0)
        keeper.hold(Inbound(delivery: 1, transport: transport, envelope: envelope, form: .compact, attempt: 1, group: "", cost: nil, leases: keeper))
        lease.answer.withLock { $0 = 0 }
        #expect(keeper.extendDue() == 0)
        #expect(await eventually { keeper.count == 0 }, "told by this look or the keeper's thread")
        keeper.hold(Inbound(delivery: 2, transport: transport, envelope: envelope, form: .compact, attempt: 1, group: "", cost: nil, leases: keeper))
        #expect(keeper.count == 0 && lease.extended.withLock { $0 }.isEmpty)
    }
}

/// A transport that cannot say how long its leases last until told (`answer`: nil fails), and
/// extends whatever it is asked to, recording it.
final class UnsureLease: TransportInstance {
    /// One, presented as a transport that extends leases.
    static func transport() throws -> (UnsureLease, Transport) {
        let lease = UnsureLease()
        let info = PluginInfo(name: "queue", version: "1.0.0", description: "", capabilities: [.queue], extendsLeases: true)
        return (lease, Transport(name: "unsure", plugin: try BuildProducts.plugin("queue"), presenting: lease, info: info))
    }

    let answer = Guarded<Int64?>(nil)
    let extended = Guarded<[DeliveryID]>([])
    func publish(_ message: MessageView) throws(TransportError) {}
    func subscribe(_ options: SubscribeOptions, _ subscriber: Subscriber) throws(TransportError) -> SubscriptionID { 1 }
    func unsubscribe(_ id: SubscriptionID) throws(TransportError) {}
    func settle(_ delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {}
    var leaseNanos: Int64 {
        get throws(TransportError) {
            guard let known = answer.withLock({ $0 }) else { throw TransportError(.unavailable, "the broker is out of reach") }
            return known
        }
    }
    func extend(_ deliveries: UnsafeBufferPointer<DeliveryID>) -> [TransportError?] {
        extended.withLock { $0.append(contentsOf: deliveries) }
        return deliveries.map { _ in nil }
    }
}
