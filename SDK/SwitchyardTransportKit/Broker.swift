import Foundation
import SwitchyardABI
import SwitchyardPluginKit
import Synchronization

/// How a ``Broker`` behaves: the knobs queue-like plugins expose as config.
public struct BrokerOptions: Sendable {
    /// Most unsettled deliveries per subscriber when `subscribe` does not say.
    public var defaultMaxInFlight: UInt32 = 256
    /// An unsettled delivery is redelivered after this long, when `subscribe` does not say.
    public var visibilityTimeoutNanos: Int64 = 30_000_000_000
    /// Most messages stored (ready + in flight); 0: unbounded.
    public var capacity: Int = 1_000_000
    /// When full, how long `publish` waits for room before failing with `.full`; 0: fail at once.
    public var fullWaitNanos: Int64 = 0
    /// Largest message, most headers and header bytes accepted (`max_message_bytes`,
    /// `max_headers`, `max_header_bytes`).
    public var limits = MessageLimits()
    /// Dead-lettered messages go to `<channel><deadLetterSuffix>`.
    public var deadLetterSuffix: String = DeadLetter.defaultSuffix
    /// How often expired messages that nobody leases (a channel nobody reads) are looked for and
    /// dropped or dead-lettered. Expired messages are never delivered in any case.
    public var expirySweepNanos: Int64 = 5_000_000_000

    /// The defaults listed on each property.
    public init() {}
}

/// The dispatching half of a queue-like transport, shared by plugins through the SDK: it keeps the
/// subscribers, leases ready messages from a ``MessageStore`` and delivers them round robin within
/// each group, up to each subscriber's prefetch, on one dispatcher thread per instance (in one
/// `deliver_batch` call per subscriber where the subscriber takes batches); it settles deliveries,
/// expires unsettled ones after the visibility timeout, never delivers an expired message (it
/// drops or dead-letters it, as the message says), applies capacity, and drains.
///
/// A plugin is a ``Broker`` over a store (memory or SQLite), fan-out or not, plus its config.
public final class Broker: @unchecked Sendable {
    // @unchecked: all mutable state is guarded by `condition`.

    /// Where the messages are.
    public let store: MessageStore
    /// The broker's knobs.
    public let options: BrokerOptions
    /// Whether subscriber groups each get their own copy (topic) or all subscribers share (queue).
    public let fanOut: Bool
    private let host: HostServices
    /// Its place among its transport's shards: the ids it hands out carry it.
    private let shard: BrokerShard
    /// The stores whose messages count against `capacity` with this one's (its shards'), if any.
    private let capacityShared: SharedCapacity?
    private let reporter: StatsReporter
    private let condition = AdaptiveCondition()

    private final class Member {
        let id: SubscriptionID
        let key: GroupKey
        let subscriber: Subscriber
        let maxInFlight: Int
        let visibilityTimeout: Int64
        /// Asked for deliveries settled as they are handed over (nothing in flight, ever).
        let settleOnDelivery: Bool
        var inFlight = 0
        var delivering = 0
        var removed = false
        /// What the pass under way hands this member: the pass holder only (``passRunning``), kept from
        /// pass to pass and emptied after each, so that a pass allocates no arrays for them (a
        /// pass often carries one message: its three arrays were half the allocations of the
        /// queue's one-message path). Unchecked: one thread, not a check at run time, keeps
        /// accesses apart.
        @exclusivity(unchecked) var handOverDeliveries: [DeliveryID] = []
        @exclusivity(unchecked) var handOverMessages: [Message] = []
        init(id: SubscriptionID, key: GroupKey, subscriber: Subscriber, maxInFlight: Int, visibilityTimeout: Int64, settleOnDelivery: Bool) {
            self.id = id
            self.key = key
            self.subscriber = subscriber
            self.maxInFlight = maxInFlight
            self.visibilityTimeout = visibilityTimeout
            self.settleOnDelivery = settleOnDelivery
        }
    }

    private struct InFlight {
        let ref: LeaseRef
        /// The subscriber it went to (whose channel it is on).
        let member: Member
        let leaseUntil: Int64
    }

    // Guarded by `condition`.
    private var groups: [GroupKey: [Member]] = [:]
    private var members: [SubscriptionID: Member] = [:]
    /// Unsettled deliveries by id (ids grow by one per delivery). Unchecked: `condition`, not a
    /// check at run time, keeps accesses apart (the check was one call into the runtime per
    /// delivery and one per settlement, measured with callgrind).
    @exclusivity(unchecked) private var inFlight = SequentialTable<InFlight>()
    private var nextSubscription: SubscriptionID = 0
    private var nextDelivery: DeliveryID = 0
    private var workPending = false
    /// How often work was marked (``markWork()``): a pass that drops the lock compares it before
    /// clearing `workPending`, so a publish made meanwhile is never forgotten.
    private var workMarks: UInt64 = 0
    private var dispatcherWaiting = false  // signal only when it sleeps: a signal is a syscall
    /// Whether a pass is under way (under the lock): one at a time, the dispatcher's or one a
    /// publisher runs itself (``markWorkOrPass()``).
    private var passRunning = false
    /// The dispatcher waits for a publisher's pass to end (under the lock).
    private var dispatcherWantsTurn = false
    /// While the dispatcher sleeps: the wall-clock time it wakes up at by itself (`.max`: only a
    /// signal wakes it). Under the lock.
    private var dispatcherSleepsUntil = Int64.max
    /// Whether a publisher that finds the dispatcher asleep runs the pass itself: on an in-memory
    /// store only, where a pass takes microseconds (see ``markWorkOrPass()``).
    private let inlinePasses: Bool
    /// What the pass under way works with, whoever runs it (``passRunning``): kept from pass to
    /// pass and emptied after each, so that a pass allocates no arrays. Unchecked: the turn, not a
    /// check at run time, keeps accesses apart.
    @exclusivity(unchecked) private var passPlan: [Planned] = []
    /// Emptied as soon as a pass has delivered them, so no message is held until the next.
    @exclusivity(unchecked) private var passBatches: [(Planned, [LeasedMessage])] = []
    @exclusivity(unchecked) private var passHandOvers: [Member] = []
    /// `workPending`, readable without the lock by the lingering dispatcher (a hint: the
    /// dispatcher re-checks `workPending` under the lock before acting on it).
    private let workHint = Atomic<Bool>(false)
    private var waiters = 0  // threads other than the dispatcher waiting on `condition`
    /// Publishes without blocking (``publish(_:done:)``) that wait off their callers' threads
    /// (``offCallersThread(_:done:)``; under the lock): shutdown waits until each has been answered.
    private var publishesOffThread = 0
    /// Where they run: a few threads, not one per waiting publish (a full transport with a
    /// `full_wait` and thousands of publishing tasks would otherwise start thousands).
    private let blockingCalls = BlockingCalls(name: "switchyard-pub-wait", maxThreads: 4)
    private var nextLocalExpiry = Int64.max
    private var draining = false
    private var stopped = false
    /// `draining || stopped`, readable without the lock: a publish checks it, and the room left,
    /// without the lock, and takes it only to wait for room or after storing.
    private let closing = Atomic<Bool>(false)
    private var dispatcherDone = false
    private var stats = TransportStats()
    /// When the dispatcher next looks for expired messages nobody leased (dispatcher thread only).
    private var nextExpirySweep: Int64 = 0
    /// The time the last pass leased at (under the lock): the dispatcher asks the store what
    /// comes due after it, not after its own later reading of the clock — a retry or a lease
    /// expiry due in between was neither leased by that pass nor would be scheduled.
    private var lastPassStamp: Int64 = .max
    /// Where the dispatcher sleeps when the store tells other processes' changes through a
    /// descriptor (``MessageStore/claimChangeDescriptor()``): in `poll`, on that descriptor and on a pipe
    /// this process's wake-ups write to, rather than on `condition` with a thread of the store's
    /// waking it (one thread switch fewer between another process's commit and its delivery).
    /// All -1 otherwise.
    private var storeChanges: Int32  // dispatcher thread only, once started
    /// Whether the sleeping dispatcher watches ``storeChanges`` (under the lock). Only while
    /// something here waits for what another process commits: a group to deliver to, or a
    /// publisher waiting for room (``waitForRoom(_:until:)`` wakes a dispatcher that does not
    /// watch, so that it does). The descriptor also turns readable at this process's own
    /// commits, so a process that only publishes had its dispatcher woken by nearly every
    /// commit, for nothing.
    private var dispatcherWatchesOthers = false
    private let wakeupPipe: WakePipe

    /// Starts a broker and its dispatcher thread; `shard` places it among its transport's shards
    /// (``ShardedBroker``), and `gauges` adds its depth and in-flight gauges to theirs.
    public init(
        store: MessageStore, fanOut: Bool, options: BrokerOptions, host: HostServices, name: String,
        shard: BrokerShard = .only, gauges: GaugeSum? = nil, capacityShared: SharedCapacity? = nil
    ) {
        self.capacityShared = capacityShared
        self.store = store
        self.fanOut = fanOut
        self.options = options
        self.host = host
        self.shard = shard
        inlinePasses = store is MemoryStore
        reporter = StatsReporter(host: host, gauges: gauges, slot: shard.index)
        host.count("expired", 0)  // the series exists from the start, as the reporter's counters do
        // The pipe first: a store whose descriptor is claimed no longer tells its handler of those
        // changes, so it is claimed only once the dispatcher can wait on it.
        var pipe = WakePipe()
        var changes: Int32 = -1
        if pipe.reader >= 0 {
            changes = store.claimChangeDescriptor()
            if changes < 0 {
                pipe.close()
                pipe = WakePipe(reader: -1, writer: -1)
            }
        }
        wakeupPipe = pipe
        storeChanges = changes
        store.setChangeHandler { [weak self] in self?.wake() }
        let thread = Thread(named: shard.bits == 0 ? "switchyard-\(name)" : "switchyard-\(name)-\(shard.index)") { [self] in dispatchLoop() }
        thread.start()
    }

    deinit { wakeupPipe.close() }

    private func now() -> Int64 { host.nowNanos() }

    /// Tells the dispatcher to look for work (a store changed behind its back).
    public func wake() {
        condition.lock()
        markWork()
        // Another process's acknowledgements may have made room for a publisher waiting here,
        // and so may what was just put back (``unsubscribe(_:)``: a release lowers the counts
        // read without the lock only after it raised them).
        wakeWaiters()
        condition.unlock()
    }

    /// Records that there is work; wakes the dispatcher if it sleeps. Call with the lock held.
    private func markWork() {
        // Work already pending while the dispatcher sleeps has woken it already (it sleeps only
        // with none pending, and whoever marks work while it sleeps wakes it): the writer's
        // callbacks for one commit's many publishes wake it once, not once each.
        let woken = workPending && dispatcherWaiting
        workPending = true
        workMarks &+= 1
        workHint.store(true, ordering: .relaxed)
        if dispatcherWaiting && !woken { wakeDispatcher() }
    }

    /// Records that there is work, like ``markWork()``; but when the dispatcher sleeps and the
    /// store is in memory, runs the pass here, on the publisher's thread, instead of waking it.
    /// Call with the lock held; it is dropped while the pass leases and delivers.
    ///
    /// A message published while the dispatcher sleeps was otherwise a futex wake to the
    /// dispatcher and a thread switch before its delivery, and on a machine with few cores the
    /// dispatcher's thread competes for them with the publisher and the subscriber's. Delivering
    /// inside `publish` is allowed by the ABI (the subscriber never blocks in deliver and may
    /// publish or settle from there). At most two passes run here — the second finds whether more
    /// came meanwhile — and the dispatcher is woken for whatever is left; while it is awake,
    /// publishes leave the work to it as before.
    private func markWorkOrPass() {
        guard inlinePasses, dispatcherWaiting, !passRunning, !stopped, !draining, takeInlineCredit() else { return markWork() }
        workPending = true
        workMarks &+= 1
        passRunning = true
        var passes = 0
        while workPending && passes < 2 && !stopped && !draining {
            _ = runPass()
            passes += 1
        }
        passRunning = false
        // The dispatcher planned its sleep without what this pass did. Woken for what is left;
        // for a lease given out here that expires before it would look next (a delivery nobody
        // settles comes back at its visibility timeout, not at the next periodic sweep); and when
        // it would not report the counters this changed within a metrics interval (then it looks
        // again every interval while they change: one wake-up per interval at most).
        if dispatcherWaiting
            && (workPending || nextLocalExpiry < dispatcherSleepsUntil
                || dispatcherSleepsUntil > wallClockNanoseconds() + reporter.interval)
        {
            wakeDispatcher()
        }
        if dispatcherWantsTurn || waiters > 0 { condition.broadcast() }
        capacityShared?.roomMayHaveChanged()  // the passes took messages from the store
    }

    /// Records that messages were stored here, for ``append(admitted:)``: work for the dispatcher
    /// only where a group in this process could take them. With none (a process that only
    /// publishes, its consumers elsewhere), a sleeping dispatcher is left asleep: the store keeps
    /// the messages for whoever subscribes (``subscribe(_:_:)`` marks work itself), and a wake-up
    /// would only find nothing to deliver — a pipe write on the store's thread for every commit,
    /// before it answered the commit's publishers, and a thread competing for the cores with
    /// them. It is still woken when it would not report the counters this changed within a
    /// metrics interval (then at most once an interval). Call with the lock held.
    private func markPublished() {
        if groups.isEmpty && (!dispatcherWaiting || dispatcherSleepsUntil <= wallClockNanoseconds() + reporter.interval) {
            return
        }
        markWorkOrPass()
    }

    /// Whether a publisher may run a pass itself now: at most ``inlinePassesPerWindow`` in
    /// ``inlineWindowNanos``. A burst of publishes then wakes the dispatcher after its first few,
    /// and the dispatcher, awake and lingering, leases the rest in batches (a publisher running a
    /// pass per message halved the raw queue's throughput); occasional calls — a request and its
    /// reply, milliseconds apart — all run here. Call with the lock held.
    private func takeInlineCredit() -> Bool {
        let stamp = monotonicNanoseconds()
        if stamp - inlineWindowStart >= Self.inlineWindowNanos {
            inlineWindowStart = stamp
            inlineCredits = Self.inlinePassesPerWindow
        }
        guard inlineCredits > 0 else { return false }
        inlineCredits -= 1
        return true
    }
    private var inlineWindowStart: Int64 = 0
    private var inlineCredits = 0
    static let inlineWindowNanos: Int64 = 100_000
    static let inlinePassesPerWindow = 4

    /// Wakes the dispatcher from its sleep (or its next one). Call with the lock held.
    private func wakeDispatcher() {
        guard wakeupPipe.writer >= 0 else { return condition.broadcast() }
        wakeupPipe.wake()
    }

    /// The dispatcher's sleep with a store descriptor: until the wake-up pipe is readable, another
    /// process changed the store (when `watchingOthers`), or `deadline` (wall clock; nil: none).
    /// Whether another process changed the store. The descriptor also turns readable at this
    /// process's own commits: those are read and slept through (the dispatcher was told of them
    /// when they returned).
    private func sleepOnDescriptors(until deadline: Int64?, watchingOthers: Bool) -> Bool {
        while true {
            var timeout: Int32 = -1
            if let deadline {
                let (remaining, overflow) = deadline.subtractingReportingOverflow(wallClockNanoseconds())
                // Rounded up: a wake-up before the deadline would only find nothing to do yet.
                timeout = overflow || remaining <= 0 ? 0 : Int32(clamping: remaining / 1_000_000 + 1)
            }
            var descriptors = [
                pollfd(fd: wakeupPipe.reader, events: Int16(POLLIN), revents: 0), pollfd(fd: storeChanges, events: Int16(POLLIN), revents: 0),
            ]
            guard poll(&descriptors, watchingOthers ? 2 : 1, timeout) > 0 else { return false }
            if descriptors[1].revents & Int16(POLLERR | POLLNVAL) != 0 {
                // Never expected (the store keeps it open while it lives); polled again, it would
                // spin. Other processes' commits are then heard through the store's change handler.
                host.log(.error, "the store's change descriptor failed; other processes' commits are noticed up to 20 ms late")
                storeChanges = -1
                return true
            }
            let changed = descriptors[1].revents != 0 && store.takeChanges()
            if descriptors[0].revents != 0 {
                var bytes = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
                while withUnsafeMutableBytes(of: &bytes, { read(wakeupPipe.reader, $0.baseAddress, $0.count) }) > 0 {}
                return changed
            }
            if changed { return true }
        }
    }

    private func key(_ channel: String, _ group: String) -> GroupKey {
        GroupKey(channel: channel, group: fanOut && !channel.hasSuffix(options.deadLetterSuffix) ? group : "")
    }

    // MARK: Publishing

    /// Stores one message (see `TransportPlugin.publish`).
    public func publish(_ view: MessageView) throws(TransportError) {
        try publish([view.copy()])
    }

    /// `batch` as the store keeps it: checked against the limits, the attempt turned into
    /// "deliveries so far", stamped with the time it was accepted.
    private func accepted(_ batch: consuming [Message]) throws(TransportError) -> [Message] {
        var messages = batch  // moved, not copied: the caller hands its array over
        let stamp = now()
        let limits = options.limits
        // Through the buffer, in place: the array's subscript copied each message out (measured
        // with callgrind).
        try messages.withUnsafeMutableBufferPointer { (messages) throws(TransportError) in
            for index in messages.indices {
                if let violation = limits.violation(of: messages[index]) { throw TransportError(.tooLarge, violation) }
                messages[index].attempt = messages[index].attempt > 0 ? messages[index].attempt - 1 : 0
                messages[index].enqueuedAtNanos = stamp
            }
        }
        return messages
    }

    /// Stores messages as one batch (one commit on durable stores).
    public func publish(_ batch: consuming [Message]) throws(TransportError) {
        let count = batch.count
        try append(admitted: admit(batch, room: count))
    }

    /// Stores messages as one batch without waiting for the store (ABI 1.7 `publish_async`):
    /// `done` is called exactly once, with nil once they are stored or with the error that stored
    /// none — on the store's thread (a durable store's syncer, after the commit is synced), or on
    /// this one when the store answers at once. A batch that must wait for room (a bounded
    /// transport that is full, with a `full_wait`) waits on one of the broker's few threads for
    /// that (``BlockingCalls``), not on the caller's.
    public func publish(_ batch: consuming [Message], done: @escaping @Sendable (TransportError?) -> Void) {
        let messages: [Message]
        do throws(TransportError) {
            messages = try accepted(batch)
        } catch {
            return done(error)
        }
        if closing.load(ordering: .acquiring) { return done(Self.drainingError) }
        switch roomNow(for: messages.count) {
        case .some(true):
            append(admitted: messages, done: done)
        case .some(false) where options.fullWaitNanos == 0:
            done(fullError)  // what waitForRoom would answer at once
        default:
            // Full with a full_wait, or the counts unknown until the store counts (a durable
            // store's first count reads every entry): the wait, or the count, off the caller's
            // thread — its full_wait counted from now, however long it queues for one — and the
            // store then appends without waiting here for its commit.
            let deadline = fullWaitDeadline()
            offCallersThread { [self] in
                do throws(TransportError) {
                    try waitForRoom(messages.count, until: deadline)
                } catch {
                    return done(error)
                }
                append(admitted: messages, done: done)
            }
        }
    }

    /// Runs `work` off the caller's thread (``BlockingCalls``: a few threads of this broker's,
    /// in arrival order), then `done` with its outcome; counted, so that a shutdown waits for
    /// `done` (destroy answers every publish_async). A wait for room in it ends early once the
    /// transport closes.
    func offCallersThread(_ work: @escaping @Sendable () throws(TransportError) -> Void, done: @escaping @Sendable (TransportError?) -> Void) {
        offCallersThread {
            do throws(TransportError) {
                try work()
                done(nil)
            } catch {
                done(error)
            }
        }
    }

    /// Runs `work`, which tells its publish's outcome itself, off the caller's thread; counted
    /// until it returns.
    private func offCallersThread(_ work: @escaping @Sendable () -> Void) {
        condition.lock()
        publishesOffThread += 1
        condition.unlock()
        blockingCalls.run { [self] in
            work()
            condition.lock()
            publishesOffThread -= 1
            condition.broadcast()
            condition.unlock()
        }
    }

    /// ``append(admitted:)`` without waiting for the store.
    func append(admitted messages: [Message], done: @escaping @Sendable (TransportError?) -> Void) {
        let count = UInt64(messages.count)
        store.append(messages) { [self] error in
            if error == nil {
                condition.lock()
                stats.published += count
                markPublished()
                condition.unlock()
            }
            done(error)
        }
    }

    /// `batch` checked and stamped for ``append(admitted:)``: within the limits, the transport not
    /// draining, and room made for `room` messages (0: none asked for here). Separate so that
    /// ``ShardedBroker`` checks every part of a batch, in each shard, before storing any, and
    /// asks for the whole batch's room once (its shards share one capacity).
    func admit(_ batch: consuming [Message], room: Int, until deadline: Int64? = nil) throws(TransportError) -> [Message] {
        let messages = try accepted(batch)
        if room > 0 {
            try waitForRoom(room, until: deadline)
        } else if closing.load(ordering: .acquiring) {
            throw Self.drainingError
        }
        return messages
    }

    /// Stores messages ``admit(_:room:)`` accepted.
    func append(admitted messages: [Message]) throws(TransportError) {
        try store.append(messages)
        condition.lock()
        stats.published += UInt64(messages.count)
        markPublished()
        condition.unlock()
    }

    /// Stores `batch` and settles `delivery` as one unit (see `TransportPlugin.publish(_:settling:_:)`).
    /// An acknowledgement is atomic with the messages in the store (one commit when durable);
    /// other outcomes are applied after the messages are stored.
    public func publish(_ batch: consuming [Message], settling delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {
        let messages = try accepted(batch)
        if !messages.isEmpty { try waitForRoom(messages.count) }
        try settle(delivery, settlement, published: messages.count) { entry throws(TransportError) in
            if case .ack = settlement {
                try store.append(messages, acking: entry.ref)
            } else {
                try store.append(messages)
                try apply(settlement, to: entry)
            }
        }
    }

    /// Settles `delivery` once `publish` succeeded — it stores messages in another broker (a
    /// shard of the same transport: ``ShardedBroker``). When it throws, nothing is settled: the
    /// delivery is still the subscriber's, and the error is rethrown.
    public func settle(_ delivery: DeliveryID, _ settlement: Settlement, afterPublishing publish: () throws(TransportError) -> Void) throws(TransportError) {
        try settle(delivery, settlement, published: 0) { entry throws(TransportError) in
            try publish()
            try apply(settlement, to: entry)
        }
    }

    /// Takes `delivery` out of flight, runs `body` (which stores and settles), and puts the
    /// delivery back when `body` throws; `published` messages are counted once it succeeds.
    private func settle(
        _ delivery: DeliveryID, _ settlement: Settlement, published: Int, _ body: (InFlight) throws(TransportError) -> Void
    ) throws(TransportError) {
        condition.lock()
        guard let local = shard.local(delivery), let entry = inFlight.removeValue(forKey: local) else {
            condition.unlock()
            throw TransportError(.notFound, "publish_and_settle: unknown, settled or expired delivery \(delivery)")
        }
        entry.member.inFlight -= 1
        condition.unlock()
        do {
            try body(entry)
        } catch {
            // Nothing happened: the delivery is still the subscriber's to settle.
            condition.lock()
            if !stopped {
                inFlight.insert(entry, at: local)
                entry.member.inFlight += 1
            }
            condition.unlock()
            throw error
        }
        condition.lock()
        stats.published += UInt64(published)
        count(settlement)
        markWorkOrPass()
        wakeWaiters()
        condition.unlock()
    }

    /// Whether `count` more messages fit, as far as the counts known now say (always, without a
    /// capacity); nil when the store would have to count first. Never waits for a count.
    private func roomNow(for count: Int) -> Bool? {
        guard options.capacity > 0 else { return true }
        guard let (depth, inFlight) = capacityShared.map({ $0.counts() }) ?? store.knownCounts() else { return nil }
        return Int(depth + inFlight) + count <= options.capacity
    }

    /// When a publish coming now stops waiting for room: its full_wait from now, on the monotonic
    /// clock.
    func fullWaitDeadline() -> Int64 { AdaptiveCondition.monotonicDeadline(in: options.fullWaitNanos) }

    /// Waits for room for `count` messages until the monotonic clock reads `deadline` (a publish's
    /// full_wait, counted from when it came; nil: from now, read only once it has to wait).
    private func waitForRoom(_ count: Int, until deadline: Int64? = nil) throws(TransportError) {
        // Without the lock while there is room (the store's counts are approximate anyway, and a
        // drain that starts just after this check is no different from one just after the store).
        if closing.load(ordering: .acquiring) { throw Self.drainingError }
        guard options.capacity > 0 else { return }
        let (depth, inFlight) = counts()
        if Int(depth + inFlight) + count <= options.capacity { return }
        let deadline = deadline ?? fullWaitDeadline()
        if let capacityShared {
            let waitNanos = options.fullWaitNanos > 0 ? max(0, deadline - monotonicNanoseconds()) : 0
            switch capacityShared.waitForRoom(count, capacity: options.capacity, waitNanos: waitNanos, closing: closing) {
            case .room: return
            case .full: throw fullError
            case .closing: throw Self.drainingError
            }
        }
        condition.lock()
        defer { condition.unlock() }
        if draining || stopped { throw Self.drainingError }
        while true {
            let (depth, inFlight) = counts()
            if Int(depth + inFlight) + count <= options.capacity { return }
            guard options.fullWaitNanos > 0, monotonicNanoseconds() < deadline else { throw fullError }
            // Woken by settlements here, and by other processes' commits; and looking again at
            // least every `roomRecheckNanos` all the same: a shared store's counts are refreshed
            // at most that often (less often for a very deep queue), so the wake-up for the room
            // another process made may have read the counts from before it.
            waiters += 1
            // Another process's acknowledgements make room too: a dispatcher asleep without
            // watching for them is woken to watch.
            if dispatcherWaiting && !dispatcherWatchesOthers { wakeDispatcher() }
            _ = condition.wait(untilMonotonicNanos: min(deadline, AdaptiveCondition.monotonicDeadline(in: Self.roomRecheckNanos)))
            waiters -= 1
            if draining || stopped { throw Self.drainingError }
        }
    }

    private static let drainingError = TransportError(.closed, "publish: the transport is draining")
    private var fullError: TransportError {
        TransportError(
            .full,
            "the transport holds its capacity of \(options.capacity) messages; nothing was stored (consumers must catch up; dead letters count too, so replay or purge those looked at: switchyard dlq list|replay|purge; or raise config key 'capacity', 0 for no limit, or set 'full_wait' so publishers wait for room)"
        )
    }

    /// Wakes whoever waits for what a settlement, an expiry or a pass changed: the threads waiting
    /// on `condition` (a drain, a shutdown, a publisher waiting for room in this broker alone) and
    /// the publishers waiting for room in the capacity this broker shares with its other shards.
    /// Call with the lock held.
    private func wakeWaiters() {
        if waiters > 0 { condition.broadcast() }
        capacityShared?.roomMayHaveChanged()
    }

    /// The messages that count against `capacity`: this store's, or every shard's.
    private func counts() -> (depth: UInt64, inFlight: UInt64) { capacityShared?.counts() ?? store.counts() }

    /// How often a publish waiting for room looks at the counts again, woken or not.
    static let roomRecheckNanos: Int64 = 100_000_000

    // MARK: Subscriptions

    /// Adds a subscriber (see `TransportPlugin.subscribe`).
    public func subscribe(_ options: SubscribeOptions, _ subscriber: Subscriber) throws(TransportError) -> SubscriptionID {
        let key = key(options.channel, options.group)
        try store.addGroup(channel: options.channel, group: options.group, start: options.start)
        condition.lock()
        defer { condition.unlock() }
        if stopped { throw TransportError(.closed, "subscribe: the transport is shut down") }
        nextSubscription += 1
        let member = Member(
            id: shard.external(nextSubscription), key: key, subscriber: subscriber,
            maxInFlight: Int(options.maxInFlight > 0 ? options.maxInFlight : self.options.defaultMaxInFlight),
            visibilityTimeout: options.visibilityTimeoutNanos > 0 ? options.visibilityTimeoutNanos : self.options.visibilityTimeoutNanos,
            settleOnDelivery: options.settleOnDelivery)
        members[member.id] = member
        groups[key, default: []].append(member)
        markWork()
        return member.id
    }

    /// Removes a subscriber; waits for its running deliveries and releases its unsettled ones.
    public func unsubscribe(_ id: SubscriptionID) throws(TransportError) {
        condition.lock()
        guard let member = members.removeValue(forKey: id) else {
            condition.unlock()
            throw TransportError(.notFound, "unsubscribe: unknown subscription \(id)")
        }
        member.removed = true
        groups[member.key]?.removeAll { $0 === member }
        if groups[member.key]?.isEmpty == true { groups[member.key] = nil }
        waiters += 1
        while member.delivering > 0 { condition.wait() }
        waiters -= 1
        let orphans = inFlight.all.filter { $0.value.member === member }
        for orphan in orphans { inFlight.removeValue(forKey: orphan.id) }
        stats.released += UInt64(orphans.count)
        condition.unlock()
        // Back in the store first, then wake the dispatcher, or it may look before they are there.
        for orphan in orphans { try? store.release(orphan.value.ref) }
        wake()
    }

    // MARK: Settlement

    /// Settles a delivery (see `TransportPlugin.settle`).
    public func settle(_ delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {
        condition.lock()
        guard let local = shard.local(delivery), let entry = inFlight.removeValue(forKey: local) else {
            condition.unlock()
            throw TransportError(.notFound, "settle: unknown, settled or expired delivery \(delivery)")
        }
        entry.member.inFlight -= 1
        count(settlement)
        condition.unlock()
        var failure: TransportError?
        do throws(TransportError) {
            try apply(settlement, to: entry)
        } catch {
            failure = error
        }
        // The store changed after the dispatcher may have looked: tell it, and anyone waiting
        // for room or for a drain. Also when the store refused: the member's slot is free either
        // way, and the dispatcher would otherwise only see it at its next sweep.
        condition.lock()
        markWork()
        wakeWaiters()
        condition.unlock()
        if let failure { throw failure }
    }

    /// Counts a settlement in the stats. Call with the lock held.
    private func count(_ settlement: Settlement) {
        switch settlement {
        case .ack: stats.acked += 1
        case .retry: stats.retried += 1
        case .deadLetter: stats.deadLettered += 1
        case .release: stats.released += 1
        }
    }

    /// Applies a settlement to the store (the delivery already left `inFlight`). Without the lock.
    private func apply(_ settlement: Settlement, to entry: InFlight) throws(TransportError) {
        let stamp: Int64
        switch settlement {
        case .ack:
            try store.ack(entry.ref)
        case .retry(let after, let reason):
            stamp = now()
            try store.retry(entry.ref, visibleAt: stamp + after, reason: reason, now: stamp)
        case .deadLetter(let reason):
            stamp = now()
            let dead = try store.deadLetter(entry.ref, to: entry.member.key.channel + options.deadLetterSuffix, reason: reason, now: stamp)
            host.deadLettered(dead, reason: reason)
        case .release:
            try store.release(entry.ref)
        }
    }

    /// Settles several deliveries (see `TransportInstance.settle(batch:)`): one pass under the lock
    /// for the whole batch, and the acknowledgements removed from the store together (one lock,
    /// or one commit on a durable store); other outcomes one at a time. Returns each one's error.
    public func settle(batch: [(DeliveryID, Settlement)]) -> [TransportError?] {
        var results = [TransportError?].noErrors(count: batch.count)
        var acks: [(index: Int, ref: LeaseRef)] = []
        var others: [(index: Int, entry: InFlight, settlement: Settlement)] = []
        condition.lock()
        for (index, (delivery, settlement)) in batch.enumerated() {
            guard let local = shard.local(delivery), let entry = inFlight.removeValue(forKey: local) else {
                results[index] = TransportError(.notFound, "settle: unknown, settled or expired delivery \(delivery)")
                continue
            }
            entry.member.inFlight -= 1
            count(settlement)
            if case .ack = settlement { acks.append((index, entry.ref)) } else { others.append((index, entry, settlement)) }
        }
        condition.unlock()
        for (slot, error) in zip(acks, store.ack(batch: acks.map(\.ref))) where error != nil { results[slot.index] = error }
        for other in others {
            do throws(TransportError) {
                try apply(other.settlement, to: other.entry)
            } catch {
                results[other.index] = error
            }
        }
        condition.lock()
        markWork()
        wakeWaiters()
        condition.unlock()
        return results
    }

    /// Settles every delivery in `deliveries` the same way (see `TransportInstance.settle(batch:_:)`):
    /// an acknowledged batch takes the lock once and the store once, with no array of pairs.
    public func settle(batch deliveries: UnsafeBufferPointer<DeliveryID>, _ settlement: Settlement) -> [TransportError?] {
        guard case .ack = settlement else { return settle(batch: deliveries.map { ($0, settlement) }) }
        var refs: [LeaseRef] = []
        refs.reserveCapacity(deliveries.count)
        var missing: [Int] = []  // deliveries not in flight (unknown, settled or expired)
        condition.lock()
        for index in deliveries.indices {
            guard let local = shard.local(deliveries[index]), let entry = inFlight.removeValue(forKey: local) else {
                missing.append(index)
                continue
            }
            entry.member.inFlight -= 1
            refs.append(entry.ref)
        }
        stats.acked += UInt64(refs.count)
        condition.unlock()
        var results = store.ack(batch: refs)
        if !missing.isEmpty {
            // Rare: spread the store's outcomes back over the batch's positions.
            var spread = [TransportError?].noErrors(count: deliveries.count)
            var next = 0
            var nextMissing = 0  // `missing` is in batch order
            for index in deliveries.indices {
                if nextMissing < missing.count, missing[nextMissing] == index {
                    nextMissing += 1
                    spread[index] = TransportError(.notFound, "settle: unknown, settled or expired delivery \(deliveries[index])")
                } else {
                    if next < results.count, let error = results[next] { spread[index] = error }
                    next += 1
                }
            }
            results = spread
        }
        condition.lock()
        markWork()
        wakeWaiters()
        condition.unlock()
        return results
    }

    // MARK: Leases

    /// Extends the leases of `deliveries` (see `TransportInstance.extend(_:)`): each starts again
    /// now, for its subscriber's visibility timeout — in the store first (where another process,
    /// or this broker's next lease, would take an entry whose lease ran out), then here.
    public func extend(_ deliveries: UnsafeBufferPointer<DeliveryID>) -> [TransportError?] {
        var results = [TransportError?].noErrors(count: deliveries.count)
        var leases: [(index: Int, local: UInt64, ref: LeaseRef, until: Int64, was: Int64)] = []
        let stamp = now()
        condition.lock()
        for index in deliveries.indices {
            // Not one whose lease ran out already, even if the dispatcher has not looked yet.
            guard let local = shard.local(deliveries[index]), let entry = inFlight[local], entry.ref.token != 0, entry.leaseUntil > stamp else {
                results[index] = Self.notInFlight(deliveries[index])
                continue
            }
            leases.append((index, local, entry.ref, stamp + entry.member.visibilityTimeout, entry.leaseUntil))
        }
        condition.unlock()
        guard !leases.isEmpty else { return results }
        let stored = store.extend(leases.map { ($0.ref, $0.until) })
        var undo: [(ref: LeaseRef, until: Int64)] = []
        condition.lock()
        for (lease, error) in zip(leases, stored) {
            if let error {
                results[lease.index] = error
            } else if let entry = inFlight[lease.local], entry.ref == lease.ref {
                inFlight.insert(InFlight(ref: entry.ref, member: entry.member, leaseUntil: lease.until), at: lease.local)
            } else {
                // Settled, or expired here, meanwhile: an expired one gets its old lease back in
                // the store (so it is not held for nobody until the new one ends).
                results[lease.index] = Self.notInFlight(deliveries[lease.index])
                undo.append((lease.ref, lease.was))
            }
        }
        condition.unlock()
        if !undo.isEmpty {
            _ = store.extend(undo)
            condition.lock()
            markWork()
            condition.unlock()
        }
        return results
    }

    private static func notInFlight(_ delivery: DeliveryID) -> TransportError {
        TransportError(.notFound, "extend: unknown, settled or expired delivery \(delivery)")
    }

    // MARK: Lifecycle

    /// Stops new deliveries and publishes, waits for settlements until `deadlineNanos` on the
    /// monotonic clock, then releases what is left (throwing `.timeout` if anything was).
    public func drain(deadlineNanos: Int64) throws(TransportError) {
        beginDrain()
        condition.lock()
        waiters += 1
        // The ABI's drain deadline is on the monotonic clock, as the condition's waits are.
        while !inFlight.isEmpty, condition.wait(untilMonotonicNanos: deadlineNanos) {}
        waiters -= 1
        let left = inFlight.all.map(\.value)
        inFlight.removeAll()
        for entry in left { entry.member.inFlight -= 1 }
        stats.released += UInt64(left.count)
        condition.unlock()
        for entry in left { try? store.release(entry.ref) }
        if !left.isEmpty {
            throw TransportError(
                .timeout,
                "drain: \(left.count) deliveries were still unsettled at the deadline and were released "
                    + "(they are delivered again; a longer drain deadline lets their handlers finish)")
        }
    }

    /// The first half of ``drain(deadlineNanos:)``: stops new deliveries and publishes at once,
    /// without waiting (``ShardedBroker`` stops every shard before it waits for any).
    public func beginDrain() {
        condition.lock()
        draining = true
        beginClosing()
        condition.unlock()
    }

    /// Counters plus the store's depth and in-flight count.
    public func currentStats() -> TransportStats {
        condition.lock()
        var result = stats
        condition.unlock()
        let counts = store.counts()
        result.depth = counts.depth
        result.inFlight = counts.inFlight
        return result
    }

    /// Fails every later publish, and those waiting for room, at once: the first step of a
    /// shutdown, which ``ShardedBroker`` takes on every shard before any shard stops (as it begins
    /// a drain on every shard before it waits for any).
    func closeToPublishes() {
        closing.store(true, ordering: .releasing)
        capacityShared?.wakeEveryone()
    }

    /// The common first step of a drain and a shutdown, after setting `draining` or `stopped`:
    /// publishes fail from now on, and every waiting thread and the dispatcher look again. Call
    /// with the lock held.
    private func beginClosing() {
        closeToPublishes()
        condition.broadcast()
        if wakeupPipe.writer >= 0 { wakeDispatcher() }
    }

    /// Stops the dispatcher, releases unsettled deliveries and tells the store
    /// (``MessageStore/brokerDidShutDown()``). No delivery runs once it returns.
    public func shutdown() {
        reporter.report(currentStats(), force: true)
        condition.lock()
        stopped = true
        beginClosing()
        waiters += 1
        while !dispatcherDone || passRunning || publishesOffThread > 0 || members.values.contains(where: { $0.delivering > 0 }) {
            condition.wait()
        }
        waiters -= 1
        let left = inFlight.all.map(\.value)
        inFlight.removeAll()
        condition.unlock()
        for entry in left { try? store.release(entry.ref) }
        // Now, not when the dispatcher thread lets the last reference go after this returned:
        // whoever destroyed the transport may open its files next (another process, `sqlite3`).
        store.brokerDidShutDown()
    }

    // MARK: Dispatching

    private struct Planned {
        let key: GroupKey
        let room: Int
        let visibilityTimeout: Int64
        /// Every member settles on delivery, on a store that does not fan out: messages without an
        /// ordering key are taken out of the store, not leased (one step instead of a lease and an
        /// acknowledgement; one commit on a durable store); keyed ones are leased as usual.
        let take: Bool
    }

    /// How many times the dispatcher yields, looking for new work, before it sleeps after a busy
    /// period (about 20–40 µs). Measured on 2 cores (`bench typed memory-queue --quick`, 2026-12-04):
    /// at 0 the typed request-reply p50 was 101–105 µs against 31–40 µs at 64, and the raw queue's
    /// round trip 50 µs against 8–15 µs; 8 was between, and 256 no better than 64. Throughput
    /// (fire-and-forget, the raw queue) moved within the noise at every value.
    static let lingerRounds = 64

    private func dispatchLoop() {
        var delivered = false
        // Kept from pass to pass, emptied but not freed: a busy dispatcher makes several passes
        // per message, and arrays allocated and freed per pass showed in the profile.
        var keys: [GroupKey] = []
        condition.lock()
        while !stopped {
            if !workPending {
                let isDraining = draining  // read under the lock (ThreadSanitizer caught a read after unlock)
                keys.removeAll(keepingCapacity: true)
                if !isDraining { keys.append(contentsOf: groups.keys) }
                let local = nextLocalExpiry
                let passedAt = lastPassStamp
                let counters = stats
                condition.unlock()
                // One reading of the clock per pass: it is a call into the host each time.
                let stamp = now()
                if !isDraining && stamp >= nextExpirySweep {
                    nextExpirySweep = stamp + options.expirySweepNanos
                    sweepExpired(now: stamp)
                }
                // Metrics go to the host from here, off the data path, at most every interval
                // (the store is counted only when a report is due); while they still change (or
                // one was held back), the wait below brings another pass one interval later, so
                // idle gauges end up true.
                let reportSoon = !reporter.report(withStoreCounts(counters))
                condition.lock()
                if !workPending && !stopped && delivered {
                    // Busy period: linger briefly before sleeping. A producer publishing one
                    // message at a time then finds the dispatcher awake and skips the wake-up
                    // syscall, and the dispatcher skips a sleep/wake pair per message.
                    delivered = false
                    condition.unlock()
                    for _ in 0..<Self.lingerRounds {
                        sched_yield()
                        if workHint.load(ordering: .relaxed) { break }
                    }
                    condition.lock()
                }
                var wakeup: Int64?
                if !workPending && !stopped {
                    // About to sleep: ask the store when to look again, without holding the lock
                    // (a durable store answers from its writer thread), then re-check for work
                    // that came meanwhile. Only here: asked before the linger, which usually finds
                    // the next message, it cost a look per group per message (callgrind).
                    condition.unlock()
                    wakeup = isDraining ? nil : nextWakeup(keys, localExpiry: local, now: min(stamp, passedAt))
                    if !isDraining { wakeup = min(wakeup ?? nextExpirySweep, nextExpirySweep) }
                    if reportSoon {
                        let soon = wallClockNanoseconds() + reporter.interval
                        wakeup = min(wakeup ?? soon, soon)
                    }
                    condition.lock()
                }
                if !workPending && !stopped {
                    dispatcherWaiting = true
                    dispatcherSleepsUntil = wakeup ?? .max
                    if wakeupPipe.reader >= 0 {
                        // Sharded brokers' publishers wait for room in the capacity they share,
                        // not here: a sharded dispatcher always watches.
                        let watchesOthers = !groups.isEmpty || waiters > 0 || capacityShared != nil
                        dispatcherWatchesOthers = watchesOthers
                        condition.unlock()
                        let changed = sleepOnDescriptors(until: wakeup, watchingOthers: watchesOthers)
                        condition.lock()
                        if changed {
                            workPending = true
                            // Another process's acknowledgements may have made room for a
                            // publisher waiting here (as a wake() would tell it).
                            if waiters > 0 { condition.broadcast() }
                        }
                    } else if let wakeup {
                        _ = condition.wait(untilWallClockNanos: wakeup)
                    } else {
                        condition.wait()  // draining, or nothing scheduled: only a signal wakes it
                    }
                    dispatcherWaiting = false
                }
            }
            // A publisher's pass under way: wait for its end (it wakes this thread if it needs to).
            while passRunning && !stopped {
                dispatcherWantsTurn = true
                condition.wait()
            }
            dispatcherWantsTurn = false
            if stopped { continue }
            passRunning = true
            if runPass() { delivered = true }
            passRunning = false
            wakeWaiters()  // a shutdown waiting for the pass; room a pass made taking messages
        }
        dispatcherDone = true
        condition.broadcast()
        condition.unlock()
    }

    /// One pass: leases what every group has room for and hands it to the members. Call with the
    /// lock held and the turn (``passRunning``); it is dropped while the store leases, and around
    /// each deliver call. Whether it leased anything (`workPending` is then set where there may
    /// be more: a group's room was filled, or messages went back to the store unrefused).
    private func runPass() -> Bool {
        workPending = false
        let marksAtPass = workMarks  // work marked from here on is not forgotten (deliver)
        workHint.store(false, ordering: .relaxed)
        if stopped || draining { return false }
        let stamp = now()  // for the whole pass: leases, expiries, deliveries
        expireLocalLeases(now: stamp)
        passPlan.removeAll(keepingCapacity: true)
        for (key, members) in groups {
            let room = members.reduce(0) { $0 + max(0, $1.maxInFlight - $1.inFlight) }
            if room > 0 {
                passPlan.append(
                    Planned(
                        key: key, room: room, visibilityTimeout: members[0].visibilityTimeout,
                        // Not on fan-out stores: a message stored again after a refusal would
                        // be copied to every group. (A closure: a key path costs hundreds of
                        // instructions.)
                        take: !fanOut && members.allSatisfy { $0.settleOnDelivery }))
            }
        }
        lastPassStamp = stamp
        condition.unlock()
        // Whether a store may hold more for some group than this pass took: it filled the room.
        // Otherwise each group was emptied of what is ready now (a store returns fewer than asked
        // only then: `MessageStore.lease`), and whatever becomes ready later marks work itself —
        // a publish, a settlement, a release, an expired message disposed of, another process's
        // commit — or is due at a time the dispatcher sleeps until (`nextWakeup`, asked from this
        // pass's time). A pass after every delivering one, only to find that, cost a
        // request-reply call two empty passes, 5% of its instructions (callgrind).
        var filled = false
        for planned in passPlan {
            do {
                let leased =
                    planned.take
                    ? try store.take(
                        channel: planned.key.channel, group: planned.key.group, limit: planned.room,
                        now: stamp, leaseUntil: stamp + planned.visibilityTimeout)
                    : try store.lease(
                        channel: planned.key.channel, group: planned.key.group, limit: planned.room,
                        now: stamp, leaseUntil: stamp + planned.visibilityTimeout)
                if !leased.isEmpty { passBatches.append((planned, leased)) }
                if leased.count >= planned.room { filled = true }
            } catch {
                host.log(.error, "lease failed on \(planned.key.channel): \(error)")
            }
        }
        condition.lock()
        guard !passBatches.isEmpty else { return false }
        if filled { workPending = true }  // there may be more
        deliver(passBatches, now: stamp, marksAtPass: marksAtPass, through: &passHandOvers)
        passBatches.removeAll(keepingCapacity: true)
        return true
    }

    /// Hands leased messages to members round robin. Called and returns with the lock held; drops
    /// it around each deliver call.
    /// `handOvers` is the dispatcher's to reuse (empty on entry and on return).
    /// `marksAtPass`: ``workMarks`` when the pass cleared `workPending`.
    private func deliver(_ batches: [(Planned, [LeasedMessage])], now stamp: Int64, marksAtPass: UInt64, through handOvers: inout [Member]) {
        // One hand-over per member, in the order leased: one deliver_batch call crossing the ABI
        // where the subscriber takes batches. What a member does not take is released.
        var orphans: [LeaseRef] = []
        var takenOrphans: [Message] = []
        var expired: [LeasedMessage] = []
        for (planned, leased) in batches {
            let candidates = groups[planned.key] ?? []
            var last: Member?  // the member given the previous message
            var cursor = 0
            // By index, reading fields in place: a loop over the elements copied each one whole,
            // twice (measured with callgrind), before its message was copied into the hand-over.
            for position in leased.indices {
                let ref = leased[position].ref
                if leased[position].message.isExpired(at: stamp) {
                    expired.append(leased[position])  // never delivered: dropped or dead-lettered below
                    continue
                }
                let taken = ref.token == 0
                let marked = leased[position].message.flags.contains(.settled)
                var chosen: Member?
                for step in 0..<candidates.count {
                    let member = candidates[(cursor + step) % candidates.count]
                    // A taken message only to a member that asked for it (one that joined since
                    // the plan would settle it, and its settlement would fail).
                    if member.inFlight < member.maxInFlight && (!taken || member.settleOnDelivery) {
                        chosen = member
                        cursor = (cursor + step + 1) % candidates.count
                        break
                    }
                }
                guard let member = chosen else {
                    // Members left or filled up meanwhile.
                    if taken {
                        takenOrphans.append(Self.storedAgain(leased[position].message))
                    } else {
                        orphans.append(ref)
                    }
                    continue
                }
                nextDelivery += 1
                member.delivering += 1
                stats.delivered += 1
                if taken {
                    stats.acked += 1
                } else {
                    member.inFlight += 1
                    let leaseUntil = stamp + member.visibilityTimeout
                    inFlight.insert(InFlight(ref: ref, member: member, leaseUntil: leaseUntil), at: nextDelivery)
                    nextLocalExpiry = min(nextLocalExpiry, leaseUntil)
                }
                // Members are few: a scan beats hashing, and runs only when the member changes.
                if last !== member {
                    if !handOvers.contains(where: { $0 === member }) { handOvers.append(member) }
                    last = member
                }
                member.handOverDeliveries.append(shard.external(nextDelivery))
                member.handOverMessages.append(leased[position].message)
                if taken != marked {
                    // Marked when taken (nothing to settle: tell the subscriber); a mark from
                    // storage is never passed on. Changed in place: copying the message costs
                    // more than the whole check.
                    member.handOverMessages[member.handOverMessages.count - 1].flags.formSymmetricDifference(.settled)
                }
            }
            // Rotate so the next batch starts with another member (one lookup; none for one member).
            if candidates.count > 1 {
                groups[planned.key]?.rotate()
            }
        }
        condition.unlock()
        for ref in orphans { try? store.release(ref) }
        if !takenOrphans.isEmpty { storeAgain(takenOrphans) }
        if !expired.isEmpty { disposeOfExpired(expired, now: stamp) }
        var refused: [(delivery: DeliveryID, message: Message)] = []
        for member in handOvers {
            let taken = member.subscriber.deliver(batch: member.handOverDeliveries, member.handOverMessages)
            for index in max(0, taken)..<member.handOverDeliveries.count {
                refused.append((member.handOverDeliveries[index], member.handOverMessages[index]))
            }
        }
        condition.lock()
        // What went back to the store undelivered (its members left or filled up meanwhile) is
        // ready again: another look, as for a group whose room was filled.
        if !orphans.isEmpty || !takenOrphans.isEmpty { workPending = true }
        for member in handOvers {
            member.delivering -= member.handOverDeliveries.count
            member.handOverDeliveries.removeAll(keepingCapacity: true)
            member.handOverMessages.removeAll(keepingCapacity: true)  // the messages go now, not at the next pass
        }
        handOvers.removeAll(keepingCapacity: true)
        var releases: [LeaseRef] = []
        var putBack: [Message] = []
        for (delivery, message) in refused {
            if let local = shard.local(delivery), let entry = inFlight.removeValue(forKey: local) {
                entry.member.inFlight -= 1
                releases.append(entry.ref)
            } else if message.flags.contains(.settled) {
                putBack.append(Self.storedAgain(message))  // taken out of the store, then refused
                stats.acked -= 1
            }
        }
        if waiters > 0 { condition.broadcast() }
        if !releases.isEmpty || !putBack.isEmpty {
            condition.unlock()
            for ref in releases { try? store.release(ref) }
            if !putBack.isEmpty { storeAgain(putBack) }
            condition.lock()
            capacityShared?.roomMayHaveChanged()  // a publisher may have read the counts mid-release
            // A refusing subscriber: wait for a change instead of spinning, unless one came since
            // the pass began, while the lock was dropped to lease or hand over (a publish then,
            // forgotten, waited for the next change: with none coming, as in a drain, for ever).
            if workMarks == marksAtPass { workPending = false }
        }
    }

    /// A message taken out of the store (settled on delivery) but not delivered, as it goes back:
    /// unmarked, and its attempt uncounted, as a release would leave it. It goes in as a new
    /// message, at the end of its channel: only messages without an ordering key are taken, and
    /// only on stores that do not fan out, so no order and no other group's copy is touched.
    /// Its attempt history (kept with the stored entry, not the message) starts over.
    private static func storedAgain(_ message: Message) -> Message {
        var stored = message
        stored.flags.remove(.settled)
        stored.attempt = max(stored.attempt, 1) - 1
        return stored
    }

    /// Stores taken messages again (``storedAgain(_:)``). Called without the lock.
    private func storeAgain(_ messages: [Message]) {
        do {
            try store.append(messages)
        } catch {
            host.log(.error, "storing again \(messages.count) messages taken but not delivered failed (they are lost): \(error)")
        }
    }

    /// Drops or dead-letters leased messages that expired before they could be delivered (the
    /// ABI's `expires_at_ns`): dropped when the message asks (a reply nobody waits for),
    /// dead-lettered with reason "expired" otherwise. Called without the lock.
    private func disposeOfExpired(_ expired: [LeasedMessage], now stamp: Int64) {
        var dead = 0
        for leased in expired {
            if dropsWhenExpired(leased.message) {
                if !leased.isTaken { try? store.ack(leased.ref) }
            } else if leased.isTaken {
                // Already out of the store: its dead letter goes in as a new message.
                let copy = DeadLetter.copy(
                    of: leased.message, to: leased.message.channel + options.deadLetterSuffix, group: "",
                    reason: Self.expiredReason, history: [], now: stamp)
                do {
                    try store.append([copy])
                    host.deadLettered(copy, reason: Self.expiredReason)
                    dead += 1
                } catch {
                    host.log(.error, "dead-lettering expired message \(copy.id) failed (it is lost): \(error)")
                }
            } else if let stored = try? store.deadLetter(
                leased.ref, to: leased.message.channel + options.deadLetterSuffix,
                reason: Self.expiredReason, now: stamp)
            {
                host.deadLettered(stored, reason: Self.expiredReason)
                dead += 1
            }
        }
        host.count("expired", Double(expired.count))
        condition.lock()
        stats.deadLettered += UInt64(dead)
        // What the pass could not see: a message held back behind an expired one's ordering key is
        // ready now, and a dead letter waits on its channel. (An expired reply dropped changes
        // nothing another pass would find: no mark, no pass.)
        if dead > 0 || expired.contains(where: { $0.message.orderingKey != nil }) { markWork() }
        wakeWaiters()
        condition.unlock()
    }

    /// An expired message that is dropped rather than dead-lettered: it asks to be (a reply), or
    /// it already is a dead letter.
    private func dropsWhenExpired(_ message: Message) -> Bool {
        message.flags.contains(.dropWhenExpired) || message.channel.hasSuffix(options.deadLetterSuffix)
    }

    /// Why an expired message was dead-lettered.
    static let expiredReason = "expired"

    /// Takes expired messages out of the store even where nobody leases them (a channel nobody
    /// reads, such as the reply channel of a caller that died), so they stop accumulating.
    /// Called by the dispatcher without the lock, every `expirySweepNanos`.
    private func sweepExpired(now stamp: Int64) {
        let removed: [ExpiredEntry]
        do {
            removed = try store.removeExpired(now: stamp, limit: 10_000)
        } catch {
            host.log(.error, "looking for expired messages failed: \(error)")
            return
        }
        guard !removed.isEmpty else { return }
        let dead = removed.filter { !dropsWhenExpired($0.message) }
            .map { entry in
                DeadLetter.copy(
                    of: entry.message, to: entry.message.channel + options.deadLetterSuffix, group: entry.group,
                    groupCopy: fanOut && !entry.message.channel.hasSuffix(options.deadLetterSuffix),
                    reason: Self.expiredReason, history: entry.history, now: stamp)
            }
        var stored = true
        do {
            try store.append(dead)
        } catch {
            // The removal is already committed: these are lost. Said with every id, and not
            // reported as dead-lettered (a waiting caller would look for a dead letter that is not
            // there). Open: removal and dead letters in one commit needs a store operation of its own.
            stored = false
            host.log(
                .error,
                "\(dead.count) expired messages were removed but their dead letters could not be stored, so they are lost: \(error) (ids: \(dead.map(\.id).joined(separator: ", ")))"
            )
        }
        if stored { for message in dead { host.deadLettered(message, reason: Self.expiredReason) } }
        host.count("expired", Double(removed.count))
        condition.lock()
        if stored { stats.deadLettered += UInt64(dead.count) }
        if removed.count == 10_000 { nextExpirySweep = stamp }  // more to do: look again soon
        markWork()
        wakeWaiters()
        condition.unlock()
    }

    /// Forgets local deliveries whose lease expired, freeing their subscribers' prefetch; the
    /// store makes the entries ready again (with the attempt counted) on the next lease.
    private func expireLocalLeases(now stamp: Int64) {
        guard stamp >= nextLocalExpiry else { return }
        var earliest = Int64.max
        for (delivery, entry) in inFlight.all {
            if entry.leaseUntil <= stamp {
                inFlight.removeValue(forKey: delivery)
                entry.member.inFlight -= 1
            } else {
                earliest = min(earliest, entry.leaseUntil)
            }
        }
        nextLocalExpiry = earliest
    }

    /// `counters` with the store's depth and in-flight count, for a report that is due.
    private func withStoreCounts(_ counters: TransportStats) -> TransportStats {
        var counters = counters
        let counts = store.counts()
        counters.depth = counts.depth
        counters.inFlight = counts.inFlight
        return counters
    }

    /// When the dispatcher must look again (wall-clock nanoseconds, the store's times): the earliest
    /// retry or lease expiry among `keys` (the groups with subscribers), or of a local delivery.
    /// Called without the lock.
    private func nextWakeup(_ keys: [GroupKey], localExpiry: Int64, now stamp: Int64) -> Int64? {
        var earliest: Int64? = localExpiry == .max ? nil : localExpiry
        for key in keys {
            if let at = store.nextWakeup(channel: key.channel, group: key.group, now: stamp) {
                earliest = min(earliest ?? at, at)
            }
        }
        return earliest
    }
}

extension Array {
    /// Moves the first element to the end.
    fileprivate mutating func rotate() {
        if count > 1 { append(removeFirst()) }
    }
}
