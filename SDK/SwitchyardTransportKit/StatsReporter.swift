import SwitchyardABI
import SwitchyardPluginKit
import Synchronization

/// Reports a transport's counters to the host's metrics (`sy_host_services.metric`), so that
/// every bundled plugin shows what it does as `switchyard_transport_*` metrics labelled with the
/// transport's name: counters `published`, `delivered`, `acked`, `retried`, `dead_lettered`,
/// `released`, gauges `depth` and `in_flight`.
///
/// A plugin keeps its counters as it does anyway (``TransportStats``, cheap, under its own lock)
/// and calls ``report(_:force:)`` now and then — from a thread of its own, at most every
/// `interval` — which hands the host the differences since the last report. The data path pays
/// nothing per message for metrics.
public final class StatsReporter: Sendable {
    private let host: HostServices
    private let intervalNanos: Int64
    private let last = Guarded<(stats: TransportStats, at: Int64)?>(nil)
    /// When the interval since the last report ends: read without the lock, so the calls inside
    /// the interval — nearly all of them, where a plugin reports from its publish and settle
    /// paths on many threads — return at once instead of queueing for `last`.
    private let quietUntil = Atomic<Int64>(.min)

    /// Where the gauges go when several reporters make up one transport (shards), and this
    /// one's place there.
    private let gauges: GaugeSum?
    private let slot: Int
    /// Whether the transport knows its depth: a plugin in front of an engine that keeps its own
    /// count (NATS, RabbitMQ) reports none rather than a constant 0.
    private let reportsDepth: Bool

    /// A reporter to `host`, reporting at most every `intervalNanos` unless forced. With `gauges`,
    /// its depth and in-flight count are one part (`slot`) of the transport's, and the gauges
    /// report the sum of the parts; counters add up by themselves. Without `reportsDepth` no
    /// `depth` gauge is reported at all (the transport's `TransportStats.depth` means nothing).
    public init(host: HostServices, intervalNanos: Int64 = 250_000_000, gauges: GaugeSum? = nil, slot: Int = 0, reportsDepth: Bool = true) {
        self.host = host
        self.intervalNanos = intervalNanos
        self.gauges = gauges
        self.slot = slot
        self.reportsDepth = reportsDepth
    }

    /// Hands the host what changed since the last report: counter increments and the gauges'
    /// current values. Does nothing when the last report is more recent than the interval,
    /// unless `force` (a plugin forces one at shutdown). Returns false when it held the report
    /// back for the interval, or when something changed since the last one: call again after
    /// the interval, or the last changes (and gauges read from a cache) may stay unseen. True
    /// once a report finds nothing new.
    @discardableResult
    public func report(_ stats: @autoclosure () -> TransportStats, force: Bool = false) -> Bool {
        let now = host.monotonicNanos()
        if !force, now < quietUntil.load(ordering: .relaxed) { return false }
        let previous = last.withLock { last -> TransportStats?? in
            if !force, let last, now - last.at < intervalNanos { return .none }
            defer { last = (TransportStats(), now) }  // replaced below, with the stats taken now
            quietUntil.store(now + intervalNanos, ordering: .relaxed)
            return .some(last?.stats)
        }
        guard case .some(let before) = previous else { return false }
        let stats = stats()
        last.withLock { $0?.stats = stats }
        if let before, before == stats { return true }
        let old = before ?? TransportStats()
        func count(_ name: StaticString, _ new: UInt64, _ old: UInt64) {
            // The first report names every counter, zero included: a series an alert is written
            // against exists from the start, not from its first event.
            if new > old || before == nil { host.count(name, Double(new - old)) }
        }
        count("published", stats.published, old.published)
        count("delivered", stats.delivered, old.delivered)
        count("acked", stats.acked, old.acked)
        count("retried", stats.retried, old.retried)
        count("dead_lettered", stats.deadLettered, old.deadLettered)
        count("released", stats.released, old.released)
        if let gauges {
            gauges.report(slot, depth: stats.depth, inFlight: stats.inFlight, to: host)
            return false
        }
        if reportsDepth && (before == nil || stats.depth != old.depth) { host.gauge("depth", Double(stats.depth)) }
        if before == nil || stats.inFlight != old.inFlight { host.gauge("in_flight", Double(stats.inFlight)) }
        return false
    }

    /// The interval, for callers that schedule their next report.
    public var interval: Int64 { intervalNanos }
}

/// The depth and in-flight gauges of a transport made of parts (``ShardedBroker``'s shards), each
/// reporting its own: the host sees their sum, not whichever part reported last.
public final class GaugeSum: Sendable {
    private let parts: Guarded<[(depth: UInt64, inFlight: UInt64)]>

    /// Gauges for `count` parts, all zero.
    public init(parts count: Int) { parts = Guarded(Array(repeating: (0, 0), count: count)) }

    /// Records part `slot`'s values and hands `host` the sums over every part — under the lock,
    /// so that two parts reporting at once cannot leave the older sum as the last one set (host
    /// services never block).
    func report(_ slot: Int, depth: UInt64, inFlight: UInt64, to host: HostServices) {
        parts.withLock { parts in
            parts[slot] = (depth, inFlight)
            let (depth, inFlight) = parts.reduce((UInt64(0), UInt64(0))) { ($0.0 + $1.depth, $0.1 + $1.inFlight) }
            host.gauge("depth", Double(depth))
            host.gauge("in_flight", Double(inFlight))
        }
    }
}
