import CSwitchyard
import SwitchyardABI
import SwitchyardTransportKit

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The frames a process-isolated transport (the parent) and its `switchyard plugin-host` child
/// exchange over their Unix socket. Each ABI function is one request; each request gets one
/// reply with the same sequence number; deliveries flow from child to parent unasked.
///
/// Frame, little-endian: length u32 (of what follows), kind u8, sequence u64, payload. Sequence 0
/// means "no reply wanted" (the reply is sent anyway and ignored). Strings and byte runs are a u32
/// length and the bytes; messages are ``MessageCodec`` records. Both sides check every length, so
/// a corrupt frame is an error with a reason. Versioned by the `create` request's first field.
enum WireKind: UInt8 {
    /// Parent → child: load the plugin and create the instance. Payload: wire version u32, plugin
    /// path, plugin name, pinned sha256 (empty: none), instance name, config JSON, slow-call
    /// warning threshold i64 (ns; 0: none). Reply data: the instance's capabilities as configured
    /// u64 (ABI 1.8 `instance_capabilities`).
    case create = 1
    /// Parent → child: payload one message.
    case publish = 2
    /// Parent → child: payload count u32, then that many messages.
    case publishBatch = 3
    /// Parent → child: payload parent subscription id u64, channel, group, max in flight u32,
    /// visibility timeout i64, start i32. Reply data: the child's subscription id u64.
    case subscribe = 4
    /// Parent → child: payload the child's subscription id u64.
    case unsubscribe = 5
    /// Parent → child: payload delivery id u64, outcome i32, retry after i64, reason.
    case settle = 6
    /// Parent → child: payload deadline (monotonic ns, the same clock in both processes) i64.
    case drain = 7
    /// Parent → child: no payload. Reply data: eight u64 counters in `sy_stats` order.
    case stats = 8
    /// Parent → child: destroy the instance and exit.
    case shutdown = 9
    /// Parent → child (`settle_batch`): payload count u32, then that many pairs of delivery id
    /// u64 and settlement (as in `settle`). Reply data: count u32, then each one's status i32 and
    /// message (empty when settled).
    case settleBatch = 10
    /// Parent → child (`publish_and_settle`, offered only for a plugin that has it): payload
    /// count u32, that many messages, then delivery id u64 and settlement. Both in one unit in
    /// the child, or neither.
    case publishAndSettle = 11
    /// Parent → child: the subscriber refused deliveries. Payload parent subscription id u64,
    /// count u32, then that many of the child's delivery ids u64. The child releases them and
    /// refuses the subscription's next offer, so the plugin offers them again at its next change,
    /// as after a refusal in process, not at once (which would spin while the subscriber refuses).
    case refused = 12
    /// Parent → child (`extend`, offered only for a plugin that has it): payload count u32, then
    /// that many of the child's delivery ids u64 (none: a question for the lease's length). Reply
    /// data: the lease's length i64, count u32, then each one's status i32 and message.
    case extend = 13
    /// Parent → child (`channel_stats`, ABI 1.9): no payload. Reply data: reported u8 (0: the
    /// plugin reports no channels, and nothing follows), count u32, then that many channel, group,
    /// depth u64, in flight u64, waiting u64.
    case channelStats = 14
    /// Child → parent: status i32, message, then the request's reply data.
    case reply = 0x40
    /// Child → parent: parent subscription id u64, the child's delivery id u64, one message.
    case deliver = 0x41
    /// Child → parent: the plugin reported a dead letter (`dead_lettered`): one message (as
    /// stored in the dead-letter channel), then the reason.
    case deadLettered = 0x42
    /// Child → parent: the plugin recorded a metric: kind i32, name, value (f64 bits) u64.
    case metric = 0x43
    /// Child → parent (`deliver_batch`): parent subscription id u64, count u32, then that many
    /// pairs of the child's delivery id u64 and message.
    case deliverBatch = 0x44
}

/// The protocol version carried by `create`; a child refuses any other.
/// 2: dead-letter and metric reports (child → parent); 3: settle_batch, publish_and_settle,
/// deliver_batch and refusal frames; 4: extend; 5: create carries the slow-call warning threshold;
/// 6: create's reply carries the instance's capabilities (ABI 1.8); 7: channel_stats (ABI 1.9).
let wireVersion: UInt32 = 7

/// Largest frame either side accepts (a message is bounded far below this by the transports).
let maxFrameBytes = 256 << 20

/// One frame.
struct Frame {
    var kind: WireKind
    var sequence: UInt64
    var payload: [UInt8]
}

/// Builds a payload.
struct WireWriter {
    private(set) var bytes: [UInt8] = []

    /// Appends bytes already encoded (a reply's data).
    mutating func raw(_ data: [UInt8]) { bytes += data }

    mutating func integer<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes += $0 }
    }
    mutating func data(_ value: [UInt8]) {
        integer(UInt32(value.count))
        bytes += value
    }
    mutating func string(_ value: String) { data(Array(value.utf8)) }
    mutating func message(_ value: Message) { data(MessageCodec.encode(value)) }

    mutating func options(_ options: SubscribeOptions) {
        string(options.channel)
        string(options.group)
        integer(options.maxInFlight)
        integer(options.visibilityTimeoutNanos)
        integer(options.start.rawValue)
    }

    /// Each delivery's outcome of a `settleBatch` or `extend` reply: count u32, then each one's
    /// status i32 and message (empty for none).
    mutating func outcomes(_ outcomes: [TransportError?]) {
        integer(UInt32(outcomes.count))
        for outcome in outcomes {
            integer(outcome?.code.rawValue ?? StatusCode.ok.rawValue)
            string(outcome?.message ?? "")
        }
    }

    mutating func settlement(_ settlement: Settlement) {
        switch settlement {
        case .ack: integer(SY_SETTLE_ACK); integer(Int64(0)); string("")
        case .retry(let after, let reason): integer(SY_SETTLE_RETRY); integer(after); string(reason)
        case .deadLetter(let reason): integer(SY_SETTLE_DEAD_LETTER); integer(Int64(0)); string(reason)
        case .release: integer(SY_SETTLE_RELEASE); integer(Int64(0)); string("")
        }
    }

    mutating func channelStats(_ channels: [ChannelStats]?) {
        guard let channels else { return integer(UInt8(0)) }
        integer(UInt8(1))
        integer(UInt32(channels.count))
        for one in channels {
            string(one.channel)
            string(one.group)
            integer(one.depth)
            integer(one.inFlight)
            integer(one.waiting)
        }
    }

    mutating func stats(_ stats: TransportStats) {
        for value in [
            stats.published, stats.delivered, stats.acked, stats.retried,
            stats.deadLettered, stats.released, stats.inFlight, stats.depth,
        ] { integer(value) }
    }
}

/// Reads a payload; every read is bounds-checked and throws `invalidArgument` naming the field.
struct WireReader {
    let bytes: [UInt8]
    private(set) var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    mutating func integer<T: FixedWidthInteger>(_ field: String) throws(TransportError) -> T {
        let size = MemoryLayout<T>.size
        guard bytes.count - offset >= size else { throw TransportError(.invalidArgument, "corrupt frame: truncated \(field)") }
        defer { offset += size }
        return bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
    }
    mutating func data(_ field: String) throws(TransportError) -> [UInt8] {
        let length = Int(try integer(field + " length") as UInt32)
        guard bytes.count - offset >= length else {
            throw TransportError(.invalidArgument, "corrupt frame: \(field) length \(length) exceeds the frame")
        }
        defer { offset += length }
        return Array(bytes[offset..<offset + length])
    }
    mutating func string(_ field: String) throws(TransportError) -> String {
        String(decoding: try data(field), as: UTF8.self)
    }
    mutating func message() throws(TransportError) -> Message {
        try MessageCodec.decode(try data("message"))
    }

    mutating func options() throws(TransportError) -> SubscribeOptions {
        let channel = try string("channel")
        let group = try string("group")
        let maxInFlight: UInt32 = try integer("max in flight")
        let visibility: Int64 = try integer("visibility timeout")
        let startRaw: Int32 = try integer("start")
        guard let start = StartPosition(rawValue: startRaw) else {
            throw TransportError(.invalidArgument, "corrupt frame: unknown start position \(startRaw)")
        }
        return SubscribeOptions(
            channel: channel, group: group, maxInFlight: maxInFlight,
            visibilityTimeoutNanos: visibility, start: start)
    }

    mutating func settlement() throws(TransportError) -> Settlement {
        let outcome: Int32 = try integer("outcome")
        let after: Int64 = try integer("retry after")
        let reason = try string("reason")
        switch outcome {
        case SY_SETTLE_ACK: return .ack
        case SY_SETTLE_RETRY: return .retry(afterNanos: after, reason: reason)
        case SY_SETTLE_DEAD_LETTER: return .deadLetter(reason: reason)
        case SY_SETTLE_RELEASE: return .release
        default: throw TransportError(.invalidArgument, "corrupt frame: unknown settlement outcome \(outcome)")
        }
    }

    mutating func channelStats() throws(TransportError) -> [ChannelStats]? {
        let reported: UInt8 = try integer("reported")
        guard reported != 0 else { return nil }
        let count: UInt32 = try integer("count")
        var channels: [ChannelStats] = []
        for _ in 0..<count {
            channels.append(
                ChannelStats(
                    channel: try string("channel"), group: try string("group"), depth: try integer("depth"), inFlight: try integer("in flight"),
                    waiting: try integer("waiting")))
        }
        return channels
    }

    mutating func stats() throws(TransportError) -> TransportStats {
        var stats = TransportStats()
        stats.published = try integer("published")
        stats.delivered = try integer("delivered")
        stats.acked = try integer("acked")
        stats.retried = try integer("retried")
        stats.deadLettered = try integer("dead-lettered")
        stats.released = try integer("released")
        stats.inFlight = try integer("in flight")
        stats.depth = try integer("depth")
        return stats
    }
}

/// Writing whole frames on a blocking stream socket.
enum FrameIO {
    /// Writes `frame` completely, header and payload in one `send` (the caller serialises
    /// writers). Two sends would wake a reader blocked on the other end twice — a context
    /// switch each on a busy machine — for one frame.
    static func write(_ frame: Frame, to fd: Int32) throws(TransportError) {
        var bytes: [UInt8] = []
        append(frame, to: &bytes)
        try writeAll(bytes, to: fd)
    }

    /// Appends `frame`'s bytes, header and payload, to `bytes`.
    static func append(_ frame: Frame, to bytes: inout [UInt8]) {
        // Sized once for a lone frame; a buffer that collects frames grows geometrically.
        if bytes.isEmpty { bytes.reserveCapacity(13 + frame.payload.count) }
        withUnsafeBytes(of: UInt32(1 + 8 + frame.payload.count).littleEndian) { bytes += $0 }
        bytes.append(frame.kind.rawValue)
        withUnsafeBytes(of: frame.sequence.littleEndian) { bytes += $0 }
        bytes += frame.payload
    }

    /// Writes `bytes` (whole frames) completely.
    static func writeAll(_ bytes: [UInt8], to fd: Int32) throws(TransportError) {
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + written, $0.count - written, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw TransportError(.io, "writing to the plugin socket failed: \(String(cString: strerror(errno)))")
            }
            written += n
        }
    }
}

/// Reads whole frames from a blocking stream socket through a buffer: one `recv` takes every
/// frame the peer has sent so far, so a burst of frames (deliveries, settlements) costs one
/// system call rather than two per frame. One reader at a time (not thread-safe).
final class FrameReader {
    private let fd: Int32
    private var buffer: [UInt8]
    /// The unread bytes are `buffer[start..<end]`.
    private var start = 0
    private var end = 0
    /// The buffer's usual size; a frame larger than this gets a buffer of its own size.
    private let capacity: Int
    /// Runs before every read that may wait for the peer (the parent flushes the frames its
    /// reader thread queued: see ``PluginProcess/post(_:_:)``).
    var beforeWaiting: (() -> Void)?

    init(fd: Int32, capacity: Int = 64 << 10) {
        self.fd = fd
        self.capacity = capacity
        self.buffer = [UInt8](repeating: 0, count: capacity)
    }

    /// The next frame; nil at end of stream between frames.
    func next() throws(TransportError) -> Frame? {
        guard try fill(4) else { return nil }
        let length = Int(UInt32(littleEndian: buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: start, as: UInt32.self) }))
        guard length >= 9, length <= maxFrameBytes else {
            throw TransportError(.invalidArgument, "corrupt frame: length \(length)")
        }
        guard try fill(4 + length) else { throw TransportError(.io, "the socket closed in the middle of a frame") }
        let body = start + 4
        start += 4 + length
        let rawKind = buffer[body]
        guard let kind = WireKind(rawValue: rawKind) else { throw TransportError(.invalidArgument, "corrupt frame: unknown kind \(rawKind)") }
        let sequence = UInt64(littleEndian: buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: body + 1, as: UInt64.self) })
        return Frame(kind: kind, sequence: sequence, payload: Array(buffer[(body + 9)..<(body + length)]))
    }

    /// Makes at least `count` unread bytes available; false at end of stream before any byte
    /// of them arrived, an error when the stream ends part-way.
    private func fill(_ count: Int) throws(TransportError) -> Bool {
        if end - start >= count { return true }
        // Move the unread bytes (usually a few, or none) to the front of a buffer that holds
        // `count`: this one, or for a large frame a larger one, and a buffer of the usual size
        // again once the large frame has been read.
        let size = max(count, capacity)
        if buffer.count != size && (buffer.count < size || end == start) {
            var resized = [UInt8](repeating: 0, count: size)
            resized.withUnsafeMutableBytes { to in
                buffer.withUnsafeBytes { from in _ = memcpy(to.baseAddress!, from.baseAddress! + start, end - start) }
            }
            buffer = resized
        } else if start > 0 {
            buffer.withUnsafeMutableBytes { raw in
                let base = raw.baseAddress!
                memmove(base, base + start, end - start)
            }
        }
        end -= start
        start = 0
        while end < count {
            beforeWaiting?()
            // The peer usually answers within microseconds: spin for it before sleeping in `recv`.
            let n =
                SpinBeforeSleeping.poll { () -> Int? in
                    let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + end, $0.count - end, Int32(MSG_DONTWAIT)) }
                    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? nil : n
                } ?? buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + end, $0.count - end, 0) }
            if n == 0 {
                if end == 0 { return false }
                throw TransportError(.io, "the socket closed in the middle of a frame")
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw TransportError(.io, "reading from the plugin socket failed: \(String(cString: strerror(errno)))")
            }
            end += n
        }
        return true
    }
}
