import Metrics

/// The metrics of one route (swift-metrics; labels `route` and, for outcomes, `outcome`).
/// Created once per route so a call costs no metric lookups. A class: a struct of nine metric
/// objects was copied whole (nine retains and nine releases) wherever a call kept it.
final class RouteMetrics: Sendable {
    /// Calls made through the route.
    let calls: Counter
    /// Calls that ended in an error at the caller (including timeouts).
    let failures: Counter
    /// Calls that timed out at the caller.
    let timeouts: Counter
    /// Caller-side latency of request-reply calls.
    let latency: Metrics.Timer
    /// Deliveries the receiver handled successfully.
    let handled: Counter
    /// Deliveries the receiver settled for a retry.
    let retried: Counter
    /// Deliveries the receiver dead-lettered (failures, rejections, expired calls).
    let deadLettered: Counter
    /// Redelivered calls the inbox answered without running them.
    let duplicates: Counter
    /// Calls of this route executing on this host now.
    let inFlight: Meter

    init(route: String) {
        let labels = [("route", route)]
        calls = Counter(label: "switchyard_calls_total", dimensions: labels)
        failures = Counter(label: "switchyard_call_failures_total", dimensions: labels)
        timeouts = Counter(label: "switchyard_call_timeouts_total", dimensions: labels)
        latency = Metrics.Timer(label: "switchyard_call_duration", dimensions: labels)
        handled = Counter(label: "switchyard_handled_total", dimensions: labels)
        retried = Counter(label: "switchyard_retried_total", dimensions: labels)
        deadLettered = Counter(label: "switchyard_dead_lettered_total", dimensions: labels)
        duplicates = Counter(label: "switchyard_duplicates_total", dimensions: labels)
        inFlight = Meter(label: "switchyard_in_flight", dimensions: labels)
    }
}
