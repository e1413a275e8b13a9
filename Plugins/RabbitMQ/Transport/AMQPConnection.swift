// A checked, Swift-shaped layer over rabbitmq-c: one connection with one channel, AMQP field
// tables both ways, and rabbitmq-c's errors as TransportErrors that say what to do.
//
// rabbitmq-c is not thread-safe per connection: each AMQPConnection is used by one thread at a
// time (the publisher pool hands a connection to one publisher; a consumer owns its own).

import CRabbitMQ
import Foundation
import SwitchyardPluginKit

/// A value of an AMQP field table, as the plugin writes and reads them.
enum AMQPField: Equatable {
    case string(String)
    case int(Int64)
    case bool(Bool)
    case array([AMQPField])
    case table([(String, AMQPField)])
    /// A kind the plugin does not interpret (floats, decimals, void).
    case other

    static func == (a: AMQPField, b: AMQPField) -> Bool {
        switch (a, b) {
        case (.string(let x), .string(let y)): x == y
        case (.int(let x), .int(let y)): x == y
        case (.bool(let x), .bool(let y)): x == y
        case (.array(let x), .array(let y)): x == y
        case (.table(let x), .table(let y)): x.map(\.0) == y.map(\.0) && x.map(\.1) == y.map(\.1)
        case (.other, .other): true
        default: false
        }
    }

    /// The field as text: strings as they are, integers in decimal; nil for anything else.
    var text: String? {
        switch self {
        case .string(let value): value
        case .int(let value): String(value)
        case .bool(let value): value ? "true" : "false"
        default: nil
        }
    }

    /// Reads a field rabbitmq-c decoded (copying: the frame's memory is released afterwards).
    init(_ value: amqp_field_value_t) {
        switch UInt32(value.kind) {
        case AMQP_FIELD_KIND_UTF8.rawValue, AMQP_FIELD_KIND_BYTES.rawValue: self = .string(String(amqp: value.value.bytes))
        case AMQP_FIELD_KIND_I8.rawValue: self = .int(Int64(value.value.i8))
        case AMQP_FIELD_KIND_U8.rawValue: self = .int(Int64(value.value.u8))
        case AMQP_FIELD_KIND_I16.rawValue: self = .int(Int64(value.value.i16))
        case AMQP_FIELD_KIND_U16.rawValue: self = .int(Int64(value.value.u16))
        case AMQP_FIELD_KIND_I32.rawValue: self = .int(Int64(value.value.i32))
        case AMQP_FIELD_KIND_U32.rawValue: self = .int(Int64(value.value.u32))
        case AMQP_FIELD_KIND_I64.rawValue: self = .int(value.value.i64)
        case AMQP_FIELD_KIND_U64.rawValue, AMQP_FIELD_KIND_TIMESTAMP.rawValue: self = .int(Int64(clamping: value.value.u64))
        case AMQP_FIELD_KIND_BOOLEAN.rawValue: self = .bool(value.value.boolean != 0)
        case AMQP_FIELD_KIND_ARRAY.rawValue:
            let array = value.value.array
            self = .array((0..<Int(array.num_entries)).map { AMQPField(array.entries[$0]) })
        case AMQP_FIELD_KIND_TABLE.rawValue: self = .table(AMQPField.read(value.value.table))
        default: self = .other
        }
    }

    /// Every entry of a decoded table, in its order on the wire.
    static func read(_ table: amqp_table_t) -> [(String, AMQPField)] {
        guard table.num_entries > 0, let entries = table.entries else { return [] }
        return (0..<Int(table.num_entries)).map { (String(amqp: entries[$0].key), AMQPField(entries[$0].value)) }
    }
}

extension String {
    /// The text of an AMQP byte string (invalid UTF-8 repaired).
    init(amqp bytes: amqp_bytes_t) {
        guard bytes.len > 0, let pointer = bytes.bytes else {
            self = ""
            return
        }
        self = String(decoding: UnsafeRawBufferPointer(start: pointer, count: bytes.len), as: UTF8.self)
    }
}

/// Memory for one call into rabbitmq-c: strings, tables and bodies it reads, freed together.
final class AMQPArena {
    private var blocks: [UnsafeMutableRawPointer] = []

    deinit { for block in blocks { block.deallocate() } }

    /// A copy of `text` that lives as long as the arena.
    func bytes(_ text: String) -> amqp_bytes_t {
        var text = text
        return text.withUTF8 { bytes(UnsafeRawBufferPointer($0)) }
    }

    /// A copy of `raw` that lives as long as the arena.
    func bytes(_ raw: UnsafeRawBufferPointer) -> amqp_bytes_t {
        guard raw.count > 0 else { return amqp_bytes_t(len: 0, bytes: nil) }
        let block = UnsafeMutableRawPointer.allocate(byteCount: raw.count, alignment: 1)
        block.copyMemory(from: raw.baseAddress!, byteCount: raw.count)
        blocks.append(block)
        return amqp_bytes_t(len: raw.count, bytes: block)
    }

    /// A field table of `entries`, in order.
    func table(_ entries: [(String, AMQPField)]) -> amqp_table_t {
        guard !entries.isEmpty else { return amqp_table_t(num_entries: 0, entries: nil) }
        let list = UnsafeMutablePointer<amqp_table_entry_t>.allocate(capacity: entries.count)
        blocks.append(UnsafeMutableRawPointer(list))
        for (index, (key, value)) in entries.enumerated() {
            list[index] = amqp_table_entry_t(key: bytes(key), value: field(value))
        }
        return amqp_table_t(num_entries: Int32(entries.count), entries: list)
    }

    private func field(_ value: AMQPField) -> amqp_field_value_t {
        var result = amqp_field_value_t()
        switch value {
        case .string(let text):
            result.kind = UInt8(AMQP_FIELD_KIND_UTF8.rawValue)
            result.value.bytes = bytes(text)
        case .int(let number):
            result.kind = UInt8(AMQP_FIELD_KIND_I64.rawValue)
            result.value.i64 = number
        case .bool(let flag):
            result.kind = UInt8(AMQP_FIELD_KIND_BOOLEAN.rawValue)
            result.value.boolean = flag ? 1 : 0
        case .array(let items):
            let list = UnsafeMutablePointer<amqp_field_value_t>.allocate(capacity: max(1, items.count))
            blocks.append(UnsafeMutableRawPointer(list))
            for (index, item) in items.enumerated() { list[index] = field(item) }
            result.kind = UInt8(AMQP_FIELD_KIND_ARRAY.rawValue)
            result.value.array = amqp_array_t(num_entries: Int32(items.count), entries: list)
        case .table(let entries):
            result.kind = UInt8(AMQP_FIELD_KIND_TABLE.rawValue)
            result.value.table = table(entries)
        case .other:
            result.kind = UInt8(AMQP_FIELD_KIND_VOID.rawValue)
        }
        return result
    }
}

/// One AMQP connection to the broker with channel 1 open, optionally in confirm mode.
final class AMQPConnection {
    let state: amqp_connection_state_t
    /// The broker, for errors (never the credentials).
    let address: String
    /// Set once the connection or its channel failed: the owner destroys it and opens another.
    private(set) var broken = false
    /// The delivery tag the next publish gets (confirm mode numbers publishes from 1).
    private var nextTag: UInt64 = 1
    /// Publishes sent and not confirmed yet, by tag (ascending: tags only grow).
    private var unconfirmed: [UInt64] = []
    /// A publish the broker returned (unroutable) since the last wait, and why.
    private var refused: String?
    /// Publishes the broker nacked (did not store) since the last wait.
    private var nacked: [UInt64] = []
    static let channel: amqp_channel_t = 1

    /// Connects, logs in and opens channel 1 (in confirm mode when `confirms`), within the
    /// config's connect timeout. Errors say where and why, never with the credentials.
    init(_ settings: RabbitMQSettings, confirms: Bool, heartbeatSeconds: Int32) throws(TransportError) {
        guard let state = amqp_new_connection() else { throw TransportError(.internalError, "rabbitmq-c could not allocate a connection") }
        self.state = state
        address = settings.address
        do {
            try open(settings, confirms: confirms, heartbeatSeconds: heartbeatSeconds)
        } catch {
            amqp_destroy_connection(state)
            throw error
        }
    }

    private func open(_ settings: RabbitMQSettings, confirms: Bool, heartbeatSeconds: Int32) throws(TransportError) {
        let socket: OpaquePointer?
        if let tls = settings.tls {
            socket = amqp_ssl_socket_new(state)
            guard let socket else { throw TransportError(.internalError, "rabbitmq-c could not create a TLS socket") }
            // rabbitmq-c trusts nothing by default: without `ca`, the system's bundle.
            let systemBundle = "/etc/ssl/certs/ca-certificates.crt"
            if let ca = tls.ca ?? (FileManager.default.fileExists(atPath: systemBundle) ? systemBundle : nil),
                amqp_ssl_socket_set_cacert(socket, ca) != 0
            {
                throw TransportError(.config, "config key 'tls.ca': cannot load CA certificates from '\(ca)'")
            }
            if (tls.cert == nil) != (tls.key == nil) {
                throw TransportError(.config, "config keys 'tls.cert' and 'tls.key': give both (a client certificate and its key) or neither")
            }
            if let cert = tls.cert, let key = tls.key, amqp_ssl_socket_set_key(socket, cert, key) != 0 {
                throw TransportError(.config, "config keys 'tls.cert'/'tls.key': cannot load '\(cert)' and '\(key)'")
            }
            amqp_ssl_socket_set_verify_peer(socket, tls.verify == false ? 0 : 1)
            amqp_ssl_socket_set_verify_hostname(socket, tls.verify == false ? 0 : 1)
        } else {
            socket = amqp_tcp_socket_new(state)
        }
        guard let socket else { throw TransportError(.internalError, "rabbitmq-c could not create a socket") }
        var timeout = timeval(nanoseconds: settings.connectTimeoutNanos)
        let opened = amqp_socket_open_noblock(socket, settings.host, settings.port, &timeout)
        guard opened == AMQP_STATUS_OK.rawValue else {
            throw TransportError(
                opened == AMQP_STATUS_TIMEOUT.rawValue ? .timeout : .unavailable,
                "cannot connect to RabbitMQ at \(settings.address): \(String(cString: amqp_error_string2(opened))) — is the broker running, and is 'url' (or RABBITMQ_URL) right?"
            )
        }
        // The login is part of connecting; RPCs after it (declarations) wait as long as a publish.
        var loginTimeout = timeval(nanoseconds: settings.connectTimeoutNanos)
        amqp_set_rpc_timeout(state, &loginTimeout)
        let login = sy_amqp_login_plain(state, settings.vhost, 131_072, heartbeatSeconds, settings.user, settings.password)
        if login.reply_type != AMQP_RESPONSE_NORMAL {
            let reason = Self.describe(login)
            throw TransportError(
                .unavailable,
                "RabbitMQ at \(settings.address) refused the login of user '\(settings.user)' to vhost '\(settings.vhost)': \(reason) — check the credentials ('url', 'user_env', 'password_env') and the user's permissions on the vhost"
            )
        }
        var rpcTimeout = timeval(nanoseconds: settings.publishTimeoutNanos)
        amqp_set_rpc_timeout(state, &rpcTimeout)
        amqp_channel_open(state, Self.channel)
        try check("open a channel")
        if confirms {
            amqp_confirm_select(state, Self.channel)
            try check("turn on publisher confirms")
        }
    }

    /// Frees the connection without a word to the broker (it closed it already).
    func discard() {
        broken = true
        amqp_destroy_connection(state)
    }

    /// Closes the channel and the connection (politely when it still works) and frees it.
    func close() {
        if !broken {
            amqp_channel_close(state, Self.channel, Int32(AMQP_REPLY_SUCCESS))
            amqp_connection_close(state, Int32(AMQP_REPLY_SUCCESS))
        }
        amqp_destroy_connection(state)
    }

    /// Throws the last RPC's failure, marking the connection broken when it was.
    func check(_ what: String) throws(TransportError) {
        let reply = amqp_get_rpc_reply(state)
        guard reply.reply_type != AMQP_RESPONSE_NORMAL else {
            // The decoded reply lives in the channel's pool until released: release it now, or a
            // long-lived connection's memory grows with every RPC.
            amqp_maybe_release_buffers(state)
            return
        }
        broken = true  // a server exception closes the channel (or connection); a library one, the socket
        throw Self.error(reply, what, address: address)
    }

    /// `reply` as a TransportError: a closed or unreachable connection is `unavailable`, a time-out
    /// `timeout`, a refused declaration (other arguments) `config`, a missing queue `notFound`.
    static func error(_ reply: amqp_rpc_reply_t, _ what: String, address: String) -> TransportError {
        let text = "cannot \(what) on RabbitMQ at \(address): \(describe(reply))"
        if reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION {
            // The connection is gone: the next publish opens another; say so.
            return TransportError(
                reply.library_error == AMQP_STATUS_TIMEOUT.rawValue ? .timeout : .unavailable,
                text + " — the connection is lost (broker down or restarting?); publish again once it is back")
        }
        switch replyCode(reply) {
        case 404: return TransportError(.notFound, text)
        case 406 where what.hasPrefix("declare"):
            return TransportError(
                .config,
                text
                    + " — a queue or exchange of this name already exists with other arguments (another 'queue_type'?): delete it (rabbitmqctl delete_queue NAME) or choose another 'prefix'"
            )
        case 406: return TransportError(.invalidArgument, text)
        case 403: return TransportError(.unavailable, text + " — the user lacks permission on the vhost")
        default: return TransportError(.unavailable, text)
        }
    }

    /// The AMQP reply code of a server exception (0 for anything else).
    static func replyCode(_ reply: amqp_rpc_reply_t) -> UInt16 {
        guard reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION, let decoded = reply.reply.decoded else { return 0 }
        switch reply.reply.id {
        case SY_AMQP_CHANNEL_CLOSE: return decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee.reply_code
        case SY_AMQP_CONNECTION_CLOSE: return decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee.reply_code
        default: return 0
        }
    }

    /// What went wrong, in rabbitmq-c's or the broker's words.
    static func describe(_ reply: amqp_rpc_reply_t) -> String {
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL: return "ok"
        case AMQP_RESPONSE_NONE: return "no reply (the connection closed?)"
        case AMQP_RESPONSE_LIBRARY_EXCEPTION: return String(cString: amqp_error_string2(reply.library_error))
        default:
            guard let decoded = reply.reply.decoded else { return "server error" }
            switch reply.reply.id {
            case SY_AMQP_CHANNEL_CLOSE:
                let close = decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                return "\(close.reply_code) \(String(amqp: close.reply_text))"
            case SY_AMQP_CONNECTION_CLOSE:
                let close = decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                return "\(close.reply_code) \(String(amqp: close.reply_text))"
            default: return "unexpected method \(reply.reply.id)"
            }
        }
    }

    // MARK: Topology

    /// Declares a durable queue with `arguments` (idempotent while the arguments match).
    func declareQueue(_ name: String, arguments: [(String, AMQPField)]) throws(TransportError) {
        guard name.utf8.count <= 255 else {
            throw TransportError(.invalidArgument, "queue name '\(name.prefix(60))…' is longer than RabbitMQ's 255 bytes: shorten 'prefix', the channel or the group")
        }
        let arena = AMQPArena()
        defer { withExtendedLifetime(arena) {} }  // rabbitmq-c reads its memory during the call
        amqp_queue_declare(state, Self.channel, arena.bytes(name), 0, 1, 0, 0, arena.table(arguments))
        try check("declare queue '\(name)'")
    }

    /// Declares a durable exchange of `type` (`fanout`, `direct`).
    func declareExchange(_ name: String, type: String) throws(TransportError) {
        guard name.utf8.count <= 255 else {
            throw TransportError(.invalidArgument, "exchange name '\(name.prefix(60))…' is longer than RabbitMQ's 255 bytes: shorten 'prefix' or the channel")
        }
        let arena = AMQPArena()
        defer { withExtendedLifetime(arena) {} }  // rabbitmq-c reads its memory during the call
        amqp_exchange_declare(state, Self.channel, arena.bytes(name), arena.bytes(type), 0, 1, 0, 0, amqp_table_t(num_entries: 0, entries: nil))
        try check("declare exchange '\(name)'")
    }

    /// Binds `queue` to `exchange` with `routingKey`.
    func bind(_ queue: String, to exchange: String, routingKey: String) throws(TransportError) {
        let arena = AMQPArena()
        defer { withExtendedLifetime(arena) {} }  // rabbitmq-c reads its memory during the call
        amqp_queue_bind(state, Self.channel, arena.bytes(queue), arena.bytes(exchange), arena.bytes(routingKey), amqp_table_t(num_entries: 0, entries: nil))
        try check("bind queue '\(queue)' to exchange '\(exchange)'")
    }

    // MARK: Publishing (confirm mode)

    /// Sends one message without waiting and returns its tag; ``waitForConfirms(deadlineNanos:)``
    /// waits for the broker.
    @discardableResult
    func publish(exchange: String, routingKey: String, mandatory: Bool, properties: inout amqp_basic_properties_t, body: UnsafeRawBufferPointer, arena: AMQPArena)
        throws(TransportError) -> UInt64
    {
        let payload = amqp_bytes_t(len: body.count, bytes: body.count == 0 ? nil : UnsafeMutableRawPointer(mutating: body.baseAddress))
        let status = amqp_basic_publish(state, Self.channel, arena.bytes(exchange), arena.bytes(routingKey), mandatory ? 1 : 0, 0, &properties, payload)
        guard status == AMQP_STATUS_OK.rawValue else {
            broken = true
            throw TransportError(
                .unavailable,
                "cannot send to RabbitMQ at \(address): \(String(cString: amqp_error_string2(status))) — the connection is lost (broker down or restarting?); publish again once it is back"
            )
        }
        unconfirmed.append(nextTag)
        nextTag += 1
        return nextTag - 1
    }

    /// Waits until the broker answered for every publish sent so far, or the monotonic deadline,
    /// and returns the tags it nacked (not stored: safe to send again). Throws when one was
    /// returned (unroutable), or the connection failed.
    func waitForConfirms(deadlineNanos: Int64) throws(TransportError) -> [UInt64] {
        defer {
            refused = nil
            nacked = []
            amqp_maybe_release_buffers(state)  // the confirms' decoded frames, see `check`
        }
        while !unconfirmed.isEmpty {
            let left = deadlineNanos - monotonicNow()
            guard left > 0 else {
                broken = true  // confirms still owed would be misattributed to the next publish
                throw TransportError(
                    .timeout,
                    "RabbitMQ did not confirm the publish within config key 'publish_timeout' (10s "
                        + "unless set); it may have been stored — publishing it again may deliver it twice")
            }
            var frame = amqp_frame_t()
            var timeout = timeval(nanoseconds: left)
            let status = amqp_simple_wait_frame_noblock(state, &frame, &timeout)
            if status == AMQP_STATUS_TIMEOUT.rawValue { continue }
            guard status == AMQP_STATUS_OK.rawValue else {
                broken = true
                throw TransportError(.unavailable, "lost the connection to RabbitMQ at \(address) waiting for a publish confirm: \(String(cString: amqp_error_string2(status)))")
            }
            guard frame.frame_type == AMQP_FRAME_METHOD else { continue }
            let method = frame.payload.method
            switch method.id {
            case SY_AMQP_BASIC_ACK:
                let ack = method.decoded.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
                confirm(ack.delivery_tag, multiple: ack.multiple != 0)
            case SY_AMQP_BASIC_NACK:
                let nack = method.decoded.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
                nacked += unconfirmed.filter { nack.multiple != 0 ? $0 <= nack.delivery_tag : $0 == nack.delivery_tag }
                confirm(nack.delivery_tag, multiple: nack.multiple != 0)
            case SY_AMQP_BASIC_RETURN:
                let returned = method.decoded.assumingMemoryBound(to: amqp_basic_return_t.self).pointee
                refused = refused ?? "RabbitMQ could not route a message to '\(String(amqp: returned.routing_key))': \(String(amqp: returned.reply_text))"
                var message = amqp_message_t()
                let read = amqp_read_message(state, frame.channel, &message, 0)
                amqp_destroy_message(&message)
                if read.reply_type != AMQP_RESPONSE_NORMAL {
                    broken = true
                    throw Self.error(read, "read a returned message", address: address)
                }
            case SY_AMQP_CHANNEL_CLOSE, SY_AMQP_CONNECTION_CLOSE:
                broken = true
                let reply = amqp_rpc_reply_t(reply_type: AMQP_RESPONSE_SERVER_EXCEPTION, reply: method, library_error: 0)
                throw Self.error(reply, "publish", address: address)
            default: continue
            }
        }
        if let refused { throw TransportError(.unavailable, refused) }
        return nacked
    }

    /// The broker answered for `tag` — and, with `multiple`, for every earlier one.
    private func confirm(_ tag: UInt64, multiple: Bool) {
        if multiple {
            unconfirmed.removeAll { $0 <= tag }
        } else if let index = unconfirmed.firstIndex(of: tag) {
            unconfirmed.remove(at: index)
        }
    }

    /// True when the broker closed or wrote to this idle connection (a restart, a close): it
    /// must not be used. Silent drops (a NAT forgetting it) show only when used.
    var closedWhileIdle: Bool {
        if amqp_frames_enqueued(state) != 0 || amqp_data_in_buffer(state) != 0 { return true }
        var fd = pollfd(fd: amqp_get_sockfd(state), events: Int16(POLLIN), revents: 0)
        return poll(&fd, 1, 0) != 0
    }
}

extension timeval {
    /// A relative timeout of `nanoseconds`.
    init(nanoseconds: Int64) {
        self.init(tv_sec: Int(nanoseconds / 1_000_000_000), tv_usec: Int((nanoseconds % 1_000_000_000) / 1_000))
    }
}

/// CLOCK_MONOTONIC in nanoseconds (the clock publish and drain deadlines are on).
func monotonicNow() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
}
