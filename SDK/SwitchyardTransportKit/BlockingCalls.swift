import DequeModule
import Foundation

/// Runs work that may block — a publish waiting for room in a full transport, an inner
/// transport's blocking publish — off a caller that must not block (ABI 1.7 `publish_async` is
/// called from a Swift task's thread), on at most `maxThreads` threads of its own: started as
/// work comes, ended once none is left. Work starts in the order it came.
///
/// Bounded, so that publishes piling up behind a full transport queue here rather than each
/// holding a thread of the process (a thread apiece ran to thousands with thousands of tasks
/// waiting). Work that waits for a deadline should take that deadline from when it was queued:
/// it may start later.
final class BlockingCalls: @unchecked Sendable {
    // @unchecked: the queue and the counts are behind `condition`.

    private let condition = AdaptiveCondition()
    private var queue = Deque<@Sendable () -> Void>()
    private var threads = 0
    private var idleThreads = 0
    private var running = 0
    /// Callers in ``waitUntilIdle()``: only then does the last piece of work wake everyone.
    private var idleWaiters = 0
    private let maxThreads: Int
    private let name: String

    /// `name` names the threads (`name-1`, `name-2`, …).
    init(name: String, maxThreads: Int) {
        precondition(maxThreads >= 1, "BlockingCalls needs at least one thread")
        self.name = name
        self.maxThreads = maxThreads
    }

    /// Queues `work` and returns at once; it runs on one of the threads.
    func run(_ work: @escaping @Sendable () -> Void) {
        condition.lock()
        queue.append(work)
        var start = false
        if queue.count <= idleThreads {
            // An idle thread takes it (one signalled but not yet awake counts). A caller in
            // waitUntilIdle waits on the same condition and could take a lone signal instead.
            if idleWaiters > 0 { condition.broadcast() } else { condition.signal() }
        } else if threads < maxThreads {
            threads += 1
            start = true
        }
        let number = threads
        condition.unlock()
        if start {
            let thread = Thread(named: "\(name)-\(number)") { [self] in serve() }
            thread.start()
        }
    }

    /// Returns once no work is queued or running (work queued meanwhile is waited for too).
    func waitUntilIdle() {
        condition.lock()
        idleWaiters += 1
        while !queue.isEmpty || running > 0 { condition.wait() }
        idleWaiters -= 1
        condition.unlock()
    }

    /// How long an idle thread waits for more work before it ends.
    private static let lingerNanos: Int64 = 1_000_000_000

    private func serve() {
        condition.lock()
        while true {
            if let work = queue.popFirst() {
                running += 1
                condition.unlock()
                work()
                condition.lock()
                running -= 1
                // Idle threads wake too, find nothing and wait again: only while someone waits.
                if running == 0 && queue.isEmpty && idleWaiters > 0 { condition.broadcast() }
                continue
            }
            idleThreads += 1
            let timedOut = !condition.wait(untilMonotonicNanos: AdaptiveCondition.monotonicDeadline(in: Self.lingerNanos))
            idleThreads -= 1
            if timedOut && queue.isEmpty { break }
        }
        threads -= 1
        condition.unlock()
    }
}
