import Foundation
import SwitchyardABI
import SwitchyardHost
import Synchronization

/// `isolation`: what `isolation: process` costs. The same request-reply round trip (two hops,
/// each publish → deliver → ack) through the in-memory queue plugin loaded in this process, and
/// through the same plugin in a `switchyard plugin-host` child, in the same run; plus one-way
/// publishes from one thread (each waits for the child's answer); batches both ways (published
/// 256 at a time, delivered and acknowledged as batches: ABI 1.3 maps onto one frame each); and,
/// for the floor under the first two,
/// a bare round trip over a Unix socket pair between two threads: an isolated request-reply
/// crosses the socket four times (request, its delivery, the reply, its delivery), two round
/// trips' worth, and an isolated publish once each way.
struct IsolationSuite: BenchSuite {
    let name = "isolation"
    let summary = "isolation: process: request-reply round trip, publish rate and batched rate through a queue in a child vs in process"

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

        context.progress("isolation: batches in process vs in a child")
        let batched = context.quick ? 51_200 : 256_000
        let localBatchedRate = try batchedRate(local, count: batched)
        let isolatedBatchedRate = try batchedRate(isolated, count: batched)

        context.progress("isolation: a bare socket round trip")
        let socketP50 = try socketRoundTrips(count: count)

        let localP50 = percentile(localLatencies, 0.5) / 1000
        return [
            BenchResult(suite: name, metric: "socket_round_trip_p50_us", value: socketP50 / 1000, unit: "µs"),
            BenchResult(suite: name, metric: "in_process_request_reply_p50_us", value: localP50, unit: "µs"),
            BenchResult(
                suite: name, metric: "isolated_request_reply_p50_us", value: percentile(isolatedLatencies, 0.5) / 1000, unit: "µs",
                baseline: ("in_process_request_reply_p50_us", localP50)),
            BenchResult(suite: name, metric: "isolated_request_reply_p99_us", value: percentile(isolatedLatencies, 0.99) / 1000, unit: "µs"),
            BenchResult(suite: name, metric: "in_process_batched_msgs_per_s", value: localBatchedRate, unit: "msg/s"),
            BenchResult(
                suite: name, metric: "isolated_batched_msgs_per_s", value: isolatedBatchedRate, unit: "msg/s",
                baseline: ("in_process_batched_msgs_per_s", localBatchedRate)),
            BenchResult(suite: name, metric: "in_process_publish_msgs_per_s", value: localRate, unit: "msg/s"),
            BenchResult(
                suite: name, metric: "isolated_publish_msgs_per_s", value: isolatedRate, unit: "msg/s",
                baseline: ("in_process_publish_msgs_per_s", localRate)),
        ]
    }

    /// Median nanoseconds of a 64-byte ping-pong between this thread and an echoing one over a
    /// Unix socket pair: the cost of one round trip through the kernel, with a wake-up each way.
    private func socketRoundTrips(count: Int) throws -> Double {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0 else {
            throw BenchUnavailable("socketpair failed: \(String(cString: strerror(errno)))")
        }
        let (near, far) = (pair[0], pair[1])
        let echo = Thread {
            var buffer = [UInt8](repeating: 0, count: 64)
            while buffer.withUnsafeMutableBytes({ recv(far, $0.baseAddress, 64, Int32(MSG_WAITALL)) }) == 64 {
                _ = buffer.withUnsafeBytes { send(far, $0.baseAddress, 64, Int32(MSG_NOSIGNAL)) }
            }
            close(far)
        }
        echo.start()
        defer { close(near) }  // the echo thread sees end of stream and ends
        var buffer = [UInt8](repeating: 1, count: 64)
        var latencies: [Double] = []
        latencies.reserveCapacity(count)
        for index in 0..<(count + 1000) {
            let start = Measure.now()
            _ = buffer.withUnsafeBytes { send(near, $0.baseAddress, 64, Int32(MSG_NOSIGNAL)) }
            guard buffer.withUnsafeMutableBytes({ recv(near, $0.baseAddress, 64, Int32(MSG_WAITALL)) }) == 64 else {
                throw BenchFailure("the socket round trip failed")
            }
            if index >= 1000 { latencies.append(Double(Measure.now() - start)) }
        }
        return percentile(latencies.sorted(), 0.5)
    }

    /// Messages per second through `transport` batched both ways: batches of 256 published from
    /// this thread, taken by a subscriber that takes batches (`deliver_batch`) and acknowledges
    /// each whole (`settle_batch`). From the first publish to the last acknowledgement.
    private func batchedRate(_ transport: Transport, count: Int) throws -> Double {
        let client = transport.client
        let acked = Atomic<Int>(0)
        let channel = "batched-\(UUID().uuidString)"
        let subscription = try client.subscribe(
            SubscribeOptions(channel: channel, maxInFlight: 1024),
            handler: { delivery, _ in
                try? client.settle(delivery, .ack)
                acked.add(1, ordering: .relaxed)
                return .ok
            },
            batchHandler: { deliveries, views in
                _ = try? client.settle(batch: deliveries, .ack)
                acked.add(views.count, ordering: .relaxed)
                return views.count
            })
        defer { try? client.unsubscribe(subscription) }
        let batch = (0..<256).map { Message(id: "b\($0)", channel: channel, body: [UInt8](repeating: 1, count: 64)) }
        let start = Measure.now()
        var sent = 0
        while sent < count {
            try client.publish(batch: batch)
            sent += batch.count
        }
        while acked.load(ordering: .relaxed) < sent { usleep(100) }
        return Double(sent) / (Double(Measure.now() - start) / 1e9)
    }

    /// Messages per second published one at a time from this thread (nobody subscribed).
    private func publishRate(_ transport: Transport, count: Int) throws -> Double {
        let message = Message(id: "m", channel: "rate-\(UUID().uuidString)", body: [UInt8](repeating: 1, count: 64))
        let start = Measure.now()
        for _ in 0..<count { try transport.client.publish(message) }
        return Double(count) / (Double(Measure.now() - start) / 1e9)
    }
}
