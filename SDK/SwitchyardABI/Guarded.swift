import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A value behind a `Synchronization.Mutex` that ThreadSanitizer can see.
///
/// On Linux `Mutex` is a bare futex, which ThreadSanitizer knows nothing about: every access made
/// under the lock looks like a race to it, which buries real races. `Guarded` takes the same lock
/// and, in a process running under ThreadSanitizer, tells it about the acquire and release
/// (`__tsan_acquire` / `__tsan_release`, looked up once; without TSan they are absent and the
/// cost is a nil check). Use it instead of `Mutex` for state shared between threads.
public final class Guarded<Value>: @unchecked Sendable {
    // @unchecked: `value` is only reached through `mutex.withLock`.
    private let mutex: Mutex<Value>

    /// Guards `value`.
    public init(_ value: sending Value) {
        mutex = Mutex(value)
    }

    /// Runs `body` with exclusive access to the value.
    public func withLock<Result, E: Error>(_ body: (inout sending Value) throws(E) -> sending Result) throws(E) -> sending Result {
        let address = UnsafeRawPointer(Unmanaged.passUnretained(self).toOpaque())
        return try mutex.withLock { (value: inout sending Value) throws(E) -> sending Result in
            ThreadSanitizer.acquire(address)
            defer { ThreadSanitizer.release(address) }
            return try body(&value)
        }
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
