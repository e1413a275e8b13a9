import CSwitchyard
import SwitchyardABI

/// The answer to a request-reply call as it travels (docs/envelope.md, "Replies"): the one place
/// a reply message is written and the one place it is read.
///
/// A reply takes the form of the call it answers, so a caller only ever gets a reply in a form it
/// wrote itself (a caller of an older version never sees a compact reply): CloudEvents headers
/// (`ce-sycorrelationid`, `ce-syoutcome`, …), or — for a call that came in the compact form — a
/// short prefix of the body and no headers:
///
/// ```
/// magic        4 bytes  0x53 0x59 0x52 0x01  ("SYR", reply version 1)
/// flags        1 byte   bit 0 JSON body (else compact), bit 1 the method threw (the body is an
///                       error payload; else its return value); other bits must be 0
/// correlation  the id of the call answered: a LEB128 byte count and UTF-8 bytes
/// ```
package struct Reply: Sendable, Hashable {
    /// The id of the call this answers.
    package var correlationID: String
    /// `return` or `throw`.
    package var outcome: String
    /// The encoded return value, or an encoded error payload.
    package var body: [UInt8]
    /// How `body` is encoded (the call's encoding).
    package var encoding: ArgumentEncoding

    package init(correlationID: String, outcome: String, body: [UInt8], encoding: ArgumentEncoding) {
        self.correlationID = correlationID
        self.outcome = outcome
        self.body = body
        self.encoding = encoding
    }

    static let magic: [UInt8] = [0x53, 0x59, 0x52, 0x01]
    static let mismatch = "the compact reply's prefix must fill exactly the bytes measured for it"
    private static let json: UInt8 = 1 << 0
    private static let threw: UInt8 = 1 << 1

    /// The reply as a message with `id` on `channel` (the caller's reply channel), in `form`. With
    /// a `deadlineNanos` (the caller's) it expires then and is dropped, not dead-lettered: nobody
    /// waits for it any more.
    package func message(id: String, channel: String, deadlineNanos: Int64, form: Envelope.Form) -> Message {
        let flags = deadlineNanos > 0 ? MessageFlags.dropWhenExpired : []
        guard form == .compact else {
            return Message(packing: id, channel: channel, body: body, expiresAtNanos: deadlineNanos, flags: flags) { headers in
                headers.add(EnvelopeHeader.specVersion, "1.0")
                headers.add(EnvelopeHeader.id, id)
                headers.add(EnvelopeHeader.source, Envelope.defaultSource)
                headers.add(EnvelopeHeader.type, "switchyard.reply")
                headers.add(EnvelopeHeader.contentType, encoding.rawValue)
                headers.add(EnvelopeHeader.version, Envelope.currentVersionText)
                headers.add(EnvelopeHeader.correlationID, correlationID)
                headers.add(EnvelopeHeader.outcome, outcome)
            }
        }
        let prefix = Self.magic.count + 1 + CompactForm.textCount(correlationID)
        let flagsByte = (encoding == .json ? Self.json : 0) | (outcome == "throw" ? Self.threw : 0)
        let writePrefix = { (buffer: UnsafeMutableRawBufferPointer) in
            var out = CompactForm.Writer(buffer: buffer)
            for byte in Self.magic { out.byte(byte) }
            out.byte(flagsByte)
            out.text(correlationID)
            precondition(out.position == buffer.count, Self.mismatch)
        }
        return Message(
            packing: id, channel: channel, bodyPrefix: prefix, writePrefix, body: body, expiresAtNanos: deadlineNanos, flags: flags, headers: { _ in })
    }

    /// Reads a reply in either form, or says why `message` is not one.
    package init(_ message: MessageView) throws(EnvelopeError) {
        let body = message.body
        if message.headerBytes(EnvelopeHeader.specVersion) == nil, body.count >= Self.magic.count, body[0] == 0x53, body[1] == 0x59, body[2] == 0x52 {
            guard body[3] == Self.magic[3] else { throw EnvelopeError("reply version \(body[3]) is not supported (this runtime reads version 1)") }
            var input = CompactReader(body, offset: Self.magic.count)
            func malformed(_ what: String) -> EnvelopeError { EnvelopeError("malformed compact reply: \(what)") }
            guard let flags = try? input.fixed(UInt8.self) else { throw malformed("it ends before its flags") }
            guard flags & ~(Self.json | Self.threw) == 0 else { throw malformed("unknown flags 0x\(String(flags, radix: 16))") }
            let correlation: UnsafeRawBufferPointer
            do throws(CompactFormatError) {
                correlation = try input.byteString()
            } catch {
                throw malformed("its correlation id: \(error)")
            }
            guard correlation.count > 0 else { throw malformed("its correlation id is empty") }
            self.init(
                correlationID: String(decoding: correlation, as: UTF8.self), outcome: flags & Self.threw != 0 ? "throw" : "return",
                body: Array(body[input.offset...]), encoding: flags & Self.json != 0 ? .json : .compact)
            return
        }
        guard let correlation = message.header(EnvelopeHeader.correlationID), !correlation.isEmpty else {
            throw EnvelopeError("not a Switchyard reply: header '\(EnvelopeHeader.correlationID)' is missing")
        }
        // As a call's: `ce-datacontenttype`, else the binary mode's `Content-Type`, parameters
        // ignored; without either, compact (the default encoding).
        var encoding = ArgumentEncoding.compact
        if let exact = message.headerBytes(EnvelopeHeader.contentType).flatMap(Envelope.encoding(exactly:)) {
            encoding = exact
        } else if let text = message.header(EnvelopeHeader.contentType) ?? message.header("content-type") ?? message.header("Content-Type") {
            guard let parsed = ArgumentEncoding(rawValue: Envelope.mediaType(text)) else {
                throw EnvelopeError(
                    "content type '\(Envelope.mediaType(text))' is not supported (expected \(ArgumentEncoding.allCases.map(\.rawValue).joined(separator: " or ")))")
            }
            encoding = parsed
        }
        let outcome = message.header(EnvelopeHeader.outcome) ?? "return"
        guard outcome == "return" || outcome == "throw" else {
            throw EnvelopeError("'\(EnvelopeHeader.outcome)' is '\(outcome)' (expected return or throw)")
        }
        self.init(correlationID: correlation, outcome: outcome, body: Array(body), encoding: encoding)
    }
}

extension Envelope.Form {
    /// The form `message`, a call, travelled in: compact when it has no `ce-specversion` and its
    /// body starts with `SYE` (of any envelope version: the reader refuses the ones it does not
    /// know). A reply to it is sent in the same form.
    package init(of message: MessageView) {
        self = CompactForm.isCompact(message.body) && message.headerBytes(EnvelopeHeader.specVersion) == nil ? .compact : .cloudEvents
    }
}
