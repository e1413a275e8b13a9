import Foundation
import MetricsTestKit
import SwitchyardABI
import SwitchyardConformance
import SwitchyardHost
import SwitchyardLoader
import SwitchyardTestSupport
import Testing

/// Every bundled plugin reports what it does through the host's `metric` service, as
/// `switchyard_transport_*` metrics labelled with the transport's name (swift-metrics' test kit
/// stands in for a backend).
@Suite("Transport metrics")
struct TransportMetricsTests {
    /// Short timeouts so that hangs and restarts show up within a test's patience.
    static let quickIsolation = ProcessIsolation(
        callTimeoutNanos: 5_000_000_000, restartBackoffNanos: 50_000_000,
        maxRestartBackoffNanos: 500_000_000, hostExecutable: BuildProducts.switchyard)

    static func counter(_ metrics: TestMetrics, _ name: String, _ transport: String) -> Int64 {
        metrics.counterTotal(label: "switchyard_transport_\(name)", dimensions: [("transport", transport)])
    }

    static func gauge(_ metrics: TestMetrics, _ name: String, _ transport: String) -> Double? {
        try? metrics.expectGauge("switchyard_transport_\(name)", [("transport", transport)]).lastValue
    }

    /// Publishes 6 messages through `client`; the subscriber retries the first delivery of each
    /// of the first two, dead-letters the third, acks the rest.
    static func exercise(_ client: TransportClient) throws {
        let seen = Guarded<Set<String>>([])
        _ = try client.subscribe(SubscribeOptions(channel: "work", maxInFlight: 16)) { delivery, view in
            let message = view.copy()
            let first = seen.withLock { $0.insert(message.id).inserted }
            let settlement: Settlement =
                if message.id == "m2" { .deadLetter(reason: "refused") } else if first && (message.id == "m0" || message.id == "m1") {
                    .retry(afterNanos: 1_000_000, reason: "once more")
                } else { .ack }
            try? client.settle(delivery, settlement)
            return .ok
        }
        for index in 0..<6 { try client.publish(Message(id: "m\(index)", channel: "work", body: [UInt8(index)])) }
    }

    @Test(
        "queue and topic, in memory and durable, and a queue in a child process: published, delivered, acked, retried, dead-lettered, depth, in-flight",
        arguments: ["queue", "topic", "queue durable", "queue isolated"])
    func broker(_ variant: String) async throws {
        let metrics = TestMetrics()
        let directory = try TemporaryDirectory()
        let name = variant.split(separator: " ").first.map(String.init)!
        let config = variant.hasSuffix("durable") ? #"{"path": "\#(directory.file("q.db"))"}"# : "{}"
        try await offPool {
            let plugin = try BuildProducts.plugin(name)
            let transport =
                variant.hasSuffix("isolated")
                ? try Transport(name: "t", plugin: plugin, configJSON: config, isolation: Self.quickIsolation, metrics: metrics)
                : try Transport(name: "t", plugin: plugin, configJSON: config, metrics: metrics)
            defer { transport.close() }
            try Self.exercise(transport.client)
            let settled = waitUntil(15) {
                Self.counter(metrics, "acked", "t") == 5 && Self.counter(metrics, "dead_lettered", "t") == 1
                    && Self.gauge(metrics, "in_flight", "t") == 0 && Self.gauge(metrics, "depth", "t") == 1  // the dead letter
            }
            #expect(
                settled,
                "acked \(Self.counter(metrics, "acked", "t")), dead-lettered \(Self.counter(metrics, "dead_lettered", "t")), in flight \(String(describing: Self.gauge(metrics, "in_flight", "t"))), depth \(String(describing: Self.gauge(metrics, "depth", "t")))"
            )
            #expect(Self.counter(metrics, "published", "t") == 6)
            #expect(Self.counter(metrics, "delivered", "t") == 8)
            #expect(Self.counter(metrics, "retried", "t") == 2)
        }
    }

    @Test("a durable delay's depth is its file's: a second process sharing the store (the console) sees what the first holds")
    func durableDelayDepthIsTheFiles() async throws {
        let dir = try TemporaryDirectory()
        try await offPool {
            let queue = try Transport(name: "base", plugin: try BuildProducts.plugin("queue"))
            defer { queue.close() }
            let config = "{\"path\": \"\(dir.file("later.db"))\"}"
            let holding = try Transport(name: "later", plugin: try BuildProducts.plugin("delay"), configJSON: config, inner: queue)
            defer { holding.close() }
            // Opened first, as a console started before the reminders were held.
            let watching = try Transport(name: "later", plugin: try BuildProducts.plugin("delay"), configJSON: config, inner: queue)
            defer { watching.close() }
            for index in 0..<3 {
                var message = Message(id: "r-\(index)", channel: "reminders", body: [1])
                message.deliverAtNanos = wallClockNanoseconds() + 3_600_000_000_000
                try holding.client.publish(message)
            }
            #expect(waitUntil(10) { (try? watching.client.stats())??.depth == 3 }, "\(String(describing: try? watching.client.stats()))")
            #expect((try holding.client.stats())?.depth == 3)
        }
    }

    @Test("delay and retry decorators report their own work under their own names")
    func decorators() async throws {
        let metrics = TestMetrics()
        try await offPool {
            let queue = try Transport(name: "base", plugin: try BuildProducts.plugin("queue"), metrics: metrics)
            defer { queue.close() }
            let later = try Transport(name: "later", plugin: try BuildProducts.plugin("delay"), inner: queue, metrics: metrics)
            defer { later.close() }
            let retry = try Transport(
                name: "retrying", plugin: try BuildProducts.plugin("retry"),
                configJSON: #"{"max_attempts": 2, "initial_delay": "1ms"}"#, inner: queue, metrics: metrics)
            defer { retry.close() }
            var message = Message(id: "d", channel: "held", body: [1])
            message.deliverAtNanos = wallClockNanoseconds() + 20_000_000
            try later.client.publish(message)
            #expect(waitUntil(10) { Self.counter(metrics, "forwarded", "later") == 1 })
            #expect(Self.counter(metrics, "published", "later") == 1)
            #expect(Self.gauge(metrics, "depth", "later") == 0)
            // Retry: every delivery fails; the decorator retries once, then dead-letters.
            _ = try retry.client.subscribe(SubscribeOptions(channel: "work")) { delivery, _ in
                try? retry.client.settle(delivery, .retry(afterNanos: 0, reason: "fails"))
                return .ok
            }
            try retry.client.publish(Message(id: "r", channel: "work", body: [2]))
            #expect(waitUntil(10) { Self.counter(metrics, "dead_lettered", "retrying") == 1 })
            #expect(Self.counter(metrics, "retried", "retrying") == 1)
        }
    }

    /// JetStream keeps the depth, not the plugin: `nats` reports its counters and its in-flight
    /// deliveries, and no `depth` series at all rather than one that always reads 0.
    @Test("the nats plugin reports its counters and in-flight, and no depth gauge")
    func natsHasNoDepthGauge() async throws {
        let metrics = TestMetrics()
        let directory = try TemporaryDirectory()
        let server = try NATSServer(storeDirectory: directory.path)
        try await offPool {
            let transport = try Transport(
                name: "t", plugin: try BuildProducts.plugin("nats"),
                configJSON: #"{"servers": ["\#(server.url)"], "stream": "METRICS"}"#, metrics: metrics)
            defer { transport.close() }
            try Self.exercise(transport.client)
            #expect(waitUntil(15) { Self.counter(metrics, "acked", "t") == 5 && Self.gauge(metrics, "in_flight", "t") == 0 })
            #expect(Self.counter(metrics, "published", "t") == 7, "six, and the dead letter published to the dead-letter stream")
            #expect(Self.gauge(metrics, "depth", "t") == nil, "a depth gauge was reported: \(String(describing: Self.gauge(metrics, "depth", "t")))")
        }
    }

    @Test("a metric name reported as two kinds keeps its first kind; the other is ignored with a warning, never handed to the backend")
    func oneKindPerName() async throws {
        let metrics = TestMetrics()
        let directory = try TemporaryDirectory()
        let path = try await CCompiler.fixture("libfixture-kinds.so", in: directory.path, defines: ["FIXTURE_METRIC_KINDS"])
        let log = CapturedLog()
        try await offPool {
            let transport = try Transport(name: "kinds", plugin: try PluginLoader().load(path: path), logger: log.logger(), metrics: metrics)
            transport.close()
        }
        // A backend such as Prometheus stops the process when one name comes back as another kind.
        #expect(Self.counter(metrics, "fixture_kinds", "kinds") == 3)
        #expect(Self.gauge(metrics, "fixture_kinds", "kinds") == nil)
        #expect(log.all.contains { $0.contains("ignored metric 'fixture_kinds'") && $0.contains("give each kind its own name") }, "\(log.all)")
        // Values no metric can take are ignored with a warning: converting them stopped the
        // process (a NaN timer, an infinite or huge counter).
        for name in ["fixture_nan", "fixture_infinite", "fixture_huge", "fixture_negative"] {
            #expect(log.all.contains { $0.contains("ignored metric '\(name)'") && $0.contains("is not one a") }, "\(name): \(log.all)")
            #expect(Self.counter(metrics, name, "kinds") == 0)
        }
    }

    @Test("a plugin in a child process reporting a metric value no metric can take does not stop the parent")
    func badMetricValuesFromAChild() async throws {
        let directory = try TemporaryDirectory()
        let path = try await CCompiler.fixture("libfixture-kinds.so", in: directory.path, defines: ["FIXTURE_METRIC_KINDS"])
        try await offPool {
            let transport = try Transport(
                name: "kinds", plugin: try PluginLoader().load(path: path), isolation: Self.quickIsolation)
            // The child forwarded what it was given at create; this process is still here, its
            // child running.
            #expect(transport.pluginProcessID != nil)
            transport.close()
        }
    }
}
