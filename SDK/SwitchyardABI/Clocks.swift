#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// `CLOCK_MONOTONIC` in nanoseconds: the clock every deadline in the ABI is measured on
/// (`drain`'s deadline, the host's `monotonic_ns`). System-wide, so two processes on one machine
/// agree on it.
public func monotonicNanoseconds() -> Int64 { nanoseconds(of: CLOCK_MONOTONIC) }

/// `CLOCK_REALTIME` in nanoseconds since the Unix epoch: the ABI's time base for message times
/// (`deliver_at_ns`, `enqueued_at_ns`) and the host's `now_ns`.
public func wallClockNanoseconds() -> Int64 { nanoseconds(of: CLOCK_REALTIME) }

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the monotonic clock as of the last timer tick, read
/// without the hardware counter — a quarter of `monotonicNanoseconds()`'s cost here (6 ns against
/// 25 ns), at ``coarseResolutionNanos``. For timing what only matters when it is long.
public func coarseMonotonicNanoseconds() -> Int64 {
    #if canImport(Glibc)
        nanoseconds(of: CLOCK_MONOTONIC_COARSE)
    #else
        monotonicNanoseconds()
    #endif
}

/// The resolution of ``coarseMonotonicNanoseconds()``: one timer tick (1–10 ms on Linux,
/// depending on the kernel's HZ).
public let coarseResolutionNanos: Int64 = {
    #if canImport(Glibc)
        var resolution = timespec()
        guard clock_getres(CLOCK_MONOTONIC_COARSE, &resolution) == 0 else { return 0 }
        return Int64(resolution.tv_sec) * 1_000_000_000 + Int64(resolution.tv_nsec)
    #else
        return 0
    #endif
}()

@inline(__always)
private func nanoseconds(of clock: clockid_t) -> Int64 {
    var now = timespec()
    clock_gettime(clock, &now)
    return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
}
