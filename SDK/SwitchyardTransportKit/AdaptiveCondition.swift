import SwitchyardABI

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A lock with a condition variable, like `NSCondition`, on an adaptive mutex (as `Guarded` is):
/// a thread that finds it taken spins briefly before sleeping in the kernel. The transport kit's
/// threads that wait for each other (broker dispatcher, SQLite writer, delay scheduler) use it.
///
/// Why not `NSCondition`: its mutex is a plain one. The in-memory broker's lock is held for a few
/// hundred nanoseconds at a time by a publisher and the dispatcher on different cores; with a
/// plain mutex each collision put one of them to sleep and cost the other a futex wake on unlock
/// (a tenth of a memory-queue run's cycles), and single-message publishes ran at half the rate.
final class AdaptiveCondition: @unchecked Sendable {
    // @unchecked: the pthread objects are made for sharing between threads.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    /// An unlocked lock and its condition.
    init() {
        mutex = makeAdaptiveMutex()
        condition = .allocate(capacity: 1)
        condition.initialize(to: pthread_cond_t())
        // Timed waits on the monotonic clock: a step of the wall clock (NTP, an operator) must not
        // stretch a drain's deadline or a publisher's wait for room.
        var conditionAttributes = pthread_condattr_t()
        pthread_condattr_init(&conditionAttributes)
        #if canImport(Glibc)
            pthread_condattr_setclock(&conditionAttributes, CLOCK_MONOTONIC)
        #endif
        precondition(pthread_cond_init(condition, &conditionAttributes) == 0, "pthread_cond_init failed")
        pthread_condattr_destroy(&conditionAttributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        condition.deinitialize(count: 1)
        condition.deallocate()
        destroyAdaptiveMutex(mutex)
    }

    /// Takes the lock, waiting (briefly spinning first) while another thread holds it.
    func lock() { pthread_mutex_lock(mutex) }
    /// Releases the lock.
    func unlock() { pthread_mutex_unlock(mutex) }

    /// Wakes one thread waiting on the condition, if any.
    func signal() { pthread_cond_signal(condition) }
    /// Wakes every thread waiting on the condition.
    func broadcast() { pthread_cond_broadcast(condition) }

    /// Waits for a signal (or a spurious wake-up: wait in a loop that checks what you wait for).
    /// Call with the lock held; it is held again on return.
    func wait() { pthread_cond_wait(condition, mutex) }

    /// Waits for a signal until `deadline` on the monotonic clock (`CLOCK_MONOTONIC`, which
    /// `monotonicNanoseconds()` reads and the ABI's `drain` deadline is on); false when the
    /// deadline passed. Call with the lock held; it is held again on return.
    func wait(untilMonotonicNanos deadline: Int64) -> Bool {
        let deadline = max(0, deadline)
        var time = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        return pthread_cond_timedwait(condition, mutex, &time) != ETIMEDOUT
    }

    /// Waits for a signal until the wall clock reads `deadline` (nanoseconds since 1970, as the
    /// stores' retry and lease times are), counted from now on the monotonic clock; false when
    /// it passed. Call with the lock held; it is held again on return.
    func wait(untilWallClockNanos deadline: Int64) -> Bool {
        let (remaining, overflow) = deadline.subtractingReportingOverflow(wallClockNanoseconds())
        return wait(untilMonotonicNanos: Self.monotonicDeadline(in: overflow ? 0 : remaining))  // only a time far in the past overflows
    }

    /// The monotonic time `nanos` from now, saturating: a wait that means "as long as it takes"
    /// (a `full_wait` of years) waits as long as it can instead of trapping on overflow.
    static func monotonicDeadline(in nanos: Int64) -> Int64 {
        let (sum, overflow) = monotonicNanoseconds().addingReportingOverflow(max(0, nanos))
        return overflow ? .max : sum
    }
}
