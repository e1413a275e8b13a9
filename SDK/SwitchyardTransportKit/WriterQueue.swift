import Foundation
import SwitchyardABI

#if canImport(Glibc)
    import Glibc
#endif

/// The queue in which the writers of one SQLite store — every thread of every process that has it
/// open — wait for the write lock: a robust, process-shared mutex in a page of the store's beacon
/// file (see ``CommitBeacon``).
///
/// SQLite's own write lock does not queue: a writer that finds it taken sleeps in its busy
/// handler and tries again (10 µs, then 20, 40 … 640 µs), and two processes taking turns slept
/// through much of each other's commits. Waiting on this mutex instead, the next writer wakes as
/// the last one finishes. Robust: a process that dies holding it hands it on (`EOWNERDEAD`). And
/// bounded: a holder that does not let go within the timeout — a process stopped in the middle of
/// a write (`SIGSTOP`, a debugger) — is not waited for any longer: the writer goes on without its
/// turn, and SQLite's lock and busy handler decide as they did before (an error after about 10 s
/// if the stopped process still holds SQLite's lock).
final class WriterQueue: @unchecked Sendable {
    // @unchecked: the mutex is made for sharing between threads and processes.

    /// Where the queue's page lies in the beacon file: past the counters and the slots' locks.
    static let pageOffset: off_t = 12_288
    private static let pageSize = 4_096
    /// Marks an initialised page (and the layout's version).
    private static let magic: UInt64 = 0x5357_5951_5545_0001
    /// The byte whose open-file-description lock serialises initialising the page.
    private static let initLockOffset: off_t = 8_193

    private let page: UnsafeMutableRawPointer
    private var mutex: UnsafeMutablePointer<pthread_mutex_t> {
        page.advanced(by: 64).assumingMemoryBound(to: pthread_mutex_t.self)
    }
    /// How long a writer waits for its turn before it goes on without.
    let timeoutNanos: Int64

    /// Maps the queue's page of the beacon file `file`, initialising it if no process has; nil when
    /// the file cannot be grown or mapped (then writers do not queue).
    init?(file: Int32, timeoutNanos: Int64) {
        self.timeoutNanos = timeoutNanos
        guard ByteLock.set(F_WRLCK, file, at: Self.initLockOffset, wait: true) else { return nil }
        defer { _ = ByteLock.set(F_UNLCK, file, at: Self.initLockOffset) }
        var info = stat()
        let needed = Self.pageOffset + off_t(Self.pageSize)
        guard fstat(file, &info) == 0, info.st_size >= needed || ftruncate(file, needed) == 0 else { return nil }
        guard let mapped = mmap(nil, Self.pageSize, PROT_READ | PROT_WRITE, MAP_SHARED, file, Self.pageOffset), mapped != MAP_FAILED else {
            return nil
        }
        page = mapped
        let marker = page.assumingMemoryBound(to: UInt64.self)
        if marker.pointee != Self.magic {
            var attributes = pthread_mutexattr_t()
            pthread_mutexattr_init(&attributes)
            pthread_mutexattr_setpshared(&attributes, Int32(PTHREAD_PROCESS_SHARED))
            pthread_mutexattr_setrobust(&attributes, Int32(PTHREAD_MUTEX_ROBUST))
            pthread_mutex_init(mutex, &attributes)
            pthread_mutexattr_destroy(&attributes)
            marker.pointee = Self.magic
        }
    }

    deinit {
        munmap(page, Self.pageSize)
    }

    /// Waits for this thread's turn to write; false when it did not come within the timeout (or
    /// the queue is broken): then write without it, and do not call ``leave()``.
    func enter() -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let deadline = Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec) + timeoutNanos
        var until = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        switch pthread_mutex_timedlock(mutex, &until) {
        case 0: return true
        case EOWNERDEAD:
            // Its holder died mid-write; SQLite rolls that write back on its own.
            pthread_mutex_consistent(mutex)
            return true
        default: return false  // ETIMEDOUT: a holder that does not let go; ENOTRECOVERABLE
        }
    }

    /// Ends this thread's turn (after ``enter()`` returned true).
    func leave() { pthread_mutex_unlock(mutex) }
}
