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

@inline(__always)
private func nanoseconds(of clock: clockid_t) -> Int64 {
    var now = timespec()
    clock_gettime(clock, &now)
    return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
}
