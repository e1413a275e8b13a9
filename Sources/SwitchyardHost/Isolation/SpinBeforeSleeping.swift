import SwitchyardABI

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Waiting for the other process of `isolation: process` by spinning a little before sleeping.
///
/// The two processes answer each other within microseconds, but a thread asleep in `recv` or on
/// a semaphore costs about 20 µs to wake on another core of a virtual machine (docs/benchmark-history.md,
/// twenty-fifth round), and an isolated request-reply call crosses the socket four times. So the
/// readers of both processes, and a thread waiting for the child's answer, first poll for a
/// while, yielding the core between polls: a thread the poller waits for on the same core runs
/// at once, and a poller with nothing to wait for is asleep again after ``budgetNanos``.
/// Without the yield, a poller on a two-core machine took the core its peer needed (measured:
/// slower than sleeping).
enum SpinBeforeSleeping {
    /// How long to poll before sleeping: longer than the other process takes to answer (one
    /// request: a few microseconds of work plus a socket hop), short enough that an idle reader
    /// costs nothing measurable. 50 and 100 µs measured the same; 20 µs caught fewer answers.
    static let budgetNanos: Int64 = 50_000

    /// Calls `attempt` until it returns a value or ``budgetNanos`` have passed (nil), yielding
    /// the core between calls.
    static func poll<T>(_ attempt: () -> T?) -> T? {
        let until = monotonicNanoseconds() + budgetNanos
        while true {
            if let value = attempt() { return value }
            if monotonicNanoseconds() >= until { return nil }
            sched_yield()
        }
    }
}
