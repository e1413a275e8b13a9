import CSwitchyard

/// What a transport plugin can do, as declared by the `capabilities` field of its descriptor.
///
/// The host refuses configuration that needs a capability the plugin does not declare, so a
/// mismatch is found at startup, not in production. Bits this version does not know are kept
/// (and shown as `bit-N`), so an older host can still list a newer plugin.
public struct Capabilities: OptionSet, Hashable, Sendable, CustomStringConvertible {
    /// The `SY_CAP_*` bits.
    public let rawValue: UInt64
    /// Capabilities from `SY_CAP_*` bits, known or not.
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// Competing consumers: one delivery per message per subscriber group.
    public static let queue = Capabilities(rawValue: UInt64(SY_CAP_QUEUE))
    /// Every subscriber group gets its own copy of each message.
    public static let fanOut = Capabilities(rawValue: UInt64(SY_CAP_FANOUT))
    /// Honors a deliver-at time in the future.
    public static let delay = Capabilities(rawValue: UInt64(SY_CAP_DELAY))
    /// Timed redelivery: honors retry delays and the visibility timeout without holding back other
    /// messages, and keeps each message's attempt history.
    public static let retry = Capabilities(rawValue: UInt64(SY_CAP_RETRY))
    /// Moves messages to a dead-letter channel with a reason.
    public static let deadLetter = Capabilities(rawValue: UInt64(SY_CAP_DEAD_LETTER))
    /// A successful publish survives a process crash.
    public static let durable = Capabilities(rawValue: UInt64(SY_CAP_DURABLE))
    /// Delivers messages that share an ordering key one at a time, in order.
    public static let ordered = Capabilities(rawValue: UInt64(SY_CAP_ORDERED))
    /// A decorator: needs an inner transport at creation.
    public static let wrapsInner = Capabilities(rawValue: UInt64(SY_CAP_WRAPS_INNER))
    /// Never delivers a message past its expiry: dead-letters it ("expired") or drops it (ABI 1.3).
    public static let expiry = Capabilities(rawValue: UInt64(SY_CAP_EXPIRY))
    /// Only Switchyard hosts read the transport's messages (its store is its own, not a broker
    /// other systems share): typed calls and their replies travel in the envelope's compact form,
    /// not as CloudEvents headers. The innermost plugin of a chain decides it.
    public static let privateWire = Capabilities(rawValue: UInt64(SY_CAP_PRIVATE_WIRE))

    /// Every capability this version knows, with its name as used in config and in output.
    public static let known: [(name: String, capability: Capabilities)] = [
        ("queue", .queue), ("fan-out", .fanOut), ("delay", .delay), ("retry", .retry),
        ("dead-letter", .deadLetter), ("durable", .durable), ("ordered", .ordered),
        ("wraps-inner", .wrapsInner), ("expiry", .expiry), ("private-wire", .privateWire),
    ]

    /// The capability with the given config name, or nil.
    public init?(name: String) {
        guard let found = Self.known.first(where: { $0.name == name }) else { return nil }
        self = found.capability
    }

    /// Names of the capabilities set, in declaration order; unknown bits as `bit-N`.
    public var names: [String] {
        var result = Self.known.filter { contains($0.capability) }.map(\.name)
        let unknown = rawValue & ~Self.known.reduce(0) { $0 | $1.capability.rawValue }
        for bit in 0..<64 where unknown & (UInt64(1) << UInt64(bit)) != 0 {
            result.append("bit-\(bit)")
        }
        return result
    }

    public var description: String { names.isEmpty ? "none" : names.joined(separator: ", ") }
}
