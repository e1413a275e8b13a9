import Foundation
import SwitchyardTransportKit

/// A reply as it came off the wire.
struct Reply: Sendable {
    /// `return` or `throw`.
    let outcome: String
    /// The encoded value, or an encoded ``ErrorPayload``.
    let body: [UInt8]
    /// How `body` is encoded.
    let encoding: ArgumentEncoding
}

/// Request-reply calls waiting for their replies, by correlation id, with their deadlines.
///
/// One sweeper thread fails calls whose deadline has passed (checked every 10 ms while any call
/// waits, so timeouts are precise to about that), which costs nothing per call, unlike a timer
/// per call.
final class PendingCalls: @unchecked Sendable {
    // @unchecked: every field is guarded by `lock`.
    private struct Waiter {
        let continuation: UnsafeContinuation<Reply, any Error>
        let deadline: ContinuousClock.Instant
        let timeout: @Sendable () -> any Error
    }
    private let lock = NSCondition()
    private var waiters: [String: Waiter] = [:]
    private var stopped = false
    private var sweeper: Thread?

    init() {
        let thread = Thread { [weak self] in
            while let self, self.sweepOnce() {}
        }
        thread.name = "switchyard-deadlines"
        sweeper = thread
        thread.start()
    }

    /// The number of calls waiting.
    var count: Int { lock.withLock { waiters.count } }

    /// Registers `id`, runs `send` (which publishes the call), and waits for ``complete(_:with:)``,
    /// the deadline, cancellation or ``failAll(_:)``.
    func wait(id: String, deadline: ContinuousClock.Instant, timeout: @escaping @Sendable () -> any Error,
              send: () throws -> Void) async throws -> Reply {
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Reply, any Error>) in
                lock.lock()
                if stopped {
                    lock.unlock()
                    continuation.resume(throwing: timeout())
                    return
                }
                let wasEmpty = waiters.isEmpty
                waiters[id] = Waiter(continuation: continuation, deadline: deadline, timeout: timeout)
                if wasEmpty { lock.signal() }
                lock.unlock()
                do {
                    try send()
                } catch {
                    take(id)?.continuation.resume(throwing: error)
                }
            }
        } onCancel: {
            take(id)?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Resumes the call `id` with its reply; a reply for a call that is no longer waiting (timed
    /// out, cancelled) is dropped and false returned.
    @discardableResult
    func complete(_ id: String, with reply: Reply) -> Bool {
        guard let waiter = take(id) else { return false }
        waiter.continuation.resume(returning: reply)
        return true
    }

    /// Fails every waiting call with `error` and stops the sweeper.
    func failAll(_ error: @escaping @Sendable (String) -> any Error) {
        lock.lock()
        stopped = true
        let all = waiters
        waiters.removeAll()
        lock.signal()
        lock.unlock()
        for (id, waiter) in all { waiter.continuation.resume(throwing: error(id)) }
    }

    private func take(_ id: String) -> Waiter? {
        lock.lock()
        defer { lock.unlock() }
        return waiters.removeValue(forKey: id)
    }

    /// Waits while nothing is pending, then fails the calls past their deadline. False once stopped.
    private func sweepOnce() -> Bool {
        lock.lock()
        while waiters.isEmpty && !stopped { lock.wait() }
        if stopped {
            lock.unlock()
            return false
        }
        let now = ContinuousClock.now
        var expired: [Waiter] = []
        for (id, waiter) in waiters where waiter.deadline <= now {
            expired.append(waiter)
            waiters.removeValue(forKey: id)
        }
        lock.unlock()
        for waiter in expired { waiter.continuation.resume(throwing: waiter.timeout()) }
        Thread.sleep(forTimeInterval: 0.01)
        return true
    }
}
