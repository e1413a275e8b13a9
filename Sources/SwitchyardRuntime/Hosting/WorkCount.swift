import SwitchyardABI
import Synchronization

/// Who waits for something to become idle (no work in flight, no call waiting), each until a
/// deadline kept by the process's ``DeadlineSweeper``. The owner calls ``wakeAll()`` after it
/// became idle; a waiter checks again after registering, so no wake-up is lost. Replaces polling.
final class IdleWaiters: Sendable {
    private struct Waiter {
        let continuation: UnsafeContinuation<Void, Never>
        /// Its deadline in the sweeper, once armed.
        var timer: UInt64?
    }
    private struct State {
        var next: UInt64 = 0
        var waiting: [UInt64: Waiter] = [:]
    }
    private let state = Guarded(State())
    /// How many wait: ``wakeAll()`` on a hot path costs one atomic load while nobody does. Changed
    /// only together with `waiting`, under its lock, so it never counts a waiter already taken.
    private let waiters = Atomic<Int>(0)

    /// Returns once `isIdle()` holds (checked now and at every ``wakeAll()``), or at `until`.
    func wait(until: ContinuousClock.Instant, isIdle: @escaping @Sendable () -> Bool) async {
        guard !isIdle() else { return }
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let id = state.withLock { state -> UInt64 in
                state.next += 1
                state.waiting[state.next] = Waiter(continuation: continuation)
                waiters.add(1, ordering: .sequentiallyConsistent)  // before the check below: no lost wake-up
                return state.next
            }
            // Whoever takes the waiter out of the table resumes it, exactly once: the deadline, a
            // wake-up, or the check below.
            let timer = DeadlineSweeper.shared.arm(at: until) { [weak self] in self?.take(id)?.continuation.resume() }
            let armed = state.withLock { state -> Bool in
                guard state.waiting[id] != nil else { return false }
                state.waiting[id]!.timer = timer
                return true
            }
            if !armed { DeadlineSweeper.shared.disarm(timer) }  // already woken
            if isIdle(), let mine = take(id) { mine.continuation.resume() }
        }
    }

    /// Resumes every waiter; each checks its condition again in its caller's loop.
    func wakeAll() {
        guard waiters.load(ordering: .sequentiallyConsistent) > 0 else { return }
        let all = state.withLock { state -> [Waiter] in
            defer { state.waiting.removeAll() }
            waiters.subtract(state.waiting.count, ordering: .sequentiallyConsistent)
            return Array(state.waiting.values)
        }
        for waiter in all {
            if let timer = waiter.timer { DeadlineSweeper.shared.disarm(timer) }
            waiter.continuation.resume()
        }
    }

    /// Takes the waiter `id` out of the table (disarming its deadline), if it still waits.
    private func take(_ id: UInt64) -> Waiter? {
        let taken = state.withLock { state -> Waiter? in
            guard let waiter = state.waiting.removeValue(forKey: id) else { return nil }
            waiters.subtract(1, ordering: .sequentiallyConsistent)
            return waiter
        }
        if let timer = taken?.timer { DeadlineSweeper.shared.disarm(timer) }
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
