import Foundation
import SwitchyardABI
import SwitchyardHost

/// `isolation`: what `isolation: process` costs. The same request-reply round trip (two hops,
/// each publish → deliver → ack) through the in-memory queue plugin loaded in this process, and
/// through the same plugin in a `switchyard plugin-host` child, in the same run; plus one-way
/// publishes from one thread (each waits for the child's answer).
struct IsolationSuite: BenchSuite {
    let name = "isolation"
    let summary = "isolation: process: request-reply round trip and publish rate through a queue in a child vs in process"

    func run(_ context: BenchContext) throws -> [BenchResult] {
        let plugins = BenchPlugins(context)
        let config = #"{"max_in_flight": 1024, "capacity": 0}"#
        let count = context.quick ? 5_000 : 30_000

        context.progress("isolation: request-reply in process vs in a child")
        let local = try plugins.transport("queue", config: config)
        defer { local.close() }
        let isolated = try plugins.isolatedTransport("queue", config: config)
        defer { isolated.close() }
        let localLatencies = try requestReplyLatencies(through: local, count: count)
        let isolatedLatencies = try requestReplyLatencies(through: isolated, count: count)

        context.progress("isolation: publishes in process vs in a child")
        let publishes = context.quick ? 20_000 : 100_000
        let localRate = try publishRate(local, count: publishes)
        let isolatedRate = try publishRate(isolated, count: publishes)

        let localP50 = percentile(localLatencies, 0.5) / 1000
        return [
            BenchResult(suite: name, metric: "in_process_request_reply_p50_us", value: localP50, unit: "µs"),
            BenchResult(
                suite: name, metric: "isolated_request_reply_p50_us", value: percentile(isolatedLatencies, 0.5) / 1000, unit: "µs",
                baseline: ("in_process_request_reply_p50_us", localP50)),
            BenchResult(suite: name, metric: "isolated_request_reply_p99_us", value: percentile(isolatedLatencies, 0.99) / 1000, unit: "µs"),
            BenchResult(suite: name, metric: "in_process_publish_msgs_per_s", value: localRate, unit: "msgs/s"),
            BenchResult(
                suite: name, metric: "isolated_publish_msgs_per_s", value: isolatedRate, unit: "msgs/s",
                baseline: ("in_process_publish_msgs_per_s", localRate)),
        ]
    }

    /// Messages per second published one at a time from this thread (nobody subscribed).
    private func publishRate(_ transport: Transport, count: Int) throws -> Double {
        let message = Message(id: "m", channel: "rate-\(UUID().uuidString)", body: [UInt8](repeating: 1, count: 64))
        let start = Measure.now()
        for _ in 0..<count { try transport.client.publish(message) }
        return Double(count) / (Double(Measure.now() - start) / 1e9)
    }
}
