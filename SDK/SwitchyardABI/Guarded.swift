#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A value behind a lock: the one lock type Switchyard uses for state shared between threads.
///
/// An adaptive pthread mutex (glibc's `PTHREAD_MUTEX_ADAPTIVE_NP`: it spins briefly before
/// sleeping). Where a producer, a dispatcher and consumers contend for one short critical section
/// per message, `Synchronization.Mutex` — a priority-inheritance futex on Linux, entering the
/// kernel on every contended acquire — measured as the in-memory queue's largest single cost.
/// ThreadSanitizer intercepts pthread mutexes, so it sees every acquire and release.
///
/// The mutex and the value live in memory of their own, allocated once: pthread requires a mutex
/// that never moves, and Swift does not promise a stable address for a stored property passed
/// `inout`.
public final class Guarded<Value>: @unchecked Sendable {
    // @unchecked: `value` is only touched with `mutex` held.
    @usableFromInline let mutex: UnsafeMutablePointer<pthread_mutex_t>
    /// The value, in memory of its own too: as a stored property of a zero-sized type (a lock
    /// guarding nothing but a file descriptor's writes) it shared its address with `mutex`, and
    /// ThreadSanitizer took the unlocked read of `mutex` for a race with the locked access.
    @usableFromInline let value: UnsafeMutablePointer<Value>

    /// Guards `value`.
    public init(_ value: Value) {
        self.value = .allocate(capacity: 1)
        self.value.initialize(to: value)
        mutex = makeAdaptiveMutex()
    }

    deinit {
        destroyAdaptiveMutex(mutex)
        value.deinitialize(count: 1)
        value.deallocate()
    }

    /// Runs `body` with exclusive access to the value. Not reentrant.
    ///
    /// Inlinable, so every caller gets it specialised for its value and closure: the generic
    /// version, called across modules, cost about 2,000 instructions per typed request-reply call
    /// (callgrind) in metadata and closure-context handling around a lock and an unlock.
    @inlinable @inline(__always)
    public func withLock<Result, E: Error>(_ body: (inout Value) throws(E) -> Result) throws(E) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value.pointee)
    }
}

/// Happens-before edges for ThreadSanitizer where it cannot see the synchronization itself
/// (futex-based locks, semaphores). No-ops unless the process runs under ThreadSanitizer.
public enum ThreadSanitizer {
    private typealias Annotation = @convention(c) (UnsafeRawPointer?) -> Void
    private static let acquireFunction: Annotation? = lookup("__tsan_acquire")
    private static let releaseFunction: Annotation? = lookup("__tsan_release")

    private static func lookup(_ name: String) -> Annotation? {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), name) else { return nil }
        return unsafeBitCast(symbol, to: Annotation.self)
    }

    /// Whether this process runs under ThreadSanitizer.
    public static var isActive: Bool { acquireFunction != nil }

    /// Everything released at `address` happens before what follows.
    @inline(__always)
    public static func acquire(_ address: UnsafeRawPointer) { acquireFunction?(address) }

    /// What came before happens before a later ``acquire(_:)`` at `address`.
    @inline(__always)
    public static func release(_ address: UnsafeRawPointer) { releaseFunction?(address) }

    /// ``acquire(_:)`` at `object`'s address: after waiting on a semaphore it signals.
    @inline(__always)
    public static func acquire(_ object: AnyObject) { acquire(UnsafeRawPointer(Unmanaged.passUnretained(object).toOpaque())) }

    /// ``release(_:)`` at `object`'s address: before signalling a semaphore it holds.
    @inline(__always)
    public static func release(_ object: AnyObject) { release(UnsafeRawPointer(Unmanaged.passUnretained(object).toOpaque())) }
}

/// A new adaptive pthread mutex (a thread that finds it taken spins briefly before sleeping in
/// the kernel), for ``Guarded`` and the transport kit's condition lock; free it with
/// ``destroyAdaptiveMutex(_:)``.
package func makeAdaptiveMutex() -> UnsafeMutablePointer<pthread_mutex_t> {
    let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    mutex.initialize(to: pthread_mutex_t())
    var attributes = pthread_mutexattr_t()
    pthread_mutexattr_init(&attributes)
    #if canImport(Glibc)
        pthread_mutexattr_settype(&attributes, Int32(PTHREAD_MUTEX_ADAPTIVE_NP))
    #endif
    let status = pthread_mutex_init(mutex, &attributes)
    pthread_mutexattr_destroy(&attributes)
    precondition(status == 0, "pthread_mutex_init failed: \(status)")
    return mutex
}

/// Destroys and frees a mutex from ``makeAdaptiveMutex()``.
package func destroyAdaptiveMutex(_ mutex: UnsafeMutablePointer<pthread_mutex_t>) {
    pthread_mutex_destroy(mutex)
    mutex.deinitialize(count: 1)
    mutex.deallocate()
}
