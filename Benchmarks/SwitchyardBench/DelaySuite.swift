import Foundation
import SwitchyardABI
import SwitchyardHost
import Synchronization

/// `delay`: lateness of timers through the delay plugin over the in-memory queue: messages with
/// deliver-at times spread evenly over a window, lateness measured at the subscriber (deliver
/// time minus deliver-at, so it includes the queue's own dispatch).
struct DelaySuite: BenchSuite {
    let name = "delay"
    let summary = "lateness of timers spread over a window, delay plugin over the in-memory queue"

    func run(_ context: BenchContext) throws -> [BenchResult] {
        let plugins = BenchPlugins(context)
        let count = context.quick ? 10_000 : 100_000
        let window: Int64 = context.quick ? 2_000_000_000 : 10_000_000_000
        let runs = try (0..<(context.quick ? 1 : 3)).map { round in
            context.progress("delay: round \(round + 1): \(count) timers over \(window / 1_000_000_000) s")
            return try lateness(plugins, count: count, window: window)
        }
        func median(_ pick: ([Double]) -> Double) -> Double { Measure.median(runs.map(pick)) }
        return [
            BenchResult(suite: name, metric: "lateness_p50_ms", value: median { percentile($0, 0.5) }, unit: "ms"),
            BenchResult(suite: name, metric: "lateness_p99_ms", value: median { percentile($0, 0.99) }, unit: "ms"),
            BenchResult(suite: name, metric: "lateness_max_ms", value: median { $0.last! }, unit: "ms"),
            BenchResult(suite: name, metric: "early_deliveries", value: Double(runs.map { $0.filter { $0 < 0 }.count }.reduce(0, +)), unit: "count"),
        ]
    }

    /// Sorted lateness in ms of `count` timers spread over `window` ns.
    func lateness(_ plugins: BenchPlugins, count: Int, window: Int64) throws -> [Double] {
        let queue = try plugins.transport("queue", config: #"{"capacity": 0}"#)
        let delay = try plugins.transport("delay", config: #"{"capacity": 0}"#, inner: queue)
        defer {
            delay.close()
            queue.close()
        }
        let lateness = Mutex<[Double]>([])
        let client = delay.client
        _ = try client.subscribe(SubscribeOptions(channel: "timers", maxInFlight: 4096)) { delivery, message in
            let late = Double(wallClockNanoseconds() - message.deliverAtOriginal) / 1e6
            lateness.withLock { $0.append(late) }
            try? client.settle(delivery, .ack)
            return .ok
        }
        let start = wallClockNanoseconds() + 200_000_000
        for index in 0..<count {
            let due = start + window * Int64(index) / Int64(count)
            var message = Message(id: "t\(index)", channel: "timers", headers: [Header("due", String(due))])
            message.deliverAtNanos = due
            try client.publish(message)
        }
        while lateness.withLock({ $0.count }) < count && wallClockNanoseconds() < start + window + 10_000_000_000 { usleep(10_000) }
        let sorted = lateness.withLock { $0 }.sorted()
        guard sorted.count == count else { throw BenchFailure("only \(sorted.count) of \(count) timers fired") }
        return sorted
    }
}

extension MessageView {
    /// The deliver-at time the publisher asked for (delay clears deliverAt when it forwards, so the
    /// benchmark carries it in a header).
    var deliverAtOriginal: Int64 { Int64(header("due") ?? "") ?? deliverAtNanos }
}
