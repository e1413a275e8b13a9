import Foundation

/// Runs a function when its deadline passes, for many deadlines at once: one thread for the
/// process that sleeps while none is armed and looks every 10 ms while any is (so deadlines are
/// precise to about that), and arming and disarming one costs a dictionary insert and removal
/// under a lock — nothing like a timer per call. Request-reply waits and direct calls use it.
final class DeadlineSweeper: @unchecked Sendable {
    // @unchecked: every field is guarded by `lock`.
    static let shared = DeadlineSweeper()

    private struct Entry {
        let deadline: ContinuousClock.Instant
        let fire: @Sendable () -> Void
    }
    private let lock = NSCondition()
    private var entries: [UInt64: Entry] = [:]
    private var next: UInt64 = 0

    private init() {
        let thread = Thread { [unowned self] in while true { sweepOnce() } }
        thread.name = "switchyard-direct-deadlines"
        thread.start()
    }

    /// Calls `fire` once `deadline` has passed, unless ``disarm(_:)`` comes first.
    func arm(at deadline: ContinuousClock.Instant, fire: @escaping @Sendable () -> Void) -> UInt64 {
        lock.lock()
        defer { lock.unlock() }
        next += 1
        if entries.isEmpty { lock.signal() }
        entries[next] = Entry(deadline: deadline, fire: fire)
        return next
    }

    /// Forgets a deadline (its call finished first).
    func disarm(_ id: UInt64) {
        lock.lock()
        entries.removeValue(forKey: id)
        lock.unlock()
    }

    private func sweepOnce() {
        lock.lock()
        while entries.isEmpty { lock.wait() }
        let now = ContinuousClock.now
        var due: [Entry] = []
        for (id, entry) in entries where entry.deadline <= now {
            due.append(entry)
            entries.removeValue(forKey: id)
        }
        lock.unlock()
        for entry in due { entry.fire() }
        Thread.sleep(forTimeInterval: 0.01)
    }
}
