import Foundation
import SwitchyardABI
import SwitchyardPluginKit
import Synchronization

/// Where a ``Broker`` sits among its transport's shards (``ShardedBroker``): the delivery and
/// subscription ids it hands out carry its index in their low bits, so a settlement finds its
/// shard without a lookup. A broker alone (``only``) hands out its ids unchanged.
public struct BrokerShard: Sendable {
    /// This shard's position, `0..<count`.
    public let index: Int
    /// How many low bits of an id name the shard (0 for a broker alone).
    let bits: Int

    /// A broker that is its transport's only one.
    public static let only = BrokerShard(index: 0, bits: 0)

    /// Shard `index` of `count` (at most 256).
    public init(index: Int, of count: Int) {
        precondition(count >= 1 && count <= 256 && (0..<count).contains(index), "a shard index within 1–256 shards")
        self.init(index: index, bits: Self.bits(for: count))
    }

    /// How many low bits of an id name one of `count` shards.
    static func bits(for count: Int) -> Int { count == 1 ? 0 : Int.bitWidth - (count - 1).leadingZeroBitCount }

    private init(index: Int, bits: Int) {
        self.index = index
        self.bits = bits
    }

    /// The id handed out for the broker's own `local` id.
    @inline(__always) func external(_ local: UInt64) -> UInt64 { bits == 0 ? local : local << bits | UInt64(index) }

    /// The broker's own id for `id`, or nil when `id` belongs to another shard.
    @inline(__always) func local(_ id: UInt64) -> UInt64? {
        if bits == 0 { return id }
        return id & (1 << bits - 1) == UInt64(index) ? id >> bits : nil
    }

    /// The shard an id handed out by one of `count` shards belongs to.
    static func index(of id: UInt64, bits: Int) -> Int { Int(id & (1 << bits - 1)) }
}

/// One transport instance as several ``Broker``s, each with its own store, lock and dispatcher
/// thread, every channel in exactly one of them: the channels of one transport (a service's
/// requests, its callers' replies, other services) then run on as many cores as there are
/// shards, where one broker ran them all under one lock on one dispatcher thread. One channel is
/// still one shard's work, as one queue is in RabbitMQ and one stream in JetStream.
///
/// A channel and its dead-letter channel share a shard (dead-lettering moves a message within
/// one store). Delivery and subscription ids name their shard (``BrokerShard``). With one shard
/// every call goes straight to it.
public final class ShardedBroker: Sendable {
    /// The shards' brokers, by index.
    public let brokers: [Broker]
    private let bits: Int
    private let deadLetterSuffix: [UInt8]

    /// Shards made by `make(shard)` for each of `count` shards (1 to 256).
    public init(count: Int, deadLetterSuffix: String, make: (BrokerShard) -> Broker) {
        brokers = (0..<count).map { make(BrokerShard(index: $0, of: count)) }
        bits = BrokerShard.bits(for: count)
        self.deadLetterSuffix = Array(deadLetterSuffix.utf8)
    }

    /// The shard that holds `channel` (and its dead-letter channel): a hash of the name without
    /// its dead-letter suffixes.
    public func shard(ofChannel channel: String) -> Broker {
        guard brokers.count > 1 else { return brokers[0] }
        var channel = channel
        return brokers[channel.withUTF8 { Int(hash(stripping: $0) % UInt64(brokers.count)) }]
    }

    /// The shard of a channel named by UTF-8 bytes (a message view's, read without a copy).
    private func shard(ofChannel bytes: sy_str) -> Broker {
        let name = UnsafeBufferPointer(start: UnsafeRawPointer(bytes.data)?.assumingMemoryBound(to: UInt8.self), count: bytes.len)
        return brokers[Int(hash(stripping: name) % UInt64(brokers.count))]
    }

    /// FNV-1a of `name` without trailing dead-letter suffixes: stable for the life of the process,
    /// which is as long as an in-memory store keeps anything.
    private func hash(stripping name: UnsafeBufferPointer<UInt8>) -> UInt64 {
        var end = name.count
        let suffix = deadLetterSuffix.count
        while suffix > 0, end >= suffix, name[(end - suffix)..<end].elementsEqual(deadLetterSuffix) { end -= suffix }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in name[0..<end] {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01b3
        }
        return hash
    }

    /// The shard that handed out delivery or subscription `id`.
    private func shard(ofID id: UInt64) -> Broker { bits == 0 ? brokers[0] : brokers[BrokerShard.index(of: id, bits: bits) % brokers.count] }

    /// Stores one message in its channel's shard (see `TransportPlugin.publish`).
    public func publish(_ view: MessageView) throws(TransportError) {
        try shard(ofChannel: view.fields.channel).publish(view)
    }

    /// Stores messages, each in its channel's shard (in order within each channel). Messages for
    /// one shard, the usual case, go as one batch.
    public func publish(_ batch: consuming [Message]) throws(TransportError) {
        guard brokers.count > 1, let first = batch.first else { return try brokers[0].publish(batch) }
        let target = shard(ofChannel: first.channel)
        // A batch is usually one channel: comparing names (the same storage, compared by
        // address first) costs less than hashing each.
        guard batch.allSatisfy({ $0.channel == first.channel || shard(ofChannel: $0.channel) === target }) else {
            // All or nothing, as for one shard: every part checked before any is stored.
            for (shard, messages) in try admit(split(batch)) { try shard.append(admitted: messages) }
            return
        }
        try target.publish(batch)
    }

    /// Stores messages without waiting for the store (see ``Broker/publish(_:done:)``): a batch
    /// for one shard, the usual case, goes to it as one.
    public func publish(_ batch: consuming [Message], done: @escaping @Sendable (TransportError?) -> Void) {
        let messages = batch
        if brokers.count == 1 { return brokers[0].publish(messages, done: done) }
        if let first = messages.first, messages.allSatisfy({ shard(ofChannel: $0.channel) === shard(ofChannel: first.channel) }) {
            return shard(ofChannel: first.channel).publish(messages, done: done)
        }
        // Spread over shards: stored as publish(_:) stores it — which may wait for room in a full
        // transport — so off the caller's thread (rare: the runtime publishes one message a call),
        // its full_wait counted from now.
        let deadline = brokers[0].fullWaitDeadline()
        brokers[0].offCallersThread(
            { [self] () throws(TransportError) in
                for (shard, messages) in try admit(split(messages), until: deadline) { try shard.append(admitted: messages) }
            }, done: done)
    }

    /// Every group checked by its shard (limits, drain) before any is stored, and room asked for
    /// the whole batch once (the shards share the capacity), waiting for it until `deadline`
    /// (nil: a full_wait from now).
    private func admit(_ groups: [(Broker, [Message])], until deadline: Int64? = nil) throws(TransportError) -> [(Broker, [Message])] {
        let total = groups.reduce(0) { $0 + $1.1.count }
        var admitted: [(Broker, [Message])] = []
        for (index, (shard, messages)) in groups.enumerated() {
            admitted.append((shard, try shard.admit(messages, room: index == 0 ? total : 0, until: deadline)))
        }
        return admitted
    }

    /// `batch` grouped by shard, in the order the shards first appear, each group in batch order.
    private func split(_ batch: [Message]) -> [(Broker, [Message])] {
        var groups: [(Broker, [Message])] = []
        for message in batch {
            let target = shard(ofChannel: message.channel)
            if let index = groups.firstIndex(where: { $0.0 === target }) {
                groups[index].1.append(message)
            } else {
                groups.append((target, [message]))
            }
        }
        return groups
    }

    /// Stores `batch` and settles `delivery` (see `TransportPlugin.publish(_:settling:_:)`): as one
    /// unit when every message goes to the delivery's shard. Otherwise every message is checked
    /// (limits, drain, room) and the delivery taken out of flight — an unknown one fails — before
    /// anything is stored; then the messages are stored and the delivery settled. In memory there
    /// is no commit to share: if the settlement itself fails after the messages are in (its lease
    /// ran out at that moment), they stay, the delivery is the subscriber's again and the error
    /// is returned — a repeat at worst, never a loss.
    public func publish(_ batch: consuming [Message], settling delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {
        let owner = shard(ofID: delivery)
        guard brokers.count > 1, !batch.allSatisfy({ shard(ofChannel: $0.channel) === owner }) else {
            return try owner.publish(batch, settling: delivery, settlement)
        }
        let admitted = try admit(split(batch))
        try owner.settle(delivery, settlement) { () throws(TransportError) in
            for (shard, messages) in admitted { try shard.append(admitted: messages) }
        }
    }

    /// Adds a subscriber to the shard of its channel (see `TransportPlugin.subscribe`).
    public func subscribe(_ options: SubscribeOptions, _ subscriber: Subscriber) throws(TransportError) -> SubscriptionID {
        try shard(ofChannel: options.channel).subscribe(options, subscriber)
    }

    /// Removes a subscriber (see `TransportPlugin.unsubscribe`).
    public func unsubscribe(_ id: SubscriptionID) throws(TransportError) { try shard(ofID: id).unsubscribe(id) }

    /// Settles a delivery (see `TransportPlugin.settle`).
    public func settle(_ delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {
        try shard(ofID: delivery).settle(delivery, settlement)
    }

    /// Settles several deliveries; each shard's go to it together (a subscriber's deliveries all
    /// come from its channel's shard, so usually there is one).
    public func settle(batch: [(DeliveryID, Settlement)]) -> [TransportError?] {
        guard bits > 0, let first = batch.first else { return brokers[0].settle(batch: batch) }
        let owner = BrokerShard.index(of: first.0, bits: bits)
        if batch.allSatisfy({ BrokerShard.index(of: $0.0, bits: bits) == owner }) { return shard(ofID: first.0).settle(batch: batch) }
        var results = [TransportError?](repeating: nil, count: batch.count)
        for positions in Dictionary(grouping: batch.indices, by: { BrokerShard.index(of: batch[$0].0, bits: bits) }).values {
            let outcomes = shard(ofID: batch[positions[0]].0).settle(batch: positions.map { batch[$0] })
            for (position, outcome) in zip(positions, outcomes) { results[position] = outcome }
        }
        return results
    }

    /// Settles every delivery in `deliveries` the same way (see `TransportInstance.settle(batch:_:)`).
    public func settle(batch deliveries: UnsafeBufferPointer<DeliveryID>, _ settlement: Settlement) -> [TransportError?] {
        guard bits > 0, let first = deliveries.first else { return brokers[0].settle(batch: deliveries, settlement) }
        let owner = BrokerShard.index(of: first, bits: bits)
        if deliveries.allSatisfy({ BrokerShard.index(of: $0, bits: bits) == owner }) {
            return shard(ofID: first).settle(batch: deliveries, settlement)
        }
        return settle(batch: deliveries.map { ($0, settlement) })
    }

    /// Extends leases (see `TransportInstance.extend(_:)`), each shard's deliveries through it.
    public func extend(_ deliveries: UnsafeBufferPointer<DeliveryID>) -> [TransportError?] {
        guard bits > 0, let first = deliveries.first else { return brokers[0].extend(deliveries) }
        let owner = BrokerShard.index(of: first, bits: bits)
        if deliveries.allSatisfy({ BrokerShard.index(of: $0, bits: bits) == owner }) { return shard(ofID: first).extend(deliveries) }
        var results = [TransportError?](repeating: nil, count: deliveries.count)
        for positions in Dictionary(grouping: deliveries.indices, by: { BrokerShard.index(of: deliveries[$0], bits: bits) }).values {
            let ids = positions.map { deliveries[$0] }
            let outcomes = ids.withUnsafeBufferPointer { shard(ofID: ids[0]).extend($0) }
            for (position, outcome) in zip(positions, outcomes) { results[position] = outcome }
        }
        return results
    }

    /// Drains every shard at once (see `TransportPlugin.drain`): all stop taking publishes and
    /// deliveries together, then each waits for its settlements until the one deadline.
    public func drain(deadlineNanos: Int64) throws(TransportError) {
        guard brokers.count > 1 else { return try brokers[0].drain(deadlineNanos: deadlineNanos) }
        for shard in brokers { shard.beginDrain() }
        var failure: TransportError?
        for shard in brokers {
            do throws(TransportError) {
                try shard.drain(deadlineNanos: deadlineNanos)
            } catch {
                failure = failure.map { TransportError(.timeout, "\($0.message); \(error.message)") } ?? error
            }
        }
        if let failure { throw failure }
    }

    /// The shards' counters, added up.
    public func currentStats() -> TransportStats {
        brokers.dropFirst().reduce(brokers[0].currentStats()) { total, shard in total.adding(shard.currentStats()) }
    }

    /// Stops every shard's dispatcher and releases unsettled deliveries.
    public func shutdown() {
        // Publishes fail at once in every shard, not when their shard's turn to stop comes.
        for shard in brokers { shard.closeToPublishes() }
        for shard in brokers { shard.shutdown() }
    }

    /// How many shards an in-memory transport has when its config does not say (`shards`): the
    /// cores this process may use halved, rounded down, at least one and at most eight — one
    /// shard where there are fewer than four cores, as before sharding, so small machines run one
    /// dispatcher thread. Usable cores count the CPU affinity and quota (``UsableCores``).
    public static var defaultCount: Int { min(max(UsableCores.count / 2, 1), 8) }
}

/// The stores of one transport's shards, whose messages count together against its `capacity`:
/// a publish to a shard that is full waits (or fails) when the transport is, not when the shard is.
///
/// A publisher waiting for room waits here, not in its shard: the room may be made in any shard
/// (a channel's consumer acknowledging), and each shard tells this object when it may have made
/// some. Waiting in its own shard, a publisher saw room made elsewhere only when it looked again.
public final class SharedCapacity: @unchecked Sendable {
    // @unchecked: the array never changes; stores are thread-safe; `waiting` is atomic and the
    // condition is made for sharing.
    private let stores: [MessageStore]
    private let condition = AdaptiveCondition()
    /// Publishers in ``waitForRoom(_:capacity:waitNanos:closing:)`` (they wait on `condition`).
    private let waiting = Atomic<Int>(0)

    /// Capacity shared by `stores`.
    public init(stores: [MessageStore]) { self.stores = stores }

    /// The stores' depths and in-flight counts, added up (in memory, read without their locks).
    func counts() -> (depth: UInt64, inFlight: UInt64) {
        stores.reduce((UInt64(0), UInt64(0))) { total, store in
            let counts = store.counts()
            return (total.0 + counts.depth, total.1 + counts.inFlight)
        }
    }

    /// How a wait for room ended.
    enum RoomWait { case room, full, closing }

    /// Waits until `count` more messages fit in `capacity` (`.room`), `waitNanos` passed (`.full`),
    /// or `closing` reads true (`.closing`: the shard drains or shuts down, and calls
    /// ``wakeEveryone()``).
    func waitForRoom(_ count: Int, capacity: Int, waitNanos: Int64, closing: borrowing Atomic<Bool>) -> RoomWait {
        let deadline = AdaptiveCondition.monotonicDeadline(in: waitNanos)
        condition.lock()
        defer { condition.unlock() }
        // Counted before the counts are read, with a fence between, and a shard that made room
        // lowers its counts, fences, then reads this count: one of the two sees the other's write
        // (see ``roomMayHaveChanged()``), so a wake-up is never lost between the check and the wait.
        waiting.add(1, ordering: .sequentiallyConsistent)
        defer { waiting.subtract(1, ordering: .relaxed) }
        while true {
            atomicMemoryFence(ordering: .sequentiallyConsistent)
            if closing.load(ordering: .acquiring) { return .closing }
            let (depth, inFlight) = counts()
            if Int(depth + inFlight) + count <= capacity { return .room }
            guard waitNanos > 0, monotonicNanoseconds() < deadline else { return .full }
            // Only in-memory stores are sharded: no other process changes the counts, and every
            // change that makes room is followed by ``roomMayHaveChanged()`` — so is every
            // release, which raises the counts read here before it lowers them (a look in
            // between errs high) — so no periodic look is needed.
            _ = condition.wait(untilMonotonicNanos: deadline)
        }
    }

    /// Called by a shard after it removed messages (settled, expired, taken at delivery): wakes
    /// the publishers waiting for room, if any. Costs a fence and a load when none waits.
    func roomMayHaveChanged() {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        guard waiting.load(ordering: .relaxed) > 0 else { return }
        wakeEveryone()
    }

    /// Wakes every waiting publisher, to look at the counts and at its shard's `closing` again.
    func wakeEveryone() {
        condition.lock()
        condition.broadcast()
        condition.unlock()
    }
}

extension TransportStats {
    /// These counters plus `other`'s (gauges included: shards hold disjoint messages).
    func adding(_ other: TransportStats) -> TransportStats {
        var sum = self
        sum.published += other.published
        sum.delivered += other.delivered
        sum.acked += other.acked
        sum.retried += other.retried
        sum.deadLettered += other.deadLettered
        sum.released += other.released
        sum.inFlight += other.inFlight
        sum.depth += other.depth
        return sum
    }
}
