import Foundation
import SwitchyardABI

/// A call envelope as a person reads it: what `switchyard dlq show` prints for a dead-lettered
/// typed call. Built from the message alone, without the service's types: the compact format is
/// self-describing, so its arguments render as JSON (struct fields by name, as encoded).
public struct ReadableCall: Sendable {
    /// `Interface.method(labels:)`.
    public let target: String
    /// The arguments as a JSON array, one element per argument; nil when they cannot be read.
    public let argumentsJSON: String?
    /// Why the arguments could not be rendered, when they could not.
    public let argumentsProblem: String?
    /// How the arguments were encoded (`compact` or `json`).
    public let encoding: String
    /// The caller's reply channel, for a request-reply call.
    public let replyTo: String?
    /// When the caller stops waiting (ns since the Unix epoch), 0 for none.
    public let deadlineNanos: Int64

    /// The call `message` carries, or nil when it is not a Switchyard call envelope.
    public init?(_ message: Message) {
        let envelope: Envelope
        do {
            envelope = try message.withCMessage { (pointer) throws -> Envelope in try Envelope(MessageView(validating: pointer)) }
        } catch {
            return nil
        }
        target = envelope.target.name
        encoding = envelope.contentType.rawValue
        replyTo = envelope.replyTo
        deadlineNanos = envelope.deadlineNanos
        do {
            argumentsJSON = try Self.json(envelope.arguments, encoding: envelope.contentType)
            argumentsProblem = nil
        } catch {
            argumentsJSON = nil
            argumentsProblem = "\(error)"
        }
    }

    /// Whether the call's deadline has passed: replayed as it is, the receiver would dead-letter
    /// it again as expired (a request-reply call's caller stopped waiting; a fire-and-forget call
    /// made with a deadline, from an outbox for example, is refused after it too).
    public func isExpired(now: Int64 = WallClock.nowNanos()) -> Bool {
        deadlineNanos > 0 && deadlineNanos < now
    }

    private static func json(_ arguments: [UInt8], encoding: ArgumentEncoding) throws -> String {
        switch encoding {
        case .json:
            let object = try JSONSerialization.jsonObject(with: Data(arguments), options: [.fragmentsAllowed])
            return String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .fragmentsAllowed]), as: UTF8.self)
        case .compact:
            return try arguments.withUnsafeBytes { (buffer) throws(CompactFormatError) -> String in
                var reader = CompactReader(buffer)
                var out = "["
                while !reader.atEnd {
                    if out.count > 1 { out += "," }
                    try render(&reader, into: &out, depth: 0)
                }
                return out + "]"
            }
        }
    }

    /// Appends one compact value as JSON.
    private static func render(_ reader: inout CompactReader, into out: inout String, depth: Int) throws(CompactFormatError) {
        guard depth < 64 else { throw CompactFormatError("values nested more than 64 deep") }
        switch try reader.peekTag() {
        case .null: _ = try reader.tag(); out += "null"
        case .false: _ = try reader.tag(); out += "false"
        case .true: _ = try reader.tag(); out += "true"
        case .int: out += String(try reader.int())
        case .uint: out += String(try reader.uint())
        case .float:
            _ = try reader.tag()
            out += number(Double(Float(bitPattern: try reader.fixed(UInt32.self))))
        case .double:
            _ = try reader.tag()
            out += number(Double(bitPattern: try reader.fixed(UInt64.self)))
        case .string:
            _ = try reader.tag()
            out += quoted(try reader.rawString())
        case .bytes:
            _ = try reader.tag()
            out += quoted("0x" + (try reader.byteString()).map { String(format: "%02x", $0) }.joined())
        case .list:
            _ = try reader.tag()
            out += "["
            var first = true
            while try reader.peekTag() != .end {
                if !first { out += "," }
                first = false
                try render(&reader, into: &out, depth: depth + 1)
            }
            _ = try reader.tag()
            out += "]"
        case .map:
            _ = try reader.tag()
            out += "{"
            var first = true
            while try reader.peekTag() != .end {
                if !first { out += "," }
                first = false
                let key = try reader.rawKey()
                out += quoted(String(decoding: UnsafeRawBufferPointer(rebasing: reader.base[key]), as: UTF8.self)) + ":"
                try render(&reader, into: &out, depth: depth + 1)
            }
            _ = try reader.tag()
            out += "}"
        case .end:
            throw CompactFormatError("unexpected end marker at byte \(reader.offset)")
        }
    }

    private static func number(_ value: Double) -> String {
        value.isFinite ? (value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)) : quoted(String(value))
    }

    private static func quoted(_ text: String) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: text, options: [.fragmentsAllowed])) ?? Data("\"?\"".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}
