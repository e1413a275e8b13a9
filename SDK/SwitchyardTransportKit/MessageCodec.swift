import CSwitchyard
import SwitchyardABI

/// A compact binary form of a ``Message``, for storing messages (durable stores, held delays).
///
/// Layout, little-endian: magic `SYM1`, attempt u32, deliver_at i64, enqueued_at i64, then id,
/// channel, ordering key (u32 length + UTF-8 each), header count u32 and each header's key and
/// value, and the body (u32 length + bytes). A message that expires or has flags (ABI 1.3) is
/// written as `SYM2`: the same with expires_at i64 and flags u32 after enqueued_at. Messages
/// without them stay `SYM1`, which stores written by older versions hold and older versions read.
/// Decoding checks every length against the data, so a corrupt record is an error with a reason,
/// never a crash.
public enum MessageCodec {
    private static let magic: [UInt8] = Array("SYM1".utf8)
    private static let magicV2: [UInt8] = Array("SYM2".utf8)

    /// Encodes `message`: measured first, then written in place into an array of exactly its size.
    public static func encode(_ message: Message) -> [UInt8] {
        // Lent as C, a message copied from C (the usual one here) is read where it lies: no
        // Swift strings or arrays are made of its id, headers and body.
        message.withCMessage { encode(fields: $0.pointee) }
    }

    /// Encodes a message as it crossed the boundary, without copying it into a ``Message`` first.
    public static func encode(_ message: MessageView) -> [UInt8] { encode(fields: message.fields) }

    /// Appends `message`'s encoding to `arena` and returns where it lies: for a writer gathering
    /// many rows in one buffer, no array of its own per message.
    static func encode(_ message: Message, appendingTo arena: inout ByteArena) -> Range<Int> {
        message.withCMessage { m in
            let size = size(of: m.pointee)
            let (range, start) = arena.extend(by: size)
            write(m.pointee, to: start, size: size)
            return range
        }
    }

    private static func encode(fields m: sy_message) -> [UInt8] {
        let size = size(of: m)
        return [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
            write(m, to: UnsafeMutableRawPointer(buffer.baseAddress!), size: size)
            initialized = size
        }
    }

    /// The bytes ``write(_:to:size:)`` writes for `m`.
    private static func size(of m: sy_message) -> Int {
        let extended = m.expires_at_ns != 0 || m.flags != 0
        var size = 4 + 4 + 8 + 8 + (extended ? 12 : 0) + 12 + m.id.len + m.channel.len + m.ordering_key.len + 4
        for header in UnsafeBufferPointer(start: m.headers, count: m.header_count) { size += 8 + header.key.len + header.value.len }
        return size + 4 + m.body.len
    }

    /// Writes `m`'s encoding, measured as `size` bytes, at `base`.
    private static func write(_ m: sy_message, to base: UnsafeMutableRawPointer, size: Int) {
        let extended = m.expires_at_ns != 0 || m.flags != 0
        var writer = Writer(base: base)
        (extended ? magicV2 : magic).withUnsafeBytes { writer.bytes($0) }
        writer.integer(m.attempt)
        writer.integer(UInt64(bitPattern: m.deliver_at_ns))
        writer.integer(UInt64(bitPattern: m.enqueued_at_ns))
        if extended {
            writer.integer(UInt64(bitPattern: m.expires_at_ns))
            writer.integer(m.flags)
        }
        writer.field(m.id.data, m.id.len)
        writer.field(m.channel.data, m.channel.len)
        writer.field(m.ordering_key.data, m.ordering_key.len)
        writer.integer(UInt32(m.header_count))
        for header in UnsafeBufferPointer(start: m.headers, count: m.header_count) {
            writer.field(header.key.data, header.key.len)
            writer.field(header.value.data, header.value.len)
        }
        writer.field(m.body.data, m.body.len)
        precondition(writer.offset == size, "MessageCodec measured \(size) bytes and wrote \(writer.offset)")
    }

    /// Writes into memory the encoder measured: no bounds of its own (the precondition after the
    /// last write checks the total).
    private struct Writer {
        let base: UnsafeMutableRawPointer
        var offset = 0

        mutating func integer<T: FixedWidthInteger>(_ value: T) {
            (base + offset).storeBytes(of: value.littleEndian, as: T.self)
            offset += MemoryLayout<T>.size
        }

        mutating func bytes(_ bytes: UnsafeRawBufferPointer) {
            if bytes.count > 0 { (base + offset).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
            offset += bytes.count
        }

        /// A length-prefixed field: u32 length, then its bytes.
        mutating func field<T>(_ data: UnsafePointer<T>?, _ count: Int) {
            integer(UInt32(count))
            bytes(UnsafeRawBufferPointer(start: data, count: count))
        }
    }

    /// Decodes a message encoded by ``encode(_:)``; throws `invalidArgument` naming what is corrupt.
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(TransportError) -> Message {
        var reader = Reader(bytes: bytes)
        let prefix = bytes.count >= 4 ? Array(bytes[0..<4]) : []
        guard prefix == magic || prefix == magicV2 else {
            throw TransportError(.invalidArgument, "corrupt stored message: bad magic")
        }
        reader.offset = 4
        let attempt: UInt32 = try reader.integer("attempt")
        let deliverAt = Int64(bitPattern: try reader.integer("deliver_at") as UInt64)
        let enqueuedAt = Int64(bitPattern: try reader.integer("enqueued_at") as UInt64)
        var expiresAt: Int64 = 0
        var flags: UInt32 = 0
        if prefix == magicV2 {
            expiresAt = Int64(bitPattern: try reader.integer("expires_at") as UInt64)
            flags = try reader.integer("flags")
        }
        let id = try reader.string("id")
        let channel = try reader.string("channel")
        let key = try reader.string("ordering key")
        let headerCount: UInt32 = try reader.integer("header count")
        guard Int(headerCount) <= bytes.count / 8 else {
            throw TransportError(.invalidArgument, "corrupt stored message: \(headerCount) headers cannot fit")
        }
        var headers: [Header] = []
        headers.reserveCapacity(Int(headerCount))
        for _ in 0..<headerCount { headers.append(Header(try reader.string("header key"), try reader.string("header value"))) }
        let body = try reader.bytes("body")
        guard reader.offset == bytes.count else {
            throw TransportError(.invalidArgument, "corrupt stored message: \(bytes.count - reader.offset) trailing bytes")
        }
        return Message(
            id: id, channel: channel, orderingKey: key.isEmpty ? nil : key, headers: headers, body: body,
            attempt: attempt, deliverAtNanos: deliverAt, enqueuedAtNanos: enqueuedAt,
            expiresAtNanos: expiresAt, flags: MessageFlags(rawValue: flags))
    }

    /// Decodes from an array.
    public static func decode(_ bytes: [UInt8]) throws(TransportError) -> Message {
        try bytes.withUnsafeBytes { raw in Result { () throws(TransportError) in try decode(raw) } }.get()
    }

    private struct Reader {
        let bytes: UnsafeRawBufferPointer
        var offset = 0

        mutating func integer<T: FixedWidthInteger>(_ what: String) throws(TransportError) -> T {
            let size = MemoryLayout<T>.size
            guard offset + size <= bytes.count else { throw TransportError(.invalidArgument, "corrupt stored message: truncated \(what)") }
            defer { offset += size }
            return T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        }

        mutating func bytes(_ what: String) throws(TransportError) -> [UInt8] {
            let length = Int(try integer(what + " length") as UInt32)
            guard length <= bytes.count - offset else {
                throw TransportError(.invalidArgument, "corrupt stored message: \(what) length \(length) exceeds the record")
            }
            defer { offset += length }
            return Array(bytes[offset..<offset + length])
        }

        mutating func string(_ what: String) throws(TransportError) -> String {
            String(decoding: try bytes(what), as: UTF8.self)
        }
    }
}
