import Foundation

/// Runs a function when its deadline passes, for many deadlines at once: one thread for the
/// process, and arming and disarming a deadline costs a dictionary insert and removal under a
/// lock — nothing like a timer per call. Request-reply waits and direct calls use it.
///
/// The thread sleeps until the earliest armed deadline, and no less than ``granularity`` at a
/// time: deadlines are precise to about that. Most deadlines are disarmed long before they pass
/// (the call answered), so a process with calls always in flight wakes it about once per call
/// timeout, not every 10 ms as it did; arming a deadline earlier than the one it sleeps for wakes
/// it. It sleeps on the monotonic clock (a semaphore's timed wait), so setting the wall clock back
/// delays nothing.
final class DeadlineSweeper: @unchecked Sendable {
    // @unchecked: every field but `wakeup` is guarded by `lock`.
    static let shared = DeadlineSweeper()

    /// The shortest sleep between two looks at the deadlines: bounds the looks per second (each
    /// reads every armed deadline) when many expire close together.
    static let granularity: Duration = .milliseconds(10)

    private struct Entry {
        let deadline: ContinuousClock.Instant
        let fire: @Sendable () -> Void
    }
    private let lock = NSLock()
    /// Signalled to make the thread look again now (an extra signal costs one extra look).
    private let wakeup = DispatchSemaphore(value: 0)
    private var entries: [UInt64: Entry] = [:]
    private var next: UInt64 = 0
    /// When the thread will look next; nil while it sleeps with nothing armed.
    private var nextLook: ContinuousClock.Instant?
    private var looks = 0
    /// How many times the thread has looked at the deadlines (for tests).
    var lookCount: Int { lock.withLock { looks } }

    /// A sweeper with a thread of its own, which lives as long as the process: keep the instance
    /// for good (``shared``, or a test's own).
    init() {
        let thread = Thread(named: "switchyard-deadlines") { [unowned self] in while true { sweepOnce() } }
        thread.start()
    }

    /// Calls `fire` once `deadline` has passed, unless ``disarm(_:)`` comes first.
    func arm(at deadline: ContinuousClock.Instant, fire: @escaping @Sendable () -> Void) -> UInt64 {
        lock.lock()
        next += 1
        let id = next
        entries[id] = Entry(deadline: deadline, fire: fire)
        // The thread looks by then anyway (deadlines may fire up to `granularity` late).
        let wake = nextLook.map { $0 > deadline + Self.granularity } ?? true
        if wake { nextLook = deadline }  // it looks again now, and then sleeps until the earliest
        lock.unlock()
        if wake { wakeup.signal() }
        return id
    }

    /// Forgets a deadline (its call finished first).
    func disarm(_ id: UInt64) {
        lock.lock()
        entries.removeValue(forKey: id)
        lock.unlock()
    }

    /// Fires the deadlines that have passed (then looks again: more may have been armed
    /// meanwhile), or sleeps until the earliest left (at least ``granularity``), until an earlier
    /// one is armed, or, with nothing armed, until something is.
    private func sweepOnce() {
        lock.lock()
        looks += 1
        let now = ContinuousClock.now
        var due: [Entry] = []
        var earliest: ContinuousClock.Instant?
        for (id, entry) in entries {
            if entry.deadline <= now {
                due.append(entry)
                entries.removeValue(forKey: id)
            } else if earliest.map({ entry.deadline < $0 }) ?? true {
                earliest = entry.deadline
            }
        }
        if !due.isEmpty {
            nextLook = now  // arms meanwhile need not wake the thread: it looks again at once
            lock.unlock()
            for entry in due { entry.fire() }
            return
        }
        guard let earliest else {
            nextLook = nil
            lock.unlock()
            wakeup.wait()
            return
        }
        let look = max(earliest, now + Self.granularity)
        nextLook = look
        lock.unlock()
        _ = wakeup.wait(timeout: .now() + .nanoseconds(Int(clamping: (look - now).nanoseconds)))
    }
}
