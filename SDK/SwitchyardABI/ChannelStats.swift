import CSwitchyard

/// What a transport instance holds on one channel for one subscriber group, now: the Swift form of
/// `sy_channel_stats` (ABI 1.9 `channel_stats`). Operators read it per channel where
/// ``TransportStats`` gives only the instance's totals.
public struct ChannelStats: Hashable, Sendable, Codable {
    /// The channel (`payments`, or its dead-letter channel `payments.dlq`).
    public var channel: String
    /// The subscriber group whose copies these are on a fan-out transport (a topic); empty where
    /// every subscriber shares one copy (a queue, a dead-letter channel).
    public var group: String
    /// Messages stored and not yet delivered, those waiting for a retry's backoff included.
    public var depth: UInt64
    /// Deliveries handed out and not yet settled.
    public var inFlight: UInt64
    /// Of ``depth``: the messages not due yet (a retry's backoff, a later deliver-at the transport
    /// holds itself), where the transport can tell (0 where it cannot: NATS JetStream keeps a
    /// message waiting for its retry unacknowledged, so it reads as in flight).
    public var waiting: UInt64

    /// Counts for `channel` (and `group`, empty for a shared copy).
    public init(channel: String, group: String = "", depth: UInt64 = 0, inFlight: UInt64 = 0, waiting: UInt64 = 0) {
        self.channel = channel
        self.group = group
        self.depth = depth
        self.inFlight = inFlight
        self.waiting = waiting
    }

    /// Reads what a plugin reported, by the sized-struct rule; nil when the struct is smaller
    /// than ABI 1.9's.
    public init?(reading stats: UnsafePointer<sy_channel_stats>) {
        guard let copy = SizedStruct.read(stats, minimum: SizedStruct.channelStatsV1_9) else { return nil }
        self.init(
            channel: String(copy.channel), group: String(copy.group), depth: copy.depth, inFlight: copy.in_flight, waiting: copy.waiting)
    }

    /// Lends these counts to C code as an `sy_channel_stats`, valid only inside `body`.
    public func withCStruct<R>(_ body: (UnsafePointer<sy_channel_stats>) -> R) -> R {
        channel.withSyStr { channel in
            group.withSyStr { group in
                var out = sy_channel_stats(
                    struct_size: UInt32(MemoryLayout<sy_channel_stats>.size), reserved: 0, channel: channel, group: group,
                    depth: depth, in_flight: inFlight, waiting: waiting)
                return body(&out)
            }
        }
    }

    /// Adds up counts of the same channel and group (a transport split into shards reports each
    /// shard's), sorted by channel, then group.
    public static func merged(_ stats: some Sequence<ChannelStats>) -> [ChannelStats] {
        var byKey: [String: ChannelStats] = [:]
        for one in stats {
            let key = one.channel + "\u{0}" + one.group
            if var sum = byKey[key] {
                sum.depth += one.depth
                sum.inFlight += one.inFlight
                sum.waiting += one.waiting
                byKey[key] = sum
            } else {
                byKey[key] = one
            }
        }
        return byKey.values.sorted { ($0.channel, $0.group) < ($1.channel, $1.group) }
    }
}
