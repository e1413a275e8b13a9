import CSwitchyard
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
    /// ``currentVersion`` as the `ce-syversion` header writes it.
    package static let currentVersionText = String(currentVersion)
    /// An idempotency key is 1 to this many bytes, checked where a caller sets one and where a
    /// receiver reads one: an empty key from another producer would file every call to its
    /// target under one inbox record.
    public static let maxIdempotencyKeyBytes = 200

    /// Why `key` cannot be an idempotency key; nil when it can.
    package static func idempotencyKeyProblem(byteCount: Int) -> String? {
        (1...maxIdempotencyKeyBytes).contains(byteCount) ? nil : "must be 1 to \(maxIdempotencyKeyBytes) bytes (got \(byteCount))"
    }

    /// A content type's media type: `application/json; charset=utf-8` → `application/json`,
    /// spaces and tabs around it dropped.
    static func mediaType(_ value: String) -> String {
        var text = value.prefix { $0 != ";" }
        while let first = text.first, first == " " || first == "\t" { text = text.dropFirst() }
        while let last = text.last, last == " " || last == "\t" { text = text.dropLast() }
        return String(text)
    }

    /// The fields, in one copy-on-write object: an envelope is handed along several times per
    /// call (read, queued for a worker, completed, answered), and copying fourteen fields, ten of
    /// them strings or arrays, was about thirty reference-count operations each time.
    private var box: Box

    /// An envelope's fields, without the box an envelope keeps them in.
    struct Contents: Hashable {
        var id: String
        var target: Target
        var arguments: [UInt8]
        var contentType: ArgumentEncoding
        var replyTo: String?
        var traceparent: String?
        var tracestate: String?
        var traceContext: String?
        var idempotencyKey: String?
        var deadlineNanos: Int64
        var createdAtNanos: Int64
        var source: String
        var version: Int
        var headers: [String: String]
    }

    /// Mutated only through ``fields``, which copies it first unless this envelope holds the only
    /// reference: shared envelopes are never written, which makes it safe to send.
    private final class Box: @unchecked Sendable {
        // Unchecked: written only while uniquely referenced (``fields``), so no two accesses overlap.
        @exclusivity(unchecked) var fields: Contents
        init(_ fields: Contents) { self.fields = fields }
    }

    private var fields: Contents {
        get { box.fields }
        _modify {
            if !isKnownUniquelyReferenced(&box) { box = Box(box.fields) }
            yield &box.fields
        }
    }

    public static func == (lhs: Envelope, rhs: Envelope) -> Bool { lhs.box === rhs.box || lhs.box.fields == rhs.box.fields }
    public func hash(into hasher: inout Hasher) { hasher.combine(box.fields) }

    /// Unique, time-ordered id (UUIDv7). Also the message id, the CloudEvents `id`, the
    /// correlation id of its reply, and the default idempotency key.
    public var id: String {
        get { box.fields.id }
        set { fields.id = newValue }
    }
    /// What to call: a readable name and the identifier the runtime dispatches on.
    public var target: Target {
        get { box.fields.target }
        set { fields.target = newValue }
    }
    /// The encoded arguments, in declaration order.
    public var arguments: [UInt8] {
        get { box.fields.arguments }
        set { fields.arguments = newValue }
    }
    /// How `arguments` are encoded.
    public var contentType: ArgumentEncoding {
        get { box.fields.contentType }
        set { fields.contentType = newValue }
    }
    /// Where the caller waits for the reply; nil for fire-and-forget calls.
    public var replyTo: String? {
        get { box.fields.replyTo }
        set { fields.replyTo = newValue }
    }
    /// W3C trace context of the calling span.
    public var traceparent: String? {
        get { box.fields.traceparent }
        set { fields.traceparent = newValue }
    }
    /// W3C trace state, passed along unchanged.
    public var tracestate: String? {
        get { box.fields.tracestate }
        set { fields.tracestate = newValue }
    }
    /// Whatever else the bootstrapped instrument injects besides `traceparent`/`tracestate`
    /// (another propagation format, baggage), as `key=value` pairs joined by `,`, each side
    /// percent-encoded; nil when there is nothing else.
    public var traceContext: String? {
        get { box.fields.traceContext }
        set { fields.traceContext = newValue }
    }
    /// The caller's key for this call (``CallOptions/idempotencyKey``); nil when it set none and
    /// the id is the key. Receivers with an inbox execute a key at most once per target and window.
    public var idempotencyKey: String? {
        get { box.fields.idempotencyKey }
        set { fields.idempotencyKey = newValue }
    }
    /// When the caller stops waiting, ns since the Unix epoch; 0 for none.
    public var deadlineNanos: Int64 {
        get { box.fields.deadlineNanos }
        set { fields.deadlineNanos = newValue }
    }
    /// Creation time, ns since the Unix epoch.
    public var createdAtNanos: Int64 {
        get { box.fields.createdAtNanos }
        set { fields.createdAtNanos = newValue }
    }
    /// Who made the call (CloudEvents `source`), e.g. `switchyard://host/1234`.
    public var source: String {
        get { box.fields.source }
        set { fields.source = newValue }
    }
    /// Envelope format version.
    public var version: Int {
        get { box.fields.version }
        set { fields.version = newValue }
    }
    /// The caller's own attributes (``CallOptions/headers``), as CloudEvents extension
    /// attributes: `ce-<name>` headers. Read back: every `ce-` header that is not one of the
    /// envelope's own fields.
    public var headers: [String: String] {
        get { box.fields.headers }
        set { fields.headers = newValue }
    }

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
        box = Box(
            Contents(
                id: id, target: target, arguments: arguments, contentType: contentType, replyTo: replyTo, traceparent: traceparent,
                tracestate: tracestate, traceContext: traceContext, idempotencyKey: idempotencyKey, deadlineNanos: deadlineNanos,
                createdAtNanos: createdAtNanos, source: source, version: version, headers: headers))
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
    ///
    /// The message is made packed: every header is written once, straight into the message's own
    /// allocation, as the ABI lends it (this ran on every call, and the `Header` values, strings
    /// and the layout for the plugin were a tenth of a call through the in-memory queue).
    ///
    /// In the ``Form/compact`` form (for transports only Switchyard hosts read) the fields go in
    /// front of the arguments instead; the caller's headers and trace context stay headers. A
    /// call by readable name (no target identifier) is always CloudEvents: that is its format; so
    /// is an envelope of another version than ``currentVersion`` (the compact form has one).
    public func message(channel: String, orderingKey: String? = nil, deliverAtNanos: Int64 = 0, form: Form = .cloudEvents) -> Message {
        box.fields.message(channel: channel, orderingKey: orderingKey, deliverAtNanos: deliverAtNanos, form: form)
    }

    /// What ``message(channel:orderingKey:deliverAtNanos:form:)`` makes of the envelope these
    /// arguments describe (as ``init(id:target:arguments:contentType:replyTo:traceparent:tracestate:traceContext:idempotencyKey:deadlineNanos:createdAtNanos:source:version:headers:)``
    /// takes them, with its defaults for the rest: `source` ``defaultSource``, `version`
    /// ``currentVersion``), without making the envelope: a caller that packs its call at once and
    /// never hands the envelope along has no use for its box (an allocation a call).
    package static func message(
        id: consuming String, target: consuming Target, arguments: consuming [UInt8], contentType: ArgumentEncoding,
        replyTo: consuming String?, traceparent: consuming String?, tracestate: consuming String?, traceContext: consuming String?,
        idempotencyKey: consuming String?, deadlineNanos: Int64, createdAtNanos: Int64, headers: consuming [String: String],
        channel: String, orderingKey: String?, deliverAtNanos: Int64, form: Form
    ) -> Message {
        Contents(
            id: id, target: target, arguments: arguments, contentType: contentType, replyTo: replyTo, traceparent: traceparent,
            tracestate: tracestate, traceContext: traceContext, idempotencyKey: idempotencyKey, deadlineNanos: deadlineNanos,
            createdAtNanos: createdAtNanos, source: defaultSource, version: currentVersion, headers: headers
        ).message(channel: channel, orderingKey: orderingKey, deliverAtNanos: deliverAtNanos, form: form)
    }

    /// Reads an envelope from a delivered message, or says exactly why it is not one.
    public init(_ message: MessageView) throws(EnvelopeError) {
        try self.init(message, reusing: nil)
    }

    /// Reads an envelope as ``init(_:)`` does, taking its source, type and target from `strings`
    /// where they have the bytes `strings` last saw (a receiver's calls mostly share them).
    package init(_ message: MessageView, reusing strings: EnvelopeStrings?) throws(EnvelopeError) {
        // One pass over the headers, matching names by length and bytes, each of ours kept as a
        // slice of the message: only values the envelope keeps as text become strings; the
        // version, the content type and the times are read from the bytes (this reader ran on
        // every delivery, and strings made and dropped were most of its cost).
        var slices = InlineArray<14, sy_str>(repeating: sy_str())
        var present: UInt32 = 0  // a bit per field found
        var extra: [String: String] = [:]
        var standardContentType: sy_str?
        let headers = message.fields.headers
        let names = Field.names
        let byLength = Field.byLength
        next: for index in 0..<message.headerCount {
            let header = headers![index]
            guard header.key.len > 3, let key = header.key.data else { continue }
            // Only the fields whose names have this length, not found yet, are compared.
            var candidates = header.key.len < byLength.count ? byLength[header.key.len] & ~present : 0
            while candidates != 0 {
                let field = candidates.trailingZeroBitCount
                candidates &= candidates - 1
                if Self.equals(header.key, names[field]) {
                    slices[field] = header.value
                    present |= 1 << field
                    continue next
                }
            }
            // CloudEvents binary mode (HTTP, NATS) carries datacontenttype as Content-Type: what
            // producers other than Switchyard send.
            if header.key.len == 12, String(header.key).lowercased() == "content-type" {
                standardContentType = header.value
                continue
            }
            // Any other CloudEvents attribute: the caller's own (CallOptions.headers).
            if memcmp(key, "ce-", 3) == 0 {
                let name = String(header.key)
                if !Self.ownHeaderNames.contains(name) { extra[String(name.dropFirst(3))] = String(header.value) }
            }
        }
        func slice(_ field: Field) -> sy_str? { present & (1 << field.rawValue) == 0 ? nil : slices[field.rawValue] }
        func text(_ field: Field) -> String? { slice(field).map(String.init) }
        // The compact form: no CloudEvents `specversion`, the fields in front of the arguments.
        if slice(.specVersion) == nil, CompactForm.isCompact(message.body) {
            let prefix = try CompactForm.readPrefix(message.body)
            guard message.fields.id.len > 0 else { throw EnvelopeError("not a Switchyard envelope: the message id is empty") }
            let (sourceText, name, identifierText, replyTo) =
                strings?.strings(prefix.source, prefix.type, prefix.identifier, replyTo: prefix.replyTo)
                ?? (String(prefix.source), String(prefix.type), String(prefix.identifier), prefix.replyTo.map(String.init))
            self.init(
                id: String(message.fields.id), target: Target(name: name, identifier: identifierText),
                arguments: Array(message.body[prefix.argumentsOffset...]), contentType: prefix.contentType, replyTo: replyTo,
                traceparent: text(.traceparent), tracestate: text(.tracestate), traceContext: text(.traceContext),
                idempotencyKey: prefix.idempotencyKey.map(String.init), deadlineNanos: prefix.deadlineNanos, createdAtNanos: prefix.createdAtNanos,
                source: sourceText, version: Self.currentVersion, headers: extra)
            return
        }
        func required(_ field: Field) throws(EnvelopeError) -> sy_str {
            guard let value = slice(field), value.len > 0 else {
                throw EnvelopeError("not a Switchyard envelope: header '\(field.name)' is missing")
            }
            return value
        }
        // A call by readable name (no `sytarget`) may come from any CloudEvents producer: it may
        // leave out this format's version (the current one is assumed) and `time` (optional in
        // CloudEvents; the time it is read is taken).
        let readable = slice(.target) == nil
        let version: Int
        if let versionSlice = readable ? slice(.version) : try required(.version) {
            guard let number = Self.integer(versionSlice) else { throw EnvelopeError("envelope version '\(String(versionSlice))' is not a number") }
            version = number
        } else {
            version = Self.currentVersion
        }
        guard version == Self.currentVersion else {
            throw EnvelopeError("envelope version \(version) is not supported (this runtime reads version \(Self.currentVersion))")
        }
        let spec = try required(.specVersion)
        guard Self.equals(spec, Self.specVersionBytes) else {
            throw EnvelopeError("CloudEvents specversion '\(String(spec))' is not supported (expected 1.0)")
        }
        // `ce-datacontenttype`, else the binary mode's `Content-Type`, without parameters
        // (`application/json; charset=utf-8`).
        guard let contentTypeSlice = slice(.contentType) ?? standardContentType, contentTypeSlice.len > 0 else {
            throw EnvelopeError("not a Switchyard envelope: header '\(EnvelopeHeader.contentType)' (or Content-Type) is missing")
        }
        let contentType: ArgumentEncoding
        if let exact = Self.encodings.first(where: { Self.equals(contentTypeSlice, $0.bytes) }) {
            contentType = exact.encoding
        } else {
            let contentTypeText = Self.mediaType(String(contentTypeSlice))
            guard let parsed = ArgumentEncoding(rawValue: contentTypeText) else {
                throw EnvelopeError(
                    "content type '\(contentTypeText)' is not supported (expected \(ArgumentEncoding.allCases.map(\.rawValue).joined(separator: " or ")))")
            }
            contentType = parsed
        }
        let id = try required(.id)
        let created: Int64
        if let time = readable ? slice(.time) : try required(.time) {
            guard let parsed = Self.time(time) else { throw EnvelopeError("'\(EnvelopeHeader.time)' is not an RFC 3339 time: '\(String(time))'") }
            created = parsed
        } else {
            created = WallClock.nowNanos()
        }
        var deadline: Int64 = 0
        if let text = slice(.deadline) {
            guard let parsed = Self.time(text) else { throw EnvelopeError("'\(EnvelopeHeader.deadline)' is not an RFC 3339 time: '\(String(text))'") }
            // As the compact form refuses it: before 1970 would read as "no deadline" and run.
            guard parsed > 0 else { throw EnvelopeError("'\(EnvelopeHeader.deadline)' is before 1970: '\(String(text))'") }
            deadline = parsed
        }
        // Empty counts as absent (the call's id is its key), as an empty value means unset
        // elsewhere; an oversized one is refused.
        let idempotencyKey = text(.idempotencyKey).flatMap { $0.isEmpty ? nil : $0 }
        if let key = idempotencyKey, let problem = Self.idempotencyKeyProblem(byteCount: key.utf8.count) {
            throw EnvelopeError("'\(EnvelopeHeader.idempotencyKey)' \(problem)")
        }
        let source = try required(.source)
        let type = try required(.type)
        let identifier = readable ? sy_str() : try required(.target)
        let (sourceText, name, identifierText, replyTo) =
            strings?.strings(source, type, identifier, replyTo: slice(.replyTo))
            ?? (String(source), String(type), String(identifier), text(.replyTo))
        self.init(
            id: String(id), target: Target(name: name, identifier: identifierText), arguments: Array(message.body), contentType: contentType,
            replyTo: replyTo, traceparent: text(.traceparent), tracestate: text(.tracestate), traceContext: text(.traceContext),
            idempotencyKey: idempotencyKey, deadlineNanos: deadline, createdAtNanos: created,
            source: sourceText, version: version, headers: extra)
    }

    /// The encoding whose content type is exactly `value` (no parameters), read without making a
    /// string: what a reply's reader needs.
    package static func encoding(exactly value: sy_str) -> ArgumentEncoding? {
        encodings.first { equals(value, $0.bytes) }?.encoding
    }

    /// The content types the envelope reads, as bytes to compare a header's value with.
    private static let encodings: [(encoding: ArgumentEncoding, bytes: [UInt8])] = ArgumentEncoding.allCases.map { ($0, Array($0.rawValue.utf8)) }
    private static let specVersionBytes = Array("1.0".utf8)

    /// Whether `slice` holds exactly `bytes`.
    private static func equals(_ slice: sy_str, _ bytes: [UInt8]) -> Bool {
        guard slice.len == bytes.count else { return false }
        guard let data = slice.data else { return bytes.isEmpty }
        return bytes.withUnsafeBytes { memcmp($0.baseAddress!, data, bytes.count) } == 0
    }

    /// The decimal integer `slice` holds (digits only, at most 9), or nil.
    private static func integer(_ slice: sy_str) -> Int? {
        guard slice.len > 0, slice.len <= 9, let data = slice.data else { return nil }
        var value = 0
        for index in 0..<slice.len {
            let digit = UInt8(bitPattern: data[index])
            guard (48...57).contains(digit) else { return nil }
            value = value * 10 + Int(digit - 48)
        }
        return value
    }

    /// The RFC 3339 time `slice` holds, in ns since the epoch, or nil.
    private static func time(_ slice: sy_str) -> Int64? {
        guard let data = slice.data else { return nil }
        return RFC3339.parse(UnsafeRawBufferPointer(start: data, count: slice.len))
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

        /// How many fields there are (`slices` in the reader holds one per field).
        static let count = 14
        /// Each field's header name as bytes, by raw value.
        static let names: [[UInt8]] = {
            precondition(allCases.count == count, "Envelope.Field.count must match its cases")
            return allCases.map { Array($0.name.utf8) }
        }()
        /// By name length: a bit (1 << raw value) for each field whose header name has that length.
        static let byLength: [UInt32] = {
            var masks = [UInt32](repeating: 0, count: (names.map(\.count).max() ?? 0) + 1)
            for (field, name) in names.enumerated() { masks[name.count] |= 1 << field }
            return masks
        }()
    }
}

/// The strings an envelope reader made last time for the fields that repeat from call to call —
/// the source, the type, the target and the reply channel — kept to be handed out again for the same bytes: a
/// receiver (one per subscription) sees the same few on almost every call, and comparing bytes
/// costs less than making, validating and freeing a string of each on every delivery. Safe to
/// share between threads.
package final class EnvelopeStrings: Sendable {
    private let last = Guarded<InlineArray<4, String>>(InlineArray(repeating: ""))

    /// Strings reading from a clean slate.
    package init() {}

    /// `source`, `type`, `identifier` and `replyTo` as strings: the ones made last time where the
    /// bytes are the same, new ones (then kept) where they differ. A caller's reply channel is
    /// the same for all its calls, and longer than a string holds without an allocation.
    func strings(_ source: sy_str, _ type: sy_str, _ identifier: sy_str, replyTo: sy_str?) -> (String, String, String, String?) {
        last.withLock { last in
            (Self.reuse(&last[0], source), Self.reuse(&last[1], type), Self.reuse(&last[2], identifier), replyTo.map { Self.reuse(&last[3], $0) })
        }
    }

    private static func reuse(_ kept: inout String, _ slice: sy_str) -> String {
        let same = kept.withUTF8 { utf8 in
            utf8.count == slice.len && (slice.len == 0 || memcmp(utf8.baseAddress!, slice.data!, slice.len) == 0)
        }
        if !same { kept = String(slice) }
        return kept
    }
}

extension Envelope.Contents {
    /// What ``Envelope/message(channel:orderingKey:deliverAtNanos:form:)`` makes of an envelope with these contents.
    func message(channel: String, orderingKey: String?, deliverAtNanos: Int64, form: Envelope.Form) -> Message {
        let own: [(key: String, value: String)] = headers.isEmpty ? [] : headers.sorted { $0.key < $1.key }.map { ("ce-" + $0.key, $0.value) }
        if form == .compact, !target.identifier.isEmpty, version == Envelope.currentVersion {
            // The prefix's writer inline: a closure kept in a constant copies these contents
            // (a retain for each of their strings) where one passed as the argument borrows them.
            return Message(
                packing: id, channel: channel, orderingKey: orderingKey, bodyPrefix: CompactForm.prefixCount(self),
                { buffer in CompactForm.writePrefix(self, into: buffer) }, body: arguments,
                deliverAtNanos: deliverAtNanos, expiresAtNanos: deadlineNanos,
                headers: { headers in
                    if let traceparent { headers.add(EnvelopeHeader.traceparent, traceparent) }
                    if let tracestate { headers.add(EnvelopeHeader.tracestate, tracestate) }
                    if let traceContext { headers.add(EnvelopeHeader.traceContext, traceContext) }
                    for header in own { headers.add(header.key, header.value) }
                })
        }
        // A call with a deadline expires with it: a transport with the `expiry` capability then
        // never delivers it late (it dead-letters it), and it does not pile up where nobody reads.
        return Message(packing: id, channel: channel, orderingKey: orderingKey, body: arguments, deliverAtNanos: deliverAtNanos, expiresAtNanos: deadlineNanos) {
            headers in
            headers.add(EnvelopeHeader.specVersion, "1.0")
            headers.add(EnvelopeHeader.id, id)
            headers.add(EnvelopeHeader.source, source)
            headers.add(EnvelopeHeader.type, target.name)
            headers.add(EnvelopeHeader.time, byteCount: RFC3339.formattedCount) { RFC3339.write(nanos: createdAtNanos, into: $0) }
            headers.add(EnvelopeHeader.contentType, contentType.rawValue)
            headers.add(EnvelopeHeader.version, version == Envelope.currentVersion ? Envelope.currentVersionText : String(version))
            if !target.identifier.isEmpty { headers.add(EnvelopeHeader.target, target.identifier) }
            if let replyTo { headers.add(EnvelopeHeader.replyTo, replyTo) }
            if let idempotencyKey, idempotencyKey != id { headers.add(EnvelopeHeader.idempotencyKey, idempotencyKey) }
            if deadlineNanos > 0 { headers.add(EnvelopeHeader.deadline, byteCount: RFC3339.formattedCount) { RFC3339.write(nanos: deadlineNanos, into: $0) } }
            if let traceparent { headers.add(EnvelopeHeader.traceparent, traceparent) }
            if let tracestate { headers.add(EnvelopeHeader.tracestate, tracestate) }
            if let traceContext { headers.add(EnvelopeHeader.traceContext, traceContext) }
            for header in own { headers.add(header.key, header.value) }
        }
    }
}
