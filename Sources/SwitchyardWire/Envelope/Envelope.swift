import Foundation
import SwitchyardABI

/// The invocation envelope, version 1: one typed call as a transport message (docs/envelope.md).
///
/// The envelope *is* a CloudEvent 1.0 in binary content mode: its attributes travel as message
/// headers named `ce-<attribute>` and the encoded arguments are the data (the message body).
/// Switchyard's own fields are CloudEvents extension attributes with the `sy` prefix, and trace
/// context uses the Distributed Tracing extension (`traceparent`, `tracestate`).
public struct Envelope: Sendable, Hashable {
    /// The envelope version this runtime writes and reads.
    public static let currentVersion = 1
    private static let currentVersionText = String(currentVersion)

    /// A content type's media type: `application/json; charset=utf-8` → `application/json`,
    /// spaces and tabs around it dropped.
    static func mediaType(_ value: String) -> String {
        var text = value.prefix { $0 != ";" }
        while let first = text.first, first == " " || first == "\t" { text = text.dropFirst() }
        while let last = text.last, last == " " || last == "\t" { text = text.dropLast() }
        return String(text)
    }

    /// Unique, time-ordered id (UUIDv7). Also the message id, the CloudEvents `id`, the
    /// correlation id of its reply, and the default idempotency key.
    public var id: String
    /// What to call: a readable name and the identifier the runtime dispatches on.
    public var target: Target
    /// The encoded arguments, in declaration order.
    public var arguments: [UInt8]
    /// How `arguments` are encoded.
    public var contentType: ArgumentEncoding
    /// Where the caller waits for the reply; nil for fire-and-forget calls.
    public var replyTo: String?
    /// W3C trace context of the calling span.
    public var traceparent: String?
    /// W3C trace state, passed along unchanged.
    public var tracestate: String?
    /// Whatever else the bootstrapped instrument injects besides `traceparent`/`tracestate`
    /// (another propagation format, baggage), as `key=value` pairs joined by `,`, each side
    /// percent-encoded; nil when there is nothing else.
    public var traceContext: String?
    /// The caller's key for this call (``CallOptions/idempotencyKey``); nil when it set none and
    /// the id is the key. Receivers with an inbox execute a key at most once per target and window.
    public var idempotencyKey: String?
    /// When the caller stops waiting, ns since the Unix epoch; 0 for none.
    public var deadlineNanos: Int64
    /// Creation time, ns since the Unix epoch.
    public var createdAtNanos: Int64
    /// Who made the call (CloudEvents `source`), e.g. `switchyard://host/1234`.
    public var source: String
    /// Envelope format version.
    public var version: Int
    /// The caller's own attributes (``CallOptions/headers``), as CloudEvents extension
    /// attributes: `ce-<name>` headers. Read back: every `ce-` header that is not one of the
    /// envelope's own fields.
    public var headers: [String: String]

    /// The target of a call.
    public struct Target: Sendable, Hashable {
        /// Readable `Interface.method(labels:)`; also the CloudEvents `type`.
        public var name: String
        /// The stable identifier the runtime dispatches on (the distributed thunk's mangled name);
        /// empty for a call by readable name (no `ce-sytarget`), which a receiver accepts only on
        /// routes with `readable_targets` and maps to the hosted protocol's own method.
        public var identifier: String

        /// A target.
        public init(name: String, identifier: String) {
            self.name = name
            self.identifier = identifier
        }
    }

    /// An envelope with everything but the call itself defaulted.
    public init(
        id: String = EnvelopeID.make(), target: Target, arguments: [UInt8], contentType: ArgumentEncoding = .compact,
        replyTo: String? = nil, traceparent: String? = nil, tracestate: String? = nil, traceContext: String? = nil,
        idempotencyKey: String? = nil, deadlineNanos: Int64 = 0, createdAtNanos: Int64 = WallClock.nowNanos(),
        source: String = Envelope.defaultSource, version: Int = Envelope.currentVersion, headers: [String: String] = [:]
    ) {
        self.id = id
        self.target = target
        self.arguments = arguments
        self.contentType = contentType
        self.replyTo = replyTo
        self.traceparent = traceparent
        self.tracestate = tracestate
        self.traceContext = traceContext
        self.idempotencyKey = idempotencyKey
        self.deadlineNanos = deadlineNanos
        self.createdAtNanos = createdAtNanos
        self.source = source
        self.version = version
        self.headers = headers
    }

    /// `switchyard://<hostname>/<pid>`: this process, as a CloudEvents source.
    public static let defaultSource: String = {
        var name = [CChar](repeating: 0, count: 256)
        let host = gethostname(&name, name.count) == 0 ? String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : "localhost"
        return "switchyard://\(host)/\(getpid())"
    }()
}

/// How a call's arguments and results are encoded.
public enum ArgumentEncoding: String, Sendable, Hashable, CaseIterable {
    /// Switchyard's compact binary form (the default): `application/x-switchyard-compact`.
    case compact = "application/x-switchyard-compact"
    /// JSON, for interoperability: `application/json`.
    case json = "application/json"

    /// Encodes one value.
    package func encode<T: Encodable>(_ value: T, appendingTo bytes: inout [UInt8]) throws {
        switch self {
        case .compact: try CompactEncoder().encode(value, appendingTo: &bytes)
        case .json: bytes.append(contentsOf: try JSONEncoder().encode(value))
        }
    }

    /// Decodes one value (a result, an error payload) encoded by ``encode(_:appendingTo:)``.
    package func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        switch self {
        case .compact: try CompactDecoder().decode(type, from: bytes)
        case .json: try JSONDecoder().decode(type, from: Data(bytes))
        }
    }
}

/// Header names of the envelope: CloudEvents 1.0 attributes in binary content mode, plus
/// Switchyard's extension attributes. Names follow the CloudEvents NATS/Kafka bindings' `ce-`
/// prefix; extension names are lowercase letters only, as CloudEvents requires.
public enum EnvelopeHeader {
    /// CloudEvents `specversion` (always `1.0`).
    public static let specVersion = CloudEventsHeader.specVersion
    /// CloudEvents `id`: the envelope id.
    public static let id = CloudEventsHeader.id
    /// CloudEvents `source`: the calling process.
    public static let source = CloudEventsHeader.source
    /// CloudEvents `type`: the readable target, `Interface.method(labels:)`.
    public static let type = CloudEventsHeader.type
    /// CloudEvents `time`: creation time, RFC 3339.
    public static let time = "ce-time"
    /// CloudEvents `datacontenttype`: how the arguments (the data) are encoded.
    public static let contentType = "ce-datacontenttype"
    /// Extension `syversion`: envelope version.
    public static let version = "ce-syversion"
    /// Extension `sytarget`: the identifier the runtime dispatches on.
    public static let target = "ce-sytarget"
    /// Extension `syreplyto`: the caller's reply channel.
    public static let replyTo = "ce-syreplyto"
    /// Extension `sycorrelationid` (on replies): the id of the call being answered.
    public static let correlationID = "ce-sycorrelationid"
    /// Extension `syoutcome` (on replies): `return` or `throw`.
    public static let outcome = "ce-syoutcome"
    /// Extension `syidempotencykey`, when it differs from the id.
    public static let idempotencyKey = "ce-syidempotencykey"
    /// Extension `sydeadline`: when the caller stops waiting, RFC 3339.
    public static let deadline = "ce-sydeadline"
    /// Distributed Tracing extension `traceparent`.
    public static let traceparent = "ce-traceparent"
    /// Distributed Tracing extension `tracestate`.
    public static let tracestate = "ce-tracestate"
    /// Extension `sytracecontext`: trace context fields of other formats than W3C's, as the
    /// bootstrapped instrument injects them (`key=value,…`, percent-encoded).
    public static let traceContext = "ce-sytracecontext"
}

/// Why a message is not a valid envelope. The receiver dead-letters it with this reason.
public struct EnvelopeError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What is wrong, for a person.
    public let description: String
    /// An error with `description`.
    public init(_ description: String) { self.description = description }
}

extension Envelope {
    /// The envelope as a transport message on `channel`.
    public func message(channel: String, orderingKey: String? = nil, deliverAtNanos: Int64 = 0) -> Message {
        var headers: [Header] = []
        headers.reserveCapacity(14)
        headers.append(Header(EnvelopeHeader.specVersion, "1.0"))
        headers.append(Header(EnvelopeHeader.id, id))
        headers.append(Header(EnvelopeHeader.source, source))
        headers.append(Header(EnvelopeHeader.type, target.name))
        headers.append(Header(EnvelopeHeader.time, RFC3339.format(nanos: createdAtNanos)))
        headers.append(Header(EnvelopeHeader.contentType, contentType.rawValue))
        headers.append(Header(EnvelopeHeader.version, version == Self.currentVersion ? Self.currentVersionText : String(version)))
        if !target.identifier.isEmpty { headers.append(Header(EnvelopeHeader.target, target.identifier)) }
        if let replyTo { headers.append(Header(EnvelopeHeader.replyTo, replyTo)) }
        if let idempotencyKey, idempotencyKey != id { headers.append(Header(EnvelopeHeader.idempotencyKey, idempotencyKey)) }
        if deadlineNanos > 0 { headers.append(Header(EnvelopeHeader.deadline, RFC3339.format(nanos: deadlineNanos))) }
        if let traceparent { headers.append(Header(EnvelopeHeader.traceparent, traceparent)) }
        if let tracestate { headers.append(Header(EnvelopeHeader.tracestate, tracestate)) }
        if let traceContext { headers.append(Header(EnvelopeHeader.traceContext, traceContext)) }
        for (name, value) in self.headers.sorted(by: { $0.key < $1.key }) { headers.append(Header("ce-" + name, value)) }
        // A call with a deadline expires with it: a transport with the `expiry` capability then
        // never delivers it late (it dead-letters it), and it does not pile up where nobody reads.
        return Message(
            id: id, channel: channel, orderingKey: orderingKey, headers: headers, body: arguments,
            deliverAtNanos: deliverAtNanos, expiresAtNanos: deadlineNanos)
    }

    /// Reads an envelope from a delivered message, or says exactly why it is not one.
    public init(_ message: MessageView) throws(EnvelopeError) {
        // One pass over the headers, matching names by length and bytes (no String per key).
        var fields = [String?](repeating: nil, count: Field.allCases.count)
        var extra: [String: String] = [:]
        var standardContentType: String?
        let headers = message.fields.headers
        next: for index in 0..<message.headerCount {
            let header = headers![index]
            guard header.key.len > 3, let key = header.key.data else { continue }
            for field in Field.allCases where fields[field.rawValue] == nil {
                let name = Field.names[field.rawValue]
                if name.count == header.key.len, name.withUnsafeBytes({ memcmp($0.baseAddress!, key, name.count) }) == 0 {
                    fields[field.rawValue] = String(header.value)
                    continue next
                }
            }
            // CloudEvents binary mode (HTTP, NATS) carries datacontenttype as Content-Type: what
            // producers other than Switchyard send.
            if header.key.len == 12, String(header.key).lowercased() == "content-type" {
                standardContentType = String(header.value)
                continue
            }
            // Any other CloudEvents attribute: the caller's own (CallOptions.headers).
            if memcmp(key, "ce-", 3) == 0 {
                let name = String(header.key)
                if !Self.ownHeaderNames.contains(name) { extra[String(name.dropFirst(3))] = String(header.value) }
            }
        }
        func field(_ field: Field) -> String? { fields[field.rawValue] }
        func required(_ field: Field) throws(EnvelopeError) -> String {
            guard let value = fields[field.rawValue], !value.isEmpty else {
                throw EnvelopeError("not a Switchyard envelope: header '\(field.name)' is missing")
            }
            return value
        }
        // A call by readable name (no `sytarget`) may come from any CloudEvents producer: it may
        // leave out this format's version (the current one is assumed) and `time` (optional in
        // CloudEvents; the time it is read is taken).
        let readable = field(.target) == nil
        let versionText = readable ? field(.version) ?? Self.currentVersionText : try required(.version)
        guard let version = Int(versionText) else { throw EnvelopeError("envelope version '\(versionText)' is not a number") }
        guard version == Self.currentVersion else {
            throw EnvelopeError("envelope version \(version) is not supported (this runtime reads version \(Self.currentVersion))")
        }
        let spec = try required(.specVersion)
        guard spec == "1.0" else { throw EnvelopeError("CloudEvents specversion '\(spec)' is not supported (expected 1.0)") }
        // `ce-datacontenttype`, else the binary mode's `Content-Type`, without parameters
        // (`application/json; charset=utf-8`).
        guard let contentTypeValue = field(.contentType) ?? standardContentType, !contentTypeValue.isEmpty else {
            throw EnvelopeError("not a Switchyard envelope: header '\(EnvelopeHeader.contentType)' (or Content-Type) is missing")
        }
        // The exact value first: Foundation's `trimmingCharacters` cost a fifth of a whole typed
        // call (it goes through NSString).
        let contentTypeText = ArgumentEncoding(rawValue: contentTypeValue) != nil ? contentTypeValue : Self.mediaType(contentTypeValue)
        guard let contentType = ArgumentEncoding(rawValue: contentTypeText) else {
            throw EnvelopeError("content type '\(contentTypeText)' is not supported (expected \(ArgumentEncoding.allCases.map(\.rawValue).joined(separator: " or ")))")
        }
        let id = try required(.id)
        let time = readable ? field(.time) ?? RFC3339.format(nanos: WallClock.nowNanos()) : try required(.time)
        guard let created = RFC3339.parse(time) else { throw EnvelopeError("'\(EnvelopeHeader.time)' is not an RFC 3339 time: '\(time)'") }
        var deadline: Int64 = 0
        if let text = field(.deadline) {
            guard let parsed = RFC3339.parse(text) else { throw EnvelopeError("'\(EnvelopeHeader.deadline)' is not an RFC 3339 time: '\(text)'") }
            deadline = parsed
        }
        self.init(
            id: id,
            target: Target(name: try required(.type), identifier: readable ? "" : try required(.target)),
            arguments: Array(message.body), contentType: contentType,
            replyTo: field(.replyTo), traceparent: field(.traceparent), tracestate: field(.tracestate), traceContext: field(.traceContext),
            idempotencyKey: field(.idempotencyKey), deadlineNanos: deadline, createdAtNanos: created,
            source: try required(.source), version: version, headers: extra)
    }

    /// Headers the envelope or its reply writes, never read as a caller's attribute.
    private static let ownHeaderNames: Set<String> = Set(Field.allCases.map(\.name) + [EnvelopeHeader.correlationID, EnvelopeHeader.outcome])

    /// The headers an envelope is read from.
    private enum Field: Int, CaseIterable {
        case specVersion, id, source, type, time, contentType, version, target, replyTo, idempotencyKey, deadline, traceparent, tracestate
        case traceContext

        var name: String {
            switch self {
            case .specVersion: EnvelopeHeader.specVersion
            case .id: EnvelopeHeader.id
            case .source: EnvelopeHeader.source
            case .type: EnvelopeHeader.type
            case .time: EnvelopeHeader.time
            case .contentType: EnvelopeHeader.contentType
            case .version: EnvelopeHeader.version
            case .target: EnvelopeHeader.target
            case .replyTo: EnvelopeHeader.replyTo
            case .idempotencyKey: EnvelopeHeader.idempotencyKey
            case .deadline: EnvelopeHeader.deadline
            case .traceparent: EnvelopeHeader.traceparent
            case .tracestate: EnvelopeHeader.tracestate
            case .traceContext: EnvelopeHeader.traceContext
            }
        }

        /// Each field's header name as bytes, by raw value.
        static let names: [[UInt8]] = allCases.map { Array($0.name.utf8) }
    }
}
