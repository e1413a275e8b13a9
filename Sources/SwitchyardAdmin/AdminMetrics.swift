import CoreMetrics
import Prometheus

/// The Prometheus registry `GET /metrics` serves, and the one way to make swift-metrics record
/// into it.
///
/// Call ``bootstrap()`` first thing in `main`, before creating the actor system: the runtime and
/// each transport pick their metrics backend when they are created. An application that
/// bootstraps swift-metrics itself instead includes ``makeFactory()`` in its own factory (a
/// `MultiplexMetricsHandler`), or `/metrics` shows nothing of it (a factory made on the registry
/// alone would lose the call-duration buckets, 50 µs to 30 s).
public enum AdminMetrics {
    /// Every metric the runtime and the plugins record, once ``bootstrap()`` ran.
    public static let registry = PrometheusCollectorRegistry()

    /// Histogram buckets for timers: calls through memory take microseconds, durable ones
    /// milliseconds, so the buckets start at 50 µs (swift-prometheus's start at 5 ms).
    public static let durationBuckets: [Duration] = [
        .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .microseconds(2500),
        .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
        .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30),
    ]

    /// A swift-metrics factory recording into ``registry``.
    public static func makeFactory() -> PrometheusMetricsFactory {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = durationBuckets
        return factory
    }

    private static let bootstrapOnce: Void = MetricsSystem.bootstrap(makeFactory())

    /// Makes swift-metrics record into ``registry``. Safe to call more than once (the first call
    /// bootstraps); it must not follow another `MetricsSystem.bootstrap` in the process, which
    /// swift-metrics forbids.
    public static func bootstrap() {
        _ = bootstrapOnce
    }
}
