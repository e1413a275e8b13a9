import DequeModule
import Foundation
import SwitchyardABI
import SwitchyardHost
import Synchronization

/// Runs calls into transports that wait for storage — a durable transport's `publish` and
/// `settle` return only after their commit (an fsync) — on threads of their own, so that they
/// never hold the cooperative pool's threads (as many as the machine has cores: two here, so two
/// callers waiting on a commit would stop every task in the process). Many commits in flight at
/// once is also what lets a durable store's group commit share one fsync among them.
///
/// In-memory transports are called inline: their calls return in microseconds, and a thread hop
/// would cost more than the call. ``CallCost`` tells the two apart: it exists only for a chain
/// that keeps `durable` as configured, and measures whether its calls really wait.
final class StorageCalls: Sendable {
    /// The process-wide pool, started on first use.
    static let shared = StorageCalls(threads: 32)

    private let jobs = Guarded<Deque<@Sendable () -> Void>>(Deque())
    private let ready = DispatchSemaphore(value: 0)

    private init(threads: Int) {
        for index in 0..<threads {
            let thread = Thread(named: "switchyard-storage-\(index)") { [self] in
                while true {
                    ready.wait()
                    guard let job = jobs.withLock({ $0.popFirst() }) else { continue }
                    job()
                }
            }
            thread.start()
        }
    }

    /// Whether calls into `transport` may wait: its chain keeps `durable` as configured (ABI 1.8
    /// `instance_capabilities`: the bundled `queue` without `path` does not), or a link of it runs
    /// in a child process (a socket round trip, and a wait of up to `call_timeout` while the
    /// child restarts, even for a store in memory).
    static func blocksOnStorage(_ transport: Transport) -> Bool {
        transport.chainCapabilities.contains(.durable) || transport.chain.contains { $0.isProcessIsolated }
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

/// How long calls into one transport take, and so where they run: inline while they are fast
/// (an in-memory queue answers in microseconds, and a thread hop would cost more than the call),
/// on ``StorageCalls`` once they wait for storage (a SQLite commit, a JetStream acknowledgement) —
/// or, for a publish, through the plugin's `publish_async` where it offers it (ABI 1.7), which
/// waits for storage without any thread of this process.
/// An instance that is not durable as configured (ABI 1.8: the bundled `queue` without `path:`)
/// gets no meter and is always called inline. A durable one may still answer fast (a plugin of an
/// older ABI that cannot say it is in memory, a store that syncs rarely), so the runtime measures:
/// a moving average over the last calls (about eight), taken wherever they ran.
package final class CallCost: Sendable {
    private let averageNanos = Atomic<Int64>(0)
    /// Whether a lone call may wait for storage on its own task thread (``measureIfAlone(_:)``).
    private let mayWaitInline: Bool
    /// Calls through this meter waiting for storage now, wherever they wait (``measureIfAlone(_:)``).
    private let waiting = Atomic<Int>(0)
    /// Whether a task thread of the process waits for storage itself now: one at most.
    private static let threadWaiting = Atomic<Bool>(false)

    init(mayWaitInline: Bool = true) { self.mayWaitInline = mayWaitInline }
    /// Calls averaging this long or longer run on the pool.
    static let poolThresholdNanos: Int64 = 20_000

    /// The meter for `transport`, or nil when its chain is not durable as configured and runs in
    /// this process (its calls never wait and always run inline, unmeasured).
    package static func of(_ transport: Transport) -> CallCost? {
        guard StorageCalls.blocksOnStorage(transport) else { return nil }
        return meters.withLock { meters in
            if let meter = meters[ObjectIdentifier(transport)] { return meter }
            // A link in a child process may keep a call for up to its call_timeout while the
            // child restarts: never on a task thread (``measureIfAlone(_:)``).
            let meter = CallCost(mayWaitInline: !transport.chain.contains { $0.isProcessIsolated })
            meters[ObjectIdentifier(transport)] = meter
            return meter
        }
    }
    private static let meters = Guarded<[ObjectIdentifier: CallCost]>([:])

    /// Whether the calls have been slow enough to run on the pool. Callers test it before making
    /// the closure for ``run(_:)`` or ``perform(_:)``: while it is false they run the work
    /// themselves through ``measure(_:)``, which takes it without an allocation, and an in-memory
    /// transport's call (the usual case) costs no escaping closure and no extra async frame.
    var runsOnPool: Bool {
        averageNanos.load(ordering: .relaxed) >= Self.poolThresholdNanos && !Self.alwaysInline.load(ordering: .relaxed)
    }

    /// ``runsOnPool`` for a caller that waits for the work: under ThreadSanitizer always false. A
    /// task resumed from a pool thread is handed back through the concurrency runtime's
    /// uninstrumented executor, which TSan reports as a race on the task's own frame
    /// (google/sanitizers#1541; the conformance kit runs inline there for the same reason).
    /// ``perform(_:)``, which resumes nothing, still runs on the pool under TSan.
    var awaitsOnPool: Bool { runsOnPool && !ThreadSanitizer.isActive }

    /// Keeps every call inline, however slow. For `switchyard-hot-path` only: under callgrind
    /// everything runs about fifty times slower, and the meter would send an in-memory queue's
    /// calls to the pool, a hop a native run never takes, which the count would then include.
    package static func keepEveryCallInline() { alwaysInline.store(true, ordering: .relaxed) }
    private static let alwaysInline = Atomic<Bool>(false)

    /// Runs `work` on this thread, timing it.
    func measure<R>(_ work: () throws -> R) rethrows -> R {
        let start = monotonicNanoseconds()
        defer { record(since: start) }
        return try work()
    }

    /// Counts a call that started at `start` (monotonic) and is over now, wherever it ran: a
    /// publish through `publish_async` is over when the transport tells its outcome.
    func record(since start: Int64) {
        // One sample counts at most four times the threshold: a thread preempted for a
        // millisecond once must not send a fast transport's calls to the pool.
        let took = min(monotonicNanoseconds() - start, 4 * Self.poolThresholdNanos)
        let old = averageNanos.load(ordering: .relaxed)
        averageNanos.store(old + (took - old) / 8, ordering: .relaxed)  // racy by design: a hint
    }

    /// Runs `work` on this thread, timing it, when it is the only call through this meter waiting
    /// for storage and no other task thread waits for storage now; otherwise returns nil without
    /// running it, and the caller hands the work off as usual. For work its caller knows to be
    /// alone in the process: the only request-reply call waiting for its reply, the only call a
    /// host holds.
    ///
    /// Handing the work to another thread costs a wake-up there: on this machine's two virtual
    /// cores 30–50 µs, and a durable request-reply call hands off twice (its publish, its reply),
    /// most of what it spends beyond its two fsyncs. A lone call and its lone reply therefore
    /// commit on their own threads (the SQLite writer lets an idle caller run its own
    /// transaction): `durable-rr`'s one caller, p50 0.68 to 0.61 ms (medians of eight runs each,
    /// docs/benchmark-history.md, forty-sixth round). Under load there is always another call: those
    /// hand off as before, never holding the pool's threads, and their commits share one fsync
    /// (`durable-rr`'s 64 callers: the same throughput). One task thread of the process at most
    /// waits for storage this way, whatever the number of transports, and never for a chain with
    /// a link in a child process. A lone call whose publish waits long (for room, with a
    /// `full_wait`; for another process's lock) holds its thread that long, and a deadline that
    /// passes meanwhile is reported once the publish returns.
    func measureIfAlone<R>(_ work: () throws -> R) rethrows -> R? {
        guard mayWaitInline, waiting.compareExchange(expected: 0, desired: 1, ordering: .acquiring).exchanged else { return nil }
        defer { waiting.subtract(1, ordering: .releasing) }
        guard Self.threadWaiting.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else { return nil }
        defer { Self.threadWaiting.store(false, ordering: .releasing) }
        return try measure(work)
    }

    /// Counts a call handed off to wait for storage elsewhere, until ``handedOffCallEnded()``:
    /// while one waits, ``measureIfAlone(_:)`` hands off too.
    func handedOffCallBegan() { waiting.add(1, ordering: .relaxed) }
    /// See ``handedOffCallBegan()``.
    func handedOffCallEnded() { waiting.subtract(1, ordering: .relaxed) }

    /// Runs `work` on the pool, timing it, and waits for it without holding a task thread (when
    /// ``awaitsOnPool``).
    func run<R: Sendable>(_ work: @escaping @Sendable () throws -> R) async throws -> R {
        handedOffCallBegan()
        return try await StorageCalls.shared.run { [self] in
            defer { handedOffCallEnded() }
            return try measure(work)
        }
    }

    /// Runs `work` on the pool, timing it, without waiting for it (when ``runsOnPool``).
    func perform(_ work: @escaping @Sendable () -> Void) {
        handedOffCallBegan()
        StorageCalls.shared.submit { [self] in
            measure(work)
            handedOffCallEnded()
        }
    }
}
