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

/// A count of work in progress that a drain can wait on (``waitUntilZero(until:)``), and close
/// to new work once it is idle (``closeIfIdle()``), in one atomic step: a drain that looked at
/// the count and then stopped taking work would miss what was taken in between.
final class WorkCount: Sendable {
    /// The count, and ``closedBit`` once closed.
    private let state = Atomic<Int>(0)
    private let idle = IdleWaiters()
    private static let closedBit = 1 << 62

    /// The work in progress now.
    var value: Int { state.load(ordering: .acquiring) & ~Self.closedBit }

    /// One more piece of work started, closed or not (the rest of work already counted).
    func enter() { state.add(1, ordering: .acquiringAndReleasing) }

    /// One more piece of work started, unless the count is closed: then false, nothing counted.
    func enterUnlessClosed() -> Bool {
        var current = state.load(ordering: .relaxed)
        while current & Self.closedBit == 0 {
            let (exchanged, original) = state.compareExchange(
                expected: current, desired: current + 1, ordering: .acquiringAndReleasing)
            if exchanged { return true }
            current = original
        }
        return false
    }

    /// One piece of work ended; at zero, whoever waits is woken.
    func leave() {
        let left = state.subtract(1, ordering: .acquiringAndReleasing).newValue & ~Self.closedBit
        assert(left < Self.closedBit >> 1, "WorkCount.leave() without enter()")  // else it would read as closed
        if left == 0 { idle.wakeAll() }
    }

    /// Closes the count if no work is in progress: true when closed (now or before).
    func closeIfIdle() -> Bool {
        let (exchanged, original) = state.compareExchange(expected: 0, desired: Self.closedBit, ordering: .acquiringAndReleasing)
        return exchanged || original & Self.closedBit != 0
    }

    /// Closes the count whatever is in progress (a drain past its deadline).
    func close() { state.bitwiseOr(Self.closedBit, ordering: .acquiringAndReleasing) }

    /// Returns once the count is zero, or at `until`, whichever comes first.
    func waitUntilZero(until: ContinuousClock.Instant) async {
        await idle.wait(until: until) { [weak self] in (self?.value ?? 0) == 0 }
    }
}
