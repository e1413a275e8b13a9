import CSwitchyard
import Logging
import Metrics
import SwitchyardABI

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Told of each message an instance moved to a dead-letter channel: the message as stored there,
/// and the reason.
public typealias DeadLetterObserver = @Sendable (Message, String) -> Void

/// The host side of `sy_host_services` for one transport instance: log lines go to swift-log with
/// the transport's name as metadata, metrics to swift-metrics labelled with it, dead-letter
/// reports to the observers registered with ``observeDeadLetters(_:)``.
///
/// The C table and its context live exactly as long as this object; the owning `Transport` keeps
/// it until the plugin's `destroy` has returned.
final class HostServices: Sendable {
    let logger: Logger
    private let transportName: String
    private let metricsFactory: any MetricsFactory
    private let metrics = Guarded<[String: MetricHandle?]>([:])
    /// The kind each metric label was first recorded as, process-wide (see ``record(kind:name:value:)``).
    private static let metricKinds = Guarded<[String: Int32]>([:])
    /// Metrics (transport/name) whose value was refused once: warned about once.
    private static let warnedMetricValue = Guarded<Set<String>>([])
    private let deadLetterObservers = Guarded<[DeadLetterObserver]>([])
    /// In a plugin host child: where metrics go instead (the parent records them).
    private let metricForwarder = Guarded<(@Sendable (Int32, String, Double) -> Void)?>(nil)
    /// The table handed to the plugin. Immutable once built.
    nonisolated(unsafe) private(set) var table: UnsafeMutablePointer<sy_host_services>!

    private enum MetricHandle: @unchecked Sendable {
        // @unchecked: swift-metrics handlers are thread-safe by that library's contract.
        case counter(Counter)
        case gauge(Gauge)
        case timer(Metrics.Timer)
    }

    init(transportName: String, logger: Logger, metrics: (any MetricsFactory)? = nil) {
        metricsFactory = metrics ?? MetricsSystem.factory
        var logger = logger
        logger[metadataKey: "transport"] = "\(transportName)"
        self.logger = logger
        self.transportName = transportName
        let table = UnsafeMutablePointer<sy_host_services>.allocate(capacity: 1)
        table.initialize(
            to: sy_host_services(
                struct_size: UInt32(MemoryLayout<sy_host_services>.size),
                abi_major: UInt16(SY_ABI_MAJOR), abi_minor: UInt16(SY_ABI_MINOR),
                host_context: nil, log: Self.log, now_ns: Self.now, monotonic_ns: Self.monotonic, metric: Self.metric,
                dead_lettered: Self.deadLettered))
        self.table = table
        // The context is unretained: this object outlives every call by the owner's contract.
        table.pointee.host_context = Unmanaged.passUnretained(self).toOpaque()
    }

    deinit {
        table.deinitialize(count: 1)
        table.deallocate()
    }

    private static func services(_ context: UnsafeMutableRawPointer?) -> HostServices? {
        context.map { Unmanaged<HostServices>.fromOpaque($0).takeUnretainedValue() }
    }

    private static let log: @convention(c) (UnsafeMutableRawPointer?, Int32, UnsafePointer<CChar>?) -> Void = {
        context, level, message in
        guard let services = services(context), let message else { return }
        let swiftLevel: Logger.Level =
            switch level {
            case SY_LOG_TRACE: .trace
            case SY_LOG_DEBUG: .debug
            case SY_LOG_INFO: .info
            case SY_LOG_NOTICE: .notice
            case SY_LOG_WARNING: .warning
            default: .error
            }
        services.logger.log(level: swiftLevel, "\(String(cString: message))")
    }

    private static let now: @convention(c) (UnsafeMutableRawPointer?) -> Int64 = { _ in wallClockNanoseconds() }

    private static let monotonic: @convention(c) (UnsafeMutableRawPointer?) -> Int64 = { _ in monotonicNanoseconds() }

    private static let metric: @convention(c) (UnsafeMutableRawPointer?, Int32, UnsafePointer<CChar>?, Double) -> Void = {
        context, kind, name, value in
        guard let services = services(context), let name else { return }
        services.record(kind: kind, name: String(cString: name), value: value)
    }

    private static let deadLettered: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<sy_message>?, sy_str) -> Void = {
        context, message, reason in
        // A malformed report is dropped (it only ever informs: the message is stored already), and said.
        guard let services = services(context) else { return }
        guard let message else {
            return services.logger.warning("dead_lettered reported a NULL message; ignored (the ABI asks for the message as stored)")
        }
        let copy: Message
        do {
            copy = try Message(copying: message)
        } catch {
            return services.logger.warning("dead_lettered reported a malformed message; ignored", metadata: ["reason": "\(error)"])
        }
        services.reportDeadLetter(copy, reason: String(reason))
    }

    /// Adds an observer of the instance's dead letters.
    func observeDeadLetters(_ observer: @escaping DeadLetterObserver) {
        deadLetterObservers.withLock { $0.append(observer) }
    }

    /// Hands a dead letter to every observer (from the plugin, or from a plugin process's report).
    func reportDeadLetter(_ message: Message, reason: String) {
        for observer in deadLetterObservers.withLock({ $0 }) { observer(message, reason) }
    }

    /// Sends every metric to `forward` instead of recording it here (a plugin host child hands
    /// them to its parent, which records them under the transport's name).
    func forwardMetrics(_ forward: @escaping @Sendable (Int32, String, Double) -> Void) {
        metricForwarder.withLock { $0 = forward }
    }

    /// Records one metric the plugin reported (or a child reported for it).
    func record(kind: Int32, name: String, value: Double) {
        // Not a number, infinite, or a counter or timer beyond Int64: converting it would stop
        // the process (Swift traps), this one or, from a child under isolation, the parent.
        guard value.isFinite, kind == SY_METRIC_GAUGE || (value >= 0 && value < 9.2e18) else {
            if Self.warnedMetricValue.withLock({ $0.insert("\(transportName)/\(name)").inserted }) {
                logger.warning(
                    "ignored metric '\(name)': its value \(value) is not one a \(kind == SY_METRIC_GAUGE ? "gauge" : "counter or timer") can take (finite; counters and timers 0 to 2^63); warned once per metric"
                )
            }
            return
        }
        if let forward = metricForwarder.withLock({ $0 }) { return forward(kind, name, value) }
        let label = "switchyard_transport_\(name)"
        let dimensions = [("transport", transportName)]
        let handle = metrics.withLock { cache -> MetricHandle? in
            let key = "\(kind)/\(name)"
            if let known = cache[key] { return known }
            guard [SY_METRIC_COUNTER, SY_METRIC_GAUGE, SY_METRIC_TIMER_NS].contains(kind) else { return nil }
            // One kind per metric name in the whole process: backends such as Prometheus stop
            // the process when a name comes back as another kind (two plugins, or one plugin
            // reporting "depth" as a counter and as a gauge). The first kind wins.
            let claimed = Self.metricKinds.withLock { kinds -> Int32 in
                if let existing = kinds[label] { return existing }
                kinds[label] = kind
                return kind
            }
            guard claimed == kind else {
                logger.warning(
                    "ignored metric '\(name)': reported as kind \(kind), but \(label) is already a metric of kind \(claimed) (SY_METRIC_COUNTER 0, GAUGE 1, TIMER_NS 2); give each kind its own name"
                )
                cache[key] = .some(nil)
                return nil
            }
            let made: MetricHandle? =
                switch kind {
                case SY_METRIC_COUNTER: .counter(Counter(label: label, dimensions: dimensions, factory: metricsFactory))
                case SY_METRIC_GAUGE: .gauge(Gauge(label: label, dimensions: dimensions, factory: metricsFactory))
                case SY_METRIC_TIMER_NS: .timer(Metrics.Timer(label: label, dimensions: dimensions, factory: metricsFactory))
                default: nil
                }
            cache[key] = .some(made)
            return made
        }
        switch handle {
        case .counter(let counter): counter.increment(by: Int64(value))
        case .gauge(let gauge): gauge.record(value)
        case .timer(let timer): timer.recordNanoseconds(Int64(value))
        case nil: logger.debug("ignored metric '\(name)' of unknown kind \(kind)")
        }
    }
}
