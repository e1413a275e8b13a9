#if canImport(Glibc)
import Glibc
#endif

/// A lock around a value, on an adaptive pthread mutex (it spins briefly before sleeping).
///
/// Used where producer, dispatcher and consumers all contend for one short critical section per
/// message. `Synchronization.Mutex` on Linux uses priority-inheritance futexes, which enter the
/// kernel on every contended acquire; here that was the largest single cost of the in-memory queue.
public final class AdaptiveLock<Value>: @unchecked Sendable {
    // @unchecked: `value` is only touched with the mutex held.
    private var mutex = pthread_mutex_t()
    private var value: Value

    /// A lock guarding `value`.
    public init(_ value: Value) {
        self.value = value
        var attributes = pthread_mutexattr_t()
        pthread_mutexattr_init(&attributes)
        #if canImport(Glibc)
        pthread_mutexattr_settype(&attributes, Int32(PTHREAD_MUTEX_ADAPTIVE_NP))
        #endif
        pthread_mutex_init(&mutex, &attributes)
        pthread_mutexattr_destroy(&attributes)
    }

    deinit { pthread_mutex_destroy(&mutex) }

    /// Runs `body` with exclusive access to the value.
    @inline(__always)
    public func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body(&value)
    }
}
