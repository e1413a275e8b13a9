import CSQLite
import Foundation
import SwitchyardABI
import SwitchyardPluginKit
import Synchronization

/// A durable ``MessageStore``: one SQLite database file in WAL mode.
///
/// - **Group commit.** Every operation runs on one writer thread, which takes all operations
///   waiting at that moment and runs them in one transaction (each in its own savepoint, so one
///   failing operation does not undo the others). A publish returns only after its transaction
///   committed and was synced (after the write lock is let go, see ``SQLiteWriter``);
///   concurrent publishes share one fsync.
/// - **Ordering keys without lock bookkeeping.** Acknowledged entries are deleted, so the oldest
///   live entry of a key is its head; only a head that is visible and not leased can be leased.
/// - **Several processes, one file.** Leases carry an expiry in the row, so any process may
///   reclaim an expired lease. Other processes' commits are announced once visible (a
///   ``CommitBeacon`` beside the file, watched with inotify), not found by polling; the dispatcher
///   then looks for work with a plain read and takes the write lock only to lease what it found.
public final class SQLiteStore: MessageStore, @unchecked Sendable {
    // @unchecked: the database is touched only by the writer thread; the rest is behind `jobs`.

    /// The database file.
    public let path: String
    /// A topic store (per-group copies) rather than a queue store.
    public let fanOut: Bool
    /// Messages kept per channel for groups that start at the earliest.
    public let retainedPerChannel: Int
    /// Names dead-letter channels (shared by every group, never copied per group).
    private let deadLetterSuffix: String
    private func isDeadLetterChannel(_ channel: String) -> Bool { channel.hasSuffix(deadLetterSuffix) }
    private let host: HostServices
    private let writer: SQLiteWriter
    /// New entries, written at the end of each batch in one statement (writer thread only).
    private let entries = PendingEntries()
    private struct Shared {
        var changeHandler: (@Sendable () -> Void)?
        /// The last counts, and when they may be counted again; nil until the first count is done.
        var cachedCounts: (depth: UInt64, inFlight: UInt64, refreshAt: Int64)?
        /// `knownCounts()` started the first count on a thread of its own.
        var firstCountStarted = false
    }
    private let shared = Guarded(Shared())
    /// A connection of its own for counting (`counts()`): a count reads the whole table, and on the
    /// writer's connection it held up every publish and acknowledgement behind it (WAL readers never
    /// block the writer). Opened on first use.
    private let counter = Guarded<SQLiteDatabase?>(nil)
    /// A connection of its own for the dispatcher's looks (is anything ready to lease, when next):
    /// reads, so they neither take nor wait for the write lock. Opened on first use.
    private let looker = Guarded<SQLiteDatabase?>(nil)
    /// A connection of its own for ``channelCounts(now:)``: an operator's count of every channel
    /// reads the whole table, and on `counter` it held up the dispatcher's and the publishers'
    /// counts behind it. Opened on first use.
    private let channelCounter = Guarded<SQLiteDatabase?>(nil)
    private let beacon: CommitBeacon
    /// Set by ``closeAll()``: the reading connections are not opened again.
    private let closed = Atomic<Bool>(false)

    /// Opens (creating if needed) the store at `path`. Refuses a file that is not SQLite, belongs
    /// to another application, or holds the other kind of store (queue vs topic).
    public init(
        path: String, fanOut: Bool, retainedPerChannel: Int, deadLetterSuffix: String = DeadLetter.defaultSuffix,
        host: HostServices
    ) throws(TransportError) {
        // Open and check the file before any stored property is set: if this throws, the object
        // was never initialised, so its deinit (which waits for the writer thread) does not run.
        let db = try SQLiteDatabase(path: path)
        try Self.prepareSchema(db, kind: fanOut ? "topic" : "queue")
        self.path = path
        self.fanOut = fanOut
        self.retainedPerChannel = retainedPerChannel
        self.deadLetterSuffix = deadLetterSuffix
        self.host = host
        // The beacon reaches the store only weakly: the store owns it, and stops it in deinit.
        let changed = Guarded<(@Sendable () -> Void)?>(nil)
        let beacon = CommitBeacon(databasePath: path) { changed.withLock { $0 }?() }
        self.beacon = beacon
        writer = SQLiteWriter(db, deferred: entries, beacon: beacon)
        changed.withLock { $0 = { [weak self] in self?.externalChange() } }
        if let problem = beacon.problem { host.log(.warning, problem) }
        if writer.walSync == nil {
            host.log(
                .warning,
                "cannot open the WAL of '\(path)' to sync commits after the write lock is let go: they sync inside SQLite "
                    + "(synchronous=FULL), holding the lock, and other processes on the file wait longer")
        }
    }

    deinit { closeAll() }

    /// Closes everything at once: see ``closeAll()``.
    public func brokerDidShutDown() { closeAll() }

    /// Stops the beacon's watcher and the writer (its thread and connection), and closes the
    /// reading connections, all before it returns; later calls fail with `.closed`.
    private func closeAll() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        beacon.stop()
        writer.close()
        for connection in [looker, counter, channelCounter] { connection.withLock { $0?.close() } }
    }

    private func perform<R>(synced: Bool = true, _ body: @escaping (SQLiteDatabase) throws(TransportError) -> R) throws(TransportError) -> R {
        try writer.perform(synced: synced, body)
    }

    private static func prepareSchema(_ db: SQLiteDatabase, kind: String) throws(TransportError) {
        try db.configureDurable()
        // One write transaction for the whole set-up, the check for the ABI 1.3 column included:
        // two processes opening a new store at once (two consumers starting together) each saw
        // the column missing and both added it, and the second failed to start with "duplicate
        // column name: expires_at". Under the write lock the second sees the first one's work.
        try db.execute("BEGIN IMMEDIATE")
        do throws(TransportError) {
            try db.refuseOtherKind(than: kind)
            try db.execute(
                """
                CREATE TABLE IF NOT EXISTS switchyard_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                INSERT OR IGNORE INTO switchyard_meta VALUES ('schema', '1'), ('kind', '\(kind)');
                CREATE TABLE IF NOT EXISTS entries (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    channel TEXT NOT NULL,
                    grp TEXT NOT NULL,
                    ordering_key TEXT,
                    attempt INTEGER NOT NULL,
                    visible_at INTEGER NOT NULL,
                    lease_token INTEGER NOT NULL DEFAULT 0,
                    lease_until INTEGER NOT NULL DEFAULT 0,
                    history TEXT NOT NULL DEFAULT '',
                    message BLOB NOT NULL);
                CREATE INDEX IF NOT EXISTS entries_by_group ON entries (channel, grp, id);
                CREATE INDEX IF NOT EXISTS entries_by_key ON entries (channel, grp, ordering_key, id) WHERE ordering_key IS NOT NULL;
                CREATE TABLE IF NOT EXISTS groups (channel TEXT NOT NULL, grp TEXT NOT NULL, PRIMARY KEY (channel, grp));
                CREATE TABLE IF NOT EXISTS retained (id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, message BLOB NOT NULL);
                """)
            // Retained messages are counted per channel (`seq`): trimming by the table's own id,
            // shared by every channel, left a quiet channel beside a busy one almost nothing.
            // Stores made before get the column once; their rows (seq 0) go once `retain` new ones
            // of their channel have come.
            var hasRetainedSeq = false
            try db.run("SELECT COUNT(*) FROM pragma_table_info('retained') WHERE name = 'seq'") { row in hasRetainedSeq = row.int(0) > 0 }
            if !hasRetainedSeq { try db.execute("ALTER TABLE retained ADD COLUMN seq INTEGER NOT NULL DEFAULT 0") }
            try db.execute("CREATE INDEX IF NOT EXISTS retained_by_channel ON retained (channel, seq)")
            // ABI 1.3: messages may expire. Stores made before keep working: the column is added once.
            var hasExpiry = false
            try db.run("SELECT COUNT(*) FROM pragma_table_info('entries') WHERE name = 'expires_at'") { row in hasExpiry = row.int(0) > 0 }
            if !hasExpiry {
                try db.execute(
                    """
                    ALTER TABLE entries ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;
                    CREATE INDEX IF NOT EXISTS entries_by_expiry ON entries (expires_at) WHERE expires_at > 0;
                    """)
            }
            try db.execute("COMMIT")
        } catch {
            try? db.execute("ROLLBACK")
            throw error
        }
    }

    /// Runs `body` on the dispatcher's reading connection. Without the write lock it sees every
    /// commit that was over when it starts: this process's (they returned before anyone looks),
    /// and other processes' (the beacon announces them only once they are visible).
    private func look<R>(_ body: (SQLiteDatabase) throws(TransportError) -> R) throws(TransportError) -> R {
        try looker.withLock { connection throws(TransportError) -> R in
            if closed.load(ordering: .acquiring) { throw TransportError(.closed, "the store at '\(path)' is closed") }
            do throws(TransportError) {
                if connection == nil { connection = try SQLiteDatabase(path: path, waitingWhenBusy: true) }
                return try body(connection!)
            } catch {
                connection = nil  // opened again on the next look
                throw error
            }
        }
    }

    private func externalChange() {
        shared.withLock { $0.changeHandler }?()
    }

    // MARK: MessageStore

    public func setChangeHandler(_ handler: @escaping @Sendable () -> Void) {
        shared.withLock { $0.changeHandler = handler }
    }

    /// The beacon's announcements (other processes' commits); the change handler is then called
    /// only for what the WAL alone tells (writers without a slot).
    public func claimChangeDescriptor() -> Int32 { beacon.claimAnnouncements() }

    public func takeChanges() -> Bool { beacon.takeAnnouncements() }

    public func append(_ messages: [Message]) throws(TransportError) {
        try insert(messages, deleting: nil)
    }

    public func append(_ messages: [Message], acking ref: LeaseRef) throws(TransportError) {
        try insert(messages, deleting: ref)
    }

    /// Queued for the writer's next batch; `done` runs on the writer's syncer thread once the
    /// commit is synced.
    public func append(_ messages: [Message], done: @escaping (TransportError?) -> Void) {
        writer.submit(insertion(of: messages, deleting: nil), done: done)
    }

    /// Deletes the entry leased under `ref` (an acknowledgement), or throws not-found.
    private static func deleteLeased(_ ref: LeaseRef, in db: SQLiteDatabase) throws(TransportError) {
        let changed = try db.run("DELETE FROM entries WHERE id = ? AND lease_token = ?", [.int(Int64(ref.entry)), .int(Int64(ref.token))])
        if changed == 0 { throw TransportError(.notFound, "unknown, settled or expired delivery") }
    }

    /// Inserts `messages` and, with `ref`, deletes that leased entry, in one savepoint of one
    /// commit: a missing lease rolls the inserts back.
    private func insert(_ messages: [Message], deleting ref: LeaseRef?) throws(TransportError) {
        try perform(insertion(of: messages, deleting: ref))
    }

    /// The writer's operation for ``insert(_:deleting:)``. The messages are encoded when it runs,
    /// on the writer's thread, straight into the batch's rows: with many publishers in flight the
    /// writer sat idle two thirds of the time while their tasks' publishing was the round's
    /// longest part, and an array per message cost an allocation on the publisher's thread and a
    /// free on the syncer's.
    private func insertion(of messages: [Message], deleting ref: LeaseRef?) -> (SQLiteDatabase) throws(TransportError) -> Void {
        { [fanOut, retainedPerChannel, isDeadLetterChannel, entries] db throws(TransportError) in
            if let ref { try Self.deleteLeased(ref, in: db) }
            for message in messages {
                guard fanOut && !isDeadLetterChannel(message.channel) else {
                    entries.add(message, groups: CollectionOfOne(""))
                    continue
                }
                var groups: [String] = []
                try db.run("SELECT grp FROM groups WHERE channel = ?", [.text(message.channel)]) { row in groups.append(row.text(0)) }
                if retainedPerChannel > 0 {
                    // The channel's last `retain`, by its own count (the index makes both steps a lookup).
                    try db.run(
                        "INSERT INTO retained (channel, message, seq) VALUES (?1, ?2, (SELECT COALESCE(MAX(seq), 0) + 1 FROM retained WHERE channel = ?1))",
                        [.text(message.channel), .blob(MessageCodec.encode(message))])
                    try db.run(
                        "DELETE FROM retained WHERE channel = ?1 AND seq <= (SELECT MAX(seq) FROM retained WHERE channel = ?1) - ?2",
                        [.text(message.channel), .int(Int64(retainedPerChannel))])
                }
                entries.add(message, groups: groups)
            }
        }
    }

    public func addGroup(channel: String, group: String, start: StartPosition) throws(TransportError) {
        let shared = !fanOut || isDeadLetterChannel(channel)
        let grp = shared ? "" : group
        let now = host.nowNanos()
        try perform { db throws(TransportError) in
            let added = try db.run("INSERT OR IGNORE INTO groups (channel, grp) VALUES (?, ?)", [.text(channel), .text(grp)])
            guard added == 1, !shared, start == .earliest else { return }
            var retained: [[UInt8]] = []
            try db.run("SELECT message FROM retained WHERE channel = ? ORDER BY id", [.text(channel)]) { row throws(TransportError) in
                retained.append(try row.blob(0) { Array($0) })
            }
            for blob in retained {
                let message = try? MessageCodec.decode(blob)
                try db.run(
                    "INSERT INTO entries (channel, grp, ordering_key, attempt, visible_at, expires_at, message) VALUES (?, ?, ?, 0, ?, ?, ?)",
                    [
                        .text(channel), .text(grp), message?.orderingKey.map { .text($0) } ?? .null, .int(now),
                        .int(message?.expiresAtNanos ?? 0), .blob(blob),
                    ])
            }
        }
    }

    public func lease(channel: String, group: String, limit: Int, now: Int64, leaseUntil: Int64) throws(TransportError) -> [LeasedMessage] {
        try claim(channel: channel, group: group, limit: limit, now: now, leaseUntil: leaseUntil)
    }

    public func take(channel: String, group: String, limit: Int, now: Int64, leaseUntil: Int64) throws(TransportError) -> [LeasedMessage] {
        try claim(channel: channel, group: group, limit: limit, now: now, leaseUntil: leaseUntil, removing: true)
    }

    /// Leases the ready entries until `leaseUntil` or, `removing`, deletes those without an
    /// ordering key (a take: their refs' tokens are 0), in one commit.
    private func claim(channel: String, group: String, limit: Int, now: Int64, leaseUntil: Int64, removing: Bool = false) throws(TransportError) -> [LeasedMessage] {
        let grp = !fanOut || isDeadLetterChannel(channel) ? "" : group
        // Look first, with a plain read: most looks find nothing (another process's commit was
        // for another channel, or it was a lease), and a look that found nothing under the write
        // lock still took it from every other process.
        guard
            try look({ db throws(TransportError) in
                var ready = false
                try db.run(
                    """
                    SELECT EXISTS (SELECT 1 FROM entries e
                        WHERE channel = ?1 AND grp = ?2 AND visible_at <= ?3 AND (lease_token = 0 OR lease_until <= ?3)
                          AND (ordering_key IS NULL OR id = (SELECT MIN(id) FROM entries k
                               WHERE k.channel = ?1 AND k.grp = ?2 AND k.ordering_key = e.ordering_key)))
                    """, [.text(channel), .text(grp), .int(now)]
                ) { row in ready = row.int(0) != 0 }
                return ready
            })
        else { return [] }
        // Not synced: a lease (or take) lost in a power cut only means the message is delivered
        // again (with one attempt fewer counted), which at-least-once delivery allows. Saves one
        // fsync per delivery round.
        let claimed = try perform(synced: false) { [isDeadLetterChannel, fanOut] db throws(TransportError) in
            var corrupt = false
            var dropped: [String] = []  // corrupt dead letters, logged once the lease is over
            var rows: [(id: Int64, attempt: Int64, history: String, message: Result<Message, TransportError>)] = []
            try db.run(
                """
                SELECT id, attempt, history, message FROM entries e
                WHERE channel = ?1 AND grp = ?2 AND visible_at <= ?3 AND (lease_token = 0 OR lease_until <= ?3)
                  AND (ordering_key IS NULL OR id = (SELECT MIN(id) FROM entries k
                       WHERE k.channel = ?1 AND k.grp = ?2 AND k.ordering_key = e.ordering_key))
                ORDER BY id LIMIT ?4
                """, [.text(channel), .text(grp), .int(now), .int(Int64(limit))]
            ) { row throws(TransportError) in
                let decoded = try row.blob(3) { bytes -> Result<Message, TransportError> in
                    do throws(TransportError) { return .success(try MessageCodec.decode(bytes)) } catch { return .failure(error) }
                }
                rows.append((row.int(0), row.int(1), row.text(2), decoded))
            }
            var leased: [LeasedMessage] = []
            for row in rows {
                switch row.message {
                case .success(var message):
                    message.attempt = UInt32(clamping: row.attempt + 1)
                    if removing && message.orderingKey == nil {
                        try db.run("DELETE FROM entries WHERE id = ?", [.int(row.id)])
                        leased.append(LeasedMessage(ref: LeaseRef(entry: UInt64(row.id), token: 0), message: message))
                        continue
                    }
                    // Random, not counted: tokens must differ across processes sharing the file,
                    // and a random 62-bit value needs no shared counter (or a write) to be unique.
                    let token = Int64.random(in: 1...(Int64(1) << 62))
                    try db.run(
                        "UPDATE entries SET lease_token = ?, lease_until = ?, attempt = attempt + 1 WHERE id = ?",
                        [.int(token), .int(leaseUntil), .int(row.id)])
                    leased.append(LeasedMessage(ref: LeaseRef(entry: UInt64(row.id), token: UInt64(token)), message: message))
                case .failure(let error):
                    // A corrupt record is dead-lettered with its reason and raw bytes, never delivered.
                    corrupt = true
                    var raw: [UInt8] = []
                    try db.run("SELECT message FROM entries WHERE id = ?", [.int(row.id)]) { r throws(TransportError) in raw = try r.blob(0) { Array($0) } }
                    try db.run("DELETE FROM entries WHERE id = ?", [.int(row.id)])
                    let dead = DeadLetter.copy(
                        of: Message(id: "corrupt-\(row.id)", channel: channel, body: raw), to: channel + self.deadLetterSuffix, group: grp,
                        groupCopy: fanOut && !isDeadLetterChannel(channel), reason: error.message, history: [], now: now)
                    if !isDeadLetterChannel(channel) {
                        try db.run(
                            "INSERT INTO entries (channel, grp, attempt, visible_at, message) VALUES (?, '', 0, ?, ?)",
                            [.text(dead.channel), .int(now), .blob(MessageCodec.encode(dead))])
                    } else {
                        // A dead letter is not dead-lettered again: deleted, and said so.
                        dropped.append("entry \(row.id), \(raw.count) bytes: \(error.message)")
                    }
                }
            }
            return (leased: leased, corrupt: corrupt, dropped: dropped)
        }
        for record in claimed.dropped {
            host.log(.error, "a corrupt record in the dead-letter channel '\(channel)' of \(path) was deleted (\(record)): a dead letter is not dead-lettered again")
        }
        // Fewer returned than were ready, and a dead letter stored: the broker looks again (it
        // takes fewer than it asked for to mean that nothing more is ready).
        if claimed.corrupt { externalChange() }
        return claimed.leased
    }

    // Acknowledgements and releases are not synced, like leases: one lost in a power cut means
    // the message is delivered again, which at-least-once delivery allows, never a loss. (WAL
    // frames reach the disk in order, so a lost one is always among the last commits, and the
    // next synced commit makes it durable too.) A process that dies loses none of them: only
    // the fsync is skipped, not the write.
    public func ack(_ ref: LeaseRef) throws(TransportError) {
        try perform(synced: false) { db throws(TransportError) in
            try Self.deleteLeased(ref, in: db)
        }
    }

    public func ack(batch refs: [LeaseRef]) -> [TransportError?] {
        // One transaction, one commit for the whole batch.
        let outcome = Result { () throws(TransportError) -> [TransportError?] in
            try perform(synced: false) { db throws(TransportError) -> [TransportError?] in
                try refs.map { ref throws(TransportError) -> TransportError? in
                    do throws(TransportError) {
                        try Self.deleteLeased(ref, in: db)
                        return nil
                    } catch {
                        if error.code == .notFound { return error }  // this one alone; the batch goes on
                        throw error
                    }
                }
            }
        }
        switch outcome {
        case .success(let results): return results
        case .failure(let error): return refs.map { _ in error }
        }
    }

    public func retry(_ ref: LeaseRef, visibleAt: Int64, reason: String, now: Int64) throws(TransportError) {
        try perform { db throws(TransportError) in
            let changed = try db.run(
                """
                UPDATE entries SET lease_token = 0, lease_until = 0, visible_at = ?,
                    history = history || 'attempt ' || attempt || ' at ' || ? || ': ' || ? || char(10)
                WHERE id = ? AND lease_token = ?
                """, [.int(visibleAt), .int(now), .text(reason), .int(Int64(ref.entry)), .int(Int64(ref.token))])
            if changed == 0 { throw TransportError(.notFound, "unknown, settled or expired delivery") }
        }
    }

    public func release(_ ref: LeaseRef) throws(TransportError) {
        try perform(synced: false) { db throws(TransportError) in
            let changed = try db.run(
                "UPDATE entries SET lease_token = 0, lease_until = 0, attempt = MAX(attempt - 1, 0) WHERE id = ? AND lease_token = ?",
                [.int(Int64(ref.entry)), .int(Int64(ref.token))])
            if changed == 0 { throw TransportError(.notFound, "unknown, settled or expired delivery") }
        }
    }

    public func extend(_ leases: [(ref: LeaseRef, until: Int64)]) -> [TransportError?] {
        // One transaction, one commit, not synced (see MessageStore.extend).
        let outcome = Result { () throws(TransportError) -> [TransportError?] in
            try perform(synced: false) { db throws(TransportError) -> [TransportError?] in
                try leases.map { lease throws(TransportError) -> TransportError? in
                    let changed = try db.run(
                        "UPDATE entries SET lease_until = ? WHERE id = ? AND lease_token = ? AND lease_token != 0",
                        [.int(lease.until), .int(Int64(lease.ref.entry)), .int(Int64(lease.ref.token))])
                    return changed == 0 ? TransportError(.notFound, "unknown, settled or expired delivery") : nil
                }
            }
        }
        switch outcome {
        case .success(let results): return results
        case .failure(let error): return leases.map { _ in error }
        }
    }

    @discardableResult
    public func deadLetter(_ ref: LeaseRef, to deadLetterChannel: String, reason: String, now: Int64) throws(TransportError) -> Message {
        try perform { db throws(TransportError) -> Message in
            var found: (grp: String, attempt: Int64, history: String, blob: [UInt8])?
            try db.run(
                "SELECT grp, attempt, history, message FROM entries WHERE id = ? AND lease_token = ?",
                [.int(Int64(ref.entry)), .int(Int64(ref.token))]
            ) { row throws(TransportError) in
                found = (row.text(0), row.int(1), row.text(2), try row.blob(3) { Array($0) })
            }
            guard let found else { throw TransportError(.notFound, "unknown, settled or expired delivery") }
            var message = try MessageCodec.decode(found.blob)
            message.attempt = UInt32(clamping: found.attempt)
            let history = found.history.split(separator: "\n").map(String.init) + ["attempt \(found.attempt) at \(now): \(reason)"]
            let dead = DeadLetter.copy(
                of: message, to: deadLetterChannel, group: found.grp, groupCopy: self.fanOut && !self.isDeadLetterChannel(message.channel),
                reason: reason, history: history, now: now)
            try db.run("DELETE FROM entries WHERE id = ?", [.int(Int64(ref.entry))])
            try db.run(
                "INSERT INTO entries (channel, grp, ordering_key, attempt, visible_at, message) VALUES (?, '', NULL, 0, ?, ?)",
                [.text(deadLetterChannel), .int(now), .blob(MessageCodec.encode(dead))])
            return dead
        }
    }

    public func removeExpired(now: Int64, limit: Int) throws(TransportError) -> [ExpiredEntry] {
        try perform { db throws(TransportError) -> [ExpiredEntry] in
            var removed: [ExpiredEntry] = []
            var ids: [Int64] = []
            try db.run(
                """
                SELECT id, grp, attempt, history, message, channel FROM entries
                WHERE expires_at > 0 AND expires_at <= ?1 AND (lease_token = 0 OR lease_until <= ?1) LIMIT ?2
                """, [.int(now), .int(Int64(limit))]
            ) { row throws(TransportError) in
                ids.append(row.int(0))
                // An unreadable record expires like any other; its bytes go with it.
                let raw = try row.blob(4) { Array($0) }
                var message = (try? MessageCodec.decode(raw)) ?? Message(id: "corrupt-\(row.int(0))", channel: row.text(5), body: raw)
                message.attempt = UInt32(clamping: row.int(2))
                removed.append(ExpiredEntry(message: message, group: row.text(1), history: row.text(3).split(separator: "\n").map(String.init)))
            }
            for id in ids { try db.run("DELETE FROM entries WHERE id = ?", [.int(id)]) }
            return removed
        }
    }

    public func nextWakeup(channel: String, group: String, now: Int64) -> Int64? {
        let grp = !fanOut || isDeadLetterChannel(channel) ? "" : group
        return try? look { db throws(TransportError) -> Int64? in
            var earliest: Int64?
            try db.run(
                """
                SELECT MIN(CASE WHEN lease_token != 0 AND lease_until > ?3 THEN lease_until
                                WHEN lease_token = 0 AND visible_at > ?3 THEN visible_at END)
                FROM entries WHERE channel = ?1 AND grp = ?2
                """, [.text(channel), .text(grp), .int(now)]
            ) { row in earliest = row.isNull(0) ? nil : row.int(0) }
            return earliest
        }
    }

    /// Depth and in-flight counts, refreshed at most every 100 ms — and, since a count reads every
    /// entry, no sooner than 20 times the last count took, so counting a deep queue takes at most
    /// about 5% of a core. Counted on a connection of its own, off the writer thread. Approximate:
    /// other processes change the table meanwhile (capacity is approximate anyway).
    public func counts() -> (depth: UInt64, inFlight: UInt64) {
        count(now: host.nowNanos())
    }

    /// Per channel and group, counted on a connection of its own (off the writer thread, and apart
    /// from the counts publishes and the dispatcher ask for; one count at a time): every (channel,
    /// group) with an entry, and a topic's registered groups with none (not the shared "" group
    /// every subscribed channel registers: reply channels of processes long gone would be listed
    /// for ever). The store's file, so every process that shares it is counted.
    public func channelCounts(now: Int64) throws(TransportError) -> [ChannelStats]? {
        try channelCounter.withLock { (connection) throws(TransportError) -> [ChannelStats] in
            if closed.load(ordering: .acquiring) { throw TransportError(.closed, "the store is closed") }
            do throws(TransportError) {
                if connection == nil { connection = try SQLiteDatabase(path: path, waitingWhenBusy: true) }
                var found: [ChannelStats] = []
                _ = try connection!.run(ChannelCountsQuery.sql(now: "?1"), [.int(now)]) { row in
                    found.append(ChannelCountsQuery.row(text: row.text, int: row.int))
                }
                return found
            } catch {
                connection = nil  // opened again on the next count
                throw error
            }
        }
    }

    /// The counts without waiting for a count (see `MessageStore.knownCounts()`): the last ones,
    /// a refresh that is due made on a thread of its own; nil before the first count is over
    /// (which then starts, also on a thread of its own).
    public func knownCounts() -> (depth: UInt64, inFlight: UInt64)? {
        let now = host.nowNanos()
        let (cached, start) = shared.withLock { shared -> ((depth: UInt64, inFlight: UInt64, refreshAt: Int64)?, Bool) in
            guard let cached = shared.cachedCounts else {
                defer { shared.firstCountStarted = true }
                return (nil, !shared.firstCountStarted)
            }
            guard now >= cached.refreshAt else { return (cached, false) }
            shared.cachedCounts!.refreshAt = .max
            return (cached, true)
        }
        if start {
            let claimed = cached
            Thread { [self] in _ = count(now: now, claimed: claimed) }.start()
        }
        return cached.map { ($0.depth, $0.inFlight) }
    }

    /// Counts, unless another thread has just counted (or counts now, or a refresh is not yet due:
    /// then the last counts). `claimed`: the caller already took the refresh (its last counts).
    private func count(now: Int64, claimed: (depth: UInt64, inFlight: UInt64, refreshAt: Int64)?? = nil) -> (depth: UInt64, inFlight: UInt64) {
        // One thread counts; the others, meanwhile, get the last counts rather than wait for a
        // count that may take a tenth of a second (a publish checking for room asks for them).
        // Before the first count there are no last counts: then every caller waits for one.
        let (cached, counting) =
            claimed.map { ($0, true) }
            ?? shared.withLock { shared -> ((depth: UInt64, inFlight: UInt64, refreshAt: Int64)?, Bool) in
                guard let cached = shared.cachedCounts else { return (nil, true) }
                guard now >= cached.refreshAt else { return (cached, false) }
                shared.cachedCounts!.refreshAt = .max
                return (cached, true)
            }
        if let cached, !counting { return (cached.depth, cached.inFlight) }
        return counter.withLock { connection -> (depth: UInt64, inFlight: UInt64) in
            // Waited for a first count another caller made: it is as fresh as one of our own.
            if cached == nil, let first = shared.withLock({ $0.cachedCounts }) { return (first.depth, first.inFlight) }
            if closed.load(ordering: .acquiring) { return cached.map { ($0.depth, $0.inFlight) } ?? (0, 0) }
            let started = monotonicNanoseconds()
            do throws(TransportError) {
                if connection == nil { connection = try SQLiteDatabase(path: path, waitingWhenBusy: true) }
                var result = (depth: UInt64(0), inFlight: UInt64(0))
                try connection!.run(
                    "SELECT COUNT(*) FILTER (WHERE lease_token = 0 OR lease_until <= ?1), COUNT(*) FILTER (WHERE lease_token != 0 AND lease_until > ?1) FROM entries",
                    [.int(now)]
                ) { row in result = (UInt64(row.int(0)), UInt64(row.int(1))) }
                let took = monotonicNanoseconds() - started
                shared.withLock { $0.cachedCounts = (result.depth, result.inFlight, now + max(100_000_000, 20 * took)) }
                return result
            } catch {
                // Opened again on the next count; the last counts stand meanwhile (none before the
                // first count succeeds, so the next caller counts again).
                connection = nil
                return shared.withLock { shared in
                    guard let last = shared.cachedCounts else { return (0, 0) }
                    shared.cachedCounts!.refreshAt = now + 100_000_000
                    return (last.depth, last.inFlight)
                }
            }
        }
    }
}

/// New entries left by a batch's publishes, inserted at its end with multi-row statements: SQLite
/// spends much of a one-row insert on the statement itself (opening the table's and indexes'
/// cursors, the AUTOINCREMENT bookkeeping), so 64 rows in one statement cost far less than 64
/// statements. Touched only on the writer thread.
private final class PendingEntries: SQLiteDeferredWrites, @unchecked Sendable {
    // @unchecked: only the writer thread touches it (the store's operations run there).

    /// One entry; its text and message are ranges of the batch's ``Batch/bytes``.
    private struct Row {
        var channel: Range<Int>
        var group: Range<Int>
        var orderingKey: Range<Int>?
        var attempt: Int64
        var visibleAt: Int64
        var expiresAt: Int64
        var message: Range<Int>
    }

    /// The batch's rows and, one after another, their text and messages: bound to the insert
    /// where they lie, so SQLite copies nothing (a copy per bound value, each its own allocation,
    /// cost a quarter of what SQLite spends on a row).
    private struct Batch: ~Copyable {
        var rows: [Row] = []
        var bytes = ByteArena()
    }

    /// Reached through a pointer, not held as stored properties: Swift checks each access to a
    /// class's stored property for overlap at run time (about 90 instructions, two a message),
    /// and only the writer thread ever touches these.
    private let batch: UnsafeMutablePointer<Batch> = {
        let batch = UnsafeMutablePointer<Batch>.allocate(capacity: 1)
        batch.initialize(to: Batch())
        return batch
    }()

    deinit {
        batch.deinitialize(count: 1)
        batch.deallocate()
    }

    /// Leaves an entry of `message` for each of `groups`, sharing one encoding of it.
    func add(_ message: Message, groups: some Collection<String>) {
        if groups.isEmpty { return }
        let encoded = MessageCodec.encode(message, appendingTo: &batch.pointee.bytes)
        for group in groups { batch.pointee.rows.append(Self.row(of: message, group: group, encoded: encoded, in: &batch.pointee.bytes)) }
    }

    /// Appends the entry's text to `bytes` and returns its row.
    private static func row(of message: Message, group: String, encoded: Range<Int>, in bytes: inout ByteArena) -> Row {
        func append(_ text: String) -> Range<Int> {
            var text = text
            return text.withUTF8 { bytes.append(UnsafeRawBufferPointer($0)) }
        }
        return Row(
            channel: append(message.channel), group: append(group), orderingKey: message.orderingKey.map(append),
            attempt: Int64(message.attempt), visibleAt: message.enqueuedAtNanos, expiresAt: message.expiresAtNanos, message: encoded)
    }

    /// Rows per statement, largest first; a batch is written in chunks of these sizes (a statement
    /// per size, prepared once).
    private static let chunkSizes = [64, 16, 4, 1]
    private static let insertSQL: [Int: String] = Dictionary(
        uniqueKeysWithValues: chunkSizes.map { size in
            (
                size,
                "INSERT INTO entries (channel, grp, ordering_key, attempt, visible_at, expires_at, message) VALUES "
                    + Array(repeating: "(?, ?, ?, ?, ?, ?, ?)", count: size).joined(separator: ", ")
            )
        })

    func flush(_ db: SQLiteDatabase) throws(TransportError) {
        defer { discard() }
        let rows = batch.pointee.rows
        if rows.isEmpty { return }
        // Borrowed by SQLite until each statement has run (`run` resets it before returning);
        // nothing is appended meanwhile.
        let base = batch.pointee.bytes.bytes
        var next = 0
        while next < rows.count {
            let size = Self.chunkSizes.first { $0 <= rows.count - next }!
            let chunk = rows[next..<next + size]
            try db.run(
                Self.insertSQL[size]!,
                binding: { parameters in
                    var position: Int32 = 1
                    for row in chunk {
                        parameters.bindBorrowedText(UnsafeRawBufferPointer(rebasing: base[row.channel]), at: position)
                        parameters.bindBorrowedText(UnsafeRawBufferPointer(rebasing: base[row.group]), at: position + 1)
                        if let key = row.orderingKey {
                            parameters.bindBorrowedText(UnsafeRawBufferPointer(rebasing: base[key]), at: position + 2)
                        } else {
                            parameters.bindNull(at: position + 2)
                        }
                        parameters.bind(row.attempt, at: position + 3)
                        parameters.bind(row.visibleAt, at: position + 4)
                        parameters.bind(row.expiresAt, at: position + 5)
                        parameters.bindBorrowedBlob(UnsafeRawBufferPointer(rebasing: base[row.message]), at: position + 6)
                        position += 7
                    }
                })
            next += size
        }
    }

    func discard() {
        batch.pointee.rows.removeAll(keepingCapacity: true)
        // Kept for the next batch, unless a batch of large messages grew it: not held for good.
        batch.pointee.bytes.removeAll(keepingAtMost: Self.keptBytes)
    }

    /// The most buffer kept between batches.
    private static let keptBytes = 4 << 20
}
