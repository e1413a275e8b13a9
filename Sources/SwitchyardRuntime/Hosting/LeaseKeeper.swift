import Foundation
import Logging
import Metrics
import SwitchyardABI
import SwitchyardHost
import SwitchyardWire
import Synchronization

/// Keeps the leases of the deliveries one subscription holds — queued for a worker or running —
/// from running out, through the transport's `extend` (ABI 1.6): a delivery held for half its
/// lease is extended, with every other one due, in one call. So a slow handler, or a call waiting
/// behind busy ones, is not handed to another consumer meanwhile and does not count attempts
/// towards `max_deliveries` — the visibility timeout only has to outlast a host that stopped
/// (crashed, or cut off from its transport), not the slowest handler.
///
/// A call is extended for at most the route's `lease_renewal` after its delivery (five minutes
/// unless set), and a call with a deadline until its deadline at most: its caller has stopped
/// waiting. Past that, a handler still running (stuck, or slower than allowed) lets the call go
/// back to its transport when its lease runs out — the way Azure Service Bus's and MassTransit's
/// automatic lock renewal ends at a maximum duration.
///
/// Made only for a transport that can extend and whose deliveries have a time limit. Costs a lock
/// and an append per delivery taken and an atomic store per delivery let go; the extensions
/// happen only past half a lease, on one thread of the process's own (``LeaseKeeperThread``),
/// never on the cooperative pool — whose threads busy handlers may all hold.
final class LeaseKeeper: Sendable {
    private let transport: Transport
    /// The thread that runs it (its transport's).
    private let thread: LeaseKeeperThread
    /// Half the lease, in ns: a delivery is extended once held this long since it came or was
    /// last extended. 0 while the transport has not said how long its leases last (it failed to
    /// answer at the start: ``learnLease()`` asks again at each look until it does).
    private let halfLeaseNanos: Atomic<Int64>
    var halfLease: Int64 { halfLeaseNanos.load(ordering: .relaxed) }
    /// Set once the transport answered that its deliveries have no time limit after all: nothing
    /// is kept from then on.
    private let unlimited = Atomic<Bool>(false)
    /// How long after its delivery a delivery is extended at most (ns).
    private let renewal: Int64
    /// What is held, in the order taken, with what was let go since the last look (the keeper
    /// drops those then, or when the list has doubled: letting go is one atomic store, not a
    /// lookup, and nothing is hashed per call).
    private struct Held {
        var list: [Inbound] = []
        /// The list's length at which it is next compacted.
        var compactAt = 1024
    }
    private let held = Guarded(Held())
    private let channel: String
    private let logger: Logger
    /// `switchyard_leases_extended_total` and `switchyard_lease_extension_failures_total`, by
    /// transport: deliveries extended, and extensions that failed (other than for a delivery the
    /// transport no longer had).
    private let extendedCount: Counter
    private let failedCount: Counter
    /// Whether the last extension failed for another reason than the transport no longer knowing
    /// the delivery (logged once until one succeeds).
    private let failing = Guarded(false)

    /// A keeper for `transport`'s deliveries on `channel`, extending each for at most
    /// `renewalNanos` after its delivery, started; nil when the transport cannot extend leases,
    /// its deliveries have no time limit, or `renewalNanos` is 0.
    /// A transport that cannot answer now (a plugin process restarting, a broker out of reach)
    /// gets a keeper all the same, which asks again at each look — every second — and extends
    /// what it holds from its first answer on.
    static func start(for transport: Transport, channel: String, renewalNanos: Int64, logger: Logger) -> LeaseKeeper? {
        guard renewalNanos > 0 else { return nil }
        var lease: Int64 = 0
        do throws(TransportError) {
            guard let known = try transport.client.leaseNanos(), known > 0 else { return nil }
            lease = known
        } catch {
            // `extend` absent answers nil above. An error that no retry clears (the plugin cannot
            // extend after all, or is closed) ends it here, as before; any other may pass.
            if Self.permanent(error) {
                logger.warning(
                    "cannot ask the transport how long its leases last; the leases of calls held here are not extended",
                    metadata: ["transport": "\(transport.name)", "channel": "\(channel)", "error": "\(error.message)"])
                return nil
            }
            logger.warning(
                "cannot ask the transport how long its leases last; asking again every second, and extending the leases of calls held here once it answers",
                metadata: ["transport": "\(transport.name)", "channel": "\(channel)", "error": "\(error.message)"])
        }
        let keeper = LeaseKeeper(
            transport: transport, thread: LeaseKeeperThread.of(transport), lease: lease, renewal: renewalNanos, channel: channel, logger: logger)
        keeper.thread.add(keeper)
        return keeper
    }

    private init(transport: Transport, thread: LeaseKeeperThread, lease: Int64, renewal: Int64, channel: String, logger: Logger) {
        self.transport = transport
        self.thread = thread
        halfLeaseNanos = Atomic(lease > 0 ? max(lease / 2, 1) : 0)
        self.renewal = renewal
        self.channel = channel
        self.logger = logger
        extendedCount = Counter(label: "switchyard_leases_extended_total", dimensions: [("transport", transport.name)])
        failedCount = Counter(label: "switchyard_lease_extension_failures_total", dimensions: [("transport", transport.name)])
    }

    /// Stops extending (the subscription ended): what is still held is left to its lease. Waits
    /// for an extension under way to end, so that no call reaches the transport once it returns
    /// (the transport may be closed next): call it off the cooperative pool.
    func stop() {
        thread.remove(self)
        held.withLock { $0.list.removeAll() }
    }

    /// How often the keeper looks: a quarter of the lease (so a delivery is extended between half
    /// and three quarters of it), within 5 ms and 1 s.
    /// Every second while the lease is not known yet.
    var intervalNanos: Int64 {
        let half = halfLease
        return half == 0 ? 1_000_000_000 : min(max(half / 2, 5_000_000), 1_000_000_000)
    }

    /// A delivery taken: kept from now until ``letGo(_:)``. (While the lease is not known, due at
    /// once: extended at the first look after the transport answers.)
    func hold(_ inbound: Inbound) {
        guard !unlimited.load(ordering: .relaxed) else { return }
        let now = coarseMonotonicNanoseconds()
        inbound.leaseTakenAt.store(now, ordering: .relaxed)
        inbound.leaseDue.store(now + halfLease, ordering: .relaxed)
        held.withLock { held in
            held.list.append(inbound)
            if held.list.count >= held.compactAt { Self.compact(&held) }
        }
    }

    /// Deliveries taken together (a batch), under one lock.
    func hold(_ batch: [Inbound]) {
        guard !batch.isEmpty, !unlimited.load(ordering: .relaxed) else { return }
        let now = coarseMonotonicNanoseconds()
        let due = now + halfLease
        for inbound in batch {
            inbound.leaseTakenAt.store(now, ordering: .relaxed)
            inbound.leaseDue.store(due, ordering: .relaxed)
        }
        held.withLock { held in
            held.list.append(contentsOf: batch)
            if held.list.count >= held.compactAt { Self.compact(&held) }
        }
    }

    /// Errors that asking again will not clear.
    private static func permanent(_ error: TransportError) -> Bool {
        [.unsupported, .invalidArgument, .closed].contains(error.code)
    }

    /// Asks the transport again how long its leases last (it could not say when the subscription
    /// began); true once known. Told "no time limit", the keeper stops keeping anything.
    private func learnLease() -> Bool {
        guard !unlimited.load(ordering: .relaxed) else { return false }
        let lease: Int64?
        do throws(TransportError) {
            lease = try transport.client.leaseNanos()
        } catch {
            guard Self.permanent(error) else { return false }  // said at the start; asked again at the next look
            unlimited.store(true, ordering: .relaxed)
            held.withLock { $0.list.removeAll() }
            logger.warning(
                "cannot ask the transport how long its leases last; no longer asking: the leases of calls held here are not extended",
                metadata: ["transport": "\(transport.name)", "channel": "\(channel)", "error": "\(error.message)"])
            return false
        }
        guard let lease, lease > 0 else {
            guard !unlimited.exchange(true, ordering: .relaxed) else { return false }  // another look said it
            held.withLock { $0.list.removeAll() }
            logger.info(
                "the transport answered: its deliveries have no time limit, so no lease is extended",
                metadata: ["transport": "\(transport.name)", "channel": "\(channel)"])
            return false
        }
        // Two looks may ask at once (the keeper's thread and another): one says it.
        guard halfLeaseNanos.compareExchange(expected: 0, desired: max(lease / 2, 1), ordering: .relaxed).exchanged else { return true }
        logger.info(
            "the transport said how long its leases last; extending the leases of calls held here from now on",
            metadata: ["transport": "\(transport.name)", "channel": "\(channel)", "lease_ms": "\(lease / 1_000_000)"])
        return true
    }

    /// A delivery settled, handed back or given up: no longer kept.
    func letGo(_ inbound: Inbound) {
        inbound.leaseLetGo.store(true, ordering: .releasing)
    }

    /// Drops what was let go; the next compaction comes when the list has doubled again.
    private static func compact(_ held: inout Held) {
        held.list.removeAll { $0.leaseLetGo.load(ordering: .acquiring) }
        held.compactAt = max(1024, held.list.count * 2)
    }

    /// How many deliveries are held now.
    var count: Int {
        held.withLock { held in
            Self.compact(&held)
            return held.list.count
        }
    }

    /// Extends every delivery due at `now` (coarse monotonic ns) whose renewal, and whose call's
    /// deadline, if it has one, have not ended (at `wallNow`); returns how many were extended.
    /// Blocks (the transport's call may commit or cross a socket).
    @discardableResult
    func extendDue(now: Int64 = coarseMonotonicNanoseconds(), wallNow: Int64 = WallClock.nowNanos()) -> Int {
        guard halfLease > 0 || learnLease() else { return 0 }
        let halfLease = halfLease
        let due = held.withLock { held -> [Inbound] in
            var due: [Inbound] = []
            held.list.removeAll { inbound in
                if inbound.leaseLetGo.load(ordering: .acquiring) { return true }
                guard inbound.leaseDue.load(ordering: .relaxed) <= now else { return false }
                let deadline = inbound.envelope.deadlineNanos
                if now - inbound.leaseTakenAt.load(ordering: .relaxed) >= renewal || (deadline > 0 && deadline <= wallNow) {
                    return true  // its renewal or its call's deadline is over: let it go
                }
                inbound.leaseDue.store(now + halfLease, ordering: .relaxed)
                due.append(inbound)
                return false
            }
            held.compactAt = max(1024, held.list.count * 2)
            return due
        }
        guard !due.isEmpty else { return 0 }
        let outcomes: [TransportError?]
        do throws(TransportError) {
            outcomes = try transport.client.extend(due.map(\.delivery))
        } catch {
            outcomes = due.map { _ in error }
        }
        var extended = 0
        var failed = 0
        var failure: TransportError?
        for index in due.indices {
            let inbound = due[index]
            guard index < outcomes.count, let outcome = outcomes[index] else {
                extended += 1
                continue
            }
            // Unknown to the transport (settled meanwhile, or its lease ran out before this look):
            // nothing more to keep. Anything else is due again at once: tried at the next look,
            // a quarter of a lease on, while the lease still runs.
            if outcome.code == .notFound {
                letGo(inbound)
            } else {
                inbound.leaseDue.store(now, ordering: .relaxed)
                failure = outcome
                failed += 1
            }
        }
        if extended > 0 { extendedCount.increment(by: extended) }
        if failed > 0 { failedCount.increment(by: failed) }
        let wasFailing = failing.withLock { failing in
            defer { failing = failure != nil }
            return failing
        }
        if let failure, !wasFailing {
            logger.warning(
                "cannot extend the leases of calls held here; they may be delivered again when their visibility timeout passes",
                metadata: ["transport": "\(transport.name)", "channel": "\(channel)", "error": "\(failure.message)"])
        } else if failure == nil && wasFailing {
            logger.info("extending leases again", metadata: ["transport": "\(transport.name)", "channel": "\(channel)"])
        }
        return extended
    }
}

/// The thread that runs the ``LeaseKeeper``s of one transport: one per transport, so that a
/// transport whose calls block (a database that stopped answering, a plugin process that hangs)
/// holds up only its own renewals. It sleeps on the monotonic clock until the soonest keeper's
/// next look (a keeper added wakes it), and ends when its last keeper is removed.
final class LeaseKeeperThread: @unchecked Sendable {
    // @unchecked: `keepers`, `running` and `started` are guarded by `condition`.
    private static let threads = Guarded<[ObjectIdentifier: LeaseKeeperThread]>([:])

    /// The thread of `transport`'s keepers.
    static func of(_ transport: Transport) -> LeaseKeeperThread {
        threads.withLock { threads in
            if let known = threads[ObjectIdentifier(transport)] { return known }
            let made = LeaseKeeperThread(transport: ObjectIdentifier(transport))
            threads[ObjectIdentifier(transport)] = made
            return made
        }
    }

    private let transport: ObjectIdentifier
    private let condition = NSCondition()
    private let wake = DispatchSemaphore(value: 0)
    private var keepers: [ObjectIdentifier: LeaseKeeper] = [:]
    /// The keeper whose extensions run now, if any.
    private var running: ObjectIdentifier?
    private var started = false

    private init(transport: ObjectIdentifier) {
        self.transport = transport
    }

    func add(_ keeper: LeaseKeeper) {
        condition.lock()
        keepers[ObjectIdentifier(keeper)] = keeper
        if !started {
            started = true
            let thread = Thread(named: "switchyard-leases") { [self] in run() }
            thread.start()
        }
        condition.unlock()
        wake.signal()
    }

    /// Removes `keeper`, after its extensions under way (if any) have ended.
    func remove(_ keeper: LeaseKeeper) {
        let id = ObjectIdentifier(keeper)
        condition.lock()
        keepers.removeValue(forKey: id)
        while running == id { condition.wait() }
        condition.unlock()
        wake.signal()
    }

    private func run() {
        while true {
            // The last keeper left: this thread ends, and the transport's entry goes (a keeper added
            // later starts another). Under both locks, so an `add` either came first or sees it.
            let ended = Self.threads.withLock { threads in
                condition.lock()
                defer { condition.unlock() }
                guard keepers.isEmpty else { return false }
                started = false
                if threads[transport] === self { threads.removeValue(forKey: transport) }
                return true
            }
            if ended { return }
            condition.lock()
            let interval = keepers.values.map(\.intervalNanos).min() ?? 1_000_000_000
            condition.unlock()
            _ = wake.wait(timeout: .now() + .nanoseconds(Int(interval)))
            condition.lock()
            let ids = Array(keepers.keys)
            condition.unlock()
            for id in ids {
                condition.lock()
                guard let keeper = keepers[id] else {
                    condition.unlock()
                    continue
                }
                running = id
                condition.unlock()
                keeper.extendDue()
                condition.lock()
                running = nil
                condition.broadcast()
                condition.unlock()
            }
        }
    }
}
