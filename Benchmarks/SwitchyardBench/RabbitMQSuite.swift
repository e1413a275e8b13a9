import CRabbitMQ
import Foundation
import SwitchyardABI
import SwitchyardHost
import Synchronization

/// `rabbitmq`: on the broker `RABBITMQ_URL` names, publish → deliver → ack through the `rabbitmq`
/// plugin against a raw rabbitmq-c loop doing the same work in the same run: `publishers`
/// threads, each on its own connection in confirm mode, publishing one persistent message at a
/// time and waiting for its confirm, to a quorum queue; one consumer with a prefetch of 1024
/// acknowledging every message on its own. Then request-reply round trips through the plugin.
struct RabbitMQSuite: BenchSuite {
    let name = "rabbitmq"
    let summary = "RabbitMQ (RABBITMQ_URL): the rabbitmq plugin's publish → deliver → ack against raw rabbitmq-c doing the same work"
    let publishers = 16
    let prefetch = 1024

    /// Where the broker is, from `RABBITMQ_URL`.
    struct Broker: Sendable {
        let url: String
        let host: String
        let port: Int32
        let vhost: String
        let user: String
        let password: String
    }

    func run(_ context: BenchContext) throws -> [BenchResult] {
        guard let url = ProcessInfo.processInfo.environment["RABBITMQ_URL"] else {
            throw BenchUnavailable("set RABBITMQ_URL to a RabbitMQ broker (amqp://user:password@host:5672/)")
        }
        let broker = try Self.parse(url)
        let tag = "bench-\(getpid())"
        let count = context.quick ? 4_000 : 20_000
        let rounds = context.quick ? 1 : 3
        let plugins = BenchPlugins(context)
        var raw: [Double] = []
        var plugin: [Double] = []
        var queues: [String] = []
        defer { try? Self.delete(queues, on: broker) }
        for round in 0..<rounds {
            context.progress("rabbitmq: raw rabbitmq-c ×\(count), round \(round + 1)")
            let rawQueue = "\(tag).raw.\(round)"
            queues.append(rawQueue)
            raw.append(try rawRate(broker, queue: rawQueue, count: count))
            context.progress("rabbitmq: the rabbitmq plugin ×\(count), round \(round + 1)")
            let prefix = "\(tag).plugin.\(round)"
            queues += [prefix + ".bench", prefix + ".bench.dlq"]
            plugin.append(try pluginRate(plugins, url: url, prefix: prefix, count: count))
        }
        context.progress("rabbitmq: request-reply through the rabbitmq plugin, one caller")
        queues += ["\(tag).rr.requests", "\(tag).rr.requests.dlq", "\(tag).rr.replies", "\(tag).rr.replies.dlq"]
        let transport = try plugins.transport("rabbitmq", config: #"{"url": "\#(url)", "prefix": "\#(tag).rr"}"#)
        let latencies = try requestReplyLatencies(through: transport, count: context.quick ? 500 : 2_000, uniqueIDs: true)
        transport.close()
        let baseline = Measure.median(raw)
        return [
            BenchResult(suite: name, metric: "raw_rabbitmqc_msgs_per_s", value: baseline, unit: "msg/s"),
            BenchResult(suite: name, metric: "plugin_msgs_per_s", value: Measure.median(plugin), unit: "msg/s", baseline: ("raw_rabbitmqc_msgs_per_s", baseline)),
            BenchResult(suite: name, metric: "plugin_request_reply_p50_us", value: percentile(latencies, 0.5) / 1000, unit: "µs"),
            BenchResult(suite: name, metric: "plugin_request_reply_p99_us", value: percentile(latencies, 0.99) / 1000, unit: "µs"),
        ]
    }

    /// The plugin through the ABI: `publishers` threads publishing, a subscriber acknowledging.
    func pluginRate(_ plugins: BenchPlugins, url: String, prefix: String, count: Int) throws -> Double {
        let transport = try plugins.transport(
            "rabbitmq", config: #"{"url": "\#(url)", "prefix": "\#(prefix)", "publishers": \#(publishers), "max_in_flight": \#(prefetch)}"#)
        defer { transport.close() }
        return try publishDeliverAckRate(through: transport, count: count, publishers: publishers, maxInFlight: UInt32(prefetch), idPrefix: "p-\(prefix)")
    }

    /// The same work with rabbitmq-c alone.
    func rawRate(_ broker: Broker, queue: String, count: Int) throws -> Double {
        let setup = try Self.connect(broker)
        defer { Self.close(setup) }
        var arguments = amqp_table_entry_t(key: amqp_cstring_bytes("x-queue-type"), value: amqp_field_value_t())
        let quorum = strdup("quorum")!
        defer { free(quorum) }
        arguments.value.kind = UInt8(AMQP_FIELD_KIND_UTF8.rawValue)
        arguments.value.value.bytes = amqp_cstring_bytes(quorum)
        try queue.withCString { name in
            _ = withUnsafeMutablePointer(to: &arguments) { entry in
                amqp_queue_declare(setup, 1, amqp_cstring_bytes(name), 0, 1, 0, 0, amqp_table_t(num_entries: 1, entries: entry))
            }
            try Self.check(setup, "declare \(queue)")
        }
        let acked = Atomic<Int>(0)
        let consumerConnection = UncheckedBox(try Self.connect(broker))
        defer { Self.close(consumerConnection.value) }
        amqp_basic_qos(consumerConnection.value, 1, 0, UInt16(prefetch), 0)
        try Self.check(consumerConnection.value, "basic.qos")
        queue.withCString { name in _ = amqp_basic_consume(consumerConnection.value, 1, amqp_cstring_bytes(name), amqp_empty_bytes, 0, 0, 0, amqp_empty_table) }
        try Self.check(consumerConnection.value, "basic.consume")
        let consumer = Thread {
            let connection = consumerConnection.value
            while acked.load(ordering: .relaxed) < count {
                var envelope = amqp_envelope_t()
                var timeout = timeval(tv_sec: 1, tv_usec: 0)
                amqp_maybe_release_buffers(connection)
                let reply = amqp_consume_message(connection, &envelope, &timeout, 0)
                guard reply.reply_type == AMQP_RESPONSE_NORMAL else { continue }
                amqp_basic_ack(connection, 1, envelope.delivery_tag, 0)
                amqp_destroy_envelope(&envelope)
                acked.add(1, ordering: .relaxed)
            }
        }
        let body = [UInt8](repeating: 0x5A, count: 64)
        let start = Measure.now()
        consumer.start()
        try onThreads(publishers) { thread in
            let connection = try Self.connect(broker)
            defer { Self.close(connection) }
            amqp_confirm_select(connection, 1)
            try Self.check(connection, "confirm.select")
            for index in stride(from: thread, to: count, by: publishers) {
                let id = "r-\(queue)-\(index)"
                var properties = amqp_basic_properties_t()
                properties._flags = SY_AMQP_PROPERTY_DELIVERY_MODE | SY_AMQP_PROPERTY_MESSAGE_ID
                properties.delivery_mode = 2
                let status = id.withCString { cID in
                    queue.withCString { name in
                        body.withUnsafeBytes { bytes in
                            properties.message_id = amqp_cstring_bytes(cID)
                            return amqp_basic_publish(
                                connection, 1, amqp_empty_bytes, amqp_cstring_bytes(name), 1, 0, &properties,
                                amqp_bytes_t(len: bytes.count, bytes: UnsafeMutableRawPointer(mutating: bytes.baseAddress)))
                        }
                    }
                }
                guard status == AMQP_STATUS_OK.rawValue else { throw BenchFailure("raw publish failed: \(String(cString: amqp_error_string2(status)))") }
                // Wait for this publish's confirm, as the plugin does.
                while true {
                    var frame = amqp_frame_t()
                    guard amqp_simple_wait_frame(connection, &frame) == AMQP_STATUS_OK.rawValue else { throw BenchFailure("lost the connection") }
                    if frame.frame_type == AMQP_FRAME_METHOD && frame.payload.method.id == SY_AMQP_BASIC_ACK { break }
                }
            }
        }
        while acked.load(ordering: .relaxed) < count { usleep(200) }
        return Double(count) / (Double(Measure.now() - start) / 1e9)
    }

    // MARK: rabbitmq-c

    static func parse(_ url: String) throws -> Broker {
        var info = amqp_connection_info()
        let copy = strdup(url)
        defer { free(copy) }
        guard amqp_parse_url(copy, &info) == 0 else { throw BenchUnavailable("RABBITMQ_URL is not an amqp:// URL") }
        let vhost = String(cString: info.vhost)
        return Broker(
            url: url, host: String(cString: info.host), port: info.port, vhost: vhost.isEmpty ? "/" : vhost, user: String(cString: info.user),
            password: String(cString: info.password))
    }

    static func connect(_ broker: Broker) throws -> amqp_connection_state_t {
        let connection = amqp_new_connection()!
        let socket = amqp_tcp_socket_new(connection)
        guard amqp_socket_open(socket, broker.host, broker.port) == AMQP_STATUS_OK.rawValue else {
            amqp_destroy_connection(connection)
            throw BenchUnavailable("cannot connect to RabbitMQ at \(broker.host):\(broker.port)")
        }
        let login = sy_amqp_login_plain(connection, broker.vhost, 131_072, 0, broker.user, broker.password)
        guard login.reply_type == AMQP_RESPONSE_NORMAL else {
            amqp_destroy_connection(connection)
            throw BenchUnavailable("RabbitMQ refused the login")
        }
        amqp_channel_open(connection, 1)
        try check(connection, "channel.open")
        return connection
    }

    static func check(_ connection: amqp_connection_state_t, _ what: String) throws {
        guard amqp_get_rpc_reply(connection).reply_type == AMQP_RESPONSE_NORMAL else { throw BenchUnavailable("RabbitMQ: \(what) failed") }
    }

    static func close(_ connection: amqp_connection_state_t) {
        amqp_channel_close(connection, 1, Int32(AMQP_REPLY_SUCCESS))
        amqp_connection_close(connection, Int32(AMQP_REPLY_SUCCESS))
        amqp_destroy_connection(connection)
    }

    /// Deletes what the suite declared, so that runs leave nothing on the broker.
    static func delete(_ queues: [String], on broker: Broker) throws {
        let connection = try connect(broker)
        defer { close(connection) }
        for queue in queues {
            queue.withCString { name in _ = amqp_queue_delete(connection, 1, amqp_cstring_bytes(name), 0, 0) }
            if amqp_get_rpc_reply(connection).reply_type != AMQP_RESPONSE_NORMAL {
                // A missing queue closes the channel: open another and go on.
                amqp_channel_open(connection, 1)
            }
        }
    }
}
