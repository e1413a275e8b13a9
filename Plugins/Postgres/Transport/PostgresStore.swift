import Foundation
import SwitchyardABI
import SwitchyardPluginKit
import SwitchyardPostgres
import SwitchyardTransportKit
import Synchronization

/// The postgres plugins' config keys, besides the broker's (``BrokerConfig``).
struct PostgresConfig: Decodable {
    /// A libpq connection string or URI (`host=db port=5432 dbname=app user=app`); absent: the
    /// standard `PG*` environment variables (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`,
    /// `PGPASSWORD`, …). Never logged: it may hold a password.
    var conninfo: String?
    /// The PostgreSQL schema holding the transport's tables, created when missing. Defaults to
    /// `switchyard_queue` or `switchyard_topic`.
    var schema: String?
    /// Connections the store runs its statements on at once (1–64; default 8): publishes and
    /// settlements from several threads commit in parallel.
    var connections: Int?

    static let keys: Set<String> = ["conninfo", "schema", "connections"]
}

/// A durable ``MessageStore`` in PostgreSQL: the same model as ``SQLiteStore`` (one row per
/// stored copy, leases with an expiry in the row, acknowledged rows deleted), shared by every
/// process that points at the same schema.
///
/// - **Competing consumers across processes**: leases are taken with `FOR UPDATE SKIP LOCKED`,
///   so two processes never lease one row and never wait for each other.
/// - **Ordering keys**: only the oldest live row of a key can be leased (acknowledged rows are
///   deleted, so the oldest is the head).
/// - **No polling when idle**: every change is followed by a `NOTIFY` (after its commit, in a
///   transaction of its own); a listening connection wakes the broker when another process
///   changed the schema. A change whose notification was lost (its process stopped between the
///   two) is found by the broker's next look of its own (its sweep for expired messages).
/// - **Durable**: a publish returns once PostgreSQL committed it (`synchronous_commit` as the
///   server is configured). Leases, acknowledgements and releases commit without waiting for the
///   disk: one lost in a server crash delivers its message again, never loses it.
///
/// Statements run on a small pool of connections (`connections`), one transaction each.
final class PostgresStore: MessageStore, @unchecked Sendable {
    // @unchecked: connections are used one caller at a time (the pool); the rest is immutable or
    // behind `shared`.

    let fanOut: Bool
    let retainedPerChannel: Int
    private let deadLetterSuffix: String
    private let host: HostServices
    /// The schema, quoted for SQL.
    private let schema: String
    /// The notification channel (`pg_notify`), named after the schema.
    private let notifyChannel: String
    private let pool: PostgresPool
    /// The server processes of this store's connections: their notifications are not news.
    private let ownBackends = Guarded<Set<Int32>>([])
    private struct Shared {
        var changeHandler: (@Sendable () -> Void)?
        var cachedCounts: (depth: UInt64, inFlight: UInt64, at: Int64) = (0, 0, 0)
    }
    private let shared = Guarded(Shared())
    private var listener: PostgresListener?
    /// Writes single acknowledgements in batches (``ack(_:)``).
    private var acknowledgements: BackgroundBatches<LeaseRef>!
    /// Tells other processes of this one's changes, after they commit (``makeNotifier(pool:channel:own:)``).
    private let notifier: BackgroundBatches<Void>

    private func isDeadLetterChannel(_ channel: String) -> Bool { channel.hasSuffix(deadLetterSuffix) }

    /// Connects, creates the schema and tables when missing, and starts listening. Refuses a
    /// schema that holds the other kind of store (queue vs topic).
    init(config: PostgresConfig, fanOut: Bool, retainedPerChannel: Int, deadLetterSuffix: String, host: HostServices) throws(TransportError) {
        let kind = fanOut ? "topic" : "queue"
        let name = config.schema ?? "switchyard_\(kind)"
        _ = try PostgresDatabase.quotedSchema(name)
        let connections = config.connections ?? 8
        guard (1...64).contains(connections) else {
            throw TransportError(.config, "config key 'connections': \(connections) is not between 1 and 64")
        }
        let pool = PostgresPool(conninfo: config.conninfo ?? "", maxOpen: connections)
        self.pool = pool
        let connection = try pool.checkout()
        defer { pool.checkin(connection) }
        let quoted = try connection.prepareSchema(name, kind: kind, tables: Self.tables)
        self.fanOut = fanOut
        self.retainedPerChannel = retainedPerChannel
        self.deadLetterSuffix = deadLetterSuffix
        self.host = host
        schema = quoted
        notifyChannel = "switchyard_\(name)"
        let own = ownBackends
        notifier = Self.makeNotifier(pool: pool, channel: notifyChannel, own: own)
        let isOwn: @Sendable (Int32) -> Bool = { pid in own.withLock { $0.contains(pid) } }
        listener = PostgresListener(conninfo: config.conninfo ?? "", channel: notifyChannel, isOwn: isOwn) { [weak self] in
            self?.externalChange()
        }
        // Not `self` in the writer's function: the store would never be released.
        let shared = shared
        acknowledgements = BackgroundBatches(name: "switchyard-pg-ack") { [pool, schema, notifier, host] refs in
            Self.delete(refs, pool: pool, schema: schema, own: own, host: host) {
                notifier.add(())
                shared.withLock { $0.changeHandler }?()
            }
        }
    }

    deinit {
        close()
        listener?.stop()
    }

    /// The broker's shutdown: ``close()``, then every connection to the server closed before
    /// the transport's `destroy` returns (the listener's and the pool's), not when the store is
    /// released: a user who drops the database next, or starts another instance under a
    /// connection limit, finds none of them left.
    func brokerDidShutDown() {
        close()
        listener?.stop()
        pool.close(waitingForConnectionsInUse: true)
    }

    /// Writes the acknowledgements still waiting, sends the notification still due, and stops
    /// the threads that do; later ones are done at once.
    func close() {
        acknowledgements.close()
        notifier.close()
    }

    /// Waits until every acknowledgement made so far is written, or until `deadlineNanos`
    /// (monotonic clock: the transport's `drain`); whether all were.
    @discardableResult
    func flush(deadlineNanos: Int64) -> Bool { acknowledgements.flush(deadlineNanos: deadlineNanos) }

    /// The store's tables (`$schema`: the quoted schema).
    private static let tables = """
        CREATE TABLE IF NOT EXISTS $schema.entries (
            id bigserial PRIMARY KEY,
            channel text NOT NULL,
            grp text NOT NULL,
            ordering_key text,
            attempt bigint NOT NULL,
            visible_at bigint NOT NULL,
            expires_at bigint NOT NULL DEFAULT 0,
            lease_token bigint NOT NULL DEFAULT 0,
            lease_until bigint NOT NULL DEFAULT 0,
            history text NOT NULL DEFAULT '',
            message bytea NOT NULL);
        CREATE INDEX IF NOT EXISTS entries_by_group ON $schema.entries (channel, grp, id);
        CREATE INDEX IF NOT EXISTS entries_by_key ON $schema.entries (channel, grp, ordering_key, id) WHERE ordering_key IS NOT NULL;
        CREATE INDEX IF NOT EXISTS entries_by_expiry ON $schema.entries (expires_at) WHERE expires_at > 0;
        CREATE TABLE IF NOT EXISTS $schema.groups (channel text NOT NULL, grp text NOT NULL, PRIMARY KEY (channel, grp));
        CREATE TABLE IF NOT EXISTS $schema.retained (id bigserial PRIMARY KEY, channel text NOT NULL, message bytea NOT NULL);
        ALTER TABLE $schema.retained ADD COLUMN IF NOT EXISTS seq bigint NOT NULL DEFAULT 0;
        CREATE INDEX IF NOT EXISTS retained_by_channel ON $schema.retained (channel, seq);
        """

    /// Runs `body` in one transaction on a connection of the store's pool. `synced: false` for
    /// a change that may be lost in a server crash without losing a message — a lease, an
    /// acknowledgement, a release: the message is delivered again (at least once) — so that its
    /// commit does not wait for the disk (see ``PostgresDatabase/transaction(synchronousCommit:_:)``).
    /// A subscriber that acknowledges each delivery in turn waited for one flush each.
    /// `body` sets its flag when other processes must hear of the change: they are told once it
    /// commits (``makeNotifier(pool:channel:own:)``).
    private func perform<R>(synced: Bool = true, _ body: (PostgresDatabase, inout Bool) throws(TransportError) -> R) throws(TransportError) -> R {
        let db = try pool.checkout()
        var announce = false
        let result: R
        do throws(TransportError) {
            result = try db.transaction(synchronousCommit: synced) { () throws(TransportError) -> R in
                Self.noteOwnBackend(db, in: ownBackends)
                return try body(db, &announce)
            }
        } catch {
            pool.checkin(db)
            throw error
        }
        // The connection back first: after close the notifier sends on the caller's thread, on
        // a connection of the pool (holding this one, a pool of one would wait for itself).
        pool.checkin(db)
        if announce { notifier.add(()) }
        return result
    }

    /// Notes `db`'s server process in `own`, the store's (their notifications are not news).
    /// Every time: a reconnect gets a new server process.
    private static func noteOwnBackend(_ db: PostgresDatabase, in own: Guarded<Set<Int32>>) {
        let backend = db.backendPID
        if !own.withLock({ $0.contains(backend) }) { own.withLock { _ = $0.insert(backend) } }
    }

    /// The thread that sends the store's notifications (`NOTIFY`) after the changes they tell of
    /// commit: one for all the changes made while the last was being sent.
    ///
    /// Not in the changes' transactions: PostgreSQL commits the notifying transactions of a
    /// database one at a time, holding a lock from before each commit until after its flush to
    /// disk, so a `NOTIFY` inside every publish let one publish commit at a time however many
    /// threads published (measured: 1.3 k publishes/s from 16 threads). And not one per change on
    /// the changer's connection: one round trip more for every publish. A notification is a
    /// wake-up, not data — listeners read the tables — so one for many changes tells as much. One
    /// lost (the process stopped between a commit and its notification) is made up for by the
    /// broker's own looks.
    private static func makeNotifier(pool: PostgresPool, channel: String, own: Guarded<Set<Int32>>) -> BackgroundBatches<Void> {
        BackgroundBatches(name: "switchyard-pg-notify") { _ in
            try? pool.withConnection { db throws(TransportError) in
                noteOwnBackend(db, in: own)  // before sending: this process's listener ignores it
                db.notify([channel])
            }
        }
    }

    private func externalChange() {
        shared.withLock { $0.changeHandler }?()
    }

    private static let notFound = TransportError(.notFound, "unknown, settled or expired delivery")

    // MARK: MessageStore

    func setChangeHandler(_ handler: @escaping @Sendable () -> Void) {
        shared.withLock { $0.changeHandler = handler }
    }

    func append(_ messages: [Message]) throws(TransportError) {
        try insert(messages, deleting: nil)
    }

    func append(_ messages: [Message], acking ref: LeaseRef) throws(TransportError) {
        try insert(messages, deleting: ref)
    }

    /// Deletes a leased row; true when it had an ordering key (the key's next row is now its head,
    /// which consumers in other processes must hear about).
    @discardableResult
    private func deleteLeased(_ ref: LeaseRef, in db: PostgresDatabase) throws(TransportError) -> Bool {
        var keyed = false
        let changed = try db.run(
            "DELETE FROM \(schema).entries WHERE id = $1 AND lease_token = $2 RETURNING ordering_key IS NOT NULL",
            [.int(Int64(ref.entry)), .int(Int64(ref.token))]
        ) { row in keyed = row.bytes(0) == [1] }
        if changed == 0 { throw Self.notFound }
        return keyed
    }

    private func insert(_ messages: [Message], deleting ref: LeaseRef?) throws(TransportError) {
        if ref == nil, messages.count == 1, let message = messages.first, message.orderingKey == nil, !fanOut || isDeadLetterChannel(message.channel) {
            return try insertAlone(message)
        }
        // Channels in a stable order (a channel's own messages keep theirs): two processes
        // publishing to the same channels then take row and advisory locks in the same order.
        let encoded = messages.enumerated().sorted { ($0.element.channel, $0.offset) < ($1.element.channel, $1.offset) }
            .map { ($0.element, MessageCodec.encode($0.element)) }
        try perform { db, announce throws(TransportError) in
            if let ref { try deleteLeased(ref, in: db) }
            try lockForInsert(messages, in: db)
            for (message, blob) in encoded {
                let key: PostgresDatabase.Value = message.orderingKey.map { .text($0) } ?? .null
                var groups = [""]
                if fanOut && !isDeadLetterChannel(message.channel) {
                    groups = []
                    try db.run("SELECT grp FROM \(schema).groups WHERE channel = $1", [.text(message.channel)]) { row in groups.append(row.text(0)) }
                    if retainedPerChannel > 0 {
                        // The channel's last `retain`, by its own count (`seq`): the table's id is
                        // shared by every channel, and trimming by it left a quiet channel beside a
                        // busy one almost nothing. Rows of stores made before (seq 0) go once
                        // `retain` new ones of their channel have come.
                        var seq: Int64 = 0
                        try db.run(
                            """
                            INSERT INTO \(schema).retained (channel, message, seq)
                            SELECT $1, $2, COALESCE(MAX(seq), 0) + 1 FROM \(schema).retained WHERE channel = $1 RETURNING seq
                            """, [.text(message.channel), .blob(blob)]
                        ) { row in seq = row.int(0) }
                        try db.run(
                            "DELETE FROM \(schema).retained WHERE channel = $1 AND seq <= $2", [.text(message.channel), .int(seq - Int64(retainedPerChannel))])
                    }
                }
                for group in groups {
                    try db.run(
                        "INSERT INTO \(schema).entries (channel, grp, ordering_key, attempt, visible_at, expires_at, message) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        [
                            .text(message.channel), .text(group), key, .int(Int64(message.attempt)), .int(message.enqueuedAtNanos),
                            .int(message.expiresAtNanos), .blob(blob),
                        ])
                }
            }
            announce = true
        }
    }

    /// One message on a queue, no ordering key, nothing settled with it (the usual publish): one
    /// statement, its own transaction — one round trip with its commit instead of three (begin,
    /// insert, commit); it takes no lock and reads nothing first.
    private func insertAlone(_ message: Message) throws(TransportError) {
        let blob = MessageCodec.encode(message)
        try pool.withConnection { db throws(TransportError) in
            Self.noteOwnBackend(db, in: ownBackends)
            do throws(TransportError) {
                try db.run(
                    "INSERT INTO \(schema).entries (channel, grp, ordering_key, attempt, visible_at, expires_at, message) VALUES ($1, '', NULL, $2, $3, $4, $5)",
                    [.text(message.channel), .int(Int64(message.attempt)), .int(message.enqueuedAtNanos), .int(message.expiresAtNanos), .blob(blob)])
            } catch {
                guard error.code == .unavailable else { throw error }
                // Lost with its commit in flight, as a lost COMMIT: say so (see
                // ``PostgresDatabase/commit()``); a publisher that retries may store it twice.
                throw TransportError(.unavailable, "\(error.message) (the message may have been stored)")
            }
        }
        notifier.add(())
    }

    /// Advisory locks (held to the end of the transaction) that make concurrent transactions in
    /// other processes behave as SQLite's one writer would:
    /// - a topic channel's lock, shared here and exclusive in ``addGroup(channel:group:start:)``, so
    ///   a group added while a message is published either gets its copy or finds it retained;
    /// - an ordering key's lock, so two publishers of one key commit in the order their rows'
    ///   ids say (the oldest row of a key must be its head).
    /// Taken in sorted order, so two publishers never wait for each other in a cycle.
    private func lockForInsert(_ messages: [Message], in db: PostgresDatabase) throws(TransportError) {
        if fanOut {
            for channel in Set(messages.map(\.channel).filter { !isDeadLetterChannel($0) }).sorted() {
                try db.run("SELECT pg_advisory_xact_lock_shared(hashtext($1))", [.text("switchyard \(schema) channel \(channel)")])
            }
        }
        let keys = Set(messages.compactMap { message in message.orderingKey.map { "switchyard \(schema) key \(message.channel) \($0)" } })
        for key in keys.sorted() { try db.run("SELECT pg_advisory_xact_lock(hashtext($1))", [.text(key)]) }
    }

    func addGroup(channel: String, group: String, start: StartPosition) throws(TransportError) {
        let shared = !fanOut || isDeadLetterChannel(channel)
        let grp = shared ? "" : group
        let now = host.nowNanos()
        try perform { db, announce throws(TransportError) in
            if !shared { try db.run("SELECT pg_advisory_xact_lock(hashtext($1))", [.text("switchyard \(schema) channel \(channel)")]) }
            let added = try db.run(
                "INSERT INTO \(schema).groups (channel, grp) VALUES ($1, $2) ON CONFLICT DO NOTHING", [.text(channel), .text(grp)])
            guard added == 1, !shared, start == .earliest else { return }
            var retained: [[UInt8]] = []
            try db.run("SELECT message FROM \(schema).retained WHERE channel = $1 ORDER BY id", [.text(channel)]) { row in retained.append(row.bytes(0)) }
            for blob in retained {
                let message = try? MessageCodec.decode(blob)
                try db.run(
                    "INSERT INTO \(schema).entries (channel, grp, ordering_key, attempt, visible_at, expires_at, message) VALUES ($1, $2, $3, 0, $4, $5, $6)",
                    [
                        .text(channel), .text(grp), message?.orderingKey.map { .text($0) } ?? .null, .int(now),
                        .int(message?.expiresAtNanos ?? 0), .blob(blob),
                    ])
            }
            if !retained.isEmpty { announce = true }
        }
    }

    func lease(channel: String, group: String, limit: Int, now: Int64, leaseUntil: Int64) throws(TransportError) -> [LeasedMessage] {
        let grp = !fanOut || isDeadLetterChannel(channel) ? "" : group
        var corrupt = false
        var dropped: [String] = []  // corrupt dead letters, logged once the lease is over
        let leased = try perform(synced: false) { db, announce throws(TransportError) -> [LeasedMessage] in
            dropped = []  // the body may run again
            var rows: [(id: Int64, attempt: Int64, token: Int64, blob: [UInt8])] = []
            // SKIP LOCKED: rows another process is leasing right now are passed over, not waited for.
            try db.run(
                """
                WITH picked AS (
                    SELECT id FROM \(schema).entries e
                    WHERE channel = $1 AND grp = $2 AND visible_at <= $3 AND (lease_token = 0 OR lease_until <= $3)
                      AND (ordering_key IS NULL OR id = (SELECT MIN(id) FROM \(schema).entries k
                           WHERE k.channel = $1 AND k.grp = $2 AND k.ordering_key = e.ordering_key))
                    ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED)
                UPDATE \(schema).entries u
                SET lease_token = 1 + floor(random() * 4611686018427387903)::bigint, lease_until = $5, attempt = u.attempt + 1
                FROM picked WHERE u.id = picked.id
                RETURNING u.id, u.attempt, u.lease_token, u.message
                """, [.text(channel), .text(grp), .int(now), .int(Int64(limit)), .int(leaseUntil)]
            ) { row in rows.append((row.int(0), row.int(1), row.int(2), row.bytes(3))) }
            var leased: [LeasedMessage] = []
            for row in rows.sorted(by: { $0.id < $1.id }) {
                do throws(TransportError) {
                    var message = try MessageCodec.decode(row.blob)
                    message.attempt = UInt32(clamping: row.attempt)
                    leased.append(LeasedMessage(ref: LeaseRef(entry: UInt64(row.id), token: UInt64(row.token)), message: message))
                } catch {
                    // A record that does not decode is dead-lettered with its reason and raw bytes, never delivered.
                    corrupt = true
                    try db.run("DELETE FROM \(schema).entries WHERE id = $1", [.int(row.id)])
                    guard !isDeadLetterChannel(channel) else {
                        // A dead letter is not dead-lettered again: deleted, and said so.
                        dropped.append("entry \(row.id), \(row.blob.count) bytes: \(error.message)")
                        continue
                    }
                    let dead = DeadLetter.copy(
                        of: Message(id: "corrupt-\(row.id)", channel: channel, body: row.blob), to: channel + deadLetterSuffix, group: grp,
                        groupCopy: fanOut, reason: error.message, history: [], now: now)
                    try db.run(
                        "INSERT INTO \(schema).entries (channel, grp, attempt, visible_at, message) VALUES ($1, '', 0, $2, $3)",
                        [.text(dead.channel), .int(now), .blob(MessageCodec.encode(dead))])
                    announce = true
                }
            }
            return leased
        }
        for record in dropped {
            host.log(.error, "postgres: a corrupt record in the dead-letter channel '\(channel)' was deleted (\(record)): a dead letter is not dead-lettered again")
        }
        // Fewer returned than were ready, and a dead letter stored: the broker looks again (it
        // takes fewer than it asked for to mean that nothing more is ready; this process's own
        // NOTIFY does not reach it).
        if corrupt { externalChange() }
        return leased
    }

    /// Hands the acknowledgement to a writer that deletes the rows of many in one statement,
    /// and returns: a subscriber that acknowledges each delivery in turn no longer waits for a
    /// round trip to the server each time (it did: one at a time, that was most of the time a
    /// message took). What that gives up, all within at-least-once: an acknowledgement still
    /// waiting when the process dies is lost, as one not yet flushed to disk would be (the
    /// message is delivered again), and one whose lease had already run out (another consumer has
    /// the message now) reports nothing — the delivery it acknowledged is the broker's, which
    /// refuses unknown and settled deliveries itself. ``ack(batch:)`` stays synchronous.
    func ack(_ ref: LeaseRef) throws(TransportError) {
        acknowledgements.add(ref)
    }

    /// Deletes the leased rows `refs` name in one statement (one round trip, not synced: see
    /// ``perform(synced:_:)``), on a connection of `pool`; calls `changed` when one of them had an
    /// ordering key (the key's next message is now its head: consumers must hear of it). A
    /// failure is logged: those messages come again after their visibility timeout.
    private static func delete(
        _ refs: [LeaseRef], pool: PostgresPool, schema: String, own: Guarded<Set<Int32>>, host: HostServices, changed: () -> Void
    ) {
        // Only numbers the store made go into the statement.
        let pairs = refs.map { "(\(Int64($0.entry)),\(Int64($0.token)))" }.joined(separator: ",")
        let sql = """
            SET LOCAL synchronous_commit TO off;
            DELETE FROM \(schema).entries WHERE (id, lease_token) IN (\(pairs)) RETURNING ordering_key IS NOT NULL
            """
        var keyed = false
        do throws(TransportError) {
            try pool.withConnection { db throws(TransportError) in
                func run() throws(TransportError) {
                    noteOwnBackend(db, in: own)
                    try db.runScript(sql) { row in if row.text(0) == "t" { keyed = true } }
                }
                do throws(TransportError) {
                    try run()
                } catch {
                    // A connection lost (a restart): once more on a fresh one (deleting twice
                    // deletes nothing more). The first try may have deleted keyed rows and not
                    // said so: tell of a change either way.
                    guard error.code == .unavailable else { throw error }
                    keyed = true
                    try db.ensureConnected()
                    try run()
                }
            }
        } catch {
            host.log(.warning, "postgres: \(refs.count) acknowledgements were not written (\(error.message)); their messages come again after the visibility timeout")
        }
        if keyed { changed() }
    }

    func ack(batch refs: [LeaseRef]) -> [TransportError?] {
        // One transaction, one commit for the whole batch.
        let outcome = Result { () throws(TransportError) -> [TransportError?] in
            try perform(synced: false) { db, announce throws(TransportError) -> [TransportError?] in
                var keyed = false
                let results = try refs.map { ref throws(TransportError) -> TransportError? in
                    do throws(TransportError) {
                        if try deleteLeased(ref, in: db) { keyed = true }
                        return nil
                    } catch {
                        if error.code == .notFound { return error }  // this one alone; the batch goes on
                        throw error
                    }
                }
                if keyed { announce = true }
                return results
            }
        }
        switch outcome {
        case .success(let results): return results
        case .failure(let error): return refs.map { _ in error }
        }
    }

    func retry(_ ref: LeaseRef, visibleAt: Int64, reason: String, now: Int64) throws(TransportError) {
        try perform { db, announce throws(TransportError) in
            let changed = try db.run(
                """
                UPDATE \(schema).entries SET lease_token = 0, lease_until = 0, visible_at = $1,
                    history = history || 'attempt ' || attempt::text || ' at ' || $2::bigint::text || ': ' || $3 || E'\\n'
                WHERE id = $4 AND lease_token = $5
                """, [.int(visibleAt), .int(now), .text(reason), .int(Int64(ref.entry)), .int(Int64(ref.token))])
            if changed == 0 { throw Self.notFound }
            announce = true
        }
    }

    func release(_ ref: LeaseRef) throws(TransportError) {
        try perform(synced: false) { db, announce throws(TransportError) in
            let changed = try db.run(
                "UPDATE \(schema).entries SET lease_token = 0, lease_until = 0, attempt = GREATEST(attempt - 1, 0) WHERE id = $1 AND lease_token = $2",
                [.int(Int64(ref.entry)), .int(Int64(ref.token))])
            if changed == 0 { throw Self.notFound }
            announce = true
        }
    }

    func extend(_ leases: [(ref: LeaseRef, until: Int64)]) -> [TransportError?] {
        if leases.isEmpty { return [] }
        // One statement, one commit, not synced (one round trip however many: a keeper extends a
        // subscription's due deliveries together); nothing becomes ready, so nothing is announced.
        // Only numbers the store made go into the statement.
        let rows = leases.map { "(\(Int64($0.ref.entry)),\(Int64($0.ref.token)),\($0.until))" }.joined(separator: ",")
        let sql = """
            UPDATE \(schema).entries AS e SET lease_until = v.until FROM (VALUES \(rows)) AS v(id, token, until)
            WHERE e.id = v.id AND e.lease_token = v.token AND e.lease_token != 0 RETURNING e.id, e.lease_token
            """
        let outcome = Result { () throws(TransportError) -> Set<LeaseRef> in
            try perform(synced: false) { db, _ throws(TransportError) -> Set<LeaseRef> in
                var extended = Set<LeaseRef>()
                try db.run(sql, []) { row in extended.insert(LeaseRef(entry: UInt64(row.int(0)), token: UInt64(row.int(1)))) }
                return extended
            }
        }
        switch outcome {
        case .success(let extended): return leases.map { extended.contains($0.ref) ? nil : Self.notFound }
        case .failure(let error): return leases.map { _ in error }
        }
    }

    @discardableResult
    func deadLetter(_ ref: LeaseRef, to deadLetterChannel: String, reason: String, now: Int64) throws(TransportError) -> Message {
        try perform { db, announce throws(TransportError) -> Message in
            var found: (grp: String, attempt: Int64, history: String, blob: [UInt8])?
            try db.run(
                "DELETE FROM \(schema).entries WHERE id = $1 AND lease_token = $2 RETURNING grp, attempt, history, message",
                [.int(Int64(ref.entry)), .int(Int64(ref.token))]
            ) { row in found = (row.text(0), row.int(1), row.text(2), row.bytes(3)) }
            guard let found else { throw Self.notFound }
            var message = try MessageCodec.decode(found.blob)
            message.attempt = UInt32(clamping: found.attempt)
            let history = found.history.split(separator: "\n").map(String.init) + ["attempt \(found.attempt) at \(now): \(reason)"]
            let dead = DeadLetter.copy(
                of: message, to: deadLetterChannel, group: found.grp, groupCopy: fanOut && !isDeadLetterChannel(message.channel),
                reason: reason, history: history, now: now)
            try db.run(
                "INSERT INTO \(schema).entries (channel, grp, ordering_key, attempt, visible_at, message) VALUES ($1, '', NULL, 0, $2, $3)",
                [.text(deadLetterChannel), .int(now), .blob(MessageCodec.encode(dead))])
            announce = true
            return dead
        }
    }

    func removeExpired(now: Int64, limit: Int) throws(TransportError) -> [ExpiredEntry] {
        try perform { db, _ throws(TransportError) -> [ExpiredEntry] in
            var removed: [ExpiredEntry] = []
            try db.run(
                """
                DELETE FROM \(schema).entries WHERE id IN (
                    SELECT id FROM \(schema).entries
                    WHERE expires_at > 0 AND expires_at <= $1 AND (lease_token = 0 OR lease_until <= $1)
                    LIMIT $2 FOR UPDATE SKIP LOCKED)
                RETURNING id, grp, attempt, history, message, channel
                """, [.int(now), .int(Int64(limit))]
            ) { row in
                // An unreadable record expires like any other; its bytes go with it.
                let raw = row.bytes(4)
                var message = (try? MessageCodec.decode(raw)) ?? Message(id: "corrupt-\(row.int(0))", channel: row.text(5), body: raw)
                message.attempt = UInt32(clamping: row.int(2))
                removed.append(ExpiredEntry(message: message, group: row.text(1), history: row.text(3).split(separator: "\n").map(String.init)))
            }
            return removed
        }
    }

    func nextWakeup(channel: String, group: String, now: Int64) -> Int64? {
        let grp = !fanOut || isDeadLetterChannel(channel) ? "" : group
        return try? perform { db, _ throws(TransportError) -> Int64? in
            var earliest: Int64?
            try db.run(
                """
                SELECT MIN(CASE WHEN lease_token != 0 AND lease_until > $3 THEN lease_until
                                WHEN lease_token = 0 AND visible_at > $3 THEN visible_at END)
                FROM \(schema).entries WHERE channel = $1 AND grp = $2
                """, [.text(channel), .text(grp), .int(now)]
            ) { row in earliest = row.isNull(0) ? nil : row.int(0) }
            return earliest
        }
    }

    /// Per channel and group, one query (the same counts as ``counts()``, grouped), with the
    /// topic groups that hold nothing (not the "" group every subscribed channel registers). On a
    /// connection of the pool, which it holds for the query: with `connections: 1`, publishes wait
    /// behind it.
    func channelCounts(now: Int64) throws(TransportError) -> [ChannelStats]? {
        try perform(synced: false) { db, _ throws(TransportError) -> [ChannelStats] in
            var found: [ChannelStats] = []
            try db.run(ChannelCountsQuery.sql(tablesIn: "\(schema).", now: "$1"), [.int(now)]) { row in
                found.append(ChannelCountsQuery.row(text: row.text, int: row.int))
            }
            return found
        }
    }

    /// Depth and in-flight counts, refreshed at most every 100 ms.
    func counts() -> (depth: UInt64, inFlight: UInt64) {
        let now = host.nowNanos()
        let cached = shared.withLock { $0.cachedCounts }
        if now - cached.at < 100_000_000 { return (cached.depth, cached.inFlight) }
        let fresh =
            (try? perform { db, _ throws(TransportError) -> (UInt64, UInt64) in
                var result: (UInt64, UInt64) = (0, 0)
                try db.run(
                    """
                    SELECT COUNT(*) FILTER (WHERE lease_token = 0 OR lease_until <= $1),
                           COUNT(*) FILTER (WHERE lease_token != 0 AND lease_until > $1) FROM \(schema).entries
                    """, [.int(now)]
                ) { row in result = (UInt64(row.int(0)), UInt64(row.int(1))) }
                return result
            }) ?? (cached.depth, cached.inFlight)
        shared.withLock { $0.cachedCounts = (fresh.0, fresh.1, now) }
        return fresh
    }
}

/// A connection that `LISTEN`s on a store's channel and calls `changed` when another process
/// (a server backend for which `isOwn` is false) committed a change. Reconnects when the server goes
/// away and then reports a change, since notifications sent meanwhile are lost.
final class PostgresListener: @unchecked Sendable {
    // @unchecked: atomics, a pipe whose ends never change, and a semaphore.
    private let stopped = Atomic<Bool>(false)
    /// Wakes the thread's `poll` when it is to stop.
    private let stopWake = WakePipe()
    private let finished = DispatchSemaphore(value: 0)
    /// The listening thread (`pthread_self`), so that ``stop()`` there does not wait for itself.
    /// Not the `Thread`: its closure holds the listener, and the listener would never be freed.
    private let threadID = Atomic<UInt>(0)
    /// How long ``stop()`` waits for the thread: it may be connecting to a server that does
    /// not answer (up to `connect_timeout`); it closes its connection itself when it gets there.
    static let stopPatience: DispatchTimeInterval = .seconds(2)

    init(conninfo: String, channel: String, isOwn: @escaping @Sendable (Int32) -> Bool, changed: @escaping @Sendable () -> Void) {
        let thread = Thread(named: "switchyard-pg-listen") { [self] in
            threadID.store(UInt(bitPattern: Int(bitPattern: UInt(pthread_self()))), ordering: .releasing)
            var connection: PostgresDatabase?
            while !stopped.load(ordering: .acquiring) {
                if connection == nil {
                    do throws(TransportError) {
                        let fresh = try PostgresDatabase(conninfo: conninfo)
                        try fresh.run("SELECT pg_catalog.set_config('application_name', 'switchyard listener', false)")
                        try fresh.execute("LISTEN \"\(channel)\"")
                        connection = fresh
                        changed()  // whatever happened while nobody listened
                    } catch {
                        _ = waitForStop(orReadable: -1, milliseconds: 500)
                        continue
                    }
                }
                guard let listening = connection else { continue }
                guard waitForStop(orReadable: listening.socket, milliseconds: 1_000) else { continue }
                do throws(TransportError) {
                    let received = try listening.drainNotifications()
                    if received.contains(where: { !isOwn($0.pid) }) { changed() }
                } catch {
                    connection = nil
                }
            }
            connection?.close()
            finished.signal()
        }
        thread.start()
    }

    deinit { stopWake.close() }

    /// Waits up to `milliseconds` for `socket` (none: -1) to be readable or for ``stop()``;
    /// whether the socket is readable and the listener is not stopping.
    private func waitForStop(orReadable socket: Int32, milliseconds: Int32) -> Bool {
        var watched = [pollfd(fd: stopWake.reader, events: Int16(POLLIN), revents: 0), pollfd(fd: socket, events: Int16(POLLIN), revents: 0)]
        guard poll(&watched, socket >= 0 ? 2 : 1, milliseconds) > 0 else { return false }
        return watched[1].revents != 0 && !stopped.load(ordering: .acquiring)
    }

    /// Stops listening and, unless called on the listener's own thread, waits until its
    /// connection is closed (up to ``stopPatience``). Once; later calls return at once.
    func stop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        stopWake.wake()
        let me = UInt(bitPattern: Int(bitPattern: UInt(pthread_self())))
        if threadID.load(ordering: .acquiring) != me { _ = finished.wait(timeout: .now() + Self.stopPatience) }
    }
}

/// Items waiting, and a thread of their own that hands all that wait to `write` at once (up to
/// ``batchLimit``): the store's acknowledgements, deleted in one statement, and its
/// notifications, many changes told by one `NOTIFY`.
final class BackgroundBatches<Item: Sendable>: @unchecked Sendable {
    // @unchecked: everything behind `condition`.
    private let condition = NSCondition()
    private var waiting: [Item] = []
    /// Taken by the thread and not yet written.
    private var writing = 0
    private var closed = false
    private let finished = DispatchSemaphore(value: 0)
    private let write: @Sendable ([Item]) -> Void
    private var thread: Thread?
    /// The most one `write` is given.
    static var batchLimit: Int { 1_000 }

    init(name: String, write: @escaping @Sendable ([Item]) -> Void) {
        self.write = write
        let thread = Thread(named: name) { [self] in run() }
        self.thread = thread
        thread.start()
    }

    func add(_ item: Item) {
        condition.lock()
        if closed {
            condition.unlock()
            write([item])  // after close: at once, on the caller's thread
            return
        }
        waiting.append(item)
        if waiting.count == 1 { condition.broadcast() }
        condition.unlock()
    }

    /// Returns once everything added before it is written, or at `deadlineNanos` (monotonic
    /// clock; nil: no deadline); whether everything was.
    @discardableResult
    func flush(deadlineNanos: Int64? = nil) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        while !waiting.isEmpty || writing > 0 {
            guard let deadlineNanos else {
                condition.wait()
                continue
            }
            let left = deadlineNanos - monotonicNanoseconds()
            if left <= 0 { return false }
            _ = condition.wait(until: Date(timeIntervalSinceNow: Double(left) / 1e9))
        }
        return true
    }

    /// Writes what waits, then stops the thread. Once only; later calls return at once. On the
    /// thread itself (the store released there, from a function `write` calls) it does not wait
    /// for itself: the thread writes what waits and stops after this batch.
    func close() {
        condition.lock()
        if closed {
            condition.unlock()
            return
        }
        closed = true
        condition.broadcast()
        let onThread = Thread.current === thread
        condition.unlock()
        if onThread { return }
        finished.wait()
    }

    private func run() {
        condition.lock()
        while true {
            while waiting.isEmpty && !closed { condition.wait() }
            if waiting.isEmpty { break }  // closed, nothing left
            let batch = Array(waiting.prefix(Self.batchLimit))
            waiting.removeFirst(batch.count)
            writing = batch.count
            condition.unlock()
            write(batch)
            condition.lock()
            writing = 0
            condition.broadcast()  // flush() waits for this
        }
        thread = nil  // the thread held itself through its closure's `self`
        condition.unlock()
        finished.signal()
    }
}
