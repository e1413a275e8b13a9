import DequeModule
import HeapModule
import SwitchyardABI
import Synchronization

/// A ``MessageStore`` in process memory: the fast path for development and tests. Everything is
/// gone when the process exits, by design.
public final class MemoryStore: MessageStore {
    /// Whether each group registered on a channel gets its own copy (a topic) or all subscribers
    /// share one copy (a queue). Dead-letter channels are always shared.
    public let fanOut: Bool
    /// How many recent messages per channel a fan-out store keeps for groups that start at
    /// `.earliest`.
    public let retainedPerChannel: Int
    /// Names dead-letter channels (shared by every group, never copied per group).
    private let deadLetterSuffix: String
    /// Messages live in this process only.
    public var isDurable: Bool { false }
    private func isDeadLetterChannel(_ channel: String) -> Bool { channel.hasSuffix(deadLetterSuffix) }
    private let state = Guarded(State())
    /// The state's counts, readable without its lock.
    private let liveCounts: PublishedCounts

    /// Counts kept by the state under its lock and read without it.
    private final class PublishedCounts: Sendable {
        let depth = Atomic<UInt64>(0)
        let inFlight = Atomic<UInt64>(0)
    }

    /// An empty store; channels ending in `deadLetterSuffix` are always shared by every group.
    public init(fanOut: Bool, retainedPerChannel: Int = 0, deadLetterSuffix: String = DeadLetter.defaultSuffix) {
        self.fanOut = fanOut
        self.retainedPerChannel = retainedPerChannel
        self.deadLetterSuffix = deadLetterSuffix
        liveCounts = state.withLock { $0.published }
    }

    private struct Timed: Comparable {
        let at: Int64
        let entry: UInt64
        let token: UInt64
        static func < (a: Timed, b: Timed) -> Bool { (a.at, a.entry) < (b.at, b.entry) }
    }

    /// One stored copy of a message. A class: the slab, the lease and the settlement each touch
    /// it through one pointer, where a struct of this size was copied in and out of the slab's
    /// deque on every access (with a retain and release of each string and array in it).
    /// Guarded by the store's lock like the rest of `State`: the lock, not a check at run time,
    /// keeps accesses apart (`@exclusivity(unchecked)` — the checks were 4% of the queue's
    /// instructions, a few for every access to every message).
    private final class Entry {
        @exclusivity(unchecked) var message: Message
        /// The group holding it: settling an entry reaches its group without a lookup.
        let group: Group
        @exclusivity(unchecked) var token: UInt64 = 0  // non-zero while leased
        @exclusivity(unchecked) var leaseUntil: Int64 = 0
        @exclusivity(unchecked) var holdsKey = false  // this entry holds its ordering key's lock
        @exclusivity(unchecked) var history: [String] = []

        init(message: Message, group: Group) {
            self.message = message
            self.group = group
        }
    }

    /// A subscriber group's entries on one channel. A class, so that finding it takes one hash
    /// of its key and changing it none: as a value in the dictionary it had to be moved out and
    /// back in to change without a copy, two more hashes of two strings each time (a fifth of the
    /// instructions of an in-memory request-reply call went to hashing). Groups are never removed.
    /// Guarded by the store's lock, like `Entry`.
    private final class Group {
        let key: GroupKey
        @exclusivity(unchecked) var ready = Deque<UInt64>()  // entry ids in publish order
        @exclusivity(unchecked) var waiting = Heap<Timed>()  // retries not yet visible
        /// Lease expiries in the order the leases were made, which is also their expiry order while
        /// the group's subscribers share a visibility timeout (the usual case): appending costs
        /// no heap insertion, and the records of settled leases leave from the front as soon as
        /// they are first there, so the records number about the leases in flight — in a heap
        /// they stayed until their time came, a visibility timeout's worth of every lease made.
        @exclusivity(unchecked) var leased = Deque<Timed>()
        /// Lease expiries earlier than the last one in `leased` (a subscriber with a shorter
        /// visibility timeout than another's). Stale records are skipped when they come due.
        @exclusivity(unchecked) var leasedOutOfOrder = Heap<Timed>()
        @exclusivity(unchecked) var lockedKeys: [String: Int] = [:]

        init(key: GroupKey) { self.key = key }

        /// Puts an entry back among the ready ones, in publish order (entry ids grow with it).
        func insertReady(_ id: UInt64) {
            if ready.isEmpty || ready.last! < id { return ready.append(id) }
            if ready.first! > id { return ready.prepend(id) }
            var low = 0
            var high = ready.count
            while low < high {
                let mid = (low + high) / 2
                if ready[mid] < id { low = mid + 1 } else { high = mid }
            }
            ready.insert(id, at: low)
        }

        /// Records when a lease expires.
        func recordLease(_ lease: Timed) {
            if let last = leased.last, last.at > lease.at { leasedOutOfOrder.insert(lease) } else { leased.append(lease) }
        }

        /// A lease record due at `now`, if any; it may be stale (settled or leased again since).
        func dueLease(now: Int64) -> Timed? {
            if let first = leased.first, first.at <= now { return leased.removeFirst() }
            if let top = leasedOutOfOrder.min, top.at <= now { return leasedOutOfOrder.removeMin() }
            return nil
        }

        /// When the earliest lease record comes due.
        var earliestLease: Int64? { earlier(leased.first?.at, leasedOutOfOrder.min?.at) }

        func unlock(_ key: String) {
            let remaining = (lockedKeys[key] ?? 1) - 1
            lockedKeys[key] = remaining > 0 ? remaining : nil
        }
    }

    private struct State {
        /// Entries by id: ids grow by one per entry and mostly leave in order.
        var entries = SequentialTable<Entry>()
        var groups: [GroupKey: Group] = [:]
        var groupsByChannel: [String: [String]] = [:]
        var retained: [String: Deque<Message>] = [:]
        var nextEntry: UInt64 = 0
        var nextToken: UInt64 = 0
        var depth: UInt64 = 0 { didSet { published.depth.store(depth, ordering: .relaxed) } }
        var inFlight: UInt64 = 0 { didSet { published.inFlight.store(inFlight, ordering: .relaxed) } }
        /// `depth` and `inFlight` as they change, for ``counts()`` to read without the lock.
        let published = PublishedCounts()
        /// Entries whose message expires, by expiry (stale items are skipped lazily).
        var expiries = Heap<Timed>()

        /// The groups found last, tried before `groups`: the dispatcher asks for the same few
        /// over and over with the same strings, and comparing a string with itself costs next to
        /// nothing, where hashing a long channel name (a reply channel's) cost more than the rest
        /// of a lookup — several per message.
        var recent = InlineArray<4, Group?>(repeating: nil)
        var nextRecent = 0

        /// The group `key` names, if there is one.
        mutating func existing(_ key: GroupKey) -> Group? {
            for index in recent.indices {
                if let group = recent[index], group.key.channel == key.channel, group.key.group == key.group { return group }
            }
            guard let group = groups[key] else { return nil }
            recent[nextRecent] = group
            nextRecent = (nextRecent + 1) % recent.count
            return group
        }

        /// The group `key` names, made when there is none yet.
        mutating func group(_ key: GroupKey) -> Group {
            if let group = existing(key) { return group }
            let group = Group(key: key)
            groups[key] = group
            return group
        }

        /// Stores `message` (consumed: the caller's copy becomes the entry's, with no other).
        mutating func insert(_ message: consuming Message, into group: Group) {
            nextEntry += 1
            let expiresAt = message.expiresAtNanos
            entries.insert(Entry(message: message, group: group), at: nextEntry)
            group.ready.append(nextEntry)
            depth += 1
            if expiresAt > 0 { expiries.insert(Timed(at: expiresAt, entry: nextEntry, token: 0)) }
        }

        /// Drops the records at the front of `group.leased` whose leases were settled or made
        /// again: leases mostly end in the order they were made, so this keeps the records to
        /// about the leases in flight.
        /// Drops stale lease records at the front of `group`'s (settled, leased again, or
        /// extended: an extension records the lease's new end, and the old record would otherwise
        /// wake the dispatcher at once, over and over, while the group has no room to lease).
        func dropSettledLeases(of group: Group) {
            while let first = group.leased.first, !isCurrent(first) { group.leased.removeFirst() }
            while let top = group.leasedOutOfOrder.min, !isCurrent(top) { group.leasedOutOfOrder.removeMin() }
        }

        /// Whether `record` is the lease its entry holds now.
        func isCurrent(_ record: Timed) -> Bool {
            guard let entry = entries[record.entry] else { return false }
            return entry.token == record.token && entry.leaseUntil == record.at
        }

        func unlockKey(of entry: Entry) {
            guard entry.holdsKey, let key = entry.message.orderingKey else { return }
            entry.holdsKey = false
            entry.group.unlock(key)
        }

        /// Leases `entry` under `token` until `until`, unless its ordering key is held (by an
        /// earlier entry, or one leased this round): then nil, and it stays ready.
        static func lease(
            _ entry: Entry, id: UInt64, token: UInt64, until: Int64, group: Group, keysThisRound: inout Set<String>
        ) -> LeasedMessage? {
            if let orderingKey = entry.message.orderingKey {
                let lockedByOther = group.lockedKeys[orderingKey] != nil && !entry.holdsKey
                if lockedByOther || keysThisRound.contains(orderingKey) { return nil }
                keysThisRound.insert(orderingKey)
                if !entry.holdsKey {
                    entry.holdsKey = true
                    group.lockedKeys[orderingKey, default: 0] += 1
                }
            }
            entry.token = token
            entry.leaseUntil = until
            entry.message.attempt += 1
            return LeasedMessage(ref: LeaseRef(entry: id, token: token), message: entry.message)
        }

        /// Removes the entry leased under `ref` for good (acknowledged), or throws not-found.
        mutating func remove(_ ref: LeaseRef) throws(TransportError) {
            unlockKey(of: try leased(ref))
            entries.removeValue(forKey: ref.entry)
            inFlight -= 1
        }

        /// The entry leased under `ref`, or a not-found error.
        func leased(_ ref: LeaseRef) throws(TransportError) -> Entry {
            guard ref.token != 0, let entry = entries[ref.entry], entry.token == ref.token else {
                throw TransportError(.notFound, "unknown, settled or expired delivery")
            }
            return entry
        }
    }

    public func append(_ messages: [Message]) throws(TransportError) {
        // Read through the buffer: the array's subscript copied each message once more on its way
        // into the entry.
        messages.withUnsafeBufferPointer { messages in append(messages) }
    }

    private func append(_ messages: UnsafeBufferPointer<Message>) {
        state.withLock { state in
            var start = messages.startIndex
            while start < messages.endIndex {
                // A run of messages on one channel (a batch, usually) finds its groups once.
                let channel = messages[start].channel
                var end = start + 1
                while end < messages.endIndex, messages[end].channel == channel { end += 1 }
                let shared = !fanOut || isDeadLetterChannel(channel)
                func insertRun(into key: GroupKey) {
                    let group = state.group(key)  // once per run, not per message
                    for index in start..<end { state.insert(messages[index], into: group) }
                }
                // One group (a queue's), without an array of one key: an allocation a publish.
                if shared {
                    insertRun(into: GroupKey(channel: channel, group: ""))
                } else {
                    for group in state.groupsByChannel[channel] ?? [] { insertRun(into: GroupKey(channel: channel, group: group)) }
                }
                if !shared, retainedPerChannel > 0 {
                    for index in start..<end {
                        state.retained[channel, default: []].append(messages[index])
                        if state.retained[channel]!.count > retainedPerChannel { state.retained[channel]!.removeFirst() }
                    }
                }
                start = end
            }
        }
    }

    public func addGroup(channel: String, group: String, start: StartPosition) throws(TransportError) {
        let shared = !fanOut || isDeadLetterChannel(channel)
        let key = GroupKey(channel: channel, group: shared ? "" : group)
        state.withLock { state in
            guard state.groups[key] == nil else { return }
            let created = state.group(key)
            guard !shared else { return }
            state.groupsByChannel[channel, default: []].append(group)
            if start == .earliest {
                for message in state.retained[channel] ?? [] { state.insert(message, into: created) }
            }
        }
    }

    public func lease(channel: String, group: String, limit: Int, now: Int64, leaseUntil: Int64) throws(TransportError) -> [LeasedMessage] {
        claim(channel: channel, group: group, limit: limit, now: now, leaseUntil: leaseUntil, removing: false)
    }

    public func take(channel: String, group: String, limit: Int, now: Int64, leaseUntil: Int64) throws(TransportError) -> [LeasedMessage] {
        claim(channel: channel, group: group, limit: limit, now: now, leaseUntil: leaseUntil, removing: true)
    }

    /// Leases the ready entries until `leaseUntil` or, `removing`, takes those without an
    /// ordering key out for good (their refs' tokens are 0), under one lock.
    private func claim(channel: String, group: String, limit: Int, now: Int64, leaseUntil: Int64, removing: Bool) -> [LeasedMessage] {
        let key = GroupKey(channel: channel, group: !fanOut || isDeadLetterChannel(channel) ? "" : group)
        return state.withLock { state in
            guard limit > 0, let group = state.existing(key) else { return [] }
            // Expired leases and due retries become ready (expired leases keep their attempt).
            while let top = group.dueLease(now: now) {
                // Stale records are skipped: settled, leased again, or extended (its new record comes later).
                guard state.isCurrent(top), let entry = state.entries[top.entry] else { continue }
                entry.token = 0
                if entry.holdsKey, let orderingKey = entry.message.orderingKey {
                    entry.holdsKey = false
                    group.unlock(orderingKey)
                }
                group.insertReady(top.entry)
                state.depth += 1  // up before down: a reader without the lock errs high
                state.inFlight -= 1
            }
            state.dropSettledLeases(of: group)
            while let top = group.waiting.min, top.at <= now {
                group.waiting.removeMin()
                if state.entries[top.entry] != nil { group.insertReady(top.entry) }  // else it expired meanwhile
            }
            var taken: [LeasedMessage] = []
            // Not for an empty group: reserving even nothing allocates (the empty array's storage
            // is shared), and most passes of a busy dispatcher find a group empty.
            if !group.ready.isEmpty { taken.reserveCapacity(min(limit, group.ready.count)) }
            var skipped: [UInt64] = []
            var keysThisRound = Set<String>()
            while taken.count < limit, skipped.count < 100_000, let id = group.ready.popFirst() {
                state.nextToken += 1
                let token = state.nextToken
                guard let entry = state.entries[id] else { continue }  // gone meanwhile (expired)
                guard let lease = State.lease(entry, id: id, token: token, until: leaseUntil, group: group, keysThisRound: &keysThisRound)
                else {
                    skipped.append(id)
                    continue
                }
                if !removing || lease.message.orderingKey != nil { group.recordLease(Timed(at: leaseUntil, entry: id, token: token)) }
                taken.append(lease)
            }
            if !skipped.isEmpty { group.ready.prepend(contentsOf: skipped) }
            state.inFlight += UInt64(taken.count)  // up before down: a reader without the lock errs high
            state.depth -= UInt64(taken.count)
            if removing {
                for index in taken.indices where taken[index].message.orderingKey == nil {
                    try? state.remove(taken[index].ref)  // leased just now, under this lock: never fails
                    taken[index] = LeasedMessage(ref: LeaseRef(entry: taken[index].ref.entry, token: 0), message: taken[index].message)
                }
            }
            return taken
        }
    }

    public func extend(_ leases: [(ref: LeaseRef, until: Int64)]) -> [TransportError?] {
        state.withLock { state in
            leases.map { lease in
                guard let entry = state.entries[lease.ref.entry], entry.token != 0, entry.token == lease.ref.token else {
                    return TransportError(.notFound, "unknown, settled or expired delivery")
                }
                entry.leaseUntil = lease.until
                entry.group.recordLease(Timed(at: lease.until, entry: lease.ref.entry, token: lease.ref.token))
                return nil
            }
        }
    }

    public func ack(_ ref: LeaseRef) throws(TransportError) {
        try state.withLock { (state) throws(TransportError) in
            try state.remove(ref)
        }
    }

    public func append(_ messages: [Message], acking ref: LeaseRef) throws(TransportError) {
        try state.withLock { (state) throws(TransportError) in
            try state.remove(ref)  // before anything is stored: both or neither
        }
        try append(messages)
    }

    public func ack(batch refs: [LeaseRef]) -> [TransportError?] {
        var results = [TransportError?].noErrors(count: refs.count)
        state.withLock { state in
            for index in refs.indices {
                do throws(TransportError) { try state.remove(refs[index]) } catch { results[index] = error }
            }
        }
        return results
    }

    public func retry(_ ref: LeaseRef, visibleAt: Int64, reason: String, now: Int64) throws(TransportError) {
        try state.withLock { (state) throws(TransportError) in
            let entry = try state.leased(ref)
            entry.token = 0
            entry.history.append("attempt \(entry.message.attempt) at \(now): \(reason)")
            state.depth += 1
            state.inFlight -= 1
            // The entry keeps its ordering key's lock while it waits, so later messages of the key
            // stay behind it; messages of other keys (or none) are not held back.
            if visibleAt <= now {
                entry.group.insertReady(ref.entry)
            } else {
                entry.group.waiting.insert(Timed(at: visibleAt, entry: ref.entry, token: 0))
            }
        }
    }

    public func release(_ ref: LeaseRef) throws(TransportError) {
        try state.withLock { (state) throws(TransportError) in
            let entry = try state.leased(ref)
            entry.token = 0
            entry.message.attempt -= 1
            state.unlockKey(of: entry)
            entry.group.insertReady(ref.entry)
            state.depth += 1
            state.inFlight -= 1
        }
    }

    @discardableResult
    public func deadLetter(_ ref: LeaseRef, to deadLetterChannel: String, reason: String, now: Int64) throws(TransportError) -> Message {
        try state.withLock { (state) throws(TransportError) -> Message in
            let entry = try state.leased(ref)
            state.unlockKey(of: entry)
            state.entries.removeValue(forKey: ref.entry)
            state.inFlight -= 1
            let dead = DeadLetter.copy(
                of: entry.message, to: deadLetterChannel, group: entry.group.key.group,
                groupCopy: fanOut && !isDeadLetterChannel(entry.message.channel), reason: reason,
                history: entry.history + ["attempt \(entry.message.attempt) at \(now): \(reason)"], now: now)
            state.insert(dead, into: state.group(GroupKey(channel: deadLetterChannel, group: "")))
            return dead
        }
    }

    public func removeExpired(now: Int64, limit: Int) throws(TransportError) -> [ExpiredEntry] {
        state.withLock { state in
            var removed: [ExpiredEntry] = []
            var held: [Timed] = []  // leased now: the delivery settles them, or they come back here
            while removed.count < limit, let top = state.expiries.min, top.at <= now {
                state.expiries.removeMin()
                guard let entry = state.entries[top.entry] else { continue }
                if entry.token != 0 && entry.leaseUntil > now {
                    held.append(top)
                    continue
                }
                if entry.token != 0 {
                    state.depth += 1  // a lease that expired: the entry counts as stored again
                    state.inFlight -= 1
                }
                state.unlockKey(of: entry)
                // Ready entries are in id order: find it by binary search. A waiting one is skipped
                // when its retry comes due (its entry is gone).
                let group = entry.group
                var low = 0
                var high = group.ready.count
                while low < high {
                    let mid = (low + high) / 2
                    if group.ready[mid] < top.entry { low = mid + 1 } else { high = mid }
                }
                if low < group.ready.count, group.ready[low] == top.entry { group.ready.remove(at: low) }
                state.entries.removeValue(forKey: top.entry)
                state.depth -= 1
                removed.append(ExpiredEntry(message: entry.message, group: entry.group.key.group, history: entry.history))
            }
            for item in held { state.expiries.insert(item) }
            return removed
        }
    }

    public func nextWakeup(channel: String, group: String, now: Int64) -> Int64? {
        let key = GroupKey(channel: channel, group: !fanOut || isDeadLetterChannel(channel) ? "" : group)
        return state.withLock { state in
            guard let group = state.existing(key) else { return nil }
            // Settled leases at the front would wake the dispatcher for nothing.
            state.dropSettledLeases(of: group)
            return earlier(group.waiting.min?.at, group.earliestLease)
        }
    }

    /// Lease records kept for expiry, every group together (for tests: they should number about
    /// the leases in flight, not every lease made within a visibility timeout).
    var leaseRecordCount: Int {
        state.withLock { state in state.groups.values.reduce(0) { $0 + $1.leased.count + $1.leasedOutOfOrder.count } }
    }

    /// Counted under the store's lock by one pass over its entries (each knows its group), so a
    /// store of many messages holds up its deliveries for that pass: operators ask, seconds apart.
    public func channelCounts(now: Int64) -> [ChannelStats]? {
        state.withLock { state in
            var tally: [ObjectIdentifier: (depth: UInt64, inFlight: UInt64)] = [:]
            state.entries.forEach { entry in
                let group = ObjectIdentifier(entry.group)
                if entry.token != 0 && entry.leaseUntil > now {
                    tally[group, default: (0, 0)].inFlight += 1
                } else {
                    tally[group, default: (0, 0)].depth += 1
                }
            }
            // Groups are never removed: the shared "" group of a channel that holds nothing (a reply
            // channel read to the end, one a dead-letter reader looked at) is left out; a topic's
            // named groups are listed, empty or not.
            return state.groups.values.compactMap { group in
                let counted = tally[ObjectIdentifier(group)] ?? (0, 0)
                if counted.depth + counted.inFlight == 0 && group.key.group.isEmpty { return nil }
                // A retry waiting for its backoff: in the heap, unleased. Records of entries that
                // expired meanwhile stay in the heap until they come due: skipped.
                var waiting: UInt64 = 0
                for item in group.waiting.unordered where item.at > now {
                    if let entry = state.entries[item.entry], entry.token == 0 { waiting += 1 }
                }
                return ChannelStats(
                    channel: group.key.channel, group: group.key.group, depth: counted.depth, inFlight: counted.inFlight, waiting: waiting)
            }
        }
    }

    public func counts() -> (depth: UInt64, inFlight: UInt64) {
        // Without the lock: every publish asks (to check the capacity), a sharded transport asks
        // every shard's store, and on 16 cores this lookup alone was 4% of the futex calls of a
        // 64-caller request-reply run (threads sent to sleep on the contended lock). A moment
        // stale, as counts read under the lock are by the time the caller looks.
        (liveCounts.depth.load(ordering: .relaxed), liveCounts.inFlight.load(ordering: .relaxed))
    }
}

/// The earlier of two times, either of which may be absent.
private func earlier(_ a: Int64?, _ b: Int64?) -> Int64? {
    guard let a else { return b }
    guard let b else { return a }
    return Swift.min(a, b)
}
