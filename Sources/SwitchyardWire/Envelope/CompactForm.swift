import CSwitchyard
import SwitchyardABI

extension Envelope {
    /// How an envelope travels (docs/envelope.md): as CloudEvents headers, which any CloudEvents
    /// reader understands, or in the compact form — its fields as a short binary prefix of the
    /// body — on transports only Switchyard hosts read (``Capabilities/privateWire``). A receiver
    /// reads both.
    public enum Form: Sendable, Hashable {
        /// CloudEvents 1.0 in binary content mode: a `ce-` header per field.
        case cloudEvents
        /// The fields in front of the arguments, in the body: no text id, time or header to
        /// write, lay out, copy and scan for each call.
        case compact
    }
}

/// The envelope's compact form: the body starts with a prefix holding the fields, the encoded
/// arguments follow. The id is the message id; the caller's headers and trace context stay
/// headers (`ce-<name>`, `ce-traceparent`, …) as in the CloudEvents form.
///
/// ```
/// magic      4 bytes  0x53 0x59 0x45 0x01  ("SYE", envelope version 1)
/// flags      1 byte   bit 0 JSON arguments (else compact), bit 1 reply-to, bit 2 idempotency key,
///                     bit 3 deadline; other bits must be 0
/// created    8 bytes  ns since the Unix epoch, little-endian
/// deadline   8 bytes  ns since the Unix epoch, little-endian (bit 3 only)
/// source, type, target identifier, then reply-to (bit 1) and idempotency key (bit 2): each a
///            LEB128 byte count and UTF-8 bytes
/// ```
enum CompactForm {
    static let magic: [UInt8] = [0x53, 0x59, 0x45, UInt8(Envelope.currentVersion)]
    static let mismatch = "the compact envelope's prefix must fill exactly the bytes measured for it"

    private enum Flag {
        static let json: UInt8 = 1 << 0
        static let replyTo: UInt8 = 1 << 1
        static let idempotencyKey: UInt8 = 1 << 2
        static let deadline: UInt8 = 1 << 3
        static let known: UInt8 = json | replyTo | idempotencyKey | deadline
    }

    /// Whether `body` starts with the compact form's magic, of any envelope version (the reader
    /// refuses versions it does not know with that reason).
    static func isCompact(_ body: UnsafeRawBufferPointer) -> Bool {
        body.count >= magic.count && body[0] == magic[0] && body[1] == magic[1] && body[2] == magic[2]
    }

    /// The bytes of `envelope`'s prefix.
    static func prefixCount(_ envelope: Envelope.Contents) -> Int {
        var count = magic.count + 1 + 8 + (envelope.deadlineNanos > 0 ? 8 : 0)
        func text(_ value: String) { count += textCount(value) }
        text(envelope.source)
        text(envelope.target.name)
        text(envelope.target.identifier)
        if let replyTo = envelope.replyTo { text(replyTo) }
        if let key = envelope.idempotencyKey, key != envelope.id { text(key) }
        return count
    }

    /// Writes `envelope`'s prefix into `buffer`, exactly ``prefixCount(_:)`` bytes.
    static func writePrefix(_ envelope: Envelope.Contents, into buffer: UnsafeMutableRawBufferPointer) {
        // A writer value rather than functions capturing a position: captured variables are
        // checked for exclusive access at run time on every use.
        var out = Writer(buffer: buffer)
        for value in magic { out.byte(value) }
        let key = envelope.idempotencyKey.flatMap { $0 == envelope.id ? nil : $0 }
        var flags: UInt8 = envelope.contentType == .json ? Flag.json : 0
        if envelope.replyTo != nil { flags |= Flag.replyTo }
        if key != nil { flags |= Flag.idempotencyKey }
        if envelope.deadlineNanos > 0 { flags |= Flag.deadline }
        out.byte(flags)
        out.word(envelope.createdAtNanos)
        if envelope.deadlineNanos > 0 { out.word(envelope.deadlineNanos) }
        out.text(envelope.source)
        out.text(envelope.target.name)
        out.text(envelope.target.identifier)
        if let replyTo = envelope.replyTo { out.text(replyTo) }
        if let key { out.text(key) }
        precondition(out.position == buffer.count, mismatch)
    }

    /// The bytes `value` takes as a prefix field: its LEB128 byte count and UTF-8 bytes.
    static func textCount(_ value: String) -> Int { leb128Count(value.utf8.count) + value.utf8.count }

    /// Writes a prefix's fields into a buffer measured for them (a call's here, a reply's in
    /// ``Reply``).
    struct Writer {
        let buffer: UnsafeMutableRawBufferPointer
        var position = 0

        mutating func byte(_ value: UInt8) {
            precondition(position < buffer.count, CompactForm.mismatch)
            buffer[position] = value
            position += 1
        }

        mutating func word(_ value: Int64) {
            precondition(position + 8 <= buffer.count, CompactForm.mismatch)
            buffer.storeBytes(of: value.littleEndian, toByteOffset: position, as: Int64.self)
            position += 8
        }

        mutating func text(_ value: String) {
            var value = value
            var count = value.utf8.count
            repeat {
                byte(UInt8(count & 0x7F) | (count > 0x7F ? 0x80 : 0))
                count >>= 7
            } while count > 0
            precondition(position + value.utf8.count <= buffer.count, CompactForm.mismatch)
            let start = buffer.baseAddress! + position
            let written = value.withUTF8 { utf8 in
                if utf8.count > 0 { start.copyMemory(from: utf8.baseAddress!, byteCount: utf8.count) }
                return utf8.count
            }
            position += written
        }
    }

    private static func leb128Count(_ value: Int) -> Int {
        var count = 1
        var rest = value >> 7
        while rest > 0 {
            count += 1
            rest >>= 7
        }
        return count
    }

    /// The fields a prefix holds, as slices of the body.
    struct Prefix {
        var contentType: ArgumentEncoding
        var createdAtNanos: Int64
        var deadlineNanos: Int64
        var source: sy_str
        var type: sy_str
        var identifier: sy_str
        var replyTo: sy_str?
        var idempotencyKey: sy_str?
        /// Where the arguments start in the body.
        var argumentsOffset: Int
    }

    /// Reads the prefix of `body` (which starts with the magic), or says what is wrong with it.
    static func readPrefix(_ body: UnsafeRawBufferPointer) throws(EnvelopeError) -> Prefix {
        guard body[3] == magic[3] else {
            throw EnvelopeError("envelope version \(body[3]) is not supported (this runtime reads version \(Envelope.currentVersion))")
        }
        // The codec's bounds-checked reader: fixed-width numbers, LEB128 lengths within the body.
        var input = CompactReader(body, offset: magic.count)
        func malformed(_ what: String) -> EnvelopeError { EnvelopeError("malformed compact envelope: \(what)") }
        guard let flags = try? input.fixed(UInt8.self) else { throw malformed("it ends before its flags") }
        guard flags & ~Flag.known == 0 else { throw malformed("unknown flags 0x\(String(flags, radix: 16))") }
        var field = "creation time"  // the one being read, for the error
        let created: Int64
        let deadline: Int64
        let source: sy_str
        let type: sy_str
        let identifier: sy_str
        var replyTo: sy_str?
        var key: sy_str?
        do throws(CompactFormatError) {
            func text(_ bytes: UnsafeRawBufferPointer) -> sy_str { sy_str(data: bytes.baseAddress?.assumingMemoryBound(to: CChar.self), len: bytes.count) }
            created = Int64(littleEndian: try input.fixed(Int64.self))
            field = "deadline"
            deadline = flags & Flag.deadline != 0 ? Int64(littleEndian: try input.fixed(Int64.self)) : 0
            field = "source"
            source = text(try input.byteString())
            field = "type"
            type = text(try input.byteString())
            field = "target identifier"
            identifier = text(try input.byteString())
            field = "reply-to"
            if flags & Flag.replyTo != 0 { replyTo = text(try input.byteString()) }
            field = "idempotency key"
            if flags & Flag.idempotencyKey != 0 { key = text(try input.byteString()) }
        } catch {
            throw malformed("its \(field): \(error)")
        }
        guard deadline >= 0 else { throw malformed("a negative deadline") }
        if let key, let problem = Envelope.idempotencyKeyProblem(byteCount: key.len) { throw malformed("an idempotency key that \(problem)") }
        for (name, value) in [("source", source), ("type", type), ("target identifier", identifier)] where value.len == 0 {
            throw EnvelopeError("not a Switchyard envelope: its \(name) is empty")
        }
        return Prefix(
            contentType: flags & Flag.json != 0 ? .json : .compact, createdAtNanos: created, deadlineNanos: deadline, source: source, type: type,
            identifier: identifier, replyTo: replyTo, idempotencyKey: key, argumentsOffset: input.offset)
    }
}

/// What the host reads off a call it may not be able to run — one refused unread, one a
/// transport dead-lettered — to answer its waiting caller and to name it: in either form, and
/// leniently (what is missing or unreadable is nil; nothing else is checked).
package struct CallSummary: Sendable {
    /// The call's id (for a reply's correlation id).
    package var id: String?
    /// The readable target, `Interface.method(labels:)`.
    package var type: String?
    /// The target identifier the runtime dispatches on.
    package var identifier: String?
    /// Where the caller waits for the reply.
    package var replyTo: String?
    /// When the caller stops waiting, ns since the Unix epoch; 0 for none.
    package var deadlineNanos: Int64 = 0
    /// How the call's arguments (and so its reply) are encoded.
    package var contentType: ArgumentEncoding?
    /// The form the call came in (and its reply takes).
    package var form: Envelope.Form = .cloudEvents

    /// The summary of a delivered message.
    package init(_ message: MessageView) {
        if message.headerBytes(EnvelopeHeader.specVersion) == nil, CompactForm.isCompact(message.body) {
            id = message.fields.id.len > 0 ? String(message.fields.id) : nil
            form = .compact
            guard let prefix = try? CompactForm.readPrefix(message.body) else { return }
            type = String(prefix.type)
            identifier = String(prefix.identifier)
            replyTo = prefix.replyTo.map(String.init)
            deadlineNanos = prefix.deadlineNanos
            contentType = prefix.contentType
            return
        }
        id = message.header(EnvelopeHeader.id)
        type = message.header(EnvelopeHeader.type)
        identifier = message.header(EnvelopeHeader.target)
        replyTo = message.header(EnvelopeHeader.replyTo)
        deadlineNanos = message.header(EnvelopeHeader.deadline).flatMap(RFC3339.parse) ?? 0
        // As the full reader does: `ce-datacontenttype`, else a plain Content-Type (any case, its
        // parameters left off), which producers of other systems send.
        let plain = message.headers.first { $0.key.lowercased() == "content-type" }?.value
        contentType = (message.header(EnvelopeHeader.contentType) ?? plain).flatMap { text in
            ArgumentEncoding(rawValue: String(text.prefix { $0 != ";" }.filter { !$0.isWhitespace }))
        }
    }

    /// The summary of a message (one a transport reported dead-lettered).
    package init(_ message: Message) {
        if let read = message.withCMessage({ pointer in (try? MessageView(validating: pointer)).map { CallSummary($0) } }) {
            self = read
        } else {
            id = message.id
        }
    }
}

extension Envelope {
    /// `message`, a call, without its reply channel and deadline — to be run again with nobody
    /// waiting for it (`switchyard dlq replay --fire-and-forget`) — in the form it came in, its
    /// other headers kept; it no longer expires.
    package static func withoutReply(_ message: Message) -> Message {
        var result = message
        result.expiresAtNanos = 0
        let compact = message.withCMessage { pointer -> Envelope? in
            guard let view = try? MessageView(validating: pointer), view.headerBytes(EnvelopeHeader.specVersion) == nil,
                CompactForm.isCompact(view.body)
            else { return nil }
            return try? Envelope(view)
        }
        guard var envelope = compact else {
            result.headers.removeAll { $0.key == EnvelopeHeader.replyTo || $0.key == EnvelopeHeader.deadline }
            return result
        }
        envelope.replyTo = nil
        envelope.deadlineNanos = 0
        result.body = envelope.message(channel: message.channel, form: .compact).body
        return result
    }
}
