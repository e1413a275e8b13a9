import Foundation
import SwitchyardABI
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Tells the other processes sharing a SQLite store that this one committed, and tells this one
/// when they did — once the commit is visible and the write lock is free again. It also queues
/// the processes' writers for the write lock.
///
/// The beacon is a small file beside the database (`<database>-wake`) holding one commit counter
/// per process. Each process holds a slot with an open-file-description lock (the kernel drops it
/// when the process ends, so a slot is never leaked), adds one to its counter after each commit,
/// and watches the file with inotify. A change in another process's slot means another process
/// committed, and a plain read then sees the commit. The store's dispatcher claims that inotify
/// descriptor (``claimAnnouncements()``) and waits on it itself, reading it with
/// ``takeAnnouncements()``: no thread stands between a commit and the dispatcher it wakes. Until
/// it is claimed, the beacon's watcher thread hears the announcements and calls `changed`.
///
/// What it replaces, watching the WAL file alone, hears every write to the WAL, before the commit
/// is visible, and the process's own writes as well: a woken dispatcher had to take the write lock
/// to be sure to see the commit, waiting out the committer's fsync and contending with it. The WAL
/// is still watched as a fallback, for a writer without a slot (an older Switchyard, or more than
/// ``defaultSlots`` processes on one store), by a thread of the beacon's: a write to the WAL
/// within ``fallbackNanos`` wakes the owner (`changed`) all the same, after waiting once for the
/// write lock (so the commit that wrote it is over).
///
/// Writers queue in a page of the same file (``WriterQueue``): each write transaction runs in a
/// turn (``willWrite()``/``didWrite(committed:)``), so that the next writer wakes as the last one
/// finishes instead of sleeping in SQLite's busy handler.
final class CommitBeacon: @unchecked Sendable {
    // @unchecked: `file`, `slot`, `slots`, `announcements` never change; `commits` is touched only
    // by the thread that commits (the store's writer); `seen` is guarded; the watcher thread owns
    // everything else it uses.

    /// Processes that can announce their commits on one store; more still work, woken through the
    /// fallback (up to ``fallbackNanos`` late).
    static let defaultSlots = 64
    /// How long a write to the WAL may go unexplained by a commit counter before it wakes the owner.
    static let fallbackNanos: Int64 = 20_000_000
    /// Where the slots' locks lie: past the counters, so that a lock never covers data (locks on
    /// bytes past the end of a file are allowed).
    private static let slotLockOffset: off_t = 4096
    /// How long a writer waits for its turn before it goes on without (see ``WriterQueue``).
    static let defaultTurnTimeoutNanos: Int64 = 10_000_000_000

    /// The beacon file (-1 when it cannot be opened: then only the fallback works).
    private let file: Int32
    /// This process's slot, or nil when every slot is taken.
    let slot: Int?
    /// The slots in this beacon's file (``defaultSlots``; fewer in tests).
    private let slots: Int
    /// This slot's counter (the committing thread only).
    private var commits: UInt64 = 0
    /// An inotify descriptor that becomes readable when the beacon file changes: poll it, then
    /// call ``takeAnnouncements()``. -1 when inotify or the file is not available.
    let announcements: Int32
    /// Every slot's counter as last taken.
    private let seen: Guarded<[UInt64]>
    /// Whether the owner waits on ``announcements`` itself (then the watcher leaves them alone).
    private let ownerWaits = Atomic<Bool>(false)
    /// The writers' queue (nil when the file cannot be mapped: writers then do not queue).
    private let queue: WriterQueue?
    /// Whether the committing thread holds its turn (that thread only).
    private var holdingTurn = false
    private let stopped = Atomic<Bool>(false)
    /// Wakes the watcher thread out of its poll when it is stopped (a pipe; -1s without one: then
    /// it notices within its poll interval).
    private let stopWake = WakePipe()
    /// Signalled once the watcher thread has ended, its connection to the database closed.
    private let watcherEnded = DispatchSemaphore(value: 0)
    /// The watcher thread, once it runs (nil when there is none); set before it starts.
    private let watcherThread = Guarded<pthread_t?>(nil)

    /// What this beacon cannot do, and what to do about it, for the owner to log; nil when it works
    /// fully.
    private(set) var problem: String?

    /// Opens (creating) the beacon of the store at `databasePath`, claims one of its first `slots`
    /// slots and starts the watcher thread, which calls `changed` after another process's commit
    /// (once the announcements are claimed, only for those the WAL alone tells).
    /// Whatever fails (the file, a slot, inotify) leaves the rest working and says so in `problem`.
    init(
        databasePath: String, slots: Int = defaultSlots, turnTimeoutNanos: Int64 = defaultTurnTimeoutNanos,
        changed: @escaping @Sendable () -> Void
    ) {
        let beaconPath = databasePath + "-wake"
        self.slots = slots
        file = open(beaconPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        let openError = errno
        // The database's own permissions, as SQLite gives its -wal and -shm files: whoever may
        // write the store may announce and queue (the owner alone can change them; others try).
        var database = stat()
        if file >= 0, stat(databasePath, &database) == 0 { _ = fchmod(file, database.st_mode & 0o777) }
        var claimed: Int?
        if file >= 0 {
            for index in 0..<slots where ByteLock.set(F_WRLCK, file, at: Self.slotLockOffset + off_t(index)) {
                claimed = index
                break
            }
        }
        slot = claimed
        queue = file >= 0 ? WriterQueue(file: file, timeoutNanos: turnTimeoutNanos) : nil
        if file < 0 {
            problem =
                "cannot open \(beaconPath) (\(String(cString: strerror(openError)))): other processes' commits are noticed up to 20 ms late, "
                + "and this one's by them; give every process that uses the store write access to it"
        } else if claimed == nil {
            problem = "all \(slots) slots of \(beaconPath) are taken: other processes notice this one's commits up to 20 ms late"
        }
        // Read after the watch is set, so that no commit falls between the two unheard.
        let beaconEvents = file >= 0 ? inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC)) : -1
        let beaconError = errno
        if beaconEvents >= 0 { _ = inotify_add_watch(beaconEvents, beaconPath, UInt32(IN_MODIFY)) }
        announcements = beaconEvents
        let counters = file >= 0 ? Self.counters(in: file, slots: slots) : []
        seen = Guarded(counters)
        if let claimed { commits = counters[claimed] }
        let walEvents = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        let walError = errno
        let directory = (databasePath as NSString).deletingLastPathComponent
        if walEvents >= 0 { _ = Watcher.watch(walEvents, directory) }
        let raise = "raise fs.inotify.max_user_instances (each durable store uses two)"
        var unwatched: String?
        switch (file >= 0 && beaconEvents < 0, walEvents < 0) {
        case (true, true):
            unwatched =
                "cannot watch \(beaconPath) or the WAL (inotify: \(String(cString: strerror(beaconError)))): other processes' commits are noticed only at the next expiry sweep; \(raise)"
        case (true, false):
            unwatched =
                "cannot watch \(beaconPath) (inotify: \(String(cString: strerror(beaconError)))): other processes' commits are noticed up to 20 ms late; \(raise)"
        case (false, true):
            unwatched =
                "cannot watch the WAL of \(databasePath) (inotify: \(String(cString: strerror(walError)))): commits of writers without a slot are noticed only at the next expiry sweep; \(raise)"
        case (false, false):
            break
        }
        if let unwatched { problem = problem.map { "\($0); \(unwatched)" } ?? unwatched }
        guard walEvents >= 0 || beaconEvents >= 0 else {
            watcherEnded.signal()  // no watcher to wait for
            return
        }
        let watcher = Watcher(
            walEvents: walEvents, walDirectory: directory, walName: (databasePath as NSString).lastPathComponent + "-wal", databasePath: databasePath,
            fallback: file >= 0 ? Self.fallbackNanos : 0, queue: queue, changed: changed)
        // The thread keeps the beacon alive until it ends: the file (and with it the slot) is
        // closed in deinit, once neither the watcher nor the committing thread can use it.
        let thread = Thread(named: "switchyard-sqlite-watch") { [self] in
            watcherThread.withLock { $0 = pthread_self() }
            watcher.run(
                announcements: announcements, stopWake: stopWake.reader, isClaimed: { ownerWaits.load(ordering: .acquiring) },
                take: { takeAnnouncements() }
            ) { stopped.load(ordering: .acquiring) }
            if walEvents >= 0 { close(walEvents) }
            watcherEnded.signal()
        }
        thread.start()
    }

    deinit {
        stopWake.close()
        if announcements >= 0 { close(announcements) }
        if file >= 0 { close(file) }
    }

    /// Hands ``announcements`` to the caller, who waits on it and calls ``takeAnnouncements()``;
    /// the watcher thread no longer calls `changed` for them.
    func claimAnnouncements() -> Int32 {
        ownerWaits.store(true, ordering: .releasing)
        return announcements
    }

    /// Whether another process announced a commit since the last call: reads what made
    /// ``announcements`` readable, then the counters (this process's own commits make it readable
    /// too, and are not announcements).
    func takeAnnouncements() -> Bool {
        guard announcements >= 0 else { return false }
        return seen.withLock { seen in
            // On the stack, not zeroed: the dispatcher calls this after every commit it is told of.
            let readable = withUnsafeTemporaryAllocation(byteCount: 4096, alignment: 8) { buffer in
                Self.drain(announcements, into: buffer, matching: nil)
            }
            guard readable else { return false }
            let now = Self.counters(in: file, slots: slots)
            let announced = now.indices.contains { $0 != slot && now[$0] != seen[$0] }
            seen = now
            return announced
        }
    }

    /// Waits until no other writer of the store (in any process) is writing. Call it before
    /// `BEGIN IMMEDIATE`, and ``didWrite(committed:)`` once the transaction ended, whatever its
    /// end, on the same thread (a turn belongs to a thread), one thread at a time.
    func willWrite() {
        // Without a turn (no queue, or a holder that does not let go): SQLite's own lock still
        // keeps writers apart; only the wait is less prompt.
        holdingTurn = queue?.enter() ?? false
    }

    /// Lets the next writer in and, after a commit, announces it to the other processes.
    func didWrite(committed: Bool) {
        if holdingTurn { queue?.leave() }
        holdingTurn = false
        guard committed, let slot else { return }
        commits &+= 1
        _ = withUnsafeBytes(of: commits) { pwrite(file, $0.baseAddress, 8, off_t(slot * 8)) }
    }

    /// Stops the watcher thread and waits for it to end, so that its connection to the database
    /// (the fallback's lock waiter) is closed when this returns: a store closed is a file another
    /// process (or the `sqlite3` tool) can lock at once. The slot is given up when the beacon goes.
    /// Calling it again does nothing more; on the watcher thread itself (an owner whose last
    /// reference went in `changed`) it does not wait.
    func stop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        stopWake.wake()
        let onWatcher = watcherThread.withLock { $0.map { pthread_equal($0, pthread_self()) != 0 } ?? false }
        if !onWatcher { watcherEnded.wait() }
    }

    /// Every slot's counter (zeroes past the end of the file).
    fileprivate static func counters(in file: Int32, slots: Int) -> [UInt64] {
        var counters = [UInt64](repeating: 0, count: slots)
        _ = counters.withUnsafeMutableBytes { pread(file, $0.baseAddress, $0.count, 0) }
        return counters
    }

    /// The watcher thread's state: the announcements until the owner claims them, and the fallback
    /// for writers that announce nothing.
    private struct Watcher {
        let walEvents: Int32
        /// The directory of the WAL, which is what is watched (the WAL may not exist yet).
        let walDirectory: String
        let walName: String
        let databasePath: String
        /// How long a write to the WAL may go unexplained (0 without a beacon file: at once).
        let fallback: Int64
        let queue: WriterQueue?
        let changed: @Sendable () -> Void

        /// Watches `directory` for writes (the WAL's) on `events`.
        static func watch(_ events: Int32, _ directory: String) -> Int32 {
            inotify_add_watch(events, directory.isEmpty ? "." : directory, UInt32(IN_MODIFY | IN_CREATE))
        }

        func run(announcements: Int32, stopWake: Int32, isClaimed: () -> Bool, take: () -> Bool, isStopped: () -> Bool) {
            // The watch on the WAL's directory is taken off while a write is pending and put back
            // at its fallback wake-up: with it on, the kernel queued an event at every write of
            // every commit — on a busy store about 5% of the process's time (64 publishers: 180–189
            // k messages a second with it, 192–200 k without), for events nobody read.
            var watch: Int32 = walEvents >= 0 ? Self.watch(walEvents, walDirectory) : -1
            // When the first write to the WAL was heard since the last fallback wake-up. While one
            // is pending the WAL's events are not listened to (a commit writes the WAL many times,
            // and each write woke this thread); they are dropped at the wake-up. No announcement
            // settles it: which process wrote the WAL cannot be told, and a writer without a slot
            // may have written it just before another's announcement.
            var unexplainedSince: Int64?
            var lockWaiter: SQLiteDatabase?
            var buffer = [UInt8](repeating: 0, count: 4096)
            while !isStopped() {
                // Put back if putting it back failed (a watch limit reached meanwhile): retried
                // every 200 ms while nothing is pending.
                if watch < 0, walEvents >= 0, unexplainedSince == nil { watch = Self.watch(walEvents, walDirectory) }
                var timeout: Int32 = 200
                if let since = unexplainedSince {
                    timeout = Int32(clamping: max(0, since + fallback - monotonicNanoseconds()) / 1_000_000 + 1)
                }
                // Negative descriptors are left out by poll: the WAL while a write is pending, the
                // announcements once claimed (or when they cannot be watched).
                var pollers = [
                    pollfd(fd: unexplainedSince == nil ? walEvents : -1, events: Int16(POLLIN), revents: 0),
                    pollfd(fd: isClaimed() ? -1 : announcements, events: Int16(POLLIN), revents: 0),
                    pollfd(fd: stopWake, events: Int16(POLLIN), revents: 0),
                ]
                guard poll(&pollers, 3, timeout) >= 0 else { continue }
                // Stopped: no fallback begun now (it can wait for another process's write lock,
                // and the owner waits for this thread to end).
                if isStopped() { break }
                if pollers[1].revents != 0, !isClaimed(), take() { changed() }
                if unexplainedSince == nil, pollers[0].revents != 0, buffer.withUnsafeMutableBytes({ CommitBeacon.drain(walEvents, into: $0, matching: walName) }) {
                    unexplainedSince = monotonicNanoseconds()
                    if watch >= 0 {
                        inotify_rm_watch(walEvents, watch)
                        watch = -1
                    }
                }
                if let since = unexplainedSince, monotonicNanoseconds() >= since + fallback {
                    unexplainedSince = nil
                    // What queued before, then the watch again: a write after it is heard, and one
                    // before it is over once the write lock is ours below.
                    _ = buffer.withUnsafeMutableBytes { CommitBeacon.drain(walEvents, into: $0, matching: nil) }
                    watch = Self.watch(walEvents, walDirectory)
                    // Perhaps a writer that does not announce its commits: wait until the write lock
                    // is free (its commit is over and visible) — in a turn of the writers' queue,
                    // not against it — then wake the owner. At most once per `fallback`.
                    if lockWaiter == nil { lockWaiter = try? SQLiteDatabase(path: databasePath, waitingWhenBusy: true) }
                    let queued = queue?.enter() ?? false
                    do throws(TransportError) {
                        try lockWaiter?.execute("BEGIN IMMEDIATE; ROLLBACK")
                    } catch {
                        lockWaiter = nil
                    }
                    if queued { queue?.leave() }
                    changed()
                }
            }
        }
    }

    /// Reads every event waiting on `events`; whether any was there (with `name`: any for it).
    fileprivate static func drain(_ events: Int32, into buffer: UnsafeMutableRawBufferPointer, matching name: String?) -> Bool {
        var found = false
        while true {
            let count = read(events, buffer.baseAddress, buffer.count)
            guard count > 0 else { return found }
            guard let name else {
                found = true
                continue
            }
            var offset = 0
            while offset + MemoryLayout<inotify_event>.size <= count {
                let event = buffer.loadUnaligned(fromByteOffset: offset, as: inotify_event.self)
                let start = offset + MemoryLayout<inotify_event>.size
                if buffer[start..<min(count, start + Int(event.len))].prefix(while: { $0 != 0 }).elementsEqual(name.utf8) { found = true }
                offset = start + Int(event.len)
            }
        }
    }
}
