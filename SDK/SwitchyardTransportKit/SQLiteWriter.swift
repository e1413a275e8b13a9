import Foundation
import SwitchyardABI
import Synchronization

/// Group commit for one SQLite database: every operation runs on one writer thread, which takes
/// all operations waiting at that moment and runs them in one transaction. `perform` returns
/// after the commit, so concurrent callers share one fsync. Used by every durable store in the SDK.
///
/// One failing operation does not undo the others. The batch first runs as it is, one operation
/// after another; only when one fails is the transaction rolled back and the batch run again with
/// a savepoint around each operation. Operations almost never fail, and two statements per
/// operation (`SAVEPOINT`, `RELEASE`) cost as much as the insert most of them are — so an
/// operation's body may run twice, and touches nothing but the database and its own locals.
///
/// A commit is synced after the write lock is let go (``WALSync``): the connection runs with
/// `synchronous=NORMAL`, so the commit writes the WAL without syncing it; the writer announces
/// it, lets the lock go to other processes' writers, then syncs the WAL and only then answers the
/// batch's callers. So a commit is visible —
/// to other processes, and to this one's dispatcher — a moment before it is durable; its callers
/// are answered once it is. A power cut in that moment can forget a message already delivered
/// whose publisher was never told it was stored: a redelivery or a repeat, never the loss of
/// anything acknowledged. Not `OFF`: with it SQLite also skips syncing the WAL's header when a
/// commit starts the WAL over after a checkpoint, and a power cut can then corrupt the database;
/// `NORMAL` syncs that header, and the WAL before a checkpoint copies it into the database. Where
/// the WAL cannot be opened, synced batches commit with `synchronous=FULL`, as before.
///
/// The writer thread does not wait for that sync: it hands the committed batch to a syncer thread
/// and goes on to the next batch's inserts while the sync runs. The syncer syncs once for every
/// batch committed meanwhile and then answers their callers, so a commit's callers still learn
/// of it only once it is durable. (A caller running its own turn, below, syncs on its own thread.)
///
/// Not every commit needs its fsync: an operation whose loss in a power cut costs nothing but a
/// repeat (a lease: the message is simply delivered again) runs `synced: false`, and a batch made
/// only of those is not synced; the next synced commit makes it durable too (WAL frames are
/// synced in order).
///
/// Operations may leave rows for the end of their batch (``SQLiteDeferredWrites``): a batch of 64
/// publishes then writes its 64 rows with one multi-row statement rather than 64 statements.
///
/// A caller that finds the writer idle, with nothing waiting, runs its operation itself, on its
/// own thread: handing it to the writer thread and being woken again are two thread switches,
/// which on a small virtual machine cost as much as the transaction (a one-caller durable
/// request-reply makes five transactions). Whoever comes meanwhile queues for the writer thread,
/// which then runs them together as before.
///
/// ``submit(synced:_:done:)`` queues an operation without waiting for it: its `done` runs on the
/// syncer thread once the batch is committed and synced (on the writer thread for a batch that
/// needs no sync, or one with a waiting caller), so that many callers in flight — tasks
/// awaiting a publish, not threads blocked in one — cost one wake-up of the writer per batch
/// rather than two thread switches per operation.
public final class SQLiteWriter: @unchecked Sendable {
    // @unchecked: the database (and what only its user touches: `deferred`, `syncedMode`) is used
    // by one thread at a time, whoever holds the turn (`busy`, under `jobs`); the queue is behind
    // `jobs`.

    private let jobs = AdaptiveCondition()
    private var pending: [Job] = []
    /// Operations queued for the writer thread now (tests wait for callers to have queued).
    var pendingCount: Int {
        jobs.lock()
        defer { jobs.unlock() }
        return pending.count
    }
    private var stopped = false
    private var writerDone = false
    /// Whether the writer thread or a caller is using the database (under `jobs`).
    private var busy = false
    /// Whether a caller's own transaction left the WAL due for a checkpoint (under `jobs`).
    private var checkpointWanted = false
    /// The writer thread, once it runs (under `jobs`): `close` must not wait for itself.
    private var writerThread: pthread_t?
    private let db: SQLiteDatabase
    private let path: String
    /// What operations left for the end of the batch (its user only).
    private let deferred: (any SQLiteDeferredWrites)?
    /// Queues this writer with other processes' and announces its commits to them (see `init`).
    private let beacon: CommitBeacon?
    /// Syncs commits once the write lock is let go; nil where the WAL could not be opened (then
    /// synced batches commit with `synchronous=FULL`).
    let walSync: WALSync?
    /// Committed batches of the writer thread waiting for their sync, and the syncer thread that
    /// syncs them (see ``syncerLoop()``).
    private let syncs = AdaptiveCondition()
    private var unsynced: [[Job]] = []  // under `syncs`
    private var syncerWaiting = false  // under `syncs`
    /// Set when a committed batch waits for the syncer (or it should stop): what the syncer polls
    /// for a while after a sync before it sleeps (see ``syncerPollNanos``).
    private let syncerHint = Atomic<Bool>(false)
    private var syncerStopping = false  // under `syncs`
    private var syncerDone = false  // under `syncs`
    /// The syncer thread, once it runs (under `jobs`, like ``writerThread``).
    private var syncerThread: pthread_t?

    private final class Job {
        let work: (SQLiteDatabase) throws(TransportError) -> Void
        let synced: Bool
        var error: TransportError?
        /// Signalled once the job's transaction ended: each caller is woken alone, not all at once.
        /// Made only for a caller that queues to wait (under `jobs`, before the job is queued): a
        /// turn run on the caller's thread, or a submitted job, needs none.
        var finished: DispatchSemaphore?
        /// The jobs of the same batch this job's caller wakes once woken itself (see `wakeAll`).
        var wakes: (Job?, Job?) = (nil, nil)
        /// Called with the job's outcome instead of waking a waiting caller (``submit``).
        let done: ((TransportError?) -> Void)?
        init(synced: Bool, done: ((TransportError?) -> Void)? = nil, _ work: @escaping (SQLiteDatabase) throws(TransportError) -> Void) {
            self.synced = synced
            self.done = done
            self.work = work
        }
    }

    /// Whether the connection runs with `synchronous=FULL` (its user only): without `walSync`, for
    /// synced batches.
    private var syncedMode = true
    /// Checkpoint once the WAL holds this many pages (SQLite's own default).
    static let checkpointPages: Int32 = 1000

    /// Makes the WAL as long as one checkpoint cycle fills (``checkpointPages``, and some to
    /// spare), writing zeros past its end, under the write lock (no other writer appends
    /// meanwhile, in any process). A sync of frames appended to a file also commits its new size
    /// to the file system's journal: measured on this machine's ext4, 0.11 ms against 0.07 ms for
    /// frames written over blocks the file already has, and a durable call syncs twice. SQLite
    /// writes the WAL from its start again after each checkpoint and never shortens it (no
    /// `journal_size_limit`), so only the first cycle after the WAL is created paid that, and a
    /// newly started process's first thousand pages of commits were the slowest. Frames past the
    /// last valid one are never read (their salt and checksum do not match), zeros as well as
    /// stale ones. Best effort: a write or sync that fails leaves the WAL as long as it got,
    /// which is as harmless.
    private static func writeWALAhead(_ walSync: WALSync, _ db: SQLiteDatabase) {
        var pageSize: Int64 = 4096
        _ = try? db.run("PRAGMA page_size") { row in pageSize = row.int(0) }
        // A frame is a page and its 24-byte header; the WAL's own header is 32 bytes.
        // At most 8 MiB: a database with large pages would otherwise write tens of megabytes
        // under the write lock at every open.
        let bytes = min(32 + Int64(checkpointPages + checkpointPages / 8) * (pageSize + 24), 8 << 20)
        guard (try? db.execute("BEGIN IMMEDIATE")) != nil else { return }
        walSync.extend(toBytes: bytes)
        try? db.execute("ROLLBACK")
    }

    private final class Box<T> { var value: T? }

    /// Takes over `db`: from now on only the writer thread uses it. `deferred` holds what the
    /// batch's operations leave for its end; the writer writes it before each commit. With a
    /// `beacon`, each transaction waits its turn with the other processes' writers and each commit
    /// is announced to them once it is visible and the write lock free.
    /// `walSync` replaces the database's own (tests give one that fails).
    init(_ db: SQLiteDatabase, deferred: (any SQLiteDeferredWrites)? = nil, beacon: CommitBeacon? = nil, walSync: WALSync? = nil) {
        path = db.path
        self.db = db
        self.deferred = deferred
        self.beacon = beacon
        db.trackWAL()
        self.walSync = walSync ?? db.walPath.flatMap(WALSync.init(walPath:))
        if self.walSync != nil, (try? db.execute("PRAGMA synchronous = NORMAL")) != nil { syncedMode = false }
        if walSync == nil, let own = self.walSync { Self.writeWALAhead(own, db) }
        let thread = Thread(named: "switchyard-sqlite-writer") { [self] in writerLoop() }
        thread.start()
        if self.walSync != nil {
            let syncer = Thread(named: "switchyard-sqlite-sync") { [self] in syncerLoop() }
            syncer.start()
        } else {
            syncerDone = true
        }
    }

    /// Runs what is queued, then stops the writer thread; later operations throw `.closed`. The
    /// owner calls it when done with the database: the thread holds the writer (its connection and
    /// beacon) until then.
    func close() {
        jobs.lock()
        stopped = true
        jobs.broadcast()
        // The owner's last reference can go with a job the writer or the syncer thread releases:
        // then that thread is closing the writer itself, and the writer ends once this returns.
        let onOwnThread = [writerThread, syncerThread].contains { $0.map { pthread_equal($0, pthread_self()) != 0 } ?? false }
        while !writerDone && !onOwnThread { jobs.wait() }
        jobs.unlock()
    }

    /// Runs `body` inside a transaction — its own, on this thread, when the writer is idle;
    /// otherwise the next batch's, on the writer thread — and returns its result after the
    /// commit, or throws its error (or the commit's). With `synced: false` the commit may skip
    /// its fsync (see the type's note): only for work whose loss costs a repeat. `body` may run
    /// twice (see the type's note): it must only use the database and its own locals.
    func perform<R>(synced: Bool = true, _ body: @escaping (SQLiteDatabase) throws(TransportError) -> R) throws(TransportError) -> R {
        let result = Box<R>()
        let job = Job(synced: synced) { db throws(TransportError) in result.value = try body(db) }
        jobs.lock()
        if stopped {
            jobs.unlock()
            throw TransportError(.closed, "the store at '\(path)' is closed")
        }
        if !busy && pending.isEmpty {
            busy = true
            jobs.unlock()
            if runTurn([job]) { sync([job]) }
            let due = checkpointDue
            jobs.lock()
            busy = false
            checkpointWanted = checkpointWanted || due
            // What came meanwhile (and a due checkpoint) is the writer thread's; after a close,
            // the writer thread waits for this turn to end before it closes the connection (and
            // `close()` waits on the same condition: everyone is woken).
            if stopped {
                jobs.broadcast()
            } else if !pending.isEmpty || checkpointWanted {
                jobs.signal()
            }
            jobs.unlock()
        } else {
            job.finished = DispatchSemaphore(value: 0)
            pending.append(job)
            if pending.count == 1 && !busy { jobs.signal() }  // the writer sleeps only when idle
            jobs.unlock()
            job.finished!.wait()
            ThreadSanitizer.acquire(job)  // the writer thread set error/result before signalling
            Self.wake(job.wakes.0)
            Self.wake(job.wakes.1)
            job.wakes = (nil, nil)
        }
        if let error = job.error { throw error }
        return result.value!
    }

    /// Queues `body` for the writer thread's next batch and returns at once; `done` is called
    /// exactly once with its error, or nil once the batch is committed (and synced, unless
    /// `synced: false`). `done` runs on the syncer or the writer thread (or on this one, when the
    /// store is already closed) and must return promptly: the batch's other callers wait for it. `body` may
    /// run twice (see the type's note).
    func submit(synced: Bool = true, _ body: @escaping (SQLiteDatabase) throws(TransportError) -> Void, done: @escaping (TransportError?) -> Void) {
        jobs.lock()
        if stopped {
            jobs.unlock()
            return done(TransportError(.closed, "the store at '\(path)' is closed"))
        }
        // Never run here, even when the writer is idle: the caller is a task's thread, which must
        // not wait for a commit.
        pending.append(Job(synced: synced, done: done, body))
        if pending.count == 1 && !busy { jobs.signal() }
        jobs.unlock()
    }

    private func writerLoop() {
        jobs.lock()
        writerThread = pthread_self()
        while true {
            // Never past a turn a caller runs on its own thread (it uses the connection), even
            // once stopped: what is queued still runs, then the thread ends.
            while busy || (pending.isEmpty && !checkpointWanted && !stopped) { jobs.wait() }
            if pending.isEmpty && !checkpointWanted { break }  // stopped, idle, and nothing left to do
            let batch = pending
            pending.removeAll(keepingCapacity: true)
            checkpointWanted = false
            busy = true
            jobs.unlock()
            if !batch.isEmpty {
                if !runTurn(batch) {
                    wakeAll(batch)
                } else if batch.allSatisfy({ $0.done != nil }) {
                    handToSyncer(batch)
                } else {
                    // Threads wait for this batch: syncing here leaves the cores to them (handed
                    // over, 64 blocked publishers fell from 143 k to 97 k messages a second, the
                    // writer busy with the next batch while they needed the cores to wake).
                    sync(batch)
                    wakeAll(batch)
                }
            }
            if checkpointDue { checkpoint() }
            jobs.lock()
            busy = false
        }
        // The syncer answers what it holds first (without `jobs`: a syncer just starting takes it
        // once); closed here, not when the thread lets the writer go after `close()` returned:
        // the owner that closed the store expects the file free. Stopped, nobody takes a turn now.
        jobs.unlock()
        stopSyncer()
        jobs.lock()
        db.close()
        writerDone = true
        jobs.broadcast()
        jobs.unlock()
    }

    /// One batch in one transaction, in this process's turn with the other processes' writers;
    /// announced to them once committed. Only with the turn (`busy`). Whether the commit must
    /// still be synced (``sync(_:)``, or the syncer) before its callers are answered.
    private func runTurn(_ batch: [Job]) -> Bool {
        var batch = batch
        if let failure = walSync?.failure {
            // Nothing durable is written once the disk failed a sync: it would be committed and
            // delivered, and yet reported failed to its caller (who may send it again).
            for job in batch where job.synced { job.error = failure }
            batch.removeAll { $0.synced }
            if batch.isEmpty { return false }
        }
        beacon?.willWrite()
        let committed = run(batch, on: db)
        beacon?.didWrite(committed: committed)
        // The lock is free for the other processes' writers; this process's callers still queue.
        return committed && walSync != nil && batch.contains(where: \.synced)
    }

    /// Syncs the WAL on this thread for `batch`'s commit; a failure fails its synced jobs.
    private func sync(_ batch: [Job]) {
        do throws(TransportError) {
            try walSync?.sync()
        } catch {
            for job in batch where job.synced && job.error == nil { job.error = error }
        }
    }

    /// Gives a committed batch to the syncer, so that the writer thread goes on to the next
    /// batch's inserts while this one's sync runs: the writer spent about 40% of a busy store's
    /// time waiting in `fdatasync` (64 publishers: 89 of 220 ms), and the publishers that came
    /// meanwhile waited with it.
    private func handToSyncer(_ batch: [Job]) {
        syncs.lock()
        unsynced.append(batch)
        syncerHint.store(true, ordering: .releasing)
        if syncerWaiting { syncs.signal() }
        syncs.unlock()
    }

    /// How long the syncer polls for the next committed batch after a sync before it sleeps.
    /// With many publishers the writer commits the next batch within about a sync's time of the
    /// last one; a syncer asleep by then cost a wake-up — about 20 µs on this machine's virtual
    /// cores — on every message's path. Polled with the core yielded between looks, so the
    /// writer and the woken publishers still get it. 64 publishing tasks, eight alternations:
    /// 165–206 k against 170–194 k messages a second (medians 194 k and 178 k; 200 µs read the
    /// same as 100). An idle store does not poll: only a sync starts it.
    static let syncerPollNanos: Int64 = 100_000

    /// The syncer thread: takes every committed batch waiting, syncs the WAL once for all of them
    /// (a sync makes everything written before it durable), and answers their callers. Ends once
    /// stopped with nothing left.
    private func syncerLoop() {
        jobs.lock()
        syncerThread = pthread_self()
        jobs.unlock()
        syncs.lock()
        var synced = false
        while true {
            if synced && unsynced.isEmpty && !syncerStopping {
                syncs.unlock()
                let until = monotonicNanoseconds() + Self.syncerPollNanos
                while !syncerHint.load(ordering: .acquiring) && monotonicNanoseconds() < until { sched_yield() }
                syncs.lock()
            }
            while unsynced.isEmpty && !syncerStopping {
                syncerWaiting = true
                syncs.wait()
                syncerWaiting = false
            }
            if unsynced.isEmpty { break }
            let batches = unsynced
            unsynced.removeAll(keepingCapacity: true)
            syncerHint.store(false, ordering: .relaxed)
            syncs.unlock()
            let all = batches.count == 1 ? batches[0] : batches.flatMap { $0 }
            sync(all)
            for batch in batches { wakeAll(batch) }
            synced = true
            syncs.lock()
        }
        syncerDone = true
        syncs.broadcast()
        syncs.unlock()
    }

    /// Lets the syncer answer what it holds, then end; returns once it has.
    private func stopSyncer() {
        syncs.lock()
        syncerStopping = true
        syncerHint.store(true, ordering: .releasing)
        syncs.broadcast()
        while !syncerDone { syncs.wait() }
        syncs.unlock()
    }

    /// Wakes the batch's callers as a binary tree: the writer wakes the first, and each caller
    /// woken wakes two more. A wake is a system call and often a context switch; made one after
    /// another by the writer, 64 of them held up the next batch's commit by more than its fsync.
    /// Submitted jobs (``submit``) are told here, on the thread that synced the batch (or committed
    /// it, when it needs no sync), after the waiting callers are on their way.
    private func wakeAll(_ batch: [Job]) {
        let waiting = batch.allSatisfy { $0.done == nil } ? batch : batch.filter { $0.done == nil }
        for (index, job) in waiting.enumerated() {
            let left = 2 * index + 1
            job.wakes = (left < waiting.count ? waiting[left] : nil, left + 1 < waiting.count ? waiting[left + 1] : nil)
        }
        // After every write to the jobs: each caller's acquire pairs with its job's release.
        for job in waiting { ThreadSanitizer.release(job) }
        Self.wake(waiting.first)
        if waiting.count == batch.count { return }
        for job in batch { job.done?(job.error) }
    }

    private static func wake(_ job: Job?) { job?.finished?.signal() }

    /// One transaction for the whole batch; a savepoint per job. Whether it committed.
    private func run(_ batch: [Job], on db: SQLiteDatabase) -> Bool {
        let synced = walSync == nil && batch.contains { $0.synced }
        if synced != syncedMode {
            do {
                try db.execute(synced ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL")
                syncedMode = synced
            } catch {
                // Stay synced: slower, never less safe.
                if syncedMode == false { for job in batch { job.error = error }; return false }
            }
        }
        do {
            try db.run("BEGIN IMMEDIATE")
        } catch {
            for job in batch { job.error = error }
            return false
        }
        // As it is first: when every operation succeeds, one commit and nothing else.
        var failure: TransportError?
        do throws(TransportError) {
            for job in batch { try job.work(db) }
            try deferred?.flush(db)
        } catch {
            failure = error
        }
        guard let failure else { return commit(batch, on: db) }
        deferred?.discard()
        _ = try? db.run("ROLLBACK")
        if batch.count == 1 {
            batch[0].error = failure
            return false
        }
        // Again, each operation in a savepoint of its own, so the failure undoes only itself.
        do {
            try db.run("BEGIN IMMEDIATE")
        } catch {
            for job in batch { job.error = error }
            return false
        }
        for job in batch {
            do {
                try db.run("SAVEPOINT job")
                do {
                    try job.work(db)
                    try deferred?.flush(db)
                    try db.run("RELEASE job")
                } catch {
                    deferred?.discard()
                    job.error = error
                    try db.run("ROLLBACK TO job")
                    try db.run("RELEASE job")
                }
            } catch {
                job.error = job.error ?? error
            }
        }
        return commit(batch, on: db)
    }

    private func commit(_ batch: [Job], on db: SQLiteDatabase) -> Bool {
        do {
            try db.run("COMMIT")
            return true
        } catch {
            _ = try? db.run("ROLLBACK")
            for job in batch { job.error = error }  // nothing in the batch happened
            return false
        }
    }

    /// Whether the WAL has grown enough to be copied back into the database (a checkpoint syncs
    /// the WAL before it copies, with `NORMAL` as with `FULL`). Only with the turn (`busy`).
    private var checkpointDue: Bool { db.walPages >= Self.checkpointPages }

    /// Copies the WAL back into the database, on the writer thread and in a turn of its own with
    /// the other processes' writers: its wait for readers must not hold up anyone's commit.
    private func checkpoint() {
        beacon?.willWrite()
        db.checkpoint()
        beacon?.didWrite(committed: false)
    }
}

/// Rows an operation leaves for the end of its batch, written together (one multi-row statement
/// costs SQLite much less per row than a statement per row). Touched only on the writer thread.
///
/// Whatever an operation leaves is written before its batch commits, in the order it was left, so
/// it commits with the operation or not at all; an operation must not read back what it left.
protocol SQLiteDeferredWrites: AnyObject {
    /// Writes what was left; runs before each commit (and, when a failed batch runs again one
    /// operation at a time, before each operation's savepoint is released).
    func flush(_ db: SQLiteDatabase) throws(TransportError)
    /// Forgets what was left: its transaction or savepoint is being rolled back.
    func discard()
}
