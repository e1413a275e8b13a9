import CNats
import Foundation
import SwitchyardABI
import SwitchyardHost
import SwitchyardTransportKit
import Synchronization

/// `nats`: publish → deliver → ack through the `nats` plugin against a raw nats.c JetStream loop
/// doing the same work in the same run, on a `nats-server -js` (file storage) the suite starts on
/// loopback: `publishers` threads each publishing and waiting for JetStream's acknowledgement,
/// one pull consumer fetching batches of 256 and acknowledging every message.
struct NATSSuite: BenchSuite {
    let name = "nats"
    let summary = "NATS JetStream (file storage): the nats plugin's publish → deliver → ack against raw nats.c doing the same work"
    let publishers = 16

    func run(_ context: BenchContext) throws -> [BenchResult] {
        guard let executable = ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"].first(where: { FileManager.default.isExecutableFile(atPath: $0) })
        else {
            throw BenchUnavailable("nats-server is not installed (apt-get install nats-server)")
        }
        let store = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-bench-nats-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: store) }
        let port = 20_000 + Int(getpid() % 20_000)
        let server = Process()
        server.executableURL = URL(fileURLWithPath: executable)
        server.arguments = ["-js", "-a", "127.0.0.1", "-p", "\(port)", "-sd", store]
        server.standardOutput = FileHandle.nullDevice
        server.standardError = FileHandle.nullDevice
        try server.run()
        defer {
            server.terminate()
            server.waitUntilExit()
        }
        let url = "nats://127.0.0.1:\(port)"
        usleep(300_000)
        let count = context.quick ? 20_000 : 100_000
        let rounds = context.quick ? 1 : 3
        let plugins = BenchPlugins(context)
        var raw: [Double] = []
        var rawSameWire: [Double] = []
        var plugin: [Double] = []
        for round in 0..<rounds {
            context.progress("nats: raw nats.c ×\(count), round \(round + 1)")
            raw.append(try rawRate(url: url, count: count, stream: "BENCH_RAW_\(round)", sameWire: false))
            context.progress("nats: raw nats.c with the plugin's headers ×\(count), round \(round + 1)")
            rawSameWire.append(try rawRate(url: url, count: count, stream: "BENCH_WIRE_\(round)", sameWire: true))
            context.progress("nats: the nats plugin ×\(count), round \(round + 1)")
            plugin.append(try pluginRate(plugins, url: url, count: count, stream: "BENCH_PLUGIN_\(round)"))
        }
        context.progress("nats: request-reply through the nats plugin, one caller")
        let latencies = try requestReplyLatencies(plugins, url: url, count: context.quick ? 2_000 : 10_000)
        let baseline = Measure.median(raw)
        let sameWire = Measure.median(rawSameWire)
        let pluginRate = Measure.median(plugin)
        return [
            BenchResult(suite: name, metric: "raw_natsc_msgs_per_s", value: baseline, unit: "msg/s"),
            BenchResult(
                suite: name, metric: "raw_natsc_same_wire_msgs_per_s", value: sameWire, unit: "msg/s", baseline: ("raw_natsc_msgs_per_s", baseline)),
            BenchResult(suite: name, metric: "plugin_msgs_per_s", value: pluginRate, unit: "msg/s", baseline: ("raw_natsc_msgs_per_s", baseline)),
            BenchResult(
                suite: name, metric: "plugin_vs_same_wire", value: pluginRate, unit: "msg/s", baseline: ("raw_natsc_same_wire_msgs_per_s", sameWire)),
            BenchResult(suite: name, metric: "plugin_request_reply_p50_us", value: percentile(latencies, 0.5) / 1000, unit: "µs"),
            BenchResult(suite: name, metric: "plugin_request_reply_p99_us", value: percentile(latencies, 0.99) / 1000, unit: "µs"),
        ]
    }

    /// Round trips of a request and its reply through the plugin (JetStream stores both), as
    /// the typed suite measures the in-memory queue's.
    func requestReplyLatencies(_ plugins: BenchPlugins, url: String, count: Int) throws -> [Double] {
        let transport = try plugins.transport("nats", config: #"{"servers": ["\#(url)"], "stream": "BENCH_RR"}"#)
        defer { transport.close() }
        return try SwitchyardBench.requestReplyLatencies(through: transport, count: count, uniqueIDs: true)
    }

    /// The plugin through the ABI: `publishers` threads publishing, a subscriber acknowledging.
    func pluginRate(_ plugins: BenchPlugins, url: String, count: Int, stream: String) throws -> Double {
        let transport = try plugins.transport(
            "nats", config: #"{"servers": ["\#(url)"], "stream": "\#(stream)", "max_in_flight": 4096, "fetch_batch": 256}"#)
        defer { transport.close() }
        return try publishDeliverAckRate(through: transport, count: count, publishers: publishers, maxInFlight: 4096, idPrefix: "p-\(stream)")
    }

    /// The same work with nats.c alone. With `sameWire`, each message also carries the headers
    /// the plugin puts on a plain message (the CloudEvents attributes every message on NATS
    /// carries, the marker that they were added, the de-duplication id), so the two send the
    /// same bytes and the difference is the plugin's own work.
    func rawRate(url: String, count: Int, stream: String, sameWire: Bool) throws -> Double {
        // As the plugin opens it (NATSLibrary.lockSpinCount), or the raw loop, which runs first,
        // would choose how nats.c spins for both.
        nats_Open(UsableCores.count < 4 ? 0 : -1)
        var connection: OpaquePointer?
        guard natsConnection_ConnectTo(&connection, url) == NATS_OK, let connection else { throw BenchUnavailable("cannot connect to \(url)") }
        defer { natsConnection_Destroy(connection) }
        var jsOpts = jsOptions()
        jsOptions_Init(&jsOpts)
        var js: OpaquePointer?
        guard natsConnection_JetStream(&js, connection, &jsOpts) == NATS_OK, let js else { throw BenchUnavailable("no JetStream") }
        defer { jsCtx_Destroy(js) }
        let subject = "bench.\(stream.lowercased()).x"
        var code = jsErrCode(rawValue: 0)
        var streamConfig = jsStreamConfig()
        jsStreamConfig_Init(&streamConfig)
        streamConfig.Retention = js_WorkQueuePolicy
        streamConfig.Storage = js_FileStorage
        let added = stream.withCString { cName in
            subject.withCString { cSubject in
                var subjects: [UnsafePointer<CChar>?] = [cSubject]
                return subjects.withUnsafeMutableBufferPointer { list in
                    streamConfig.Name = cName
                    streamConfig.Subjects = list.baseAddress
                    streamConfig.SubjectsLen = 1
                    return js_AddStream(nil, js, &streamConfig, nil, &code)
                }
            }
        }
        guard added == NATS_OK else { throw BenchUnavailable("cannot create stream \(stream)") }
        var consumerConfig = jsConsumerConfig()
        jsConsumerConfig_Init(&consumerConfig)
        consumerConfig.AckPolicy = js_AckExplicit
        consumerConfig.MaxAckPending = 4096
        var subscription: OpaquePointer?
        let subscribed = "raw".withCString { durable in
            subject.withCString { cSubject in
                consumerConfig.Durable = durable
                consumerConfig.FilterSubject = cSubject
                _ = js_AddConsumer(nil, js, stream, &consumerConfig, nil, &code)
                return js_PullSubscribe(&subscription, js, cSubject, durable, nil, nil, &code)
            }
        }
        guard subscribed == NATS_OK, let subscription else { throw BenchUnavailable("cannot subscribe") }
        defer { natsSubscription_Destroy(subscription) }
        let acked = Atomic<Int>(0)
        let sub = UncheckedBox(subscription)
        let consumer = Thread {
            while acked.load(ordering: .relaxed) < count {
                var list = natsMsgList()
                if natsSubscription_Fetch(&list, sub.value, 256, 500, nil) == NATS_OK {
                    for index in 0..<Int(list.Count) { natsMsg_Ack(list.Msgs[index], nil) }
                    acked.add(Int(list.Count), ordering: .relaxed)
                }
                natsMsgList_Destroy(&list)
            }
        }
        let context = UncheckedBox(js)
        let body = [UInt8](repeating: 0x5A, count: 64)
        let start = Measure.now()
        consumer.start()
        try onThreads(publishers) { thread in
            var options = jsPubOptions()
            jsPubOptions_Init(&options)
            for index in stride(from: thread, to: count, by: publishers) {
                let id = "r-\(stream)-\(index)"
                let status = id.withCString { cID in
                    options.MsgId = cID
                    return body.withUnsafeBytes { bytes in
                        sameWire
                            ? natsStatusPublish(context.value, subject, bytes, headers: Self.plainMessageHeaders(id: id), &options)
                            : natsStatusPublish(context.value, subject, bytes, &options)
                    }
                }
                guard status == NATS_OK else { throw BenchFailure("raw publish failed: \(String(cString: natsStatus_GetText(status)))") }
            }
        }
        while acked.load(ordering: .relaxed) < count { usleep(200) }
        return Double(count) / (Double(Measure.now() - start) / 1e9)
    }

    /// The headers the `nats` plugin writes on a plain message with this id (NATSTransport.publish).
    static func plainMessageHeaders(id: String) -> [(String, String)] {
        [
            ("ce-specversion", "1.0"), ("ce-id", id), ("ce-source", "switchyard://nats/bench"), ("ce-type", "switchyard.message"),
            ("sy-ce-added", "1"), ("Nats-Msg-Id", id),
        ]
    }

    /// One synchronous JetStream publish of a message with `headers` (waits for the PubAck).
    private func natsStatusPublish(
        _ js: OpaquePointer, _ subject: String, _ body: UnsafeRawBufferPointer, headers: [(String, String)], _ options: inout jsPubOptions
    ) -> natsStatus {
        var message: OpaquePointer?
        var status = natsMsg_Create(&message, subject, nil, body.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(body.count))
        guard status == NATS_OK else { return status }
        defer { natsMsg_Destroy(message) }
        for (key, value) in headers where status == NATS_OK { status = natsMsgHeader_Add(message, key, value) }
        guard status == NATS_OK else { return status }
        var ack: UnsafeMutablePointer<jsPubAck>?
        status = js_PublishMsg(&ack, js, message, &options, nil)
        jsPubAck_Destroy(ack)
        return status
    }

    /// One synchronous JetStream publish (waits for the PubAck), as the plugin does.
    private func natsStatusPublish(_ js: OpaquePointer, _ subject: String, _ body: UnsafeRawBufferPointer, _ options: inout jsPubOptions) -> natsStatus {
        var ack: UnsafeMutablePointer<jsPubAck>?
        let status = js_Publish(&ack, js, subject, body.baseAddress, Int32(body.count), &options, nil)
        jsPubAck_Destroy(ack)
        return status
    }
}

/// Hands a nats.c handle (thread-safe in nats.c) to other threads.
struct UncheckedBox<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
