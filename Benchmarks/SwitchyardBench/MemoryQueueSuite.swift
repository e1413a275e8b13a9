import CBenchSupport
import CSwitchyard
import DequeModule
import Foundation
import SwitchyardABI
import SwitchyardHost
import Synchronization

/// `memory-queue`: publish → deliver → ack through the in-memory queue plugin, 64-byte bodies,
/// one producer publishing batches of 256 (`publish_batch`), consumers acknowledging each
/// delivery; against a bare producer/consumer hand-off (a mutex-guarded deque and a consumer
/// thread that takes batches) doing the same number of messages in the same run. Also the same
/// with one publish call per message.
struct MemoryQueueSuite: BenchSuite {
    let name = "memory-queue"
    let summary = "in-memory queue publish → deliver → ack (1 and 4 consumers, 4 producers, 4 channels; a topic to 4 groups) vs a bare thread hand-off; bytes per queued message"

    func run(_ context: BenchContext) throws -> [BenchResult] {
        let plugins = BenchPlugins(context)
        let count = context.quick ? 200_000 : 1_000_000
        let rounds = context.quick ? 1 : 3
        context.progress("memory-queue: bare hand-off ×\(count)")
        let baseline = Measure.median((0..<rounds).map { _ in handOffRate(count) })
        context.progress("memory-queue: plugin, 1 consumer")
        let one = Measure.median(try (0..<rounds).map { _ in try pluginRate(plugins, count: count, consumers: 1, batch: 256) })
        context.progress("memory-queue: plugin, 4 consumers")
        let four = Measure.median(try (0..<rounds).map { _ in try pluginRate(plugins, count: count, consumers: 4, batch: 256) })
        context.progress("memory-queue: plugin, 4 producers, 4 consumers")
        let parallel = Measure.median(try (0..<rounds).map { _ in try pluginRate(plugins, count: count, consumers: 4, batch: 256, producers: 4) })
        context.progress("memory-queue: plugin, 4 channels, a producer and a consumer each")
        let channels = Measure.median(try (0..<rounds).map { _ in try pluginRate(plugins, count: count, consumers: 4, batch: 256, producers: 4, channels: 4) })
        context.progress("memory-queue: topic plugin, 4 subscriber groups")
        let fanOut = Measure.median(try (0..<rounds).map { _ in try pluginRate(plugins, count: count / 4, consumers: 4, batch: 256, plugin: "topic") })
        context.progress("memory-queue: plugin, 1 consumer, one publish per message")
        let single = Measure.median(try (0..<rounds).map { _ in try pluginRate(plugins, count: count, consumers: 1, batch: 1) })
        context.progress("memory-queue: plugin, 1 consumer, acknowledging each delivery alone")
        let ackEach = Measure.median(try (0..<rounds).map { _ in try pluginRate(plugins, count: count, consumers: 1, batch: 256, ackEach: true) })
        context.progress("memory-queue: bytes per queued message")
        let bytes = try bytesPerMessage(plugins, count: context.quick ? 200_000 : 1_000_000)
        let base = ("bare_handoff_msgs_per_s", baseline)
        return [
            BenchResult(suite: name, metric: "bare_handoff_msgs_per_s", value: baseline, unit: "msg/s"),
            BenchResult(suite: name, metric: "raw_msgs_per_s", value: one, unit: "msg/s", baseline: base),
            BenchResult(suite: name, metric: "raw_msgs_per_s_4_consumers", value: four, unit: "msg/s", baseline: base),
            BenchResult(suite: name, metric: "raw_msgs_per_s_4_producers_4_consumers", value: parallel, unit: "msg/s", baseline: base),
            BenchResult(suite: name, metric: "raw_msgs_per_s_4_channels", value: channels, unit: "msg/s", baseline: base),
            BenchResult(suite: name, metric: "topic_4_groups_deliveries_per_s", value: fanOut, unit: "deliveries/s", baseline: base),
            BenchResult(suite: name, metric: "single_publish_msgs_per_s", value: single, unit: "msg/s", baseline: base),
            BenchResult(suite: name, metric: "ack_each_msgs_per_s", value: ackEach, unit: "msg/s", baseline: base),
            BenchResult(suite: name, metric: "bytes_per_queued_message", value: bytes, unit: "B"),
        ]
    }

    /// Messages per second through the queue plugin: one producer publishing the same 64-byte
    /// message, consumers acknowledging inside the delivery callback.
    /// `producers` threads share the publishing. With `channels` above 1, producer and consumer
    /// `i` use channel `i % channels` (the transport's shards run channels apart).
    /// With `plugin: "topic"` each consumer is a subscriber group of its own and the rate counts
    /// deliveries (each message reaches every group).
    func pluginRate(_ plugins: BenchPlugins, count: Int, consumers: Int, batch: Int, ackEach: Bool = false, plugin: String = "queue", producers: Int = 1, channels: Int = 1) throws
        -> Double
    {
        let queue = try plugins.transport(plugin, config: #"{"capacity": 0, "max_in_flight": 1024}"#)
        defer { queue.close() }
        let acked = Atomic<Int>(0)
        let client = queue.client
        for consumer in 0..<consumers {
            // Deliveries arrive in batches (deliver_batch); a batch is acknowledged in one
            // settle_batch call. Acknowledging each one alone is `ack_each_msgs_per_s`.
            let each: DeliveryHandler = { delivery, _ in
                try? client.settle(delivery, .ack)
                acked.add(1, ordering: .relaxed)
                return .ok
            }
            let whole: BatchDeliveryHandler = { deliveries, _ in
                _ = try? client.settle(batch: deliveries, .ack)
                acked.add(deliveries.count, ordering: .relaxed)
                return deliveries.count
            }
            let group = plugin == "topic" ? "group-\(consumer)" : ""
            _ = try client.subscribe(
                SubscribeOptions(channel: channels > 1 ? "bench-\(consumer % channels)" : "bench", group: group, maxInFlight: 1024), handler: each,
                batchHandler: ackEach ? nil : whole)
        }
        let perProducer = count / producers
        let produce: @Sendable (Int) throws -> Void = { producer in
            let channel = channels > 1 ? "bench-\(producer % channels)" : "bench"
            let message = Message(id: "bench-message-0001", channel: channel, body: [UInt8](repeating: 0x5A, count: 64))
            if batch > 1 {
                try Array(repeating: message, count: batch).withCMessages { (first, size) throws in
                    for _ in 0..<(perProducer / batch) { try client.publish(batch: first, count: size) }
                }
            } else {
                try message.withCMessage { (pointer) throws in
                    for _ in 0..<perProducer { try client.publish(pointer) }
                }
            }
        }
        let start = Measure.now()
        if producers == 1 {
            try produce(0)
        } else {
            let failure = Mutex<(any Error)?>(nil)
            DispatchQueue.concurrentPerform(iterations: producers) { producer in
                do { try produce(producer) } catch { failure.withLock { $0 = error } }
            }
            if let error = failure.withLock({ $0 }) { throw error }
        }
        let expected = (batch > 1 ? perProducer / batch * batch : perProducer) * producers * (plugin == "topic" ? consumers : 1)
        while acked.load(ordering: .relaxed) < expected { usleep(100) }
        return Double(expected) / (Double(Measure.now() - start) / 1e9)
    }

    /// The same hand-off without Switchyard: a producer appends 64-byte payloads to a locked
    /// deque, a consumer thread takes everything there is at each wake-up and counts it.
    func handOffRate(_ count: Int) -> Double {
        let condition = NSCondition()
        nonisolated(unsafe) var items = Deque<[UInt8]>()
        let consumed = Atomic<Int>(0)
        let consumer = Thread {
            var seen = 0
            while seen < count {
                condition.lock()
                while items.isEmpty { condition.wait() }
                let batch = items
                items.removeAll(keepingCapacity: true)
                condition.unlock()
                seen += batch.count
                consumed.store(seen, ordering: .relaxed)
            }
        }
        let payload = [UInt8](repeating: 0x5A, count: 64)
        let start = Measure.now()
        consumer.start()
        for _ in 0..<count {
            condition.lock()
            items.append(payload)
            condition.signal()
            condition.unlock()
        }
        while consumed.load(ordering: .relaxed) < count { usleep(100) }
        return Double(count) / (Double(Measure.now() - start) / 1e9)
    }

    /// Heap bytes per message with `count` 64-byte messages queued and no consumer.
    func bytesPerMessage(_ plugins: BenchPlugins, count: Int) throws -> Double {
        let queue = try plugins.transport("queue", config: #"{"capacity": 0}"#)
        defer { queue.close() }
        let before = heapBytesInUse()
        let message = Message(id: "bench-message-0001", channel: "bench", body: [UInt8](repeating: 0x5A, count: 64))
        try message.withCMessage { (pointer) throws in
            for _ in 0..<count { try queue.client.publish(pointer) }
        }
        return Double(heapBytesInUse() - before) / Double(count)
    }
}

/// Bytes the heap holds for the process now (every malloc arena, see `bench_heap_bytes_in_use`).
/// Unlike the resident size, it grows with what a queued message holds even where malloc reuses
/// memory an earlier round of the suite freed (which had made the per-message figures depend on
/// what ran before them).
func heapBytesInUse() -> Int { Int(bench_heap_bytes_in_use()) }
