import Foundation
import SwitchyardABI
import SwitchyardTransportKit
import SwitchyardWire

/// Request-reply calls waiting for their replies, by correlation id, with their deadlines (kept
/// by the process's ``DeadlineSweeper``: nothing per call but two dictionary entries).
final class PendingCalls: Sendable {
    private struct Waiter {
        let continuation: UnsafeContinuation<Reply, any Error>
        let timer: UInt64
    }
    private struct State {
        /// By correlation id (a UUID: hashed fast).
        var waiters: [FastStringKey: Waiter] = [:]
        /// Set by ``failAll(_:)``: what a call that comes to wait afterwards fails with.
        var stopped: (@Sendable (String) -> any Error)?
    }
    private let state = Guarded(State())

    init() {}

    /// The number of calls waiting.
    var count: Int { state.withLock { $0.waiters.count } }

    /// Registers `id`, runs `send` (which publishes the call, or hands the publishing to another
    /// thread that reports a failure with ``fail(_:with:)``), and waits for ``complete(_:with:)``,
    /// the deadline, cancellation, ``fail(_:with:)`` or ``failAll(_:)``.
    nonisolated(nonsending) func wait(
        id: String, deadline: ContinuousClock.Instant, timeout: @escaping @Sendable () -> any Error,
        send: () throws -> Void
    ) async throws -> Reply {
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Reply, any Error>) in
                // A deadline already past (the first call's reply subscription can take a
                // while) ends the call here, unsent: a host would run it for nobody.
                guard ContinuousClock.now < deadline else {
                    continuation.resume(throwing: timeout())
                    return
                }
                let stopped = state.withLock { state -> (@Sendable (String) -> any Error)? in
                    if let stopped = state.stopped { return stopped }
                    // Armed under the lock that registers the waiter, so that the deadline finds
                    // it however soon it fires (armed before, one that fired first found no
                    // waiter and left the call waiting for good). The sweeper fires outside its
                    // own lock, and nothing takes this lock inside that one.
                    let timer = DeadlineSweeper.shared.arm(at: deadline) { [weak self] in
                        self?.take(id)?.continuation.resume(throwing: timeout())
                    }
                    state.waiters[FastStringKey(id)] = Waiter(continuation: continuation, timer: timer)
                    return nil
                }
                if let stopped {
                    // A call that raced the end of the drain fails as the calls it drained did
                    // (shutting down), not as a time-out it never waited out.
                    continuation.resume(throwing: stopped(id))
                    return
                }
                // A task cancelled before it came here ran its cancellation handler already,
                // when there was no waiter to take.
                if Task.isCancelled {
                    take(id)?.continuation.resume(throwing: CancellationError())
                    return
                }
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

    /// Fails the call `id` with `error` (its publishing failed on another thread), if it still waits.
    func fail(_ id: String, with error: any Error) {
        take(id)?.continuation.resume(throwing: error)
    }

    /// Fails every waiting call with `error`; later calls fail at once.
    func failAll(_ error: @escaping @Sendable (String) -> any Error) {
        let all = state.withLock { state in
            state.stopped = error
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        for (id, waiter) in all {
            DeadlineSweeper.shared.disarm(waiter.timer)
            waiter.continuation.resume(throwing: error(id.string))
        }
        idle.wakeAll()
    }

    /// Removes the call `id` (and its deadline), if it still waits.
    private func take(_ id: String) -> Waiter? {
        let (waiter, empty) = state.withLock { state in (state.waiters.removeValue(forKey: FastStringKey(id)), state.waiters.isEmpty) }
        if let waiter { DeadlineSweeper.shared.disarm(waiter.timer) }
        if empty { idle.wakeAll() }
        return waiter
    }

    /// Who waits for no call to be waiting (a drain).
    private let idle = IdleWaiters()

    /// Returns once no call is waiting for its reply, or at `until`.
    func waitUntilEmpty(until: ContinuousClock.Instant) async {
        await idle.wait(until: until) { [weak self] in self.map { $0.count == 0 } ?? true }
    }
}
