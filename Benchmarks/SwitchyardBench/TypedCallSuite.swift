import Distributed
import Foundation
import Logging
import SwitchyardABI
import SwitchyardConfig
import SwitchyardRuntime
import SwitchyardWire
import Synchronization

/// The service the typed-call suite calls.
@Resolvable
public protocol BenchCalls: DistributedActor where ActorSystem == SwitchyardActorSystem {
    /// A small request-reply call.
    distributed func add(_ a: Int, _ b: Int) -> Int
    /// A small one-way call.
    distributed func note(_ value: Int)
}

/// Counts the one-way calls it received.
public distributed actor BenchCallsService: BenchCalls {
    public typealias ActorSystem = SwitchyardActorSystem
    let received: Counter

    /// A service counting into `received`.
    init(actorSystem: ActorSystem, received: Counter) {
        self.actorSystem = actorSystem
        self.received = received
    }

    public distributed func add(_ a: Int, _ b: Int) -> Int { a + b }
    public distributed func note(_ value: Int) { received.value.add(1, ordering: .relaxed) }

    /// A thread-safe counter shared with the benchmark.
    final class Counter: Sendable {
        let value = Atomic<Int>(0)
    }
}

/// A small argument struct for the codec figures.
struct BenchOrder: Codable {
    var id = 12345
    var customer = "customer-42"
    var cents = 1999
    var express = true
    var items = ["socks", "shoes"]
}

/// `typed`: typed calls through the actor system, each set against its baseline in the same run:
/// a direct route against calling the local distributed actor; fire-and-forget and request-reply
/// through the in-memory queue `.so` against the raw queue's publish → deliver → ack rate; the
/// compact argument codec against JSON.
struct TypedCallSuite: BenchSuite {
    let name = "typed"
    let summary = "typed calls: direct route vs local actor call, queue fire-and-forget and request-reply vs the raw queue, compact codec vs JSON"

    /// The routes of the calls through the in-memory queue plugin.
    static let queueYAML = """
        transports:
          memq: { plugin: queue, config: { max_in_flight: 1024 } }
        routes:
          BenchCalls.note: { transport: memq, mode: fire-and-forget, concurrency: 4 }
          BenchCalls.*: { transport: memq, concurrency: 4 }
        """

    func run(_ context: BenchContext) throws -> [BenchResult] {
        try blocking { try await measure(context) }
    }

    private func measure(_ context: BenchContext) async throws -> [BenchResult] {
        var results: [BenchResult] = []
        var logger = Logger(label: "bench")
        logger.logLevel = .error

        // Direct route vs a local distributed actor call.
        context.progress("typed: direct route vs local actor call")
        let directSystem = try SwitchyardActorSystem(
            config: try SwitchyardConfig.parse(yaml: "routes:\n  BenchCalls.*: { transport: direct }\n", baseDirectory: "/"), logger: logger)
        let counter = BenchCallsService.Counter()
        let local = try directSystem.host("bench", as: $BenchCalls.self) { BenchCallsService(actorSystem: $0, received: counter) }
        let routed: any BenchCalls = try directSystem.resolve("bench", $BenchCalls.self)
        let stub = try $BenchCalls.resolve(id: "bench", using: directSystem)
        let iterations = context.quick ? 200_000 : 2_000_000
        let localNs = try await nanosPerCall(rounds: context.rounds, iterations: iterations) { i in _ = try await local.add(i, 1) }
        let existential = opaqueExistential(local)
        let protocolNs = try await nanosPerCall(rounds: context.rounds, iterations: iterations) { i in _ = try await existential.add(i, 1) }
        let directNs = try await nanosPerCall(rounds: context.rounds, iterations: iterations) { i in _ = try await routed.add(i, 1) }
        let stubNs = try await nanosPerCall(rounds: context.rounds, iterations: iterations / 100) { i in _ = try await stub.add(i, 1) }
        results += [
            BenchResult(suite: name, metric: "local_actor_call_ns", value: localNs, unit: "ns"),
            BenchResult(suite: name, metric: "local_actor_protocol_call_ns", value: protocolNs, unit: "ns", baseline: ("local_actor_call_ns", localNs)),
            BenchResult(suite: name, metric: "direct_route_ns", value: directNs, unit: "ns", baseline: ("local_actor_call_ns", localNs)),
            BenchResult(suite: name, metric: "direct_route_vs_protocol_call", value: directNs, unit: "ns", baseline: ("local_actor_protocol_call_ns", protocolNs)),
            BenchResult(suite: name, metric: "direct_route_via_stub_ns", value: stubNs, unit: "ns", baseline: ("local_actor_call_ns", localNs)),
        ]
        await directSystem.shutdown()

        // Through the in-memory queue plugin.
        let config = try SwitchyardConfig.parse(yaml: Self.queueYAML, baseDirectory: "/")
        context.progress("typed: raw queue baseline")
        let plugins = BenchPlugins(context)
        let count = context.quick ? 100_000 : 500_000
        let rawRate = try MemoryQueueSuite().pluginRate(plugins, count: count, consumers: 1, batch: 1)

        context.progress("typed: fire-and-forget through the queue ×\(count)")
        var rates: [Double] = []
        for _ in 0..<(context.quick ? 1 : 3) {
            let system = try SwitchyardActorSystem(config: config, pluginDirectories: context.pluginDirectories, logger: logger)
            let received = BenchCallsService.Counter()
            try system.host("bench", as: $BenchCalls.self) { BenchCallsService(actorSystem: $0, received: received) }
            let calls = try $BenchCalls.resolve(id: "bench", using: system)
            let start = Measure.now()
            for i in 0..<count { try await calls.note(i) }
            while received.value.load(ordering: .relaxed) < count { try await Task.sleep(for: .microseconds(200)) }
            rates.append(Double(count) / (Double(Measure.now() - start) / 1e9))
            await system.shutdown()
        }
        let fireAndForget = Measure.median(rates)
        results += [
            BenchResult(suite: name, metric: "raw_queue_msgs_per_s", value: rawRate, unit: "msg/s"),
            BenchResult(suite: name, metric: "typed_fire_and_forget_calls_per_s", value: fireAndForget, unit: "calls/s", baseline: ("raw_queue_msgs_per_s", rawRate)),
        ]

        context.progress("typed: memory per queued fire-and-forget call")
        let queued = try await bytesPerQueuedCall(config: config, context: context, count: context.quick ? 100_000 : 500_000)
        results += [
            BenchResult(suite: name, metric: "encoded_call_bytes", value: queued.encoded, unit: "B"),
            BenchResult(suite: name, metric: "bytes_per_queued_call", value: queued.resident, unit: "B", baseline: ("encoded_call_bytes", queued.encoded)),
        ]

        context.progress("typed: raw request-reply through the queue plugin (no runtime)")
        let rawQueue = try plugins.transport("queue", config: #"{"max_in_flight": 1024}"#)
        defer { rawQueue.close() }
        let rawLatencies = try requestReplyLatencies(through: rawQueue, count: context.quick ? 10_000 : 50_000)
        context.progress("typed: a transport thread waking a task and back (the floor a typed call adds)")
        let wakeRoundTrip = await threadTaskRoundTrips(context.quick ? 10_000 : 50_000)
        let threadRoundTrip = Self.threadRoundTrips(context.quick ? 10_000 : 50_000)

        context.progress("typed: request-reply through the queue (latency, one caller; throughput, 64 callers)")
        let system = try SwitchyardActorSystem(config: config, pluginDirectories: context.pluginDirectories, logger: logger)
        try system.host("bench", as: $BenchCalls.self) { BenchCallsService(actorSystem: $0, received: BenchCallsService.Counter()) }
        let calls = try $BenchCalls.resolve(id: "bench", using: system)
        for i in 0..<2000 { _ = try await calls.add(i, 1) }
        var latencies: [Double] = []
        let serial = context.quick ? 10_000 : 50_000
        latencies.reserveCapacity(serial)
        for i in 0..<serial {
            let start = Measure.now()
            _ = try await calls.add(i, 1)
            latencies.append(Double(Measure.now() - start))
        }
        latencies.sort()
        // Isolated calls: one every millisecond, so the pool's threads, the worker and the queue's
        // dispatcher have all gone to sleep before each, as between an application's occasional
        // requests. Each call then pays the thread wake-ups that a busy period avoids.
        var isolated: [Double] = []
        for i in 0..<(context.quick ? 300 : 1_000) {
            try await Task.sleep(for: .milliseconds(1))
            let start = Measure.now()
            _ = try await calls.add(i, 1)
            isolated.append(Double(Measure.now() - start))
        }
        isolated.sort()
        let total = context.quick ? 100_000 : 400_000
        let callers = 64
        var throughput: [Double] = []
        for _ in 0..<(context.quick ? 1 : 3) {
            let start = Measure.now()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for caller in 0..<callers {
                    group.addTask {
                        for i in 0..<(total / callers) { _ = try await calls.add(caller, i) }
                    }
                }
                try await group.waitForAll()
            }
            throughput.append(Double(total / callers * callers) / (Double(Measure.now() - start) / 1e9))
        }
        await system.shutdown()
        let requestReply = Measure.median(throughput)
        results += [
            BenchResult(suite: name, metric: "raw_request_reply_p50_us", value: percentile(rawLatencies, 0.5) / 1000, unit: "µs"),
            BenchResult(suite: name, metric: "thread_round_trip_p50_us", value: percentile(threadRoundTrip, 0.5) / 1000, unit: "µs"),
            BenchResult(
                suite: name, metric: "thread_task_round_trip_p50_us", value: percentile(wakeRoundTrip, 0.5) / 1000, unit: "µs",
                baseline: ("thread_round_trip_p50_us", percentile(threadRoundTrip, 0.5) / 1000)),
            BenchResult(
                suite: name, metric: "request_reply_p50_us", value: percentile(latencies, 0.5) / 1000, unit: "µs",
                baseline: ("raw_request_reply_p50_us", percentile(rawLatencies, 0.5) / 1000)),
            BenchResult(suite: name, metric: "request_reply_p99_us", value: percentile(latencies, 0.99) / 1000, unit: "µs"),
            BenchResult(
                suite: name, metric: "request_reply_isolated_p50_us", value: percentile(isolated, 0.5) / 1000, unit: "µs",
                baseline: ("thread_round_trip_p50_us", percentile(threadRoundTrip, 0.5) / 1000)),
            BenchResult(suite: name, metric: "request_reply_calls_per_s", value: requestReply, unit: "calls/s", baseline: ("raw_queue_msgs_per_s", rawRate)),
        ]

        // Codec: the compact form against JSON, encode + decode of a small struct.
        context.progress("typed: compact codec vs JSON")
        let order = BenchOrder()
        let codecIterations = context.quick ? 20_000 : 200_000
        let json = Measure.nanosPerOperation(rounds: context.rounds, iterations: codecIterations) { n in
            for _ in 0..<n { blackHole(try! JSONDecoder().decode(BenchOrder.self, from: try! JSONEncoder().encode(order))) }
        }
        let compact = Measure.nanosPerOperation(rounds: context.rounds, iterations: codecIterations) { n in
            for _ in 0..<n { blackHole(try! CompactDecoder().decode(BenchOrder.self, from: try! CompactEncoder().encode(order))) }
        }
        results += [
            BenchResult(suite: name, metric: "json_encode_decode_ns", value: json, unit: "ns"),
            BenchResult(suite: name, metric: "compact_encode_decode_ns", value: compact, unit: "ns", baseline: ("json_encode_decode_ns", json)),
        ]
        return results
    }

    /// Heap bytes per fire-and-forget call queued in the in-memory queue with nobody serving
    /// it, and the size of one call as it crosses the ABI (id, channel, headers, body).
    private func bytesPerQueuedCall(config: SwitchyardConfig, context: BenchContext, count: Int) async throws -> (resident: Double, encoded: Double) {
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        let system = try SwitchyardActorSystem(config: config, pluginDirectories: context.pluginDirectories, logger: logger)
        let calls = try $BenchCalls.resolve(id: "unserved", using: system)
        for i in 0..<1000 { try await calls.note(i) }  // warm: every lazy structure exists
        let before = heapBytesInUse()
        for i in 0..<count { try await calls.note(i) }
        let resident = Double(heapBytesInUse() - before) / Double(count)
        // One of them, as a subscriber sees it.
        guard let transport = system.transport(named: "memq") else { throw BenchUnavailable("no transport memq") }
        let seen = Mutex<Double>(0)
        let subscription = try transport.client.subscribe(SubscribeOptions(channel: "unserved", maxInFlight: 1)) { _, message in
            var bytes = message.body.count + message.fields.id.len + message.fields.channel.len + message.fields.ordering_key.len
            for header in message.headers { bytes += header.key.utf8.count + header.value.utf8.count }
            seen.withLock { $0 = Double(bytes) }
            return .closed
        }
        while seen.withLock({ $0 }) == 0 { try await Task.sleep(for: .milliseconds(1)) }
        try? transport.client.unsubscribe(subscription)
        await system.shutdown()
        return (resident, seen.withLock { $0 })
    }

    /// Nanoseconds, sorted, of `count` round trips between a plain thread and a task: the thread
    /// resumes the task's continuation (as a transport's thread does for a delivery or a reply)
    /// and waits on a semaphore until the task, now running on the cooperative pool, signals it.
    /// A typed request-reply call wakes a task this way twice (the worker, then the caller) where
    /// the raw round trip wakes plain threads: this is the floor that adds.
    private func threadTaskRoundTrips(_ count: Int) async -> [Double] {
        let parked = Guarded<UnsafeContinuation<Void, Never>?>(nil)
        let ready = DispatchSemaphore(value: 0)
        let answered = DispatchSemaphore(value: 0)
        let task = Task {
            for _ in 0..<count + 100 {
                await withUnsafeContinuation { continuation in
                    parked.withLock { $0 = continuation }
                    ready.signal()
                }
                answered.signal()
            }
        }
        let samples = await withCheckedContinuation { (done: CheckedContinuation<[Double], Never>) in
            Thread {
                var samples: [Double] = []
                samples.reserveCapacity(count)
                for round in 0..<count + 100 {
                    ready.wait()
                    let start = Measure.now()
                    parked.withLock { $0.take() }!.resume()
                    answered.wait()
                    if round >= 100 { samples.append(Double(Measure.now() - start)) }  // after a warm-up
                }
                done.resume(returning: samples.sorted())
            }.start()
        }
        await task.value
        return samples
    }

    /// Nanoseconds per round trip between two plain threads passing a token through two
    /// semaphores, sorted: the machine's own cost of waking a thread and being woken back, the
    /// floor under every latency this suite reports. On a virtual machine it moves with the host's
    /// load (a wake-up from one core to another measured from a few µs to about 50 µs).
    static func threadRoundTrips(_ count: Int) -> [Double] {
        let ping = DispatchSemaphore(value: 0)
        let pong = DispatchSemaphore(value: 0)
        let other = Thread {
            for _ in 0..<count + 100 {
                ping.wait()
                pong.signal()
            }
        }
        other.start()
        var samples: [Double] = []
        samples.reserveCapacity(count)
        for round in 0..<count + 100 {
            let start = Measure.now()
            ping.signal()
            pong.wait()
            if round >= 100 { samples.append(Double(Measure.now() - start)) }  // after a warm-up
        }
        return samples.sorted()
    }

    /// Median nanoseconds per call over `rounds` rounds of `iterations` calls (after a warm-up).
    private func nanosPerCall(rounds: Int, iterations: Int, _ call: (Int) async throws -> Void) async throws -> Double {
        for i in 0..<max(1, iterations / 10) { try await call(i) }
        var samples: [Double] = []
        for _ in 0..<rounds {
            let start = Measure.now()
            for i in 0..<iterations { try await call(i) }
            samples.append(Double(Measure.now() - start) / Double(iterations))
        }
        return Measure.median(samples)
    }
}

/// The actor as its protocol, hidden from the optimizer so the call below is dispatched through
/// the protocol as it is in an application that holds `any BenchCalls`, not devirtualised.
@inline(never) @_optimize(none)
func opaqueExistential(_ actor: BenchCallsService) -> any BenchCalls { actor }

/// Runs async work to completion from synchronous code (the bench harness is synchronous; it
/// runs on the main thread, outside the cooperative pool the work uses).
func blocking<R: Sendable>(_ work: @escaping @Sendable () async throws -> R) throws -> R {
    let done = DispatchSemaphore(value: 0)
    let result = Mutex<Result<R, any Error>?>(nil)
    Task {
        let outcome: Result<R, any Error>
        do { outcome = .success(try await work()) } catch { outcome = .failure(error) }
        result.withLock { $0 = outcome }
        done.signal()
    }
    done.wait()
    return try result.withLock { $0! }.get()
}
