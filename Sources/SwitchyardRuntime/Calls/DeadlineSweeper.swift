import Foundation

/// Runs a function when its deadline passes, for many deadlines at once: one thread for the
/// process, and arming and disarming a deadline costs a dictionary insert and removal under a
/// lock — nothing like a timer per call. Request-reply waits and direct calls use it.
///
/// The thread sleeps until the earliest armed deadline, and no less than ``granularity`` at a
/// time: deadlines are precise to about that. Most deadlines are disarmed long before they pass
/// (the call answered), so a process with calls always in flight wakes it about once a second
/// (``longestSleep``), not every 10 ms as it did; arming a deadline earlier than the one it sleeps
/// for wakes it.
final class DeadlineSweeper: @unchecked Sendable {
    // @unchecked: every field is guarded by `lock`.
    static let shared = DeadlineSweeper()

    /// The shortest sleep between two looks at the deadlines: bounds the looks per second (each
    /// reads every armed deadline) when many expire close together.
    static let granularity: Duration = .milliseconds(10)
    /// The longest sleep while something is armed. The condition's timed wait is on the wall
    /// clock: a clock set back would otherwise hold every deadline for as long.
    static let longestSleep: Duration = .seconds(1)

    private struct Entry {
        let deadline: ContinuousClock.Instant
        let fire: @Sendable () -> Void
    }
    private let lock = NSCondition()
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
        let thread = Thread { [unowned self] in while true { sweepOnce() } }
        thread.name = "switchyard-direct-deadlines"
        thread.start()
    }

    /// Calls `fire` once `deadline` has passed, unless ``disarm(_:)`` comes first.
    func arm(at deadline: ContinuousClock.Instant, fire: @escaping @Sendable () -> Void) -> UInt64 {
        lock.lock()
        defer { lock.unlock() }
        next += 1
        entries[next] = Entry(deadline: deadline, fire: fire)
        // The thread looks by then anyway (deadlines may fire up to `granularity` late).
        if let nextLook, nextLook <= deadline + Self.granularity { return next }
        nextLook = deadline  // it looks again now, and then sleeps until the earliest
        lock.signal()
        return next
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
        if let earliest {
            let look = min(max(earliest, now + Self.granularity), now + Self.longestSleep)
            nextLook = look
            let wait = look - now
            let seconds = Double(wait.components.seconds) + Double(wait.components.attoseconds) / 1e18
            _ = lock.wait(until: Date(timeIntervalSinceNow: seconds))
        } else {
            nextLook = nil
            lock.wait()
        }
        lock.unlock()
    }
}
