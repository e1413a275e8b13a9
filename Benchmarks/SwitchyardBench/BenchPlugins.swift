import Dispatch
import Foundation
import SwitchyardABI
import SwitchyardHost
import SwitchyardLoader
import Synchronization

/// Finds the bundled plugins a suite needs, or explains which are missing.
struct BenchPlugins {
    let catalog: PluginCatalog

    init(_ context: BenchContext) {
        catalog = PluginLoader().discover(in: context.pluginDirectories.map { SearchDirectory(path: $0, source: .commandLine) })
    }

    func plugin(_ name: String) throws -> LoadedPlugin {
        guard let plugin = catalog.plugin(named: name) else {
            throw BenchUnavailable("plugin '\(name)' not found next to the switchyard executable")
        }
        return plugin
    }

    /// A transport of `name` with `config`, over `inner` for decorators.
    func transport(_ name: String, config: String = "{}", inner: Transport? = nil) throws -> Transport {
        try Transport(name: "bench-\(name)", plugin: try plugin(name), configJSON: config, inner: inner)
    }

    /// A transport of `name` with `config` whose plugin runs in a child process.
    func isolatedTransport(_ name: String, config: String = "{}") throws -> Transport {
        try Transport(name: "bench-\(name)-isolated", plugin: try plugin(name), configJSON: config, isolation: ProcessIsolation())
    }
}

/// Round-trip latencies (ns, sorted) of a request and its reply through `transport` with no
/// runtime: the responder publishes the reply inside its delivery callback, the requester waits
/// on a semaphore. The same two hops a typed request-reply call makes. The first 1,000 are a
/// warm-up and not counted. `uniqueIDs` gives every request and reply an id of its own (a
/// transport that de-duplicates by id, as JetStream does, would drop the repeats).
func requestReplyLatencies(through transport: Transport, count: Int, uniqueIDs: Bool = false) throws -> [Double] {
    let client = transport.client
    let replied = DispatchSemaphore(value: 0)
    let reply = Message(id: "reply", channel: "replies", body: [UInt8](repeating: 1, count: 16))
    let responder = try client.subscribe(SubscribeOptions(channel: "requests")) { delivery, request in
        if uniqueIDs {
            var answer = reply
            answer.id = "reply-" + String(request.fields.id)
            try? client.publish(answer)
        } else {
            try? client.publish(reply)
        }
        try? client.settle(delivery, .ack)
        return .ok
    }
    let requester = try client.subscribe(SubscribeOptions(channel: "replies")) { delivery, _ in
        try? client.settle(delivery, .ack)
        replied.signal()
        return .ok
    }
    defer {
        try? client.unsubscribe(responder)
        try? client.unsubscribe(requester)
    }
    var request = Message(id: "request", channel: "requests", body: [UInt8](repeating: 1, count: 16))
    var latencies: [Double] = []
    latencies.reserveCapacity(count)
    for index in 0..<(count + 1000) {
        if uniqueIDs { request.id = "request-\(index)" }
        let start = Measure.now()
        try client.publish(request)
        replied.wait()
        if index >= 1000 { latencies.append(Double(Measure.now() - start)) }
    }
    return latencies.sorted()
}

/// Percentile of sorted `values` (0...1).
func percentile(_ sorted: [Double], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return .nan }
    return sorted[min(sorted.count - 1, Int((Double(sorted.count - 1) * p).rounded()))]
}

/// publish → deliver → ack through `transport`: `publishers` threads publishing `count` 64-byte
/// messages (ids `<idPrefix>-<n>`) to the channel `bench`, one subscriber with a prefetch of
/// `maxInFlight` acknowledging each delivery. Messages per second from the first publish to the
/// last acknowledgement: the figure the engine suites set against their raw client loops.
func publishDeliverAckRate(through transport: Transport, count: Int, publishers: Int, maxInFlight: UInt32, idPrefix: String) throws -> Double {
    let client = transport.client
    let acked = Atomic<Int>(0)
    _ = try client.subscribe(SubscribeOptions(channel: "bench", maxInFlight: maxInFlight)) { delivery, _ in
        try? client.settle(delivery, .ack)
        acked.add(1, ordering: .relaxed)
        return .ok
    }
    let body = [UInt8](repeating: 0x5A, count: 64)
    let start = Measure.now()
    try onThreads(publishers) { thread in
        for index in stride(from: thread, to: count, by: publishers) {
            try client.publish(Message(id: "\(idPrefix)-\(index)", channel: "bench", body: body))
        }
    }
    while acked.load(ordering: .relaxed) < count { usleep(200) }
    return Double(count) / (Double(Measure.now() - start) / 1e9)
}
