import CSwitchyard

/// One message header. Keys are case-sensitive and may repeat.
public struct Header: Hashable, Sendable {
    /// The header's name.
    public var key: String
    /// The header's value.
    public var value: String
    /// A header `key: value`.
    public init(_ key: String, _ value: String) {
        self.key = key
        self.value = value
    }
}

/// A message owned by Swift code: the Swift form of `sy_message`.
///
/// Copy in with `Message(copying:)` and lend out with `withCMessage(_:)`; both follow the ABI's
/// ownership rule that a `sy_message` is only borrowed for the duration of a call.
public struct Message: Hashable, Sendable {
    /// Unique id chosen by the publisher.
    public var id: String
    /// Destination channel (queue or topic name).
    public var channel: String
    /// Messages sharing a key are delivered one at a time, in order. `nil`: no ordering.
    public var orderingKey: String?
    /// Headers, in order.
    public var headers: [Header]
    /// Opaque payload.
    public var body: [UInt8]
    /// Deliveries so far, this one included; set by the transport on delivery.
    public var attempt: UInt32
    /// Earliest delivery time in nanoseconds since the Unix epoch; 0 means now.
    public var deliverAtNanos: Int64
    /// When the transport accepted the message (ns since the Unix epoch); set on delivery.
    public var enqueuedAtNanos: Int64
    /// When the message expires (ns since the Unix epoch); 0: never. A transport with the
    /// `expiry` capability never delivers it from then on (ABI 1.3).
    public var expiresAtNanos: Int64
    /// What happens at expiry, and other `SY_MESSAGE_*` flags (ABI 1.3).
    public var flags: MessageFlags

    /// A message with the given fields; everything but `id` and `channel` has a default.
    public init(
        id: String, channel: String, orderingKey: String? = nil, headers: [Header] = [],
        body: [UInt8] = [], attempt: UInt32 = 0, deliverAtNanos: Int64 = 0, enqueuedAtNanos: Int64 = 0,
        expiresAtNanos: Int64 = 0, flags: MessageFlags = []
    ) {
        self.expiresAtNanos = expiresAtNanos
        self.flags = flags
        self.id = id
        self.channel = channel
        self.orderingKey = orderingKey
        self.headers = headers
        self.body = body
        self.attempt = attempt
        self.deliverAtNanos = deliverAtNanos
        self.enqueuedAtNanos = enqueuedAtNanos
    }

    /// The first value of header `key`, if any.
    public func header(_ key: String) -> String? { headers.first { $0.key == key }?.value }

    /// Whether the message has expired at `nowNanos` (wall clock).
    public func isExpired(at nowNanos: Int64) -> Bool { expiresAtNanos > 0 && nowNanos >= expiresAtNanos }
}

/// `sy_message.flags` (ABI 1.3).
public struct MessageFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    /// Flags from their C bits; unknown bits are kept.
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// At expiry, drop the message instead of dead-lettering it (`SY_MESSAGE_DROP_WHEN_EXPIRED`):
    /// for replies, whose caller has stopped waiting.
    public static let dropWhenExpired = MessageFlags(rawValue: 1 << 0)
}

extension Message {
    /// Copies a message that crossed the boundary, after validating it (see ``MessageView``).
    public init(copying message: UnsafePointer<sy_message>) throws(TransportError) {
        self = try MessageView(validating: message).copy()
    }

    /// Lends this message to C code as a `sy_message` valid only inside `body`.
    ///
    /// All strings, headers and the body are laid out in one temporary allocation (on the stack
    /// when small), so lending a message costs no heap allocation in the common case.
    @inlinable
    public func withCMessage<R, E: Error>(_ body: (UnsafePointer<sy_message>) throws(E) -> R) throws(E) -> R {
        let result: Result<R, E> = withUnsafeTemporaryAllocation(
            byteCount: max(1, lentByteCount), alignment: MemoryLayout<sy_header>.alignment
        ) { raw in
            var message = lay(into: raw, structSize: MemoryLayout<sy_message>.size)
            do throws(E) {
                return .success(try withUnsafePointer(to: &message) { (pointer) throws(E) -> R in try body(pointer) })
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// Bytes ``lay(into:)`` needs: the header array, then every string, then the body.
    @usableFromInline
    var lentByteCount: Int {
        var bytes = headers.count * MemoryLayout<sy_header>.stride
        bytes += id.utf8.count + channel.utf8.count + (orderingKey?.utf8.count ?? 0) + body.count
        for header in headers { bytes += header.key.utf8.count + header.value.utf8.count }
        return bytes
    }

    /// Writes this message's headers, strings and body into `raw` (``lentByteCount`` bytes,
    /// aligned for `sy_header`) and returns a `sy_message` pointing into it, claiming
    /// `structSize` (smaller for a reader of an older ABI minor, which ignores the fields past it).
    @usableFromInline
    func lay(into raw: UnsafeMutableRawBufferPointer, structSize: Int) -> sy_message {
        var cursor = headers.count * MemoryLayout<sy_header>.stride
        func lay(_ string: String) -> sy_str {
            let start = cursor
            cursor += UnsafeMutableRawBufferPointer(rebasing: raw[cursor...]).copyUTF8(string)
            return sy_str(data: raw.baseAddress.map { ($0 + start).assumingMemoryBound(to: CChar.self) }, len: cursor - start)
        }
        var message = sy_message()
        message.struct_size = UInt32(structSize)
        message.attempt = attempt
        message.id = lay(id)
        message.channel = lay(channel)
        message.ordering_key = lay(orderingKey ?? "")
        if !headers.isEmpty {
            let cHeaders = raw.baseAddress!.bindMemory(to: sy_header.self, capacity: headers.count)
            for (index, header) in headers.enumerated() {
                (cHeaders + index).initialize(to: sy_header(key: lay(header.key), value: lay(header.value)))
            }
            message.headers = UnsafePointer(cHeaders)
        }
        message.header_count = headers.count
        // The body goes last, after every string.
        if !body.isEmpty {
            UnsafeMutableRawBufferPointer(rebasing: raw[cursor...]).copyBytes(from: body)
            message.body = sy_bytes(data: (raw.baseAddress! + cursor).assumingMemoryBound(to: UInt8.self), len: body.count)
        }
        message.deliver_at_ns = deliverAtNanos
        message.enqueued_at_ns = enqueuedAtNanos
        message.expires_at_ns = expiresAtNanos
        message.flags = flags.rawValue
        return message
    }
}

extension Array where Element == Message {
    /// Lends these messages to C code as one `sy_message` array, valid only inside `body`: the
    /// first element's address and the count. Elements are `structSize` bytes apart (the ABI's
    /// stride rule; pass a smaller, older size for a reader of an older minor, see
    /// ``SizedStruct``). One allocation holds the array and every message's strings, headers
    /// and body.
    public func withCMessages<R, E: Error>(
        structSize: Int = MemoryLayout<sy_message>.size, _ body: (UnsafePointer<sy_message>, Int) throws(E) -> R
    ) throws(E) -> R {
        let align = MemoryLayout<sy_header>.alignment
        let sizes = map { ($0.lentByteCount + align - 1) / align * align }
        let arrayBytes = count * structSize
        let total = arrayBytes + sizes.reduce(0, +)
        let raw = UnsafeMutableRawBufferPointer.allocate(
            byteCount: Swift.max(MemoryLayout<sy_message>.size, total), alignment: Swift.max(align, MemoryLayout<sy_message>.alignment))
        defer { raw.deallocate() }
        var offset = arrayBytes
        for index in indices {  // not `enumerated()`: that copies each message out
            let laid = self[index].lay(into: UnsafeMutableRawBufferPointer(rebasing: raw[offset..<offset + sizes[index]]), structSize: structSize)
            // Only `structSize` bytes of each element: the next element starts there.
            Swift.withUnsafeBytes(of: laid) { (raw.baseAddress! + index * structSize).copyMemory(from: $0.baseAddress!, byteCount: structSize) }
            offset += sizes[index]
        }
        return try body(raw.baseAddress!.assumingMemoryBound(to: sy_message.self), count)
    }
}

extension UnsafeMutableRawBufferPointer {
    /// Copies the UTF-8 bytes of `string` to the start of this buffer; returns how many.
    @usableFromInline
    func copyUTF8(_ string: String) -> Int {
        var string = string
        return string.withUTF8 { utf8 in
            if !utf8.isEmpty { UnsafeMutableRawBufferPointer(self).copyMemory(from: UnsafeRawBufferPointer(utf8)) }
            return utf8.count
        }
    }
}

extension String {
    /// Copies a borrowed `sy_str` (UTF-8, not NUL-terminated) into a Swift string. Invalid UTF-8
    /// is repaired with U+FFFD rather than trusted.
    public init(_ slice: sy_str) {
        guard slice.len > 0, let data = slice.data else {
            self = ""
            return
        }
        self = data.withMemoryRebound(to: UInt8.self, capacity: slice.len) {
            String(decoding: UnsafeBufferPointer(start: $0, count: slice.len), as: UTF8.self)
        }
    }

    /// Lends this string to C code as an `sy_str`, valid only inside `body`.
    @inlinable
    public func withSyStr<R, E: Error>(_ body: (sy_str) throws(E) -> R) throws(E) -> R {
        var copy = self
        let result: Result<R, E> = copy.withUTF8 { utf8 in
            let slice = sy_str(
                data: utf8.baseAddress.map { UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self) }, len: utf8.count)
            do throws(E) { return .success(try body(slice)) } catch { return .failure(error) }
        }
        return try result.get()
    }
}
