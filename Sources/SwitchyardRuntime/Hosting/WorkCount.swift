import SwitchyardABI
import Synchronization

/// Who waits for something to become idle (no work in flight, no call waiting), each until a
/// deadline kept by the process's ``DeadlineSweeper``. The owner calls ``wakeAll()`` after it
/// became idle; a waiter checks again after registering, so no wake-up is lost. Replaces polling.
final class IdleWaiters: Sendable {
    private struct State {
        var next: UInt64 = 0
        var waiting: [UInt64: UnsafeContinuation<Void, Never>] = [:]
    }
    private let state = Guarded(State())
    /// How many wait: ``wakeAll()`` on a hot path costs one atomic load while nobody does.
    private let waiters = Atomic<Int>(0)

    /// Returns once `isIdle()` holds (checked now and at every ``wakeAll()``), or at `until`.
    func wait(until: ContinuousClock.Instant, isIdle: @escaping @Sendable () -> Bool) async {
        guard !isIdle() else { return }
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let id = state.withLock { state -> UInt64 in
                state.next += 1
                state.waiting[state.next] = continuation
                return state.next
            }
            waiters.add(1, ordering: .sequentiallyConsistent)  // before the check below: no lost wake-up
            // Whoever takes the continuation out of the table resumes it, exactly once: the
            // deadline, a wake-up, or the check below.
            let timer = DeadlineSweeper.shared.arm(at: until) { [weak self] in self?.take(id)?.resume() }
            if isIdle(), let mine = take(id) {
                DeadlineSweeper.shared.disarm(timer)
                mine.resume()
            }
        }
    }

    /// Resumes every waiter; each checks its condition again in its caller's loop.
    func wakeAll() {
        guard waiters.load(ordering: .sequentiallyConsistent) > 0 else { return }
        let all = state.withLock { state -> [UnsafeContinuation<Void, Never>] in
            defer { state.waiting.removeAll() }
            return Array(state.waiting.values)
        }
        waiters.subtract(all.count, ordering: .sequentiallyConsistent)
        for continuation in all { continuation.resume() }
    }

    private func take(_ id: UInt64) -> UnsafeContinuation<Void, Never>? {
        let taken = state.withLock { $0.waiting.removeValue(forKey: id) }
        if taken != nil { waiters.subtract(1, ordering: .sequentiallyConsistent) }
        return taken
    }
}

/// A count of work in progress that a drain can wait on (``waitUntilZero(until:)``).
final class WorkCount: Sendable {
    private let count = Atomic<Int>(0)
    private let idle = IdleWaiters()

    /// The work in progress now.
    var value: Int { count.load(ordering: .acquiring) }

    /// One more piece of work started.
    func enter() { count.add(1, ordering: .acquiringAndReleasing) }

    /// One piece of work ended; at zero, whoever waits is woken.
    func leave() {
        if count.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { idle.wakeAll() }
    }

    /// Returns once the count is zero, or at `until`, whichever comes first.
    func waitUntilZero(until: ContinuousClock.Instant) async {
        await idle.wait(until: until) { [weak self] in (self?.value ?? 0) == 0 }
    }
}
