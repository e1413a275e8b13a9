import DequeModule
import SwitchyardABI
import SwitchyardPostgres
import SwitchyardTransportKit
import SwitchyardWire

/// The idempotent inbox of a route: remembers the calls it has handled (by idempotency key) for a
/// window, with their replies, so a redelivered call is answered again instead of run again.
/// At-least-once delivery plus the inbox gives effectively-once execution.
///
/// In memory by default; in a database (SQLite `path`, or PostgreSQL) it survives restarts, is
/// shared by every process that uses the same database, and commits the handler's effects and
/// follow-up calls with its record.
final class Inbox: Sendable {
    /// What the inbox keeps of a handled call: the reply it sent, if any.
    struct Handled: Sendable {
        let outcome: String
        let reply: [UInt8]
    }

    private let windowNanos: Int64
    /// The meta table's key for the longest window declared on a database (``InboxDatabase/declareWindow(_:)``).
    static let windowKey = "inbox_window_ns"
    /// The database, or nil for an inbox in memory.
    let database: (any InboxDatabase)?
    private let storage = Guarded<Storage>(Storage())
    /// Deliveries waiting for another delivery of the same call to end (``waitWhileRunning(_:)``).
    private let runningEnded = IdleWaiters()

    private struct Storage {
        /// Keys being handled in this process now: a second delivery of the same call waits for
        /// the first instead of running alongside it.
        var running: Set<String> = []
        var memory: [String: (at: Int64, handled: Handled)] = [:]
        var order: Deque<(key: String, at: Int64)> = []
        var writesSincePrune = 0
    }

    /// Where this process's commits to a SQLite inbox's file take turns (with `outboxes:`
    /// transactions on the same file): see ``SQLiteWriteGates``. Nil for other inboxes.
    let writeGate: AsyncGate?

    init(windowNanos: Int64, database: (any InboxDatabase)?, writeGate: AsyncGate? = nil) {
        self.windowNanos = windowNanos
        self.database = database
        self.writeGate = writeGate
    }

    /// Whether the inbox is kept in a database (and so can commit effects with its records).
    var isDurable: Bool { database != nil }

    /// What a delivery finds in the inbox.
    enum Claim {
        /// Handled before: answer with this, do not run it.
        case handled(Handled)
        /// Not handled yet, and now claimed by the caller, who must call ``finish(_:_:effects:outbox:)`` or ``release(_:)``.
        case claimed
        /// Another delivery of the same call is running in this process.
        case running
    }

    /// Looks `key` up and, when it is new, claims it for the caller.
    func claim(_ key: String) throws(TransportError) -> Claim {
        if storage.withLock({ $0.running.contains(key) }) { return .running }
        let cutoff = WallClock.nowNanos() - windowNanos
        if let database {
            // Outside the lock: a database round trip (PostgreSQL) must not hold up other calls.
            if let handled = try database.lookup(key, cutoff: cutoff) { return .handled(handled) }
            return storage.withLock { $0.running.insert(key).inserted } ? .claimed : .running
        }
        return storage.withLock { storage in
            if storage.running.contains(key) { return .running }
            if let entry = storage.memory[key], entry.at >= cutoff { return .handled(entry.handled) }
            storage.running.insert(key)
            return .claimed
        }
    }

    /// Ends a claim without recording anything: a later delivery runs the call (a failure to be
    /// retried).
    func release(_ key: String) {
        storage.withLock { _ = $0.running.remove(key) }
        runningEnded.wakeAll()
    }

    /// Returns once no delivery of `key` runs in this process any more (``Claim/running``), or
    /// after a second at most; the caller claims again either way.
    func waitWhileRunning(_ key: String) async {
        await runningEnded.wait(until: .now + .seconds(1)) { [storage] in !storage.withLock { $0.running.contains(key) } }
    }

    /// Ends a claim: remembers the call when it was handled (`handled` non-nil), or lets a later
    /// delivery run it (a failure to be retried).
    ///
    /// In a durable inbox, `effects` run and `outbox` is written in the same transaction that
    /// records the call, so they happen exactly once however often the call is delivered. If
    /// another process recorded the same call meanwhile (a redelivery that ran there at the same
    /// time), nothing of ours is committed and its record is returned: answer with that. Throws
    /// (committing nothing) when an effect or the write fails.
    func finish(
        _ key: String, _ handled: Handled?, effects: [InboxEffect] = [], outbox: [OutboxMessage] = []
    ) throws(TransportError) -> Handled? {
        defer {
            storage.withLock { _ = $0.running.remove(key) }
            runningEnded.wakeAll()
        }
        guard let handled else { return nil }
        let now = WallClock.nowNanos()
        let cutoff = now - windowNanos
        guard let database else {
            storage.withLock { storage in
                storage.memory[key] = (now, handled)
                storage.order.append((key, now))
                while let oldest = storage.order.first, oldest.at < cutoff {
                    storage.order.removeFirst()
                    if let entry = storage.memory[oldest.key], entry.at == oldest.at { storage.memory[oldest.key] = nil }
                }
            }
            return nil
        }
        let first = try database.record(key, handled, at: now, cutoff: cutoff, effects: effects, outbox: outbox)
        let prune = storage.withLock { storage -> Bool in
            storage.writesSincePrune += 1
            guard storage.writesSincePrune >= 1000 else { return false }
            storage.writesSincePrune = 0
            return true
        }
        if prune { try? database.prune(before: cutoff) }
        return first
    }

    /// Forgets the records older than every window that shares the database (a durable inbox:
    /// what ``finish(_:_:effects:outbox:)`` does every 1,000 records).
    func prune() throws(TransportError) {
        try database?.prune(before: WallClock.nowNanos() - windowNanos)
    }
}

/// The kind of database a durable inbox keeps its records in (``Switchyard/inboxDatabase``).
public enum InboxDatabaseKind: Sendable, Hashable {
    /// A SQLite file (`inbox: { path: FILE }`): ``Switchyard/inboxTransaction(_:)``.
    case sqlite
    /// PostgreSQL (`inbox: { postgres: {...} }`): ``Switchyard/inboxTransaction(_:_:)``.
    case postgres
}

/// A database a durable inbox keeps its records in, and commits a handler's effects and
/// follow-up calls in.
protocol InboxDatabase: Sendable {
    /// Which database.
    var kind: InboxDatabaseKind { get }
    /// The record of `key` made since `cutoff`, if any.
    func lookup(_ key: String, cutoff: Int64) throws(TransportError) -> Inbox.Handled?
    /// In one transaction: unless `key` was recorded since `cutoff` (then that record is
    /// returned and nothing committed), applies `effects`, writes `outbox`, records `handled`.
    func record(
        _ key: String, _ handled: Inbox.Handled, at now: Int64, cutoff: Int64, effects: [InboxEffect], outbox: [OutboxMessage]
    ) throws(TransportError) -> Inbox.Handled?
    /// Keeps records for at least `windowNanos`: the longest window declared by any route, in any
    /// process, that shares the database is kept (in its meta table), so a route with a shorter
    /// window never forgets the calls of one with a longer window. Never shrinks.
    func declareWindow(_ windowNanos: Int64) throws(TransportError)
    /// Forgets records older than `cutoff` and older than the longest declared window.
    func prune(before cutoff: Int64) throws(TransportError)
    /// Where the relay of this database's outbox reads (a connection of its own).
    func makeOutboxStorage() throws(TransportError) -> any OutboxStorage
    /// Identifies the database, so routes sharing it share one relay.
    var identity: String { get }
    /// Hangs up its connections now (the system's shutdown), not when it is released: a server's,
    /// and a file's (whose last close removes its WAL); a later call connects again.
    func closeConnections()
}

extension InboxDatabase {
    func closeConnections() {}
}

/// An inbox in a SQLite file.
final class SQLiteInboxDatabase: InboxDatabase {
    let path: String
    /// The connection: closed at the system's shutdown, opened again by a later call.
    private let database: ReopenableConnection
    var kind: InboxDatabaseKind { .sqlite }
    var identity: String { "sqlite:" + path }

    init(path: String) throws(TransportError) {
        self.path = path
        let database = try SQLiteDatabase(path: path)
        try database.configureDurable()
        // In one IMMEDIATE transaction: it waits for the write lock (the busy handler) where
        // autocommit DDL racing another process starting on the same file fails at once.
        try database.execute(
            """
            BEGIN IMMEDIATE;
            CREATE TABLE IF NOT EXISTS switchyard_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            INSERT OR IGNORE INTO switchyard_meta VALUES ('schema', '1'), ('kind', 'inbox');
            CREATE TABLE IF NOT EXISTS inbox (key TEXT PRIMARY KEY, at INTEGER NOT NULL, outcome TEXT NOT NULL, reply BLOB NOT NULL);
            CREATE INDEX IF NOT EXISTS inbox_at ON inbox (at);
            COMMIT;
            """)
        var kind = ""
        _ = try database.run("SELECT value FROM switchyard_meta WHERE key = 'kind'") { row in kind = row.text(0) }
        guard kind == "inbox" else {
            throw TransportError(.config, "'\(path)' is a Switchyard \(kind) store, not an inbox; give the inbox its own file")
        }
        self.database = ReopenableConnection(database) { () throws(TransportError) -> SQLiteDatabase in
            let reopened = try SQLiteDatabase(path: path)
            try reopened.configureDurable()
            return reopened
        }
    }

    /// Closes the file's connection at the system's shutdown (see ``ReopenableConnection``).
    func closeConnections() { database.close() }

    private static func lookup(_ key: String, cutoff: Int64, in database: SQLiteDatabase) throws(TransportError) -> Inbox.Handled? {
        var found: Inbox.Handled?
        _ = try database.run("SELECT outcome, reply FROM inbox WHERE key = ? AND at >= ?", [.text(key), .int(cutoff)]) { (row) throws(TransportError) in
            found = Inbox.Handled(outcome: row.text(0), reply: try row.blob(1) { (bytes) throws(TransportError) in Array(bytes) })
        }
        return found
    }

    func lookup(_ key: String, cutoff: Int64) throws(TransportError) -> Inbox.Handled? {
        try database.withDatabase { (database) throws(TransportError) in try Self.lookup(key, cutoff: cutoff, in: database) }
    }

    func record(
        _ key: String, _ handled: Inbox.Handled, at now: Int64, cutoff: Int64, effects: [InboxEffect], outbox: [OutboxMessage]
    ) throws(TransportError) -> Inbox.Handled? {
        try database.withDatabase { (database) throws(TransportError) -> Inbox.Handled? in
            // IMMEDIATE: take the write lock first, so the check and the insert see one state
            // across every process sharing the file.
            try database.execute("BEGIN IMMEDIATE")
            do throws(TransportError) {
                if let first = try Self.lookup(key, cutoff: cutoff, in: database) {
                    try database.execute("ROLLBACK")
                    return first
                }
                for effect in effects { try effect.apply(sqlite: database) }
                try SQLiteOutboxStorage.insert(outbox, into: database)
                _ = try database.run(
                    "INSERT OR REPLACE INTO inbox (key, at, outcome, reply) VALUES (?, ?, ?, ?)",
                    [.text(key), .int(now), .text(handled.outcome), .blob(handled.reply)])
                try database.execute("COMMIT")
                return nil
            } catch {
                try? database.execute("ROLLBACK")
                throw error
            }
        }
    }

    func declareWindow(_ windowNanos: Int64) throws(TransportError) {
        try database.withDatabase { (database) throws(TransportError) in
            _ = try database.run(
                """
                INSERT INTO switchyard_meta (key, value) VALUES ('\(Inbox.windowKey)', ?1) ON CONFLICT (key)
                DO UPDATE SET value = CAST(max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER)) AS TEXT)
                """, [.text(String(windowNanos))])
        }
    }

    func prune(before cutoff: Int64) throws(TransportError) {
        try database.withDatabase { (database) throws(TransportError) in
            _ = try database.run(
                """
                DELETE FROM inbox WHERE at < min(?1, ?2 - coalesce((SELECT CAST(value AS INTEGER) FROM switchyard_meta WHERE key = '\(Inbox.windowKey)'), 0))
                """, [.int(cutoff), .int(WallClock.nowNanos())])
        }
    }

    func makeOutboxStorage() throws(TransportError) -> any OutboxStorage {
        try SQLiteOutboxStorage(path: path, sharedWithApplication: false)
    }
}

/// An inbox in a PostgreSQL schema (tables `inbox` and `outbox`, next to the application's own).
final class PostgresInboxDatabase: InboxDatabase {
    let conninfo: String
    let schemaName: String
    /// The quoted schema.
    let schema: String
    /// Connections: handlers running at once record their calls in parallel.
    private let pool: PostgresPool
    var kind: InboxDatabaseKind { .postgres }
    var identity: String { "postgres:\(schemaName):\(conninfo)" }

    static let tables = """
        CREATE TABLE IF NOT EXISTS $schema.inbox (key text PRIMARY KEY, at bigint NOT NULL, outcome text NOT NULL, reply bytea NOT NULL);
        CREATE INDEX IF NOT EXISTS inbox_at ON $schema.inbox (at);
        """ + PostgresOutboxStorage.tables

    init(conninfo: String, schema: String) throws(TransportError) {
        self.conninfo = conninfo
        schemaName = schema
        let pool = PostgresPool(conninfo: conninfo, maxOpen: 16)
        self.pool = pool
        let database = try pool.checkout()
        defer { pool.checkin(database) }  // on a failure too: the pool's slots must be whole when it is freed
        self.schema = try database.prepareSchema(schema, kind: "transactions", tables: Self.tables)
    }

    func closeConnections() { pool.close() }

    func lookup(_ key: String, cutoff: Int64) throws(TransportError) -> Inbox.Handled? {
        try pool.withConnection { (database) throws(TransportError) -> Inbox.Handled? in
            try Self.lookup(key, cutoff: cutoff, in: database, schema: schema)
        }
    }

    private static func lookup(_ key: String, cutoff: Int64, in database: PostgresDatabase, schema: String) throws(TransportError) -> Inbox.Handled? {
        var found: Inbox.Handled?
        try database.run("SELECT outcome, reply FROM \(schema).inbox WHERE key = $1 AND at >= $2", [.text(key), .int(cutoff)]) { row in
            found = Inbox.Handled(outcome: row.text(0), reply: row.bytes(1))
        }
        return found
    }

    func record(
        _ key: String, _ handled: Inbox.Handled, at now: Int64, cutoff: Int64, effects: [InboxEffect], outbox: [OutboxMessage]
    ) throws(TransportError) -> Inbox.Handled? {
        try pool.withConnection { (database) throws(TransportError) -> Inbox.Handled? in
            try database.transaction { () throws(TransportError) -> Inbox.Handled? in
                // One key at a time across every process: the check and the insert see one state.
                try database.run("SELECT pg_advisory_xact_lock(hashtext($1))", [.text("switchyard inbox " + key)])
                // Recorded by another process first: nothing of ours was written (the empty
                // transaction commits nothing).
                if let first = try Self.lookup(key, cutoff: cutoff, in: database, schema: schema) { return first }
                for effect in effects { try effect.apply(postgres: database) }
                try PostgresOutboxStorage.insert(outbox, into: database, schema: schema)
                try database.run(
                    """
                    INSERT INTO \(schema).inbox (key, at, outcome, reply) VALUES ($1, $2, $3, $4)
                    ON CONFLICT (key) DO UPDATE SET at = excluded.at, outcome = excluded.outcome, reply = excluded.reply
                    """, [.text(key), .int(now), .text(handled.outcome), .blob(handled.reply)])
                return nil
            }
        }
    }

    func declareWindow(_ windowNanos: Int64) throws(TransportError) {
        try pool.withConnection { (database) throws(TransportError) in
            _ = try database.run(
                """
                INSERT INTO \(schema).meta (key, value) VALUES ('\(Inbox.windowKey)', $1) ON CONFLICT (key)
                DO UPDATE SET value = greatest(meta.value::bigint, excluded.value::bigint)::text
                """, [.text(String(windowNanos))])
        }
    }

    func prune(before cutoff: Int64) throws(TransportError) {
        try pool.withConnection { (database) throws(TransportError) in
            _ = try database.run(
                """
                DELETE FROM \(schema).inbox WHERE at < least($1, $2 - coalesce((SELECT value::bigint FROM \(schema).meta WHERE key = '\(Inbox.windowKey)'), 0))
                """, [.int(cutoff), .int(WallClock.nowNanos())])
        }
    }

    func makeOutboxStorage() throws(TransportError) -> any OutboxStorage {
        try PostgresOutboxStorage(conninfo: conninfo, schema: schemaName)
    }
}

/// Work a handler adds to the transaction that records its call in a durable inbox
/// (``Switchyard/inboxTransaction(_:)``), for the inbox's kind of database.
enum InboxEffect: Sendable {
    case sqlite(@Sendable (SQLiteDatabase) throws -> Void)
    case postgres(@Sendable (PostgresDatabase) throws -> Void)

    func apply(sqlite database: SQLiteDatabase) throws(TransportError) {
        guard case .sqlite(let work) = self else { throw Self.mismatch(inbox: "SQLite", wanted: "PostgresDatabase") }
        do { try work(database) } catch let error as TransportError { throw error } catch {
            throw TransportError(.internalError, "an inbox transaction effect failed: \(error)")
        }
    }

    func apply(postgres database: PostgresDatabase) throws(TransportError) {
        guard case .postgres(let work) = self else { throw Self.mismatch(inbox: "PostgreSQL", wanted: "SQLiteDatabase") }
        do { try work(database) } catch let error as TransportError { throw error } catch {
            throw TransportError(.internalError, "an inbox transaction effect failed: \(error)")
        }
    }

    private static func mismatch(inbox: String, wanted: String) -> TransportError {
        let call =
            inbox == "SQLite"
            ? "Switchyard.inboxTransaction { db in … } (the SQLite form, no type named)"
            : "Switchyard.inboxTransaction(PostgresDatabase.self) { db in … } (import SwitchyardPostgres)"
        return TransportError(.config, "this route's inbox is in \(inbox), but the handler's inboxTransaction takes a \(wanted): use \(call)")
    }
}

/// The effects one running call has added so far; bound to the call's task while it runs (and,
/// as a task-local, to tasks the handler starts, which may outlive it).
final class InboxEffects: Sendable {
    /// The inbox's database, or nil for an inbox in memory.
    let kind: InboxDatabaseKind?
    private let effects = SealedList<InboxEffect>()
    /// Why an `inboxTransaction` was refused for good (the route's inbox is in memory): the call
    /// can never succeed here, so it is dead-lettered at once rather than retried.
    let refusal = Guarded<String?>(nil)
    init(kind: InboxDatabaseKind?) { self.kind = kind }

    /// Adds an effect; false once the call has ended (``seal()``), when nothing would commit it.
    func add(_ effect: InboxEffect) -> Bool { effects.add(effect) }

    /// The effects added, ending the list: later ones are refused (they would be dropped).
    func seal() -> [InboxEffect] { effects.seal() }
}

extension Switchyard {
    /// The running call's effects list, on routes with an inbox.
    @TaskLocal static var inboxEffects: InboxEffects?

    /// The database of the running handler's durable inbox — which ``inboxTransaction(_:)`` to
    /// use — or nil outside a handler on a route with one. Code that runs on several configs (a
    /// durable inbox in production, none in a test) asks this first:
    ///
    /// ```swift
    /// switch Switchyard.inboxDatabase {
    /// case .sqlite?: try Switchyard.inboxTransaction { db in … }
    /// case .postgres?: try Switchyard.inboxTransaction(PostgresDatabase.self) { db in … }
    /// case nil: break  // no durable inbox: nothing to commit with
    /// }
    /// ```
    public static var inboxDatabase: InboxDatabaseKind? { inboxEffects?.kind }

    /// Adds `work` to the transaction that records the running call in its route's durable inbox
    /// (`inbox: { path: ... }`): it runs once the handler has returned, against the inbox's SQLite
    /// database, and commits together with the record that the call was handled (and the
    /// handler's follow-up calls, on a route with `outbox: true`). However often the call is
    /// delivered — after a crash, a visibility timeout, a publisher's retry — and however many
    /// processes share the file, its effects are committed exactly once:
    ///
    /// ```swift
    /// distributed func charge(_ order: Order) async throws -> Receipt {
    ///     let receipt = Receipt(order)
    ///     try Switchyard.inboxTransaction { db in
    ///         try db.run("INSERT INTO ledger (order_id, cents) VALUES (?, ?)", [.int(Int64(order.id)), .int(Int64(order.cents))])
    ///     }
    ///     return receipt
    /// }
    /// ```
    ///
    /// Keep your tables apart from the inbox's own (`inbox`, `switchyard_meta`,
    /// `switchyard_outbox`). If `work` throws, nothing is committed and the call is delivered
    /// again later (retried as the route's policy says, dead-lettered once it gives up); a call
    /// of the wrong kind for the route's inbox (`.config`: never succeeds) is dead-lettered at
    /// once, its caller told why. If the handler throws, its effects are dropped (a rollback): the inbox
    /// remembers the error it threw as the call's outcome, on routes where that is the outcome.
    /// Effects outside this transaction (another database, an HTTP call) are at-least-once: the
    /// inbox skips a handled call, but a crash between such an effect and the inbox's commit
    /// repeats it.
    ///
    /// Throws ``SwitchyardError/routing(target:reason:)`` outside a handler on a route with a
    /// durable inbox. An inbox in PostgreSQL takes
    /// ``inboxTransaction(_:_:)`` with `PostgresDatabase.self` instead.
    public static func inboxTransaction(_ work: @escaping @Sendable (SQLiteDatabase) throws -> Void) throws {
        try add(.sqlite(work))
    }

    /// Adds `work` to the transaction that records the running call in its route's PostgreSQL
    /// inbox (`inbox: { postgres: { conninfo, schema } }`), on the inbox's connection: the
    /// handler's writes, its follow-up calls (`outbox: true`) and the record that the call was
    /// handled commit together, exactly once.
    ///
    /// ```swift
    /// try Switchyard.inboxTransaction(PostgresDatabase.self) { db in
    ///     try db.run("INSERT INTO payments (order_id, cents) VALUES ($1, $2)", [.int(Int64(order.id)), .int(Int64(order.cents))])
    /// }
    /// ```
    ///
    /// The same rules as ``inboxTransaction(_:)``; the inbox's tables are `inbox` and `outbox`
    /// in its own schema (default `switchyard`).
    public static func inboxTransaction(_ database: PostgresDatabase.Type, _ work: @escaping @Sendable (PostgresDatabase) throws -> Void) throws {
        try add(.postgres(work))
    }

    /// Adds `effect` to the running handler's, or throws why it cannot be.
    private static func add(_ effect: InboxEffect) throws {
        if let effects = inboxEffects, effects.kind == nil {
            let reason =
                "this route's inbox is in memory (no path: or postgres:), which commits no writes: give it inbox: { path: FILE } "
                + "(or postgres:) for inboxTransaction; code that runs on both checks Switchyard.inboxDatabase first"
            effects.refusal.withLock { $0 = reason }
            throw SwitchyardError.routing(target: "Switchyard.inboxTransaction", reason: reason)
        }
        guard let effects = inboxEffects else {
            throw SwitchyardError.routing(
                target: "Switchyard.inboxTransaction",
                reason: "only inside a handler whose route has a durable inbox (inbox: { path: FILE } or inbox: { postgres: {} })")
        }
        // A task the handler started inherits its effects list, and can outlive the handler: an
        // effect added then would be dropped without a word.
        guard effects.add(effect) else {
            throw SwitchyardError.routing(
                target: "Switchyard.inboxTransaction",
                reason: "the handler's call has already ended (this runs in a task it started): nothing would commit it; make the write "
                    + "inside the handler, before it returns, to commit it with the call")
        }
    }
}
