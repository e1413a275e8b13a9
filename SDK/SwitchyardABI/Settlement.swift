import CSwitchyard

/// How one delivery ends: the Swift form of `sy_settlement`.
public enum Settlement: Hashable, Sendable {
    /// Done; remove the message.
    case ack
    /// Failed; deliver again after `afterNanos`, counting an attempt. `reason` is the last error.
    case retry(afterNanos: Int64, reason: String)
    /// Give up now: move the message to the dead-letter channel with `reason`.
    case deadLetter(reason: String)
    /// Give it back untouched, without counting an attempt (e.g. during shutdown).
    case release

    /// Reads a settlement that crossed the boundary; throws `invalidArgument` for an unknown outcome.
    public init(copying settlement: UnsafePointer<sy_settlement>) throws(TransportError) {
        guard let s = SizedStruct.read(settlement, minimum: SizedStruct.settlementV1_0) else {
            throw TransportError(.invalidArgument, "settlement struct_size \(settlement.pointee.struct_size) is smaller than ABI 1.0's")
        }
        switch s.outcome {
        case SY_SETTLE_ACK: self = .ack
        case SY_SETTLE_RETRY: self = .retry(afterNanos: max(0, s.retry_after_ns), reason: String(s.reason))
        case SY_SETTLE_DEAD_LETTER: self = .deadLetter(reason: String(s.reason))
        case SY_SETTLE_RELEASE: self = .release
        default: throw TransportError(.invalidArgument, "unknown settlement outcome \(s.outcome)")
        }
    }

    /// The outcome, delay and reason of the C form.
    @usableFromInline
    var cParts: (outcome: Int32, delay: Int64, reason: String) {
        switch self {
        case .ack: (SY_SETTLE_ACK, 0, "")
        case .retry(let after, let reason): (SY_SETTLE_RETRY, after, reason)
        case .deadLetter(let reason): (SY_SETTLE_DEAD_LETTER, 0, reason)
        case .release: (SY_SETTLE_RELEASE, 0, "")
        }
    }

    /// Lends `settlements` to C code as one `sy_settlement` array (for `settle_batch`), valid only
    /// inside `body`; one allocation holds every reason.
    public static func withCSettlements<R>(_ settlements: some Collection<Settlement>, _ body: (UnsafePointer<sy_settlement>) -> R) -> R {
        // Most settlements have no reason (acknowledgements, releases): the buffer stays empty.
        var text: [UInt8] = []
        for settlement in settlements {
            switch settlement {
            case .ack, .release: continue
            case .retry(_, let reason), .deadLetter(let reason): text += reason.utf8
            }
        }
        return text.withUnsafeBufferPointer { bytes in
            withUnsafeTemporaryAllocation(of: sy_settlement.self, capacity: Swift.max(1, settlements.count)) { array in
                var offset = 0
                for (index, settlement) in settlements.enumerated() {
                    let (outcome, delay, reason) = settlement.cParts
                    let length = reason.utf8.count
                    let slice =
                        length == 0
                        ? sy_str(data: nil, len: 0)
                        : sy_str(data: UnsafeRawPointer(bytes.baseAddress! + offset).assumingMemoryBound(to: CChar.self), len: length)
                    offset += length
                    array.initializeElement(
                        at: index,
                        to: sy_settlement(
                            struct_size: UInt32(MemoryLayout<sy_settlement>.size), outcome: outcome, retry_after_ns: delay, reason: slice))
                }
                return body(UnsafePointer(array.baseAddress!))
            }
        }
    }

    /// Lends this settlement to C code, valid only inside `body`.
    @inlinable
    public func withCSettlement<R, E: Error>(_ body: (UnsafePointer<sy_settlement>) throws(E) -> R) throws(E) -> R {
        let (outcome, delay, reason) = cParts
        return try reason.withSyStr { (reasonSlice) throws(E) -> R in
            var settlement = sy_settlement(
                struct_size: UInt32(MemoryLayout<sy_settlement>.size), outcome: outcome,
                retry_after_ns: delay, reason: reasonSlice)
            return try body(&settlement)
        }
    }
}

/// Where a new subscriber group starts on a transport that keeps history.
public enum StartPosition: Int32, Sendable {
    /// Only messages published after the group was created.
    case new = 0
    /// Every message the transport still keeps.
    case earliest = 1
}

/// What to subscribe to: the Swift form of `sy_subscribe_options`. Zero values take the
/// transport instance's configured defaults.
public struct SubscribeOptions: Hashable, Sendable {
    /// Channel to consume.
    public var channel: String
    /// Subscriber group; members compete, every group gets its own copy on fan-out transports.
    /// Empty: the default group.
    public var group: String
    /// Most unsettled deliveries at once (prefetch); 0: the transport's default.
    public var maxInFlight: UInt32
    /// Redeliver an unsettled delivery after this long; 0: the transport's default.
    public var visibilityTimeoutNanos: Int64
    /// Where a group the transport has not seen before starts.
    public var start: StartPosition
    /// Asks the transport to settle each delivery as it hands it over, at most once
    /// (`SY_SUBSCRIBE_SETTLE_ON_DELIVERY`, ABI 1.4): a delivery it so treated carries
    /// ``MessageFlags/settled`` and is not settled by the subscriber; one without the flag is
    /// settled as usual.
    public var settleOnDelivery: Bool

    /// `SY_SUBSCRIBE_SETTLE_ON_DELIVERY` (the header's cast macros do not reach Swift).
    public static let settleOnDeliveryFlag: UInt64 = 1 << 0

    /// Options for `channel`; zero values take the transport's defaults.
    public init(
        channel: String, group: String = "", maxInFlight: UInt32 = 0,
        visibilityTimeoutNanos: Int64 = 0, start: StartPosition = .new, settleOnDelivery: Bool = false
    ) {
        self.channel = channel
        self.group = group
        self.maxInFlight = maxInFlight
        self.visibilityTimeoutNanos = visibilityTimeoutNanos
        self.start = start
        self.settleOnDelivery = settleOnDelivery
    }

    /// Reads options that crossed the boundary, taking absent tail fields as zero.
    public init(copying options: UnsafePointer<sy_subscribe_options>) throws(TransportError) {
        guard let o = SizedStruct.read(options, minimum: SizedStruct.subscribeOptionsV1_0) else {
            throw TransportError(.invalidArgument, "subscribe options struct_size \(options.pointee.struct_size) is smaller than ABI 1.0's")
        }
        guard o.channel.len > 0 else { throw TransportError(.invalidArgument, "subscribe channel is empty") }
        guard let start = StartPosition(rawValue: o.start) else {
            throw TransportError(.invalidArgument, "unknown start position \(o.start)")
        }
        self.init(
            channel: String(o.channel), group: String(o.group), maxInFlight: o.max_in_flight,
            visibilityTimeoutNanos: o.visibility_timeout_ns, start: start,
            settleOnDelivery: o.flags & Self.settleOnDeliveryFlag != 0)  // 0 below 1.4's size
    }

    /// Lends these options to C code, valid only inside `body`.
    public func withCOptions<R, E: Error>(_ body: (UnsafePointer<sy_subscribe_options>) throws(E) -> R) throws(E) -> R {
        try channel.withSyStr { (channelSlice) throws(E) -> R in
            try group.withSyStr { (groupSlice) throws(E) -> R in
                var options = sy_subscribe_options(
                    struct_size: UInt32(MemoryLayout<sy_subscribe_options>.size), max_in_flight: maxInFlight,
                    channel: channelSlice, group: groupSlice, visibility_timeout_ns: visibilityTimeoutNanos,
                    start: start.rawValue, reserved: 0, flags: settleOnDelivery ? Self.settleOnDeliveryFlag : 0)
                return try body(&options)
            }
        }
    }
}

/// Counters a transport instance reports: the Swift form of `sy_stats`.
public struct TransportStats: Hashable, Sendable, Codable {
    /// Messages accepted by publish.
    public var published: UInt64 = 0
    /// Deliveries handed to subscribers.
    public var delivered: UInt64 = 0
    /// Deliveries acknowledged.
    public var acked: UInt64 = 0
    /// Deliveries settled with retry.
    public var retried: UInt64 = 0
    /// Deliveries dead-lettered.
    public var deadLettered: UInt64 = 0
    /// Deliveries released (not counted as attempts).
    public var released: UInt64 = 0
    /// Deliveries handed out and not yet settled, now.
    public var inFlight: UInt64 = 0
    /// Messages stored and not yet delivered, now.
    public var depth: UInt64 = 0

    /// All counters zero.
    public init() {}

    /// Reads counters a plugin filled in. The caller zeroes `stats` and sets its `struct_size`
    /// before the call, so fields an older plugin does not know read as zero.
    public init(copying stats: sy_stats) {
        (published, delivered, acked, retried) = (stats.published, stats.delivered, stats.acked, stats.retried)
        (deadLettered, released, inFlight, depth) = (stats.dead_lettered, stats.released, stats.in_flight, stats.depth)
    }

    /// Writes these counters into `out`, only the fields that fit in the caller's `struct_size`.
    public func write(to out: UnsafeMutablePointer<sy_stats>) {
        var full = sy_stats()
        full.struct_size = out.pointee.struct_size
        full.published = published
        full.delivered = delivered
        full.acked = acked
        full.retried = retried
        full.dead_lettered = deadLettered
        full.released = released
        full.in_flight = inFlight
        full.depth = depth
        let size = min(Int(out.pointee.struct_size), MemoryLayout<sy_stats>.size)
        withUnsafeBytes(of: &full) { source in
            UnsafeMutableRawPointer(out).copyMemory(from: source.baseAddress!, byteCount: size)
        }
    }
}
