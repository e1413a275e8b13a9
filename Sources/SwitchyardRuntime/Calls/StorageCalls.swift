import DequeModule
import Foundation
import SwitchyardABI
import SwitchyardHost

/// Runs calls into transports that wait for storage — a durable transport's `publish` and
/// `settle` return only after their commit (an fsync) — on threads of their own, so that they
/// never hold the cooperative pool's threads (as many as the machine has cores: two here, so two
/// callers waiting on a commit would stop every task in the process). Many commits in flight at
/// once is also what lets a durable store's group commit share one fsync among them.
///
/// In-memory transports are called inline: their calls return in microseconds, and a thread hop
/// would cost more than the call. ``blocksOnStorage(_:)`` tells the two apart.
final class StorageCalls: Sendable {
    /// The process-wide pool, started on first use.
    static let shared = StorageCalls(threads: 32)

    private let jobs = Guarded<Deque<@Sendable () -> Void>>(Deque())
    private let ready = DispatchSemaphore(value: 0)

    private init(threads: Int) {
        for index in 0..<threads {
            let thread = Thread { [self] in
                while true {
                    ready.wait()
                    guard let job = jobs.withLock({ $0.popFirst() }) else { continue }
                    job()
                }
            }
            thread.name = "switchyard-storage-\(index)"
            thread.start()
        }
    }

    /// Whether calls into `transport` wait for storage (its chain is durable).
    static func blocksOnStorage(_ transport: Transport) -> Bool {
        var current: Transport? = transport
        while let link = current {
            if link.plugin.capabilities.contains(.durable) { return true }
            current = link.inner
        }
        return false
    }

    /// Runs `job` on a pool thread and returns at once.
    func submit(_ job: @escaping @Sendable () -> Void) {
        jobs.withLock { $0.append(job) }
        ready.signal()
    }

    /// Runs `work` on a pool thread and waits for its result without holding a task thread.
    func run<R: Sendable>(_ work: @escaping @Sendable () throws -> R) async throws -> R {
        try await withUnsafeThrowingContinuation { continuation in
            submit { continuation.resume(with: Result { try work() }) }
        }
    }
}
