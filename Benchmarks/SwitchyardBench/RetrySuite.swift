import Foundation
import SwitchyardABI
import SwitchyardHost
import Synchronization

/// `retry`: what failures cost the messages that do not fail. Messages are published at a steady
/// rate through the retry plugin over the in-memory queue; in one run 10% of them fail (and are
/// retried with backoff), in the baseline run none do. The metric is the p99 publish-to-delivery
/// latency of the messages that succeed the first time.
struct RetrySuite: BenchSuite {
    let name = "retry"
    let summary = "p99 latency of healthy messages with 10% of messages failing vs with none failing"

    func run(_ context: BenchContext) throws -> [BenchResult] {
        let plugins = BenchPlugins(context)
        let count = context.quick ? 5_000 : 20_000
        let rounds = context.quick ? 1 : 3
        // Alternate the two runs so that a burst of machine noise does not land on one side only.
        var clean: [Double] = []
        var dirty: [Double] = []
        for round in 1...rounds {
            context.progress("retry: round \(round): no failures, then 10% failing, ×\(count) each")
            clean.append(try p99(plugins, count: count, failing: false))
            dirty.append(try p99(plugins, count: count, failing: true))
        }
        let (cleanMedian, dirtyMedian) = (Measure.median(clean), Measure.median(dirty))
        return [
            BenchResult(suite: name, metric: "unrelated_p99_us_without_failures", value: cleanMedian, unit: "µs"),
            BenchResult(
                suite: name, metric: "unrelated_p99_us_with_failures", value: dirtyMedian, unit: "µs",
                baseline: ("unrelated_p99_us_without_failures", cleanMedian)),
        ]
    }

    func p99(_ plugins: BenchPlugins, count: Int, failing: Bool) throws -> Double {
        let queue = try plugins.transport("queue", config: #"{"capacity": 0}"#)
        let retry = try plugins.transport("retry", config: #"{"max_attempts": 3, "initial_delay": "5ms", "max_delay": "20ms"}"#, inner: queue)
        defer {
            retry.close()
            queue.close()
        }
        let latencies = Mutex<[Double]>([])
        let healthy = Atomic<Int>(0)
        let client = retry.client
        _ = try client.subscribe(SubscribeOptions(channel: "work", maxInFlight: 256)) { delivery, message in
            let index = Int(message.id.dropFirst()) ?? 0
            if failing && index % 10 == 0 && message.attempt < 3 {
                try? client.settle(delivery, .retry(afterNanos: 0, reason: "simulated failure"))
                return .ok
            }
            if index % 10 != 0 || !failing {
                let sent = Int64(message.header("sent") ?? "") ?? 0
                latencies.withLock { $0.append(Double(Measure.now() - UInt64(sent)) / 1e3) }
                healthy.add(1, ordering: .relaxed)
            }
            try? client.settle(delivery, .ack)
            return .ok
        }
        let expected = failing ? count - count / 10 : count
        for index in 0..<count {
            try client.publish(Message(id: "m\(index)", channel: "work", headers: [Header("sent", String(Measure.now()))], body: [1, 2, 3]))
            if index % 100 == 99 { usleep(1000) }  // a steady rate (~100k/s at most), not a burst
        }
        let deadline = Date().addingTimeInterval(30)
        while healthy.load(ordering: .relaxed) < expected && Date() < deadline { usleep(1000) }
        return percentile(latencies.withLock { $0 }.sorted(), 0.99)
    }
}
