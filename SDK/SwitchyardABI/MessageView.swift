import CSwitchyard

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A borrowed, zero-copy view of a message that crossed the boundary (`sy_message`).
///
/// Valid only during the call that handed it over (`publish` on the plugin side, a delivery on
/// the subscriber side): read what you need, or call ``copy()`` to keep the message. Reading
/// `body` and the scalar fields costs nothing; the `String` accessors allocate.
public struct MessageView {
    /// The borrowed C message. Do not keep it past the call.
    public let pointer: UnsafePointer<sy_message>

    /// Checks what every reader relies on (size, id, channel, header pointer) without copying.
    public init(validating pointer: UnsafePointer<sy_message>) throws(TransportError) {
        let m = pointer.pointee
        guard Int(m.struct_size) >= MemoryLayout<sy_message>.size else {
            throw TransportError(.invalidArgument, "message struct_size \(m.struct_size) is smaller than ABI 1.0's \(MemoryLayout<sy_message>.size)")
        }
        guard m.id.len > 0, m.id.data != nil else { throw TransportError(.invalidArgument, "message id is empty") }
        guard m.channel.len > 0, m.channel.data != nil else { throw TransportError(.invalidArgument, "message channel is empty") }
        guard m.header_count == 0 || m.headers != nil else {
            throw TransportError(.invalidArgument, "message has \(m.header_count) headers but a NULL headers pointer")
        }
        guard m.body.len == 0 || m.body.data != nil else {
            throw TransportError(.invalidArgument, "message body has \(m.body.len) bytes but a NULL pointer")
        }
        self.pointer = pointer
    }

    /// Unique message id.
    public var id: String { String(pointer.pointee.id) }
    /// Destination channel.
    public var channel: String { String(pointer.pointee.channel) }
    /// The ordering key, or nil when the message has none.
    public var orderingKey: String? { pointer.pointee.ordering_key.len == 0 ? nil : String(pointer.pointee.ordering_key) }
    /// Deliveries so far, this one included.
    public var attempt: UInt32 { pointer.pointee.attempt }
    /// Earliest delivery time, ns since the Unix epoch; 0 means now.
    public var deliverAtNanos: Int64 { pointer.pointee.deliver_at_ns }
    /// When the transport accepted it, ns since the Unix epoch.
    public var enqueuedAtNanos: Int64 { pointer.pointee.enqueued_at_ns }
    /// The payload, borrowed.
    public var body: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: pointer.pointee.body.data, count: pointer.pointee.body.len) }
    /// Number of headers.
    public var headerCount: Int { pointer.pointee.header_count }
    /// All headers, copied.
    public var headers: [Header] {
        (0..<headerCount).map { Header(String(pointer.pointee.headers[$0].key), String(pointer.pointee.headers[$0].value)) }
    }

    /// The first value of header `key`, if any (compares bytes; allocates only the result).
    public func header(_ key: String) -> String? {
        var key = key
        return key.withUTF8 { wanted in
            for index in 0..<headerCount {
                let header = pointer.pointee.headers[index]
                if header.key.len == wanted.count,
                    wanted.isEmpty || memcmp(header.key.data, wanted.baseAddress!, wanted.count) == 0
                {
                    return String(header.value)
                }
            }
            return nil
        }
    }

    /// An owned copy, to keep after the call returns.
    public func copy() -> Message {
        Message(id: id, channel: channel, orderingKey: orderingKey, headers: headers, body: Array(body),
                attempt: attempt, deliverAtNanos: deliverAtNanos, enqueuedAtNanos: enqueuedAtNanos)
    }
}
