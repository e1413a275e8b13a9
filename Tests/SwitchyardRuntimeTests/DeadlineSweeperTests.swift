import Foundation
import SwitchyardABI
import Synchronization
import Testing

@testable import SwitchyardRuntime

/// The process's deadline thread: fires each deadline once, never early, and sleeps between
/// deadlines instead of looking at a fixed rate.
@Suite("Deadline sweeper", .serialized)
struct DeadlineSweeperTests {
    /// A sweeper of the tests' own (its thread lives as long as the process), so that other
    /// tests' calls arming deadlines on the shared one do not count here.
    static let sweeper = DeadlineSweeper()

    /// Records when each deadline fired. (`Guarded`, not `Synchronization.Mutex`: ThreadSanitizer
    /// cannot see the futex that Mutex is on Linux, and reported the locked accesses as a race.)
    final class Firings: Sendable {
        let times = Guarded<[String: ContinuousClock.Instant]>([:])
        func record(_ name: String) { times.withLock { $0[name] = .now } }
        func time(_ name: String) -> ContinuousClock.Instant? { times.withLock { $0[name] } }
        /// Waits (off the pool's threads: the task sleeps) for `name` to fire. It looks once more
        /// when the limit has passed: on a loaded machine this task may resume only after the
        /// limit, long after the sweeper's own thread recorded the firing (a CI run under
        /// AddressSanitizer failed that way, its pool busy for 30 s).
        func waitFor(_ name: String, upTo limit: Duration = .seconds(10)) async -> ContinuousClock.Instant? {
            let until = ContinuousClock.now + limit
            while ContinuousClock.now < until {
                if let time = time(name) { return time }
                try? await Task.sleep(for: .milliseconds(1))
            }
            return time(name)
        }
    }

    @Test("a deadline armed after a later one fires on time, never early; a disarmed one never fires")
    func earlierDeadlineWakesTheThread() async throws {
        let sweeper = Self.sweeper
        let firings = Firings()
        let late = sweeper.arm(at: .now + .seconds(60)) { firings.record("late") }
        try await Task.sleep(for: .milliseconds(50))  // the thread has looked and sleeps
        let start = ContinuousClock.now
        let cancelled = sweeper.arm(at: start + .milliseconds(100)) { firings.record("cancelled") }
        let soonDeadline = start + .milliseconds(150)
        _ = sweeper.arm(at: soonDeadline) { firings.record("soon") }
        sweeper.disarm(cancelled)

        let fired = await firings.waitFor("soon")
        #expect(fired != nil, "a deadline armed after a later one must still fire")
        if let fired {
            #expect(fired >= soonDeadline, "fired \(soonDeadline - fired) early")
            // Not woken by the arm, the thread would sleep on until the first deadline, a minute
            // away (and `waitFor` gives up after 10 s). Generous: a sanitizer build on a loaded
            // machine may run the thread late.
            #expect(fired - soonDeadline < .seconds(5), "fired \(fired - soonDeadline) late")
        }
        try await Task.sleep(for: .milliseconds(100))
        #expect(firings.time("cancelled") == nil, "a disarmed deadline fired")
        #expect(firings.time("late") == nil)
        sweeper.disarm(late)
    }

    @Test("with only a far deadline armed, the thread sleeps instead of looking every 10 ms")
    func sleepsUntilTheEarliest() async throws {
        let sweeper = Self.sweeper
        let far = sweeper.arm(at: .now + .seconds(60)) {}
        try await Task.sleep(for: .milliseconds(50))  // the arm's own look
        let before = sweeper.lookCount
        try await Task.sleep(for: .milliseconds(500))
        let looked = sweeper.lookCount - before
        sweeper.disarm(far)
        // Looking every 10 ms would be about 50; it sleeps until the deadline.
        #expect(looked <= 2, "looked \(looked) times in 0.5 s with one deadline a minute away")
    }
}
