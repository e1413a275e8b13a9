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
    /// The borrowed C message as it was handed over, for passing it on unchanged (a decorator
    /// relaying it to its inner transport). Read fields through ``fields``, not through this
    /// pointer: an older writer's struct may end before fields this build knows.
    public let pointer: UnsafePointer<sy_message>
    /// The message's fields as this build knows them: fields past the writer's `struct_size`
    /// read as zero (see ``SizedStruct``). The pointers inside are borrowed like `pointer`.
    public let fields: sy_message

    /// Checks what every reader relies on (size, id, channel, header pointer) without copying
    /// anything but the struct itself.
    public init(validating pointer: UnsafePointer<sy_message>) throws(TransportError) {
        try self.init(validating: pointer, published: false)
    }

    /// ``init(validating:)`` for a message being published: with `published`,
    /// ``MessageFlags/settled`` (meaningful on a delivery only) is taken out of ``fields``.
    public init(validating pointer: UnsafePointer<sy_message>, published: Bool) throws(TransportError) {
        guard var m = SizedStruct.read(pointer, minimum: SizedStruct.messageV1_0) else {
            let size = UnsafeRawPointer(pointer).load(as: UInt32.self)
            throw TransportError(.invalidArgument, "message struct_size \(size) is smaller than ABI 1.0's \(SizedStruct.messageV1_0)")
        }
        guard m.id.len > 0, m.id.data != nil else { throw TransportError(.invalidArgument, "message id is empty") }
        guard m.channel.len > 0, m.channel.data != nil else { throw TransportError(.invalidArgument, "message channel is empty") }
        guard m.header_count == 0 || m.headers != nil else {
            throw TransportError(.invalidArgument, "message has \(m.header_count) headers but a NULL headers pointer")
        }
        guard m.body.len == 0 || m.body.data != nil else {
            throw TransportError(.invalidArgument, "message body has \(m.body.len) bytes but a NULL pointer")
        }
        if published && m.flags & MessageFlags.settled.rawValue != 0 { m.flags &= ~MessageFlags.settled.rawValue }
        self.pointer = pointer
        self.fields = m
    }

    /// Unique message id.
    public var id: String { String(fields.id) }
    /// Destination channel.
    public var channel: String { String(fields.channel) }
    /// The ordering key, or nil when the message has none.
    public var orderingKey: String? { fields.ordering_key.len == 0 ? nil : String(fields.ordering_key) }
    /// On a delivery: deliveries so far, this one included (1 on the first). On a publish: the
    /// attempt the sender wants recorded — 0 or 1 for a new message — so a transport stores
    /// `max(attempt, 1) - 1` deliveries made and delivers it first with `max(attempt, 1)`.
    public var attempt: UInt32 { fields.attempt }
    /// Earliest delivery time, ns since the Unix epoch; 0 means now.
    public var deliverAtNanos: Int64 { fields.deliver_at_ns }
    /// When the transport accepted it, ns since the Unix epoch.
    public var enqueuedAtNanos: Int64 { fields.enqueued_at_ns }
    /// When it expires, ns since the Unix epoch; 0: never (ABI 1.3; 0 from older writers).
    public var expiresAtNanos: Int64 { fields.expires_at_ns }
    /// `SY_MESSAGE_*` flags (ABI 1.3).
    public var flags: MessageFlags { MessageFlags(rawValue: fields.flags) }
    /// The payload, borrowed.
    public var body: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: fields.body.data, count: fields.body.len) }
    /// Number of headers.
    public var headerCount: Int { fields.header_count }
    /// All headers, copied.
    public var headers: [Header] { CHeaders(fields.headers, count: headerCount).copied }

    /// The first value of header `key`, if any (compares bytes; allocates only the result).
    public func header(_ key: String) -> String? { CHeaders(fields.headers, count: headerCount).value(of: key) }

    /// The first value of header `key` as the borrowed bytes, if any: for a reader that compares
    /// or parses it and needs no string.
    package func headerBytes(_ key: String) -> sy_str? { CHeaders(fields.headers, count: headerCount).slice(of: key) }

    /// An owned copy, to keep after the call returns: the id, headers and body packed in one
    /// allocation (see ``Message``).
    public func copy() -> Message {
        Message(storage: .make(copying: fields), attempt: fields.attempt)
    }
}

/// A borrowed `sy_header` array: what a message view and a packed copy (``MessageStorage``) both
/// read headers from.
struct CHeaders {
    let base: UnsafePointer<sy_header>?
    let count: Int

    init(_ base: UnsafePointer<sy_header>?, count: Int) {
        self.base = base
        self.count = count
    }

    /// The bytes of every key and value.
    var byteCount: Int {
        var bytes = 0
        for index in 0..<count { bytes += base![index].key.len + base![index].value.len }
        return bytes
    }

    /// Every header as Swift values.
    var copied: [Header] { (0..<count).map { Header(String(base![$0].key), String(base![$0].value)) } }

    /// The first value of header `key`, if any (compares bytes; allocates only the result).
    func value(of key: String) -> String? { slice(of: key).map(String.init) }

    /// The first value of header `key`, borrowed, if any.
    func slice(of key: String) -> sy_str? {
        var key = key
        return key.withUTF8 { wanted in
            for index in 0..<count where base![index].key.len == wanted.count {
                if wanted.isEmpty || memcmp(base![index].key.data, wanted.baseAddress!, wanted.count) == 0 { return base![index].value }
            }
            return nil
        }
    }
}
