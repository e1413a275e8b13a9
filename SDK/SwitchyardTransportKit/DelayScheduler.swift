import Foundation
import HeapModule
import SwitchyardABI
import SwitchyardPluginKit

/// Holds messages until their deliver-at time, then hands them to `forward`, in due order.
///
/// The schedule is a binary heap of due times driven by one timer thread that sleeps exactly until
/// the next due time (no polling). In durable mode the held messages live in a SQLite table and a
/// hold returns only after it is committed; on start every held message is scheduled again, so
/// what came due while the process was down is forwarded right away. A message is deleted from
/// the table only after `forward` succeeded: a crash in between forwards it again (at-least-once;
/// its id is unchanged, so an idempotent receiver drops the copy).
public final class DelayScheduler: @unchecked Sendable {
    // @unchecked: mutable state is guarded by `condition`.

    public typealias Forward = @Sendable (Message) throws(TransportError) -> Void

    private struct Due: Comparable {
        let at: Int64
        let seq: Int64
        static func < (a: Due, b: Due) -> Bool { (a.at, a.seq) < (b.at, b.seq) }
    }

    private let condition = AdaptiveCondition()
    private var heap = Heap<Due>()
    private var inMemory: [Int64: Message] = [:]  // memory mode: the held messages
    /// How long each held message the inner transport refused waits before the next try: from
    /// 100 ms, doubling to a minute. A refusal that lasts (too large for the inner transport, a
    /// channel name it refuses) was retried ten times a second, with a warning each time, forever.
    private var retryDelays: [Int64: Int64] = [:]
    private static let firstRetryNanos: Int64 = 100_000_000
    private static let lastRetryNanos: Int64 = 60_000_000_000
    private var nextSeq: Int64 = 0
    /// Messages being held — room taken for them, their commit under way — not yet on the heap:
    /// counted against the capacity, so that many publishes in flight at once cannot all pass
    /// the check before any of them is held.
    private var reserved = 0
    /// Set by ``stopHolding()``: nothing more is held, nothing more forwarded.
    private var draining = false
    private var stopped = false
    private var done = false
    private let writer: SQLiteWriter?
    /// The durable store's file, or nil in memory.
    private let path: String?
    private let host: HostServices
    private let capacity: Int
    private let forward: Forward

    /// Starts a scheduler; durable when `path` is set. Refuses a file that is not a delay store.
    public init(path: String?, capacity: Int, host: HostServices, forward: @escaping Forward) throws(TransportError) {
        self.path = path
        var loaded: [Due] = []
        if let path {
            let db = try SQLiteDatabase(path: path)
            try db.configureDurable()
            try db.execute("BEGIN IMMEDIATE")
            do throws(TransportError) {
                try db.refuseOtherKind(than: "delay")  // before anything is created in it
                try db.execute(
                    """
                    CREATE TABLE IF NOT EXISTS switchyard_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                    INSERT OR IGNORE INTO switchyard_meta VALUES ('schema', '1'), ('kind', 'delay');
                    CREATE TABLE IF NOT EXISTS held (seq INTEGER PRIMARY KEY AUTOINCREMENT, deliver_at INTEGER NOT NULL, message BLOB NOT NULL);
                    COMMIT;
                    """)
            } catch {
                try? db.execute("ROLLBACK")
                throw error
            }
            try db.run("SELECT seq, deliver_at FROM held") { row in loaded.append(Due(at: row.int(1), seq: row.int(0))) }
            writer = SQLiteWriter(db)
        } else {
            writer = nil
        }
        self.host = host
        self.capacity = capacity
        self.forward = forward
        heap = Heap(loaded)
        nextSeq = loaded.map(\.seq).max() ?? 0
        let thread = Thread(named: "switchyard-delay-timer") { [self] in timerLoop() }
        thread.start()
    }

    /// Messages held now: in memory, this scheduler's; durably, the file's — every process that
    /// shares it holds and forwards from it, and each one's heap knows only what it loaded at
    /// start and held since. Counted on a connection of its own at most every max(100 ms, twenty
    /// times the count's own time), the last count standing in between (a metrics reporter asks
    /// four times a second).
    public var heldCount: Int {
        guard let path else {
            condition.lock()
            defer { condition.unlock() }
            return heap.count
        }
        return fileCount.withLock { state in
            let started = monotonicNanoseconds()
            guard started >= state.refreshAt else { return state.value }
            do throws(TransportError) {
                if state.connection == nil { state.connection = try SQLiteDatabase(path: path, waitingWhenBusy: true) }
                var count = 0
                _ = try state.connection!.run("SELECT COUNT(*) FROM held") { row in count = Int(row.int(0)) }
                state.value = count
                state.refreshAt = started + max(100_000_000, 20 * (monotonicNanoseconds() - started))
            } catch {
                state.connection = nil  // opened again next time; the last count stands meanwhile
                state.refreshAt = started + 100_000_000
            }
            return state.value
        }
    }

    /// Messages held now, by channel, and how many of them are not due yet at `now` (the rest are
    /// due and on their way: forwarded at the timer's next turn, or waiting to be tried again after
    /// the inner transport refused them). In memory, this scheduler's; durably, the file's (read on
    /// a connection of its own, each message decoded for its channel: operators ask, not the data
    /// path).
    public func heldByChannel(now: Int64) throws(TransportError) -> [String: (held: UInt64, notDue: UInt64)] {
        var counts: [String: (held: UInt64, notDue: UInt64)] = [:]
        func count(_ channel: String, deliverAt: Int64) {
            counts[channel, default: (0, 0)].held += 1
            if deliverAt > now { counts[channel, default: (0, 0)].notDue += 1 }
        }
        guard let path else {
            condition.lock()
            defer { condition.unlock() }
            for message in inMemory.values { count(message.channel, deliverAt: message.deliverAtNanos) }
            return counts
        }
        let db = try SQLiteDatabase(path: path, waitingWhenBusy: true)
        _ = try db.run("SELECT message, deliver_at FROM held") { row throws(TransportError) in
            let channel = try row.blob(0) { bytes throws(TransportError) in try MessageCodec.decode(bytes).channel }
            count(channel, deliverAt: row.int(1))
        }
        return counts
    }

    /// The durable store's last count of held messages (``heldCount``).
    private let fileCount = Guarded<(connection: SQLiteDatabase?, value: Int, refreshAt: Int64)>((nil, 0, 0))

    /// Holds `message` until its `deliverAtNanos`. Returns once it is held (committed, durably).
    public func hold(_ message: Message) throws(TransportError) {
        try hold(batch: [message])
    }

    /// Holds every message of `batch` until its due time, all or nothing (one commit, durably).
    /// Messages already due are forwarded by the timer thread right away.
    public func hold(batch: [Message]) throws(TransportError) {
        try reserveRoom(for: batch.count)
        var seqs: [Int64] = []
        if let writer {
            let rows = batch.map { ($0.deliverAtNanos, MessageCodec.encode($0)) }
            do throws(TransportError) {
                seqs = try writer.perform { db throws(TransportError) -> [Int64] in try Self.insert(rows, into: db) }
            } catch {
                releaseRoom(for: batch.count)
                throw error
            }
        }
        admit(batch, seqs: seqs)
    }

    /// ``hold(batch:)`` without waiting for the commit (ABI 1.7 `publish_async`): `done` is
    /// called exactly once — nil once the batch is held durably (on the store's syncer thread),
    /// or the error that held none (on this thread, when found before anything is queued).
    public func hold(batch: [Message], done: @escaping @Sendable (TransportError?) -> Void) {
        guard let writer else {
            do throws(TransportError) {
                try hold(batch: batch)  // in memory: held at once
                done(nil)
            } catch {
                done(error)
            }
            return
        }
        do throws(TransportError) {
            try reserveRoom(for: batch.count)
        } catch {
            return done(error)
        }
        let rows = batch.map { ($0.deliverAtNanos, MessageCodec.encode($0)) }
        let seqs = Guarded<[Int64]>([])
        // The body may run twice (SQLiteWriter's savepoint pass): the last run's rowids count.
        let insertion: (SQLiteDatabase) throws(TransportError) -> Void = { db throws(TransportError) in
            let inserted = try Self.insert(rows, into: db)
            seqs.withLock { $0 = inserted }
        }
        writer.submit(insertion) { [self] error in
            if let error {
                releaseRoom(for: batch.count)
                return done(error)
            }
            admit(batch, seqs: seqs.withLock { $0 })
            done(nil)
        }
    }

    /// Takes room for `count` messages, or throws `.full` (or `.closed` once draining: checked
    /// under the same lock, so no hold slips in after ``stopHolding()``); ``admit(_:seqs:)`` or
    /// ``releaseRoom(for:)`` gives it back.
    private func reserveRoom(for count: Int) throws(TransportError) {
        condition.lock()
        let closed = draining
        let full = !closed && capacity > 0 && heap.count + reserved + count > capacity
        if !full && !closed { reserved += count }
        condition.unlock()
        if closed { throw Self.drainingError }
        if full { throw TransportError(.full, "delay holds its capacity of \(capacity) messages; nothing was stored (raise config key 'capacity', 0 for no limit)") }
    }

    private static let drainingError = TransportError(.closed, "publish: the transport is draining")

    /// Drain has begun: from now on a hold is refused with `.closed`, and nothing more is
    /// forwarded — the inner transport drains too, and would refuse it. What is held stays held:
    /// a durable delay's in its store, forwarded after the next start; an in-memory delay's until
    /// shutdown, when it is lost like everything an in-memory transport holds. Holds accepted
    /// before this still complete.
    public func stopHolding() {
        condition.lock()
        let first = !draining
        draining = true
        let held = heap.count + reserved
        condition.broadcast()
        condition.unlock()
        guard first, held > 0 else { return }
        host.log(
            .info,
            path.map { "delay: draining with \(held) messages held; they stay in \($0) and are forwarded after the next start" }
                ?? "delay: draining with \(held) messages held in memory; they are lost at shutdown (set 'path' to keep them)")
    }

    private var isDraining: Bool {
        condition.lock()
        defer { condition.unlock() }
        return draining
    }

    /// Gives back room taken for messages that were not held.
    private func releaseRoom(for count: Int) {
        condition.lock()
        reserved -= count
        condition.unlock()
    }

    /// Writes the held rows; their rowids, in order.
    private static func insert(_ rows: [(Int64, [UInt8])], into db: SQLiteDatabase) throws(TransportError) -> [Int64] {
        var seqs: [Int64] = []
        for (due, blob) in rows {
            try db.run("INSERT INTO held (deliver_at, message) VALUES (?, ?)", [.int(due), .blob(blob)])
            seqs.append(db.lastInsertRowID)
        }
        return seqs
    }

    /// Puts messages just held (durably under `seqs`, or in memory) on the timer's heap, in the
    /// room taken for them.
    private func admit(_ batch: [Message], seqs: [Int64]) {
        condition.lock()
        reserved -= batch.count
        let earliest = heap.min?.at
        for (index, message) in batch.enumerated() {
            var seq: Int64
            if writer == nil {
                nextSeq += 1
                seq = nextSeq
                inMemory[seq] = message
            } else {
                seq = seqs[index]
            }
            heap.insert(Due(at: message.deliverAtNanos, seq: seq))
        }
        if let first = heap.min, earliest.map({ first.at < $0 }) ?? true { condition.signal() }
        let held = heap.count
        condition.unlock()
        host.count("published", Double(batch.count))
        host.gauge("depth", Double(held))
    }

    /// Stops the timer thread. Durable held messages stay in the file for the next start.
    public func shutdown() {
        condition.lock()
        stopped = true
        condition.broadcast()
        while !done { condition.wait() }
        condition.unlock()
        writer?.close()
        fileCount.withLock { $0.connection = nil }
    }

    private func timerLoop() {
        condition.lock()
        while !stopped {
            if draining {
                condition.wait()  // nothing is forwarded any more: only shutdown ends this
                continue
            }
            guard let next = heap.min else {
                condition.wait()
                continue
            }
            let now = host.nowNanos()
            if next.at > now {
                _ = condition.wait(untilWallClockNanos: next.at)
                continue
            }
            var due: [Due] = []
            while let top = heap.min, top.at <= now { due.append(heap.removeMin()) }
            let messages = due.map { (due: $0, message: inMemory.removeValue(forKey: $0.seq)) }
            condition.unlock()
            let failed = forwardDue(messages)
            condition.lock()
            let failedSeqs = Set(failed.map(\.due.seq))
            for item in due where !failedSeqs.contains(item.seq) { retryDelays[item.seq] = nil }
            for item in failed {
                if let message = item.message { inMemory[item.due.seq] = message }
                // Try again later, with backoff; never drop a held message.
                let delay = retryDelays[item.due.seq].map { min($0 * 2, Self.lastRetryNanos) } ?? Self.firstRetryNanos
                retryDelays[item.due.seq] = delay
                heap.insert(Due(at: host.nowNanos() + delay, seq: item.due.seq))
                // Said on the first refusal, then once a minute (a drain's holding is quiet).
                if let error = item.error, delay == Self.firstRetryNanos || delay == Self.lastRetryNanos {
                    host.log(
                        .warning,
                        "delay: the inner transport refused held message \(item.id) (\(error)); it stays held and is tried again, with backoff up to a minute\(delay == Self.lastRetryNanos ? " (still refused)" : "")"
                    )
                }
            }
            // Depth first, then the count: whoever sees a message forwarded sees it no longer held.
            host.gauge("depth", Double(heap.count))
            host.count("forwarded", Double(messages.count - failed.count))
        }
        done = true
        condition.broadcast()
        condition.unlock()
    }

    /// A due message that was not forwarded: held again, with the inner transport's refusal if
    /// there was one (nil: held back by a drain or an unreadable store).
    private struct NotForwarded {
        let due: Due
        let message: Message?
        var id = ""
        var error: TransportError?
    }

    /// Forwards due messages; returns those that could not be forwarded.
    private func forwardDue(_ items: [(due: Due, message: Message?)]) -> [NotForwarded] {
        var failed: [NotForwarded] = []
        var forwarded: [Int64] = []
        var durable: [Int64: Result<Message, TransportError>] = [:]
        if let writer, items.contains(where: { $0.message == nil }) {
            let seqs = items.filter { $0.message == nil }.map(\.due.seq)
            do {
                durable = try writer.perform { db throws(TransportError) -> [Int64: Result<Message, TransportError>] in
                    var found: [Int64: Result<Message, TransportError>] = [:]
                    for seq in seqs {
                        try db.run("SELECT message FROM held WHERE seq = ?", [.int(seq)]) { row throws(TransportError) in
                            found[seq] = try row.blob(0) { bytes in Result { () throws(TransportError) in try MessageCodec.decode(bytes) } }
                        }
                    }
                    return found
                }
            } catch {
                // The store cannot be read now: nothing is forwarded or dropped; all come back later.
                host.log(.warning, "delay: reading \(seqs.count) held messages failed, will try again: \(error)")
                return items.map { NotForwarded(due: $0.due, message: $0.message) }
            }
        }
        for item in items {
            var message: Message
            if let held = item.message {
                message = held
            } else {
                switch durable[item.due.seq] {
                case .success(let read)?:
                    message = read
                case .failure(let error)?:
                    // Kept in the store for a person (and reported on every start); never forwarded
                    // half-read, and the other due messages go on.
                    host.log(.error, "delay: held message \(item.due.seq) in \(path ?? "the store") is unreadable and stays there: \(error.message)")
                    continue
                case nil:
                    forwarded.append(item.due.seq)  // gone: taken by someone else
                    continue
                }
            }
            message.deliverAtNanos = 0  // due now: the inner transport must not wait again
            if isDraining {
                failed.append(NotForwarded(due: item.due, message: item.message))  // drain began meanwhile: held, not forwarded
                continue
            }
            do {
                try forward(message)
                forwarded.append(item.due.seq)
            } catch {
                // Refused by an inner transport that began draining with this one: held, quietly.
                let quiet = error.code == .closed && isDraining
                failed.append(NotForwarded(due: item.due, message: item.message, id: message.id, error: quiet ? nil : error))
            }
        }
        if let writer, !forwarded.isEmpty {
            let seqs = forwarded
            _ = try? writer.perform { db throws(TransportError) in
                for seq in seqs { try db.run("DELETE FROM held WHERE seq = ?", [.int(seq)]) }
            }
        }
        return failed
    }
}
