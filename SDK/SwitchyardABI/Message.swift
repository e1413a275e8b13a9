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
///
/// A value type with one reference inside: every field but `attempt` lives in one object, shared
/// by copies until one of them changes a field (copy on write, as `Array` does). A message is copied
/// several times between a publish and its delivery (made, checked, stored, leased, lent); each
/// copy costs one retain, where a struct of the fields inline cost a call to its value witness
/// and a retain of each string in it (measured with callgrind).
///
/// A message copied from C (``MessageView/copy()``) keeps its id, headers and body packed in the
/// same allocation as its other fields, laid out as the ABI lends them, until something changes
/// them: storing it costs one allocation, and lending it back to C costs no copy of them.
/// Reading `id`, `headers` or `body` makes Swift values from the packed bytes each time; keep
/// what you read more than once.
public struct Message: Hashable, Sendable {
    /// Unique id chosen by the publisher.
    public var id: String {
        get {
            switch storage.fields.pointee.payload {
            case .values(let id, _, _): id
            case .packed(let layout, _): String(layout.id)
            }
        }
        set {
            let (_, headers, body) = unpacked
            writable.pointee.payload = .values(id: newValue, headers: headers, body: body)
        }
    }
    /// Destination channel (queue or topic name).
    @inlinable
    public var channel: String {
        get { storage.fields.pointee.channel }
        set { writable.pointee.channel = newValue }
    }
    /// Messages sharing a key are delivered one at a time, in order. `nil`: no ordering.
    @inlinable
    public var orderingKey: String? {
        get { storage.fields.pointee.orderingKey }
        set { writable.pointee.orderingKey = newValue }
    }
    /// Headers, in order.
    public var headers: [Header] {
        get {
            switch storage.fields.pointee.payload {
            case .values(_, let headers, _): headers
            case .packed(let layout, _): CHeaders(layout.cHeaders, count: layout.headerCount).copied
            }
        }
        set {
            let (id, _, body) = unpacked
            writable.pointee.payload = .values(id: id, headers: newValue, body: body)
        }
    }
    /// Opaque payload.
    public var body: [UInt8] {
        get {
            switch storage.fields.pointee.payload {
            case .values(_, _, let body): body
            case .packed(let layout, _): Array(UnsafeRawBufferPointer(start: layout.body.data, count: layout.body.len))
            }
        }
        set {
            let (id, headers, _) = unpacked
            writable.pointee.payload = .values(id: id, headers: headers, body: newValue)
        }
    }
    /// Deliveries so far, this one included; set by the transport on delivery. Kept beside the
    /// shared fields, not among them: a transport counts an attempt on each lease, and a topic's
    /// groups share one message, so counting it among the fields copied them for every group.
    public var attempt: UInt32
    /// Earliest delivery time in nanoseconds since the Unix epoch; 0 means now.
    @inlinable
    public var deliverAtNanos: Int64 {
        get { storage.fields.pointee.deliverAtNanos }
        set { writable.pointee.deliverAtNanos = newValue }
    }
    /// When the transport accepted the message (ns since the Unix epoch); set on delivery.
    @inlinable
    public var enqueuedAtNanos: Int64 {
        get { storage.fields.pointee.enqueuedAtNanos }
        set { writable.pointee.enqueuedAtNanos = newValue }
    }
    /// When the message expires (ns since the Unix epoch); 0: never. A transport with the
    /// `expiry` capability never delivers it from then on (ABI 1.3).
    @inlinable
    public var expiresAtNanos: Int64 {
        get { storage.fields.pointee.expiresAtNanos }
        set { writable.pointee.expiresAtNanos = newValue }
    }
    /// What happens at expiry, and other `SY_MESSAGE_*` flags (ABI 1.3).
    @inlinable
    public var flags: MessageFlags {
        get { storage.fields.pointee.flags }
        set { writable.pointee.flags = newValue }
    }

    /// Every field, shared by the copies of this message until one changes.
    @usableFromInline
    nonisolated(unsafe) var storage: MessageStorage

    /// The fields, for changing them: this message's own storage, copied first if another
    /// message shares it.
    @inlinable
    var writable: UnsafeMutablePointer<MessageFields> {
        mutating get {
            if !isKnownUniquelyReferenced(&storage) { storage = storage.copy() }
            return storage.fields
        }
    }

    /// A message with the given fields; everything but `id` and `channel` has a default.
    public init(
        id: String, channel: String, orderingKey: String? = nil, headers: [Header] = [],
        body: [UInt8] = [], attempt: UInt32 = 0, deliverAtNanos: Int64 = 0, enqueuedAtNanos: Int64 = 0,
        expiresAtNanos: Int64 = 0, flags: MessageFlags = []
    ) {
        storage = .make(
            MessageFields(
                channel: channel, orderingKey: orderingKey, flags: flags, deliverAtNanos: deliverAtNanos, enqueuedAtNanos: enqueuedAtNanos,
                expiresAtNanos: expiresAtNanos, payload: .values(id: id, headers: headers, body: body)))
        self.attempt = attempt
    }

    init(storage: MessageStorage, attempt: UInt32) {
        self.storage = storage
        self.attempt = attempt
    }

    /// The id, headers and body as Swift values.
    private var unpacked: (id: String, headers: [Header], body: [UInt8]) {
        switch storage.fields.pointee.payload {
        case .values(let id, let headers, let body): (id, headers, body)
        case .packed: (id, headers, body)
        }
    }

    /// The first value of header `key`, if any.
    public func header(_ key: String) -> String? {
        switch storage.fields.pointee.payload {
        case .values(_, let headers, _):
            return headers.first { $0.key == key }?.value
        case .packed(let layout, _):
            return CHeaders(layout.cHeaders, count: layout.headerCount).value(of: key)
        }
    }

    /// Whether the message has expired at `nowNanos` (wall clock).
    public func isExpired(at nowNanos: Int64) -> Bool { expiresAtNanos > 0 && nowNanos >= expiresAtNanos }

    /// The sizes ``MessageLimits`` checks, read without unpacking: the header count, the bytes of
    /// the headers' keys and values, and the bytes of everything else.
    var limitSizes: (headerCount: Int, headerBytes: Int, otherBytes: Int) {
        let fields = storage.fields
        switch fields.pointee.payload {
        case .values(let id, let headers, let body):
            let headerBytes = headers.reduce(0) { $0 + $1.key.utf8.count + $1.value.utf8.count }
            return (headers.count, headerBytes, body.count + id.utf8.count + fields.pointee.channel.utf8.count)
        case .packed(let layout, _):
            return (layout.headerCount, layout.headerBytes, layout.body.len + layout.id.len + fields.pointee.channel.utf8.count)
        }
    }

    /// Whether two messages have the same fields, packed or not.
    public static func == (a: Message, b: Message) -> Bool {
        if a.storage === b.storage { return a.attempt == b.attempt }
        return a.channel == b.channel && a.orderingKey == b.orderingKey && a.attempt == b.attempt && a.deliverAtNanos == b.deliverAtNanos
            && a.enqueuedAtNanos == b.enqueuedAtNanos && a.expiresAtNanos == b.expiresAtNanos && a.flags == b.flags
            && a.id == b.id && a.headers == b.headers && a.body == b.body
    }

    /// Hashes every field, as `==` compares them.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(id)
        hasher.combine(channel)
        hasher.combine(orderingKey)
        hasher.combine(headers)
        hasher.combine(body)
        hasher.combine(attempt)
        hasher.combine(deliverAtNanos)
        hasher.combine(enqueuedAtNanos)
        hasher.combine(expiresAtNanos)
        hasher.combine(flags)
    }
}

extension Message: CustomReflectable {
    /// The fields, as a struct of them would show (in `print`, `dump` and test failures), not
    /// the storage object that holds them.
    public var customMirror: Mirror {
        Mirror(
            self,
            children: [
                "id": id, "channel": channel, "orderingKey": orderingKey as Any, "headers": headers, "body": body, "attempt": attempt,
                "deliverAtNanos": deliverAtNanos, "enqueuedAtNanos": enqueuedAtNanos, "expiresAtNanos": expiresAtNanos, "flags": flags,
            ], displayStyle: .struct)
    }
}

/// Every field of a ``Message`` but its attempt, kept in its ``MessageStorage``.
@usableFromInline
struct MessageFields {
    @usableFromInline var channel: String
    @usableFromInline var orderingKey: String?
    @usableFromInline var flags: MessageFlags
    @usableFromInline var deliverAtNanos: Int64
    @usableFromInline var enqueuedAtNanos: Int64
    @usableFromInline var expiresAtNanos: Int64
    @usableFromInline var payload: Payload

    /// A message's id, headers and body: Swift values, or packed as the ABI lends them.
    @usableFromInline
    enum Payload {
        case values(id: String, headers: [Header], body: [UInt8])
        /// Packed in the tail of `owner`'s allocation; nil: this storage's own (a storage cannot
        /// hold a reference to itself without leaking).
        case packed(PackedLayout, owner: MessageStorage?)
    }
}

/// Where a packed id, headers and body lie in a ``MessageStorage``'s allocation.
@usableFromInline
struct PackedLayout {
    let id: sy_str
    let headerCount: Int
    /// The headers; nil when there are none.
    let cHeaders: UnsafePointer<sy_header>?
    let body: sy_bytes
    /// The bytes of every header's key and value.
    let headerBytes: Int
}

/// The one object behind a ``Message``: its fields, and — for a message copied from C or packed
/// as it was written — its id, headers and body in the same allocation after them, laid out as
/// the ABI lends them (the `sy_header` array, then the strings, then the body), so that lending
/// the message again points into it instead of copying. Changed only while one message holds it
/// (``Message/writable``); the packed bytes never change after they are written. So a message
/// may cross threads, as an `Array` may (`ManagedBuffer` cannot declare itself `Sendable`: the
/// message's field says it instead).
@usableFromInline
final class MessageStorage: ManagedBuffer<MessageFields, UInt64> {
    /// The fields, read and written through a pointer: `header` is a class's stored property,
    /// and reading it directly costs a call into the runtime's exclusivity check each time
    /// (measured with callgrind). The pointer is valid while the storage lives.
    @inlinable
    var fields: UnsafeMutablePointer<MessageFields> {
        @inline(__always) get { withUnsafeMutablePointerToHeader { $0 } }
    }

    /// A storage of `fields` alone, nothing packed in it.
    @usableFromInline
    static func make(_ fields: MessageFields) -> MessageStorage {
        unsafeDowncast(create(minimumCapacity: 0) { _ in fields }, to: MessageStorage.self)
    }

    /// A copy of these fields, for a message about to change one: packed bytes are shared with
    /// the storage that holds them, not copied.
    @usableFromInline
    func copy() -> MessageStorage {
        var copied = fields.pointee
        if case .packed(let layout, nil) = copied.payload { copied.payload = .packed(layout, owner: self) }
        return .make(copied)
    }

    /// A copy of `message` (validated by the caller: see ``MessageView``), its id, headers and
    /// body packed after the other fields.
    static func make(copying message: sy_message) -> MessageStorage {
        let count = message.header_count
        let headers = CHeaders(message.headers, count: count)
        // The fields are made where the header is initialized: made outside, they were copied in
        // (a call to their value witness per message, measured with callgrind).
        let fields = { (payload: MessageFields.Payload) in
            MessageFields(
                channel: String(message.channel), orderingKey: message.ordering_key.len == 0 ? nil : String(message.ordering_key),
                flags: MessageFlags(rawValue: message.flags), deliverAtNanos: message.deliver_at_ns,
                enqueuedAtNanos: message.enqueued_at_ns, expiresAtNanos: message.expires_at_ns, payload: payload)
        }
        return make(fields, idBytes: message.id.len, headerCount: count, headerBytes: headers.byteCount, bodyBytes: message.body.len) { writer in
            writer.setID(message.id.data, message.id.len)
            for index in 0..<count {
                let header = message.headers[index]
                writer.add(header.key.data, header.key.len, header.value.data, header.value.len)
            }
            writer.setBody(message.body.data, message.body.len)
        }
    }

    /// The fields `fields` makes with `id`, the headers `headers` adds and `body` packed after
    /// them (see ``Message/init(packing:channel:orderingKey:bodyPrefix:_:body:deliverAtNanos:expiresAtNanos:flags:headers:)``).
    static func make(
        _ fields: (MessageFields.Payload) -> MessageFields, id: String, bodyPrefix: Int = 0, _ writeBodyPrefix: (UnsafeMutableRawBufferPointer) -> Void = { _ in },
        body: [UInt8], headers: (inout PackedMessageWriter) -> Void
    ) -> MessageStorage {
        var measured = PackedMessageWriter(measuring: ())
        headers(&measured)
        return make(
            fields, idBytes: id.utf8.count, headerCount: measured.headerCount, headerBytes: measured.headerBytes, bodyBytes: bodyPrefix + body.count
        ) { writer in
            var id = id
            id.withUTF8 { writer.setID($0.baseAddress, $0.count) }
            headers(&writer)
            precondition(writer.headerCount == measured.headerCount && writer.headerBytes == measured.headerBytes, PackedMessageWriter.mismatch)
            body.withUnsafeBytes { writer.setBody(prefix: bodyPrefix, writeBodyPrefix, $0.baseAddress, $0.count) }
        }
    }

    /// One allocation for the fields `fields` makes and the exact size of the parts `fill` writes
    /// (in order: the id, every header, the body), then the layout that points into it.
    private static func make(
        _ fields: (MessageFields.Payload) -> MessageFields, idBytes: Int, headerCount: Int, headerBytes: Int, bodyBytes: Int, _ fill: (inout PackedMessageWriter) -> Void
    ) -> MessageStorage {
        let arrayBytes = headerCount * MemoryLayout<sy_header>.stride
        let total = arrayBytes + idBytes + headerBytes + bodyBytes
        let words = Swift.max(1, (total + 7) / 8)  // UInt64 elements: aligned for `sy_header`
        let buffer = create(minimumCapacity: words) { buffer in
            buffer.withUnsafeMutablePointerToElements { elements in
                let storage = UnsafeMutableRawPointer(elements)
                var writer = PackedMessageWriter(storage: storage, headerCapacity: headerCount, byteCapacity: total)
                fill(&writer)
                precondition(writer.cursor == total, "a packed message's parts must fill exactly the bytes measured for them")
                return fields(
                    .packed(
                        PackedLayout(
                            id: writer.id, headerCount: headerCount, cHeaders: headerCount > 0 ? UnsafePointer(writer.headers) : nil, body: writer.body,
                            headerBytes: headerBytes), owner: nil))
            }
        }
        return unsafeDowncast(buffer, to: MessageStorage.self)
    }
}

/// `sy_message.flags` (ABI 1.3).
public struct MessageFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    /// Flags from their C bits; unknown bits are kept.
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// At expiry, drop the message instead of dead-lettering it (`SY_MESSAGE_DROP_WHEN_EXPIRED`):
    /// for replies, whose caller has stopped waiting.
    public static let dropWhenExpired = MessageFlags(rawValue: 1 << 0)
    /// On a delivery: the transport already removed the message (`SY_MESSAGE_SETTLED`, ABI 1.4,
    /// a subscription with ``SubscribeOptions/settleOnDelivery``); do not settle it. Meaningless on
    /// publish (transports ignore it there).
    public static let settled = MessageFlags(rawValue: 1 << 1)
}

/// Writes a message's headers straight into its packed form, as the ABI lends them: each header's
/// key and value are copied once, into the message's own allocation, and become neither `Header`
/// values nor strings of their own. Given to the `headers` closure of
/// ``Message/init(packing:channel:orderingKey:body:deliverAtNanos:expiresAtNanos:flags:headers:)``, which
/// calls it twice: first to measure (nothing is written), then to write.
package struct PackedMessageWriter {
    /// The allocation; nil while measuring.
    private let storage: UnsafeMutableRawPointer?
    /// The `sy_header` array at the allocation's start.
    let headers: UnsafeMutablePointer<sy_header>?
    private let headerCapacity: Int
    private let byteCapacity: Int
    /// Bytes written so far (the header array included).
    private(set) var cursor: Int
    /// Headers added so far.
    private(set) var headerCount = 0
    /// Bytes of the keys and values added so far.
    private(set) var headerBytes = 0
    private(set) var id = sy_str()
    private(set) var body = sy_bytes()

    init(measuring: Void) {
        storage = nil
        headers = nil
        headerCapacity = 0
        byteCapacity = 0
        cursor = 0
    }

    init(storage: UnsafeMutableRawPointer, headerCapacity: Int, byteCapacity: Int) {
        self.storage = storage
        self.headerCapacity = headerCapacity
        self.byteCapacity = byteCapacity
        headers = headerCapacity > 0 ? storage.bindMemory(to: sy_header.self, capacity: headerCapacity) : nil
        cursor = headerCapacity * MemoryLayout<sy_header>.stride
    }

    static let mismatch = "a packed message's headers must be the same when measured and when written"

    /// Adds header `key: value`.
    package mutating func add(_ key: String, _ value: String) {
        guard storage != nil else {  // measuring: a native string knows its UTF-8 count
            headerBytes += key.utf8.count + value.utf8.count
            headerCount += 1
            return
        }
        key.withUTF8Bytes { key in value.withUTF8Bytes { value in add(key.baseAddress, key.count, value.baseAddress, value.count) } }
    }

    /// Adds header `key` with a value of exactly `byteCount` bytes, which `write` writes (it is
    /// not called while measuring).
    package mutating func add(_ key: String, byteCount: Int, _ write: (UnsafeMutableRawBufferPointer) -> Void) {
        headerBytes += key.utf8.count + byteCount
        guard let storage else {
            headerCount += 1
            return
        }
        precondition(headerCount < headerCapacity, Self.mismatch)
        let keySlice = key.withUTF8Bytes { put($0.baseAddress, $0.count) }
        precondition(cursor + byteCount <= byteCapacity, Self.mismatch)
        let start = storage + cursor
        write(UnsafeMutableRawBufferPointer(start: start, count: byteCount))
        cursor += byteCount
        (headers! + headerCount).initialize(to: sy_header(key: keySlice, value: sy_str(data: start.assumingMemoryBound(to: CChar.self), len: byteCount)))
        headerCount += 1
    }

    /// Adds a header from raw key and value bytes.
    mutating func add(_ key: UnsafeRawPointer?, _ keyCount: Int, _ value: UnsafeRawPointer?, _ valueCount: Int) {
        headerBytes += keyCount + valueCount
        guard storage != nil else {
            headerCount += 1
            return
        }
        precondition(headerCount < headerCapacity, Self.mismatch)
        let keySlice = put(key, keyCount)
        (headers! + headerCount).initialize(to: sy_header(key: keySlice, value: put(value, valueCount)))
        headerCount += 1
    }

    mutating func setID(_ bytes: UnsafeRawPointer?, _ count: Int) { id = put(bytes, count) }

    mutating func setBody(_ bytes: UnsafeRawPointer?, _ count: Int) {
        let slice = put(bytes, count)
        body = sy_bytes(data: UnsafeRawPointer(slice.data).map { $0.assumingMemoryBound(to: UInt8.self) }, len: count)
    }

    /// Sets the body to `prefixCount` bytes `writePrefix` writes, followed by `count` bytes copied.
    mutating func setBody(prefix prefixCount: Int, _ writePrefix: (UnsafeMutableRawBufferPointer) -> Void, _ bytes: UnsafeRawPointer?, _ count: Int) {
        precondition(cursor + prefixCount <= byteCapacity, Self.mismatch)
        let start = storage! + cursor
        writePrefix(UnsafeMutableRawBufferPointer(start: start, count: prefixCount))
        cursor += prefixCount
        _ = put(bytes, count)
        body = sy_bytes(data: start.assumingMemoryBound(to: UInt8.self), len: prefixCount + count)
    }

    /// Copies `count` bytes to the cursor. Every slice points into the allocation, an empty one
    /// too (a reader may test for NULL).
    private mutating func put(_ bytes: UnsafeRawPointer?, _ count: Int) -> sy_str {
        precondition(cursor + count <= byteCapacity, Self.mismatch)
        let start = storage! + cursor
        if count > 0, let bytes { start.copyMemory(from: bytes, byteCount: count) }
        cursor += count
        return sy_str(data: start.assumingMemoryBound(to: CChar.self), len: count)
    }
}

extension Message {
    /// A message whose id, headers and body are packed as they are written — one allocation, laid
    /// out as the ABI lends it, as ``MessageView/copy()`` makes — for a producer that writes many
    /// headers per message (the call envelope): its headers cost no `Header` values and no
    /// strings of their own, and lending the message to C copies nothing but the channel and key.
    /// `headers` is called twice, to measure and then to write, and must add the same both times.
    /// With `bodyPrefix`, the body starts with that many bytes `writeBodyPrefix` writes (once),
    /// then `body`'s.
    package init(
        packing id: String, channel: String, orderingKey: String? = nil, bodyPrefix: Int = 0,
        _ writeBodyPrefix: (UnsafeMutableRawBufferPointer) -> Void = { _ in }, body: [UInt8], deliverAtNanos: Int64 = 0,
        expiresAtNanos: Int64 = 0, flags: MessageFlags = [], headers: (inout PackedMessageWriter) -> Void
    ) {
        let fields = { (payload: MessageFields.Payload) in
            MessageFields(
                channel: channel, orderingKey: orderingKey, flags: flags, deliverAtNanos: deliverAtNanos, enqueuedAtNanos: 0,
                expiresAtNanos: expiresAtNanos, payload: payload)
        }
        self.init(storage: .make(fields, id: id, bodyPrefix: bodyPrefix, writeBodyPrefix, body: body, headers: headers), attempt: 0)
    }
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
        try withCMessage(structSize: MemoryLayout<sy_message>.size, body)
    }

    /// ``withCMessage(_:)`` claiming `structSize` (see ``lay(into:structSize:)``).
    @inlinable
    func withCMessage<R, E: Error>(structSize: Int, _ body: (UnsafePointer<sy_message>) throws(E) -> R) throws(E) -> R {
        let result: Result<R, E> = withUnsafeTemporaryAllocation(
            byteCount: max(1, lentByteCount), alignment: MemoryLayout<sy_header>.alignment
        ) { raw in
            var message = lay(into: raw, structSize: structSize)
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
        let fields = storage.fields
        var bytes = fields.pointee.channel.utf8.count + (fields.pointee.orderingKey?.utf8.count ?? 0)
        // A packed message lends its own allocation: only the channel and key are laid out.
        guard case .values(let id, let headers, let body) = fields.pointee.payload else { return bytes }
        bytes += headers.count * MemoryLayout<sy_header>.stride + id.utf8.count + body.count
        for header in headers { bytes += header.key.utf8.count + header.value.utf8.count }
        return bytes
    }

    /// Writes this message's headers, strings and body into `raw` (``lentByteCount`` bytes,
    /// aligned for `sy_header`) and returns a `sy_message` pointing into it, claiming
    /// `structSize` (smaller for a reader of an older ABI minor, which ignores the fields past it).
    @usableFromInline @inline(__always)  // see `withCMessages`
    func lay(into raw: UnsafeMutableRawBufferPointer, structSize: Int) -> sy_message {
        let fields = storage.fields
        var message = sy_message()
        message.struct_size = UInt32(structSize)
        message.attempt = attempt
        message.deliver_at_ns = fields.pointee.deliverAtNanos
        message.enqueued_at_ns = fields.pointee.enqueuedAtNanos
        message.expires_at_ns = fields.pointee.expiresAtNanos
        message.flags = fields.pointee.flags.rawValue
        var cursor = 0
        func lay(_ string: String) -> sy_str {
            let start = cursor
            cursor += UnsafeMutableRawBufferPointer(rebasing: raw[cursor...]).copyUTF8(string)
            return sy_str(data: raw.baseAddress.map { ($0 + start).assumingMemoryBound(to: CChar.self) }, len: cursor - start)
        }
        if case .values(_, let headers, _) = fields.pointee.payload { cursor = headers.count * MemoryLayout<sy_header>.stride }  // the header array first
        message.channel = lay(fields.pointee.channel)
        message.ordering_key = lay(fields.pointee.orderingKey ?? "")
        switch fields.pointee.payload {
        case .packed(let layout, _):
            // Everything else points into the packed copy.
            message.id = layout.id
            message.headers = layout.cHeaders
            message.header_count = layout.headerCount
            message.body = layout.body
        case .values(let id, let headers, let body):
            message.id = lay(id)
            if !headers.isEmpty {
                let cHeaders = raw.baseAddress!.bindMemory(to: sy_header.self, capacity: headers.count)
                for index in headers.indices {
                    (cHeaders + index).initialize(to: sy_header(key: lay(headers[index].key), value: lay(headers[index].value)))
                }
                message.headers = UnsafePointer(cHeaders)
            }
            message.header_count = headers.count
            // The body goes last, after every string.
            if !body.isEmpty {
                UnsafeMutableRawBufferPointer(rebasing: raw[cursor...]).copyBytes(from: body)
                message.body = sy_bytes(data: (raw.baseAddress! + cursor).assumingMemoryBound(to: UInt8.self), len: body.count)
            }
        }
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
        // One message (a single call's publish, the usual one) is laid out on the stack: no
        // array of sizes, no heap allocation.
        if count == 1 { return try self[0].withCMessage(structSize: structSize) { (message) throws(E) -> R in try body(message, 1) } }
        let align = MemoryLayout<sy_header>.alignment
        let sizes = map { ($0.lentByteCount + align - 1) / align * align }
        let arrayBytes = count * structSize
        let total = arrayBytes + sizes.reduce(0, +)
        let raw = UnsafeMutableRawBufferPointer.allocate(
            byteCount: Swift.max(MemoryLayout<sy_message>.size, total), alignment: Swift.max(align, MemoryLayout<sy_message>.alignment))
        defer { raw.deallocate() }
        var offset = arrayBytes
        // Through the buffer, whose elements are read in place with `lay` inlined: the array's
        // subscript copied each message out to lay it (measured with callgrind).
        withUnsafeBufferPointer { messages in
            for index in messages.indices {
                let laid = messages[index].lay(into: UnsafeMutableRawBufferPointer(rebasing: raw[offset..<offset + sizes[index]]), structSize: structSize)
                // Only `structSize` bytes of each element: the next element starts there.
                Swift.withUnsafeBytes(of: laid) { (raw.baseAddress! + index * structSize).copyMemory(from: $0.baseAddress!, byteCount: structSize) }
                offset += sizes[index]
            }
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
