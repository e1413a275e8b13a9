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
/// A message copied from C (``MessageView/copy()``) keeps its id, headers and body packed in one
/// allocation, laid out as the ABI lends them, until something changes them: storing it costs one
/// allocation instead of one per string, and lending it back to C costs no copy at all. Reading
/// `id`, `headers` or `body` makes Swift values from the packed bytes each time; keep what you
/// read more than once.
public struct Message: Hashable, Sendable {
    /// Unique id chosen by the publisher.
    public var id: String {
        get {
            switch content {
            case .values(let values): values.id
            case .packed(let packed): String(packed.id)
            }
        }
        set {
            let (_, headers, body) = unpacked
            content = .values(MessageValues(id: newValue, headers: headers, body: body))
        }
    }
    /// Destination channel (queue or topic name).
    public var channel: String
    /// Messages sharing a key are delivered one at a time, in order. `nil`: no ordering.
    public var orderingKey: String?
    /// Headers, in order.
    public var headers: [Header] {
        get {
            switch content {
            case .values(let values): values.headers
            case .packed(let packed): packed.headers
            }
        }
        set {
            let (id, _, body) = unpacked
            content = .values(MessageValues(id: id, headers: newValue, body: body))
        }
    }
    /// Opaque payload.
    public var body: [UInt8] {
        get {
            switch content {
            case .values(let values): values.body
            case .packed(let packed): Array(UnsafeRawBufferPointer(start: packed.body.data, count: packed.body.len))
            }
        }
        set {
            let (id, headers, _) = unpacked
            content = .values(MessageValues(id: id, headers: headers, body: newValue))
        }
    }
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

    /// The id, headers and body: Swift values, or packed as they were copied from C. Either way
    /// one reference, so that copying a message retains one object for all three (a message is
    /// copied several times between a publish and its delivery; with the values inline, each copy
    /// went through the enum's generic copy and retained up to three: measured with callgrind).
    /// Unchecked: a ``PackedMessage`` is never changed after it is made (a `ManagedBuffer`
    /// cannot declare that itself).
    @usableFromInline
    enum Content: @unchecked Sendable {
        case values(MessageValues)
        case packed(PackedMessage)
    }
    @usableFromInline
    var content: Content

    /// A message with the given fields; everything but `id` and `channel` has a default.
    public init(
        id: String, channel: String, orderingKey: String? = nil, headers: [Header] = [],
        body: [UInt8] = [], attempt: UInt32 = 0, deliverAtNanos: Int64 = 0, enqueuedAtNanos: Int64 = 0,
        expiresAtNanos: Int64 = 0, flags: MessageFlags = []
    ) {
        self.init(
            content: .values(MessageValues(id: id, headers: headers, body: body)), channel: channel, orderingKey: orderingKey, attempt: attempt,
            deliverAtNanos: deliverAtNanos, enqueuedAtNanos: enqueuedAtNanos, expiresAtNanos: expiresAtNanos, flags: flags)
    }

    init(
        content: Content, channel: String, orderingKey: String?, attempt: UInt32, deliverAtNanos: Int64, enqueuedAtNanos: Int64,
        expiresAtNanos: Int64, flags: MessageFlags
    ) {
        self.content = content
        self.channel = channel
        self.orderingKey = orderingKey
        self.attempt = attempt
        self.deliverAtNanos = deliverAtNanos
        self.enqueuedAtNanos = enqueuedAtNanos
        self.expiresAtNanos = expiresAtNanos
        self.flags = flags
    }

    /// The id, headers and body as Swift values.
    private var unpacked: (id: String, headers: [Header], body: [UInt8]) {
        switch content {
        case .values(let values): (values.id, values.headers, values.body)
        case .packed: (id, headers, body)
        }
    }

    /// The first value of header `key`, if any.
    public func header(_ key: String) -> String? {
        switch content {
        case .values(let values):
            return values.headers.first { $0.key == key }?.value
        case .packed(let packed):
            return CHeaders(packed.cHeaders, count: packed.headerCount).value(of: key)
        }
    }

    /// Whether the message has expired at `nowNanos` (wall clock).
    public func isExpired(at nowNanos: Int64) -> Bool { expiresAtNanos > 0 && nowNanos >= expiresAtNanos }

    /// The sizes ``MessageLimits`` checks, read without unpacking: the header count, the bytes of
    /// the headers' keys and values, and the bytes of everything else.
    var limitSizes: (headerCount: Int, headerBytes: Int, otherBytes: Int) {
        switch content {
        case .values(let values):
            let headerBytes = values.headers.reduce(0) { $0 + $1.key.utf8.count + $1.value.utf8.count }
            return (values.headers.count, headerBytes, values.body.count + values.id.utf8.count + channel.utf8.count)
        case .packed(let packed):
            let layout = packed.layout
            return (layout.headerCount, layout.headerBytes, layout.body.len + layout.id.len + channel.utf8.count)
        }
    }

    /// Whether two messages have the same fields, packed or not.
    public static func == (a: Message, b: Message) -> Bool {
        a.channel == b.channel && a.orderingKey == b.orderingKey && a.attempt == b.attempt && a.deliverAtNanos == b.deliverAtNanos
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

/// A message's id, headers and body as Swift values, made by Swift code; never changed (a change
/// to the message makes a new one).
@usableFromInline
final class MessageValues: Sendable {
    let id: String
    let headers: [Header]
    let body: [UInt8]
    init(id: String, headers: [Header], body: [UInt8]) {
        self.id = id
        self.headers = headers
        self.body = body
    }
}

/// Where a ``PackedMessage``'s parts lie in its own allocation.
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

/// A message's id, headers and body copied from a `sy_message` into the object's own allocation
/// (one per message: the layout and the bytes after it), laid out as the ABI lends them — the
/// `sy_header` array, then the strings, then the body — so that lending the message again points
/// into it instead of copying. Never changed after it is made.
@usableFromInline
final class PackedMessage: ManagedBuffer<PackedLayout, UInt64> {
    /// Copies `message`'s id, headers and body (validated by the caller: see ``MessageView``).
    static func make(copying message: sy_message) -> PackedMessage {
        let count = message.header_count
        let headers = CHeaders(message.headers, count: count)
        return make(idBytes: message.id.len, headerCount: count, headerBytes: headers.byteCount, bodyBytes: message.body.len) { writer in
            writer.setID(message.id.data, message.id.len)
            for index in 0..<count {
                let header = message.headers[index]
                writer.add(header.key.data, header.key.len, header.value.data, header.value.len)
            }
            writer.setBody(message.body.data, message.body.len)
        }
    }

    /// Packs `id`, the headers `headers` adds and `body` (see ``Message/init(packing:channel:orderingKey:body:deliverAtNanos:expiresAtNanos:flags:headers:)``).
    static func make(
        id: String, bodyPrefix: Int = 0, _ writeBodyPrefix: (UnsafeMutableRawBufferPointer) -> Void = { _ in }, body: [UInt8],
        headers: (inout PackedMessageWriter) -> Void
    ) -> PackedMessage {
        var measured = PackedMessageWriter(measuring: ())
        headers(&measured)
        return make(idBytes: id.utf8.count, headerCount: measured.headerCount, headerBytes: measured.headerBytes, bodyBytes: bodyPrefix + body.count) {
            writer in
            var id = id
            id.withUTF8 { writer.setID($0.baseAddress, $0.count) }
            headers(&writer)
            precondition(writer.headerCount == measured.headerCount && writer.headerBytes == measured.headerBytes, PackedMessageWriter.mismatch)
            body.withUnsafeBytes { writer.setBody(prefix: bodyPrefix, writeBodyPrefix, $0.baseAddress, $0.count) }
        }
    }

    /// One allocation of the exact size for the parts `fill` writes (in order: the id, every
    /// header, the body), then the layout that points into it.
    private static func make(
        idBytes: Int, headerCount: Int, headerBytes: Int, bodyBytes: Int, _ fill: (inout PackedMessageWriter) -> Void
    ) -> PackedMessage {
        let arrayBytes = headerCount * MemoryLayout<sy_header>.stride
        let total = arrayBytes + idBytes + headerBytes + bodyBytes
        let words = Swift.max(1, (total + 7) / 8)  // UInt64 elements: aligned for `sy_header`
        let buffer = create(minimumCapacity: words) { buffer in
            buffer.withUnsafeMutablePointerToElements { elements in
                let storage = UnsafeMutableRawPointer(elements)
                var writer = PackedMessageWriter(storage: storage, headerCapacity: headerCount, byteCapacity: total)
                fill(&writer)
                precondition(writer.cursor == total, "a packed message's parts must fill exactly the bytes measured for them")
                return PackedLayout(
                    id: writer.id, headerCount: headerCount, cHeaders: headerCount > 0 ? UnsafePointer(writer.headers) : nil, body: writer.body,
                    headerBytes: headerBytes)
            }
        }
        return unsafeDowncast(buffer, to: PackedMessage.self)
    }

    /// The layout, read through a pointer: `header` is a class's stored property, and reading it
    /// directly costs a call into the runtime's exclusivity check each time (measured with
    /// callgrind, two per message on the queue's path). It is never written after `make`.
    @inline(__always)
    var layout: PackedLayout { withUnsafeMutablePointerToHeader { $0.pointee } }

    var id: sy_str { layout.id }
    var headerCount: Int { layout.headerCount }
    var cHeaders: UnsafePointer<sy_header>? { layout.cHeaders }
    var body: sy_bytes { layout.body }
    var headerBytes: Int { layout.headerBytes }

    /// The headers as Swift values.
    var headers: [Header] { CHeaders(cHeaders, count: headerCount).copied }
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
        self.init(
            content: .packed(PackedMessage.make(id: id, bodyPrefix: bodyPrefix, writeBodyPrefix, body: body, headers: headers)), channel: channel,
            orderingKey: orderingKey, attempt: 0, deliverAtNanos: deliverAtNanos, enqueuedAtNanos: 0, expiresAtNanos: expiresAtNanos, flags: flags)
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
        var bytes = channel.utf8.count + (orderingKey?.utf8.count ?? 0)
        // A packed message lends its own allocation: only the channel and key are laid out.
        guard case .values(let values) = content else { return bytes }
        bytes += values.headers.count * MemoryLayout<sy_header>.stride + values.id.utf8.count + values.body.count
        for header in values.headers { bytes += header.key.utf8.count + header.value.utf8.count }
        return bytes
    }

    /// Writes this message's headers, strings and body into `raw` (``lentByteCount`` bytes,
    /// aligned for `sy_header`) and returns a `sy_message` pointing into it, claiming
    /// `structSize` (smaller for a reader of an older ABI minor, which ignores the fields past it).
    @usableFromInline @inline(__always)  // see `withCMessages`
    func lay(into raw: UnsafeMutableRawBufferPointer, structSize: Int) -> sy_message {
        var message = sy_message()
        message.struct_size = UInt32(structSize)
        message.attempt = attempt
        message.deliver_at_ns = deliverAtNanos
        message.enqueued_at_ns = enqueuedAtNanos
        message.expires_at_ns = expiresAtNanos
        message.flags = flags.rawValue
        var cursor = 0
        func lay(_ string: String) -> sy_str {
            let start = cursor
            cursor += UnsafeMutableRawBufferPointer(rebasing: raw[cursor...]).copyUTF8(string)
            return sy_str(data: raw.baseAddress.map { ($0 + start).assumingMemoryBound(to: CChar.self) }, len: cursor - start)
        }
        if case .values(let values) = content { cursor = values.headers.count * MemoryLayout<sy_header>.stride }  // the header array first
        message.channel = lay(channel)
        message.ordering_key = lay(orderingKey ?? "")
        switch content {
        case .packed(let packed):
            // Everything else points into the packed copy.
            let layout = packed.layout
            message.id = layout.id
            message.headers = layout.cHeaders
            message.header_count = layout.headerCount
            message.body = layout.body
        case .values(let values):
            let (id, headers, body) = (values.id, values.headers, values.body)
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
