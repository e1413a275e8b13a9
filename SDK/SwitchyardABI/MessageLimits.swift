/// Bounds on one message: what a transport stores and what the runtime sends and accepts. A
/// message over a limit is refused with ``TransportError/Code`` `.tooLarge` (on publish) or
/// dead-lettered with the reason (on receipt), never truncated.
public struct MessageLimits: Sendable, Hashable {
    /// Largest message: body + id + channel + every header key and value, in bytes.
    public var maxMessageBytes: Int
    /// Most headers on one message.
    public var maxHeaders: Int
    /// Largest total of header keys and values, in bytes.
    public var maxHeaderBytes: Int

    /// Limits with the documented defaults: 1 MiB per message, 64 headers, 16 KiB of headers.
    public init(maxMessageBytes: Int = 1 << 20, maxHeaders: Int = 64, maxHeaderBytes: Int = 16 << 10) {
        self.maxMessageBytes = maxMessageBytes
        self.maxHeaders = maxHeaders
        self.maxHeaderBytes = maxHeaderBytes
    }

    /// A size limit alone (`max_message_bytes`), for a transport whose engine bounds the headers
    /// itself.
    public static func size(_ maxMessageBytes: Int) -> MessageLimits {
        MessageLimits(maxMessageBytes: maxMessageBytes, maxHeaders: .max, maxHeaderBytes: .max)
    }

    /// The first limit `message` exceeds, as a sentence naming the config key (`prefix` +
    /// `max_message_bytes`, ...), or nil when it fits.
    public func violation(of message: Message, keyPrefix prefix: String = "") -> String? {
        let sizes = message.limitSizes
        guard exceeded(count: sizes.headerCount, headerBytes: sizes.headerBytes, otherBytes: sizes.otherBytes) else { return nil }
        // Only here is the id read (and the message captured: on the fast path that cost a copy).
        let id = message.id
        return violation(id: id, count: sizes.headerCount, headerBytes: sizes.headerBytes, otherBytes: sizes.otherBytes, keyPrefix: prefix)
    }

    private func exceeded(count: Int, headerBytes: Int, otherBytes: Int) -> Bool {
        count > maxHeaders || headerBytes > maxHeaderBytes || headerBytes + otherBytes > maxMessageBytes
    }

    /// As ``violation(of:keyPrefix:)`` for a message view, without copying it.
    public func violation(of message: MessageView, keyPrefix prefix: String = "") -> String? {
        let c = message.fields
        return violation(
            id: message.id, count: c.header_count, headerBytes: CHeaders(c.headers, count: c.header_count).byteCount,
            otherBytes: c.body.len + c.id.len + c.channel.len, keyPrefix: prefix)
    }

    // `id` only when a limit is exceeded: reading a view's id allocates a string.
    private func violation(id: @autoclosure () -> String, count: Int, headerBytes: Int, otherBytes: Int, keyPrefix prefix: String) -> String? {
        if count > maxHeaders { return "message \(id()) has \(count) headers; \(prefix)max_headers is \(maxHeaders)" }
        if headerBytes > maxHeaderBytes { return "message \(id()) has \(headerBytes) bytes of headers; \(prefix)max_header_bytes is \(maxHeaderBytes)" }
        let size = headerBytes + otherBytes
        if size > maxMessageBytes { return "message \(id()) is \(size) bytes; \(prefix)max_message_bytes is \(maxMessageBytes)" }
        return nil
    }
}
