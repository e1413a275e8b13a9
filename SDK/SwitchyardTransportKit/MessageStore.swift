import SwitchyardABI

/// Identifies one lease of one stored entry. `entry` names the stored copy; `token` changes every
/// time the entry is leased, so a settlement from a lease that already expired cannot touch the
/// entry's next lease.
public struct LeaseRef: Hashable, Sendable {
    /// The stored entry.
    public let entry: UInt64
    /// This lease of it; 0: no lease (the entry was taken out of the store, ``MessageStore/take(channel:group:limit:now:leaseUntil:)``).
    public let token: UInt64
    /// A reference to lease `token` of `entry`.
    public init(entry: UInt64, token: UInt64) {
        self.entry = entry
        self.token = token
    }
}

/// A message handed out under a lease, its attempt already counted.
public struct LeasedMessage: Sendable {
    /// Whether it was taken out of the store rather than leased (nothing to settle).
    public var isTaken: Bool { ref.token == 0 }
    /// The lease to settle it by.
    public let ref: LeaseRef
    /// The message, attempt counted.
    public let message: Message
    /// A leased message.
    public init(ref: LeaseRef, message: Message) {
        self.ref = ref
        self.message = message
    }
}

/// An entry taken out of a store because its message expired before it was delivered
/// (``MessageStore/removeExpired(now:limit:)``).
public struct ExpiredEntry: Sendable {
    /// The message, attempts made so far in `attempt`.
    public let message: Message
    /// The subscriber group whose copy it was (`""` on a queue).
    public let group: String
    /// Its attempt history, one line per failed attempt.
    public let history: [String]
    /// An expired entry.
    public init(message: Message, group: String, history: [String]) {
        self.message = message
        self.group = group
        self.history = history
    }
}

/// Where dead-lettered messages go and what they carry.
public enum DeadLetter {
    /// The suffix that names a channel's dead-letter channel (`orders` → `orders.dlq`) unless a
    /// transport's config says otherwise (`dead_letter_suffix`). The one definition: the bundled
    /// plugins and the `switchyard dlq` command use it.
    public static let defaultSuffix = ".dlq"

    /// The dead-letter copy of `message`: same id and body, on `channel`, with the ``DeadLetterHeader`` headers
    /// (replacing any from an earlier dead-lettering).
    ///
    /// `group` is recorded (``DeadLetterHeader/group``) when it is not empty, and with
    /// `groupCopy` also when it is: the message was one subscriber group's copy on a fan-out
    /// transport, and the empty group is the default one. A replay then goes to that group alone
    /// (``DeadLetterHeader/replayGroup``); a letter without the header goes to every group.
    public static func copy(
        of message: Message, to channel: String, group: String, groupCopy: Bool = false, reason: String, history: [String], now: Int64
    ) -> Message {
        var dead = message
        dead.headers.removeAll { $0.key.hasPrefix(DeadLetterHeader.prefix) }
        dead.headers += [
            Header(DeadLetterHeader.reason, reason), Header(DeadLetterHeader.channel, message.channel), Header(DeadLetterHeader.at, String(now)),
            Header(DeadLetterHeader.attempts, String(message.attempt)), Header(DeadLetterHeader.history, history.joined(separator: "\n")),
        ]
        if groupCopy || !group.isEmpty { dead.headers.append(Header(DeadLetterHeader.group, group)) }
        dead.channel = channel
        dead.attempt = 0
        dead.deliverAtNanos = 0
        dead.expiresAtNanos = 0  // a dead letter is kept until someone deals with it
        dead.flags.remove(.dropWhenExpired)
        return dead
    }

    /// The message a dead letter was made from, ready to publish again: its original channel
    /// (from `sy-dlq-channel`, else `fallbackChannel`), without the dead-letter headers, attempt 0.
    public static func original(of dead: Message, fallbackChannel: String) -> Message {
        var message = dead
        message.channel = dead.header(DeadLetterHeader.channel) ?? fallbackChannel
        message.headers.removeAll { $0.key.hasPrefix(DeadLetterHeader.prefix) }
        message.attempt = 0
        return message
    }
}

/// Storage behind a ``Broker``: stored entries, per subscriber group, with leases.
///
/// A queue keeps one entry per message (group `""`); a fan-out store keeps one entry per message
/// per group registered on its channel. Entries become ready at their visible time, are leased to
/// deliveries, and end acknowledged or dead-lettered. Implementations must honor ordering keys: at
/// most one entry per (group, key) is leased or waiting to be retried at a time, and entries of a
/// key are leased in publish order.
///
/// Implementations are thread-safe. Errors are `TransportError`s (`.io` for storage failures).
public protocol MessageStore: AnyObject, Sendable {
    /// Whether stored messages outlive the process (a file, a server). False for a store in
    /// memory: a ``BrokerTransport`` over it then leaves `.durable` out of its instance's
    /// capabilities (ABI 1.8 `instance_capabilities`). Default: true.
    var isDurable: Bool { get }

    /// Stores messages. Returns only when they are as durable as the store promises.
    func append(_ messages: [Message]) throws(TransportError)
    /// Stores messages without waiting: `done` is called exactly once, with nil once they are as
    /// durable as the store promises, or with the error that stored none of them — on any thread,
    /// possibly before this returns, and it must return promptly. The default stores them at once
    /// and then calls `done`: stores whose append waits for a commit override it.
    func append(_ messages: [Message], done: @escaping (TransportError?) -> Void)
    /// Makes sure `group` exists on `channel` (fan-out stores copy new messages to it from now on;
    /// with `.earliest` a new group also gets the messages still retained).
    func addGroup(channel: String, group: String, start: StartPosition) throws(TransportError)
    /// Leases up to `limit` ready entries of `group` on `channel` until `leaseUntil`, counting an
    /// attempt on each. Entries whose lease expired count as ready.
    ///
    /// Fewer than `limit` means that nothing more is ready now: the broker then looks at the group
    /// again only when told (a publish, a settlement, ``setChangeHandler(_:)``) or at the time
    /// ``nextWakeup(channel:group:now:)`` gives. A store that drops entries it cannot return (a
    /// corrupt record, dead-lettered instead) calls the change handler afterwards.
    func lease(channel: String, group: String, limit: Int, now: Int64, leaseUntil: Int64) throws(TransportError) -> [LeasedMessage]
    /// ``lease(channel:group:limit:now:leaseUntil:)`` for subscriptions settled on delivery
    /// (``SubscribeOptions/settleOnDelivery``): entries whose message has no ordering key are
    /// taken out of the store for good instead (their refs have token 0, ``LeasedMessage/isTaken``),
    /// in the same step — one commit on a durable store, not synced: a take lost in a power cut
    /// delivers the message again. Entries with a key are leased as `lease` would: taking one
    /// would free its key for the next before this one is handled. The default leases, then
    /// acknowledges the entries without a key.
    func take(channel: String, group: String, limit: Int, now: Int64, leaseUntil: Int64) throws(TransportError) -> [LeasedMessage]
    /// Removes a leased entry for good.
    func ack(_ ref: LeaseRef) throws(TransportError)
    /// Stores `messages` and removes the leased entry `ref` as one unit: both (in one commit on a
    /// durable store) or neither, with `.notFound` when `ref` is no longer leased.
    func append(_ messages: [Message], acking ref: LeaseRef) throws(TransportError)
    /// Removes several leased entries, each on its own (one lock or one commit for all where the
    /// store can); returns each one's error, or nil where it was removed.
    func ack(batch refs: [LeaseRef]) -> [TransportError?]
    /// Makes a leased entry ready again at `visibleAt`, recording `reason` in its history.
    func retry(_ ref: LeaseRef, visibleAt: Int64, reason: String, now: Int64) throws(TransportError)
    /// Makes a leased entry ready again at once, without counting the attempt.
    func release(_ ref: LeaseRef) throws(TransportError)
    /// Moves the leases in `leases` to end at their `until` (each on its own, one lock or one
    /// commit for all where the store can, not synced: a lease lost in a power cut only delivers
    /// the message again); returns exactly one result per lease, in order: nil where it was
    /// moved, `.notFound` when the entry is no longer leased under that ref (the host then stops
    /// extending that call), any other error for a failure that may pass (extended again at the
    /// next look). The broker has already refused unknown, settled and expired deliveries, so a
    /// store checks only entry and token; `until` (wall clock, nanoseconds, as every time here)
    /// may be earlier than the lease's end (the broker moves one back when it lost a race with
    /// the lease's expiry). Default: `.unsupported` for each.
    func extend(_ leases: [(ref: LeaseRef, until: Int64)]) -> [TransportError?]
    /// Moves a leased entry to `deadLetterChannel` with `reason` and its history; returns the
    /// message as stored there (see ``DeadLetter/copy(of:to:group:reason:history:now:)``).
    @discardableResult
    func deadLetter(_ ref: LeaseRef, to deadLetterChannel: String, reason: String, now: Int64) throws(TransportError) -> Message
    /// Removes up to `limit` entries whose message expired at `now` (`expiresAtNanos`) and that
    /// no delivery holds (ready, waiting for a retry, or with an expired lease), and returns them;
    /// the broker drops or dead-letters them. Lets expired messages on channels nobody reads
    /// leave instead of accumulating forever.
    func removeExpired(now: Int64, limit: Int) throws(TransportError) -> [ExpiredEntry]
    /// The earliest future time at which an entry of the group becomes ready (a retry's visible
    /// time or a lease's expiry), or nil.
    func nextWakeup(channel: String, group: String, now: Int64) -> Int64?
    /// Entries stored and not leased (`depth`) and leased (`inFlight`), over all channels.
    func counts() -> (depth: UInt64, inFlight: UInt64)
    /// What the store holds per channel and group, now (ABI 1.9 `channel_stats`): an entry leased
    /// until after `now` is in flight, any other is depth; of depth, one not visible until after
    /// `now` (a retry's backoff) is also waiting. Every (channel, group) with an entry, and a
    /// topic's named groups with none; never an empty shared group (those of reply channels long
    /// read would pile up). Shared copies (a queue's, a dead-letter channel's) have group "".
    /// Operators ask, not the data path. Default: nil, the store does not report them.
    func channelCounts(now: Int64) throws(TransportError) -> [ChannelStats]?
    /// ``counts()`` for a caller that must not wait for a count (a publish that does not block):
    /// nil when the store would have to count now. Default: ``counts()``, for stores that count
    /// at once (in memory); a store whose count reads its storage answers from the last count.
    func knownCounts() -> (depth: UInt64, inFlight: UInt64)?
    /// Registers a function to call when another process changes the store (stores shared between
    /// processes call it; others never do), except for the changes its claimed change descriptor
    /// tells (``claimChangeDescriptor()``).
    func setChangeHandler(_ handler: @escaping @Sendable () -> Void)
    /// Hands over a descriptor that becomes readable when another process may have changed the
    /// store, for the dispatcher to wait on itself (no thread between the change and the
    /// dispatcher); -1 (the default) when the store has none. From then on, what the descriptor
    /// tells is no longer also told through the change handler (which still tells the rest). The
    /// store keeps it open while it lives; call it once.
    func claimChangeDescriptor() -> Int32
    /// Reads what made the claimed descriptor readable; whether another process changed the
    /// store (it also turns readable at this process's own commits). One thread at a time.
    func takeChanges() -> Bool
    /// Called once by the broker that uses the store, last in its shutdown, after `release` of
    /// every lease still unsettled (no call of the broker's runs or comes after it; `destroy`
    /// returns after this does, and Switchyard's hosts destroy without draining first: finish
    /// background work here, bounded in time). A store that holds
    /// files, connections or threads lets go of them here, not later: whoever opens the store
    /// next (another process, `sqlite3`) must find it free. A store shared with something else
    /// may keep what that still needs. The default does nothing.
    func brokerDidShutDown()
}

extension MessageStore {
    public var isDurable: Bool { true }

    public func take(channel: String, group: String, limit: Int, now: Int64, leaseUntil: Int64) throws(TransportError) -> [LeasedMessage] {
        var leased = try lease(channel: channel, group: group, limit: limit, now: now, leaseUntil: leaseUntil)
        let unkeyed = leased.indices.filter { leased[$0].message.orderingKey == nil }
        if unkeyed.isEmpty { return leased }
        // One whose acknowledgement failed stays leased, and is delivered as such.
        for (index, error) in zip(unkeyed, ack(batch: unkeyed.map { leased[$0].ref })) where error == nil {
            leased[index] = LeasedMessage(ref: LeaseRef(entry: leased[index].ref.entry, token: 0), message: leased[index].message)
        }
        return leased
    }

    public func append(_ messages: [Message], done: @escaping (TransportError?) -> Void) {
        do throws(TransportError) {
            try append(messages)
            done(nil)
        } catch {
            done(error)
        }
    }

    public func knownCounts() -> (depth: UInt64, inFlight: UInt64)? { counts() }
    public func channelCounts(now: Int64) throws(TransportError) -> [ChannelStats]? { nil }

    public func claimChangeDescriptor() -> Int32 { -1 }
    public func takeChanges() -> Bool { false }
    public func brokerDidShutDown() {}

    public func extend(_ leases: [(ref: LeaseRef, until: Int64)]) -> [TransportError?] {
        leases.map { _ in TransportError(.unsupported, "this store cannot extend leases") }
    }

    public func ack(batch refs: [LeaseRef]) -> [TransportError?] {
        refs.map { ref in
            do throws(TransportError) {
                try ack(ref)
                return nil
            } catch {
                return error
            }
        }
    }

    /// Stores that only this process changes never call the handler.
    public func setChangeHandler(_ handler: @escaping @Sendable () -> Void) {}
}
