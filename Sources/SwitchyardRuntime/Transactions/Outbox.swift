import Dispatch
import Foundation
import Logging
import Metrics
import SwitchyardABI
import SwitchyardHost
import SwitchyardPostgres
import SwitchyardTransportKit
import SwitchyardWire

// The transactional outbox (docs/transactions.md). Fire-and-forget calls made while a
// transaction is open — a handler's on a route with `outbox: true`, or the body of
// `SwitchyardActorSystem.transaction(on:)` — are not published: they are captured, written to
// the `switchyard_outbox` table in the transaction's own database when it commits, and relayed to
// their transports afterwards by one relay per database. A rolled-back transaction sends nothing;
// a committed one's calls are published until a transport accepts them, each with the envelope
// id it was given when it was made, so a receiver's inbox drops the duplicate a relay's retry may
// produce.

/// A call on its way through an outbox: the message as it will be published, and the transport.
struct OutboxMessage: Sendable {
    let transport: String
    let message: Message
}

/// What a transaction collects while it is open (its calls, a handler's inbox effects): a list
/// bound to the transaction's task, and so inherited by tasks it starts, which may outlive it;
/// sealed when the transaction ends, after which nothing more is taken.
final class SealedList<Element: Sendable>: Sendable {
    private let state = Guarded<(elements: [Element], sealed: Bool)>(([], false))

    /// Whether the list has been sealed.
    var isSealed: Bool { state.withLock { $0.sealed } }

    /// Adds `element`; false once the list is sealed (nothing would act on it).
    func add(_ element: Element) -> Bool {
        state.withLock { state in
            guard !state.sealed else { return false }
            state.elements.append(element)
            return true
        }
    }

    /// The elements added, sealing the list: later ones are refused.
    func seal() -> [Element] {
        state.withLock { state in
            state.sealed = true
            return state.elements
        }
    }
}

/// The calls made while a transaction is open; bound to the transaction's task (and inherited by
/// tasks it starts).
final class OutboxCapture: Sendable {
    private let captured = SealedList<OutboxMessage>()
    /// The write gate of the SQLite file the transaction holds (`transaction(on:)` on a SQLite
    /// outbox), while it holds it; nil for a handler's capture and for PostgreSQL.
    let writeGate: AsyncGate?

    init(writeGate: AsyncGate? = nil) { self.writeGate = writeGate }

    /// Whether the transaction has ended (a task it started may still carry this capture).
    var isSealed: Bool { captured.isSealed }

    /// Adds a call to the transaction; false once the transaction has ended (a task the handler
    /// started made it later): then it is no part of it, and is published as any call.
    func add(_ message: OutboxMessage) -> Bool { captured.add(message) }

    /// The calls made, ending the capture: later ones are not part of the transaction.
    func seal() -> [OutboxMessage] { captured.seal() }
}

extension Switchyard {
    /// Where the running transaction's fire-and-forget calls go instead of their transports.
    @TaskLocal static var outboxCapture: OutboxCapture?
}

/// One message an outbox holds.
struct OutboxRow: Sendable {
    let seq: Int64
    let transport: String
    let message: Message
    let attempts: Int
}

/// What a relay claimed: messages to publish, and corrupt rows set aside.
struct OutboxClaim {
    var rows: [OutboxRow] = []
    var setAside: [(seq: Int64, reason: String)] = []
}

/// Where an outbox keeps its messages until they are relayed.
protocol OutboxStorage: Sendable {
    /// Claims up to `limit` messages for `leaseNanos`, oldest first, skipping every destination
    /// (transport and channel) that has a message claimed or waiting for a retry: so messages to
    /// one destination go out in the order they were committed, even with several relays (one per
    /// process) on one database.
    /// Rows that cannot be decoded are set aside (never claimed again, `last_error` says why)
    /// and returned in `setAside`, so one corrupt row cannot stop the rest. Only messages to
    /// `transports` (those this process runs): another process with the same outbox may run
    /// others, and a claim of their messages here would only hold them up.
    func claim(limit: Int, nowNanos: Int64, leaseNanos: Int64, transports: [String]) throws(TransportError) -> OutboxClaim
    /// Transports other than `transports` with messages committed before `createdBeforeNanos`
    /// still waiting, and how many: messages that no process seems to relay. A transport with a
    /// message claimed or waiting for a retry at `nowNanos` is left out: a process works on it
    /// (a backlog, or an engine that is down), and that process reports its own trouble.
    func stale(createdBeforeNanos: Int64, nowNanos: Int64, excluding transports: [String]) throws(TransportError) -> [(transport: String, count: Int)]
    /// Forgets relayed messages.
    func remove(_ seqs: [Int64]) throws(TransportError)
    /// Hands messages back, to be tried again from `retryAtNanos`.
    func release(_ seqs: [Int64], retryAtNanos: Int64, error: String) throws(TransportError)
    /// Hands claimed messages back as they were — no attempt counted, no error noted: messages
    /// that wait behind a refused one to their destination, which its retry time holds up (an
    /// operator looking for the refused row by its `last_error` must find that row alone).
    func unclaim(_ seqs: [Int64]) throws(TransportError)
    /// How many messages to `transports` wait to be relayed (not rows set aside as unreadable:
    /// they never will be).
    func depth(transports: [String]) throws(TransportError) -> Int
    /// Hangs up its connections now (the system's shutdown), not when it is released: a
    /// server's, and a file's (whose last close removes its WAL); a later call connects again.
    /// Nothing to do for memory.
    func closeConnections()
}

extension OutboxStorage {
    func closeConnections() {}

    /// `names` as a JSON array of strings, bound as one parameter that the query unpacks
    /// (`json_each`, `jsonb_array_elements_text`): any name, however spelled, is data.
    static func jsonArray(_ names: [String]) -> String {
        String(decoding: (try? JSONEncoder().encode(names)) ?? Data("[]".utf8), as: UTF8.self)
    }

    /// `claimed_until` of a row set aside because it cannot be decoded: never claimed again, and
    /// (unlike a claimed row or one waiting out a refusal) not holding up its destination — it can
    /// never be sent, so later messages to the same channel go on without it.
    static var setAside: Int64 { .max }
}

/// The outbox table in a SQLite database: the inbox's (a handler's follow-up calls) or the
/// application's own (`outboxes:`).
final class SQLiteOutboxStorage: OutboxStorage {
    static let schema = """
        CREATE TABLE IF NOT EXISTS switchyard_outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            transport TEXT NOT NULL,
            channel TEXT NOT NULL,
            message BLOB NOT NULL,
            created_at INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            claimed_until INTEGER NOT NULL DEFAULT 0,
            last_error TEXT);
        CREATE INDEX IF NOT EXISTS switchyard_outbox_due ON switchyard_outbox (claimed_until, seq);
        """

    /// Writes `messages` in the open transaction of `database`. Once it commits, wake the relay:
    /// its claim decides what goes out, in commit order per destination.
    static func insert(_ messages: [OutboxMessage], into database: SQLiteDatabase) throws(TransportError) {
        guard !messages.isEmpty else { return }
        let now = WallClock.nowNanos()
        for outgoing in messages {
            _ = try database.run(
                "INSERT INTO switchyard_outbox (transport, channel, message, created_at) VALUES (?, ?, ?, ?)",
                [.text(outgoing.transport), .text(outgoing.message.channel), .blob(MessageCodec.encode(outgoing.message)), .int(now)])
        }
    }

    /// The relay's own connection (the transactions that write rows use theirs): closed at the
    /// system's shutdown, opened again by a later call (see ``ReopenableConnection``).
    private let database: ReopenableConnection

    init(path: String, sharedWithApplication: Bool) throws(TransportError) {
        let database = try SQLiteDatabase(path: path)
        try database.configureDurable(sharedWithApplication: sharedWithApplication)
        try database.execute("BEGIN IMMEDIATE;" + Self.schema + "COMMIT;")
        self.database = ReopenableConnection(database) { () throws(TransportError) -> SQLiteDatabase in
            let reopened = try SQLiteDatabase(path: path)
            try reopened.configureDurable(sharedWithApplication: sharedWithApplication)
            return reopened
        }
    }

    func closeConnections() { database.close() }

    func claim(limit: Int, nowNanos: Int64, leaseNanos: Int64, transports: [String]) throws(TransportError) -> OutboxClaim {
        let names = Self.jsonArray(transports)
        return try database.withDatabase { (database) throws(TransportError) -> OutboxClaim in
            // A read first: an idle outbox costs its relay no write lock.
            var due = false
            _ = try database.run(
                "SELECT 1 FROM switchyard_outbox WHERE claimed_until <= ? AND transport IN (SELECT value FROM json_each(?)) LIMIT 1",
                [.int(nowNanos), .text(names)]
            ) { _ in due = true }
            guard due else { return OutboxClaim() }
            try database.execute("BEGIN IMMEDIATE")
            do throws(TransportError) {
                var rows: [OutboxRow] = []
                var unreadable: [(Int64, String)] = []
                _ = try database.run(
                    """
                    SELECT seq, transport, message, attempts FROM switchyard_outbox
                    WHERE claimed_until <= ?1
                      AND transport IN (SELECT value FROM json_each(?4))
                      AND (transport, channel) NOT IN (
                        SELECT transport, channel FROM switchyard_outbox WHERE claimed_until > ?1 AND claimed_until < ?3)
                    ORDER BY seq LIMIT ?2
                    """, [.int(nowNanos), .int(Int64(limit)), .int(Self.setAside), .text(names)]
                ) { (row) throws(TransportError) in
                    do throws(TransportError) {
                        let message = try row.blob(2) { (bytes) throws(TransportError) in try MessageCodec.decode(bytes) }
                        rows.append(OutboxRow(seq: row.int(0), transport: row.text(1), message: message, attempts: Int(row.int(3))))
                    } catch {
                        unreadable.append((row.int(0), error.message))
                    }
                }
                for row in rows {
                    _ = try database.run("UPDATE switchyard_outbox SET claimed_until = ? WHERE seq = ?", [.int(nowNanos + leaseNanos), .int(row.seq)])
                }
                // A corrupt row is set aside (never claimed again), not allowed to stop the rest.
                for (seq, reason) in unreadable {
                    _ = try database.run(
                        "UPDATE switchyard_outbox SET claimed_until = ?, last_error = ? WHERE seq = ?", [.int(Self.setAside), .text("unreadable: \(reason)"), .int(seq)])
                }
                try database.execute("COMMIT")
                return OutboxClaim(rows: rows, setAside: unreadable.map { (seq: $0.0, reason: $0.1) })
            } catch {
                try? database.execute("ROLLBACK")
                throw error
            }
        }
    }

    func remove(_ seqs: [Int64]) throws(TransportError) {
        try update(seqs) { (database, seq) throws(TransportError) in
            _ = try database.run("DELETE FROM switchyard_outbox WHERE seq = ?", [.int(seq)])
        }
    }

    func stale(createdBeforeNanos: Int64, nowNanos: Int64, excluding transports: [String]) throws(TransportError) -> [(transport: String, count: Int)] {
        try database.withDatabase { (database) throws(TransportError) -> [(transport: String, count: Int)] in
            var found: [(transport: String, count: Int)] = []
            _ = try database.run(
                """
                SELECT transport, count(*) FROM switchyard_outbox
                WHERE created_at < ?1 AND claimed_until < ?2 AND transport NOT IN (SELECT value FROM json_each(?3))
                  AND transport NOT IN (SELECT transport FROM switchyard_outbox WHERE claimed_until > ?4 AND claimed_until < ?2)
                GROUP BY transport ORDER BY transport
                """, [.int(createdBeforeNanos), .int(Self.setAside), .text(Self.jsonArray(transports)), .int(nowNanos)]
            ) { row in found.append((row.text(0), Int(row.int(1)))) }
            return found
        }
    }

    func unclaim(_ seqs: [Int64]) throws(TransportError) {
        try update(seqs) { (database, seq) throws(TransportError) in
            _ = try database.run("UPDATE switchyard_outbox SET claimed_until = 0 WHERE seq = ?", [.int(seq)])
        }
    }

    func release(_ seqs: [Int64], retryAtNanos: Int64, error: String) throws(TransportError) {
        try update(seqs) { (database, seq) throws(TransportError) in
            _ = try database.run(
                "UPDATE switchyard_outbox SET claimed_until = ?, attempts = attempts + 1, last_error = ? WHERE seq = ?",
                [.int(retryAtNanos), .text(error), .int(seq)])
        }
    }

    func depth(transports: [String]) throws(TransportError) -> Int {
        try database.withDatabase { (database) throws(TransportError) -> Int in
            var count = 0
            _ = try database.run(
                "SELECT count(*) FROM switchyard_outbox WHERE transport IN (SELECT value FROM json_each(?)) AND claimed_until <> ?",
                [.text(Self.jsonArray(transports)), .int(Self.setAside)]
            ) { row in count = Int(row.int(0)) }
            return count
        }
    }

    private func update(_ seqs: [Int64], _ each: (SQLiteDatabase, Int64) throws(TransportError) -> Void) throws(TransportError) {
        guard !seqs.isEmpty else { return }
        try database.withDatabase { (database) throws(TransportError) in
            try database.execute("BEGIN IMMEDIATE")
            do throws(TransportError) {
                for seq in seqs { try each(database, seq) }
                try database.execute("COMMIT")
            } catch {
                try? database.execute("ROLLBACK")
                throw error
            }
        }
    }
}

/// The outbox table in a PostgreSQL schema: the inbox's (a handler's follow-up calls) or an
/// application database's (`outboxes:`).
final class PostgresOutboxStorage: OutboxStorage {
    static let tables = """
        CREATE TABLE IF NOT EXISTS $schema.outbox (
            seq bigserial PRIMARY KEY,
            transport text NOT NULL,
            channel text NOT NULL,
            message bytea NOT NULL,
            created_at bigint NOT NULL,
            attempts bigint NOT NULL DEFAULT 0,
            claimed_until bigint NOT NULL DEFAULT 0,
            last_error text);
        CREATE INDEX IF NOT EXISTS outbox_due ON $schema.outbox (claimed_until, seq);
        """

    /// Writes `messages` in the open transaction of `database` (as the SQLite outbox does).
    static func insert(_ messages: [OutboxMessage], into database: PostgresDatabase, schema: String) throws(TransportError) {
        guard !messages.isEmpty else { return }
        let now = WallClock.nowNanos()
        for outgoing in messages {
            try database.run(
                "INSERT INTO \(schema).outbox (transport, channel, message, created_at) VALUES ($1, $2, $3, $4)",
                [.text(outgoing.transport), .text(outgoing.message.channel), .blob(MessageCodec.encode(outgoing.message)), .int(now)])
        }
    }

    private let database: Guarded<PostgresDatabase>
    private let schema: String
    init(conninfo: String, schema name: String) throws(TransportError) {
        let database = try PostgresDatabase(conninfo: conninfo)
        schema = try database.prepareSchema(name, kind: "transactions", tables: PostgresInboxDatabase.tables)
        self.database = Guarded(database)
    }

    func closeConnections() { database.withLock { $0.close() } }

    func claim(limit: Int, nowNanos: Int64, leaseNanos: Int64, transports: [String]) throws(TransportError) -> OutboxClaim {
        let names = Self.jsonArray(transports)
        return try database.withLock { (database) throws(TransportError) -> OutboxClaim in
            try database.ensureConnected()
            var due = false
            try database.run(
                "SELECT 1 FROM \(schema).outbox WHERE claimed_until <= $1 AND transport IN (SELECT jsonb_array_elements_text($2::jsonb)) LIMIT 1",
                [.int(nowNanos), .text(names)]
            ) { _ in due = true }
            guard due else { return OutboxClaim() }
            return try database.transaction { () throws(TransportError) -> OutboxClaim in
                // One claimer at a time per schema: the destination check and the claim see one state.
                try database.run("SELECT pg_advisory_xact_lock(hashtext($1))", [.text("switchyard outbox " + schema)])
                var rows: [OutboxRow] = []
                var unreadable: [(Int64, String)] = []
                try database.run(
                    """
                    UPDATE \(schema).outbox SET claimed_until = $3 WHERE seq IN (
                        SELECT seq FROM \(schema).outbox
                        WHERE claimed_until <= $1
                          AND transport IN (SELECT jsonb_array_elements_text($5::jsonb))
                          AND (transport, channel) NOT IN (
                            SELECT transport, channel FROM \(schema).outbox WHERE claimed_until > $1 AND claimed_until < $4)
                        ORDER BY seq LIMIT $2)
                    RETURNING seq, transport, message, attempts
                    """, [.int(nowNanos), .int(Int64(limit)), .int(nowNanos + leaseNanos), .int(Self.setAside), .text(names)]
                ) { row in
                    do throws(TransportError) {
                        rows.append(OutboxRow(seq: row.int(0), transport: row.text(1), message: try MessageCodec.decode(row.bytes(2)), attempts: Int(row.int(3))))
                    } catch {
                        unreadable.append((row.int(0), error.message))
                    }
                }
                // A corrupt row is set aside (never claimed again), not allowed to stop the rest.
                for (seq, reason) in unreadable {
                    try database.run(
                        "UPDATE \(schema).outbox SET claimed_until = $1, last_error = $2 WHERE seq = $3",
                        [.int(Self.setAside), .text("unreadable: \(reason)"), .int(seq)])
                }
                return OutboxClaim(rows: rows.sorted { $0.seq < $1.seq }, setAside: unreadable.map { (seq: $0.0, reason: $0.1) })
            }
        }
    }

    func remove(_ seqs: [Int64]) throws(TransportError) {
        guard !seqs.isEmpty else { return }
        _ = try database.withLock { (database) throws(TransportError) in
            try database.ensureConnected()  // hung up by a shutdown, or by the server
            try database.run("DELETE FROM \(schema).outbox WHERE seq = ANY(string_to_array($1, ',')::bigint[])", [.text(seqs.map(String.init).joined(separator: ","))])
        }
    }

    func stale(createdBeforeNanos: Int64, nowNanos: Int64, excluding transports: [String]) throws(TransportError) -> [(transport: String, count: Int)] {
        try database.withLock { (database) throws(TransportError) -> [(transport: String, count: Int)] in
            try database.ensureConnected()
            var found: [(transport: String, count: Int)] = []
            try database.run(
                """
                SELECT transport, count(*) FROM \(schema).outbox
                WHERE created_at < $1 AND claimed_until < $2 AND transport NOT IN (SELECT jsonb_array_elements_text($3::jsonb))
                  AND transport NOT IN (SELECT transport FROM \(schema).outbox WHERE claimed_until > $4 AND claimed_until < $2)
                GROUP BY transport ORDER BY transport
                """, [.int(createdBeforeNanos), .int(Self.setAside), .text(Self.jsonArray(transports)), .int(nowNanos)]
            ) { row in found.append((row.text(0), Int(row.int(1)))) }
            return found
        }
    }

    func unclaim(_ seqs: [Int64]) throws(TransportError) {
        guard !seqs.isEmpty else { return }
        _ = try database.withLock { (database) throws(TransportError) in
            try database.ensureConnected()
            try database.run(
                "UPDATE \(schema).outbox SET claimed_until = 0 WHERE seq = ANY(string_to_array($1, ',')::bigint[])",
                [.text(seqs.map(String.init).joined(separator: ","))])
        }
    }

    func release(_ seqs: [Int64], retryAtNanos: Int64, error: String) throws(TransportError) {
        guard !seqs.isEmpty else { return }
        _ = try database.withLock { (database) throws(TransportError) in
            try database.ensureConnected()
            try database.run(
                "UPDATE \(schema).outbox SET claimed_until = $1, attempts = attempts + 1, last_error = $2 WHERE seq = ANY(string_to_array($3, ',')::bigint[])",
                [.int(retryAtNanos), .text(error), .text(seqs.map(String.init).joined(separator: ","))])
        }
    }

    func depth(transports: [String]) throws(TransportError) -> Int {
        try database.withLock { (database) throws(TransportError) -> Int in
            var count = 0
            try database.ensureConnected()
            try database.run(
                "SELECT count(*)::bigint FROM \(schema).outbox WHERE transport IN (SELECT jsonb_array_elements_text($1::jsonb)) AND claimed_until <> $2",
                [.text(Self.jsonArray(transports)), .int(Self.setAside)]
            ) { row in count = Int(row.int(0)) }
            return count
        }
    }
}

/// The outbox of routes whose inbox is in memory: the same order and retries, without
/// durability (a crash loses it, as it loses everything in memory). For development.
final class MemoryOutboxStorage: OutboxStorage {
    private struct Entry {
        let row: OutboxRow
        var claimedUntil: Int64 = 0
        var attempts = 0
    }
    private let entries = Guarded<(next: Int64, rows: [Entry])>((1, []))

    func add(_ messages: [OutboxMessage]) {
        entries.withLock { state in
            for outgoing in messages {
                state.rows.append(Entry(row: OutboxRow(seq: state.next, transport: outgoing.transport, message: outgoing.message, attempts: 0)))
                state.next += 1
            }
        }
    }

    func claim(limit: Int, nowNanos: Int64, leaseNanos: Int64, transports: [String]) -> OutboxClaim {
        let running = Set(transports)
        return entries.withLock { state in
            struct Destination: Hashable { let transport: String, channel: String }
            var blocked = Set<Destination>()
            for entry in state.rows where entry.claimedUntil > nowNanos {
                blocked.insert(Destination(transport: entry.row.transport, channel: entry.row.message.channel))
            }
            var claimed: [OutboxRow] = []
            for index in state.rows.indices where claimed.count < limit {
                let entry = state.rows[index]
                guard entry.claimedUntil <= nowNanos, running.contains(entry.row.transport),
                    !blocked.contains(Destination(transport: entry.row.transport, channel: entry.row.message.channel))
                else { continue }
                state.rows[index].claimedUntil = nowNanos + leaseNanos
                claimed.append(OutboxRow(seq: entry.row.seq, transport: entry.row.transport, message: entry.row.message, attempts: entry.attempts))
            }
            return OutboxClaim(rows: claimed)
        }
    }

    func remove(_ seqs: [Int64]) {
        let gone = Set(seqs)
        entries.withLock { $0.rows.removeAll { gone.contains($0.row.seq) } }
    }

    /// Never any: every message here was made in this process, through a transport it runs.
    func stale(createdBeforeNanos: Int64, nowNanos: Int64, excluding transports: [String]) -> [(transport: String, count: Int)] { [] }

    func unclaim(_ seqs: [Int64]) {
        let unclaimed = Set(seqs)
        entries.withLock { state in
            for index in state.rows.indices where unclaimed.contains(state.rows[index].row.seq) {
                state.rows[index].claimedUntil = 0
            }
        }
    }

    func release(_ seqs: [Int64], retryAtNanos: Int64, error: String) {
        let released = Set(seqs)
        entries.withLock { state in
            for index in state.rows.indices where released.contains(state.rows[index].row.seq) {
                state.rows[index].claimedUntil = retryAtNanos
                state.rows[index].attempts += 1
            }
        }
    }

    func depth(transports: [String]) -> Int {
        let running = Set(transports)
        return entries.withLock { $0.rows.count { running.contains($0.row.transport) } }
    }
}

/// Publishes what one outbox holds until its transports accept it: a thread of its own, woken by
/// each commit that wrote to the outbox, and every `pollInterval` for messages left by another
/// process or by a crash (a crashed relay's claims expire after `lease`). A destination
/// (transport and channel) whose publish fails is retried with backoff (1 s doubling to 30 s), its
/// later messages held back so they keep their order; other destinations go on.
final class OutboxRelay: Sendable {
    /// The outbox's name in logs and metrics: the `outboxes:` entry, or `<route pattern> inbox`.
    let name: String
    let storage: any OutboxStorage
    /// The transports this process runs: the only ones whose messages it claims.
    private let transports: [String]
    private let publish: @Sendable (_ transport: String, _ messages: [Message]) throws(TransportError) -> Void
    private let logger: Logger
    private let wakeup = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private let state = Guarded<State>(State())
    private let relayed: Counter
    private let failed: Counter

    static let pollInterval: Duration = .seconds(1)
    /// How old a message for a transport this process does not run must be before the relay
    /// says it waits (another process with the outbox would have relayed it by then), and how
    /// often it looks.
    static let staleAfterNanos: Int64 = 60_000_000_000
    static let leaseNanos: Int64 = 10_000_000_000
    static let batchSize = 256

    private struct Destination: Hashable {
        let transport: String
        let channel: String
    }

    private struct State {
        var stopping = false
        var started = false
        /// Destinations (transport and channel) whose last publish failed: logged once until a
        /// message to that destination goes out, not when another channel of the transport does.
        var failing: Set<Destination> = []
        /// When the relay last looked for messages nobody relays (``reportStale()``).
        var staleLookedAt: Int64 = 0
        /// Transports reported so, with their count then (told again when it grows).
        var staleReported: [String: Int] = [:]
    }

    init(
        name: String, storage: any OutboxStorage, transports: [String], logger: Logger,
        publish: @escaping @Sendable (_ transport: String, _ messages: [Message]) throws(TransportError) -> Void
    ) {
        self.name = name
        self.storage = storage
        self.transports = transports
        self.logger = logger
        self.publish = publish
        relayed = Counter(label: "switchyard_outbox_relayed_total", dimensions: [("outbox", name)])
        failed = Counter(label: "switchyard_outbox_publish_failures_total", dimensions: [("outbox", name)])
    }

    /// Starts the relay's thread (once).
    func start() {
        let first = state.withLock { state -> Bool in
            defer { state.started = true }
            return !state.started && !state.stopping
        }
        guard first else { return }
        let thread = Thread(named: "switchyard-outbox") { [self] in
            while !state.withLock({ $0.stopping }) {
                // Every pass, busy or idle: messages for a transport no process relays wait
                // however much else goes out (it looks once a minute at most).
                reportStale()
                if relayOnce() == 0 {
                    _ = wakeup.wait(timeout: .now() + .milliseconds(Int(Self.pollInterval.components.seconds * 1000)))
                }
            }
            finished.signal()
        }
        thread.start()
    }

    /// A transaction committed messages: relay them now rather than at the next poll.
    func wake() { wakeup.signal() }

    /// Relays what is due; returns how many messages were published.
    @discardableResult
    func relayOnce() -> Int {
        let claim: OutboxClaim
        do {
            claim = try storage.claim(limit: Self.batchSize, nowNanos: WallClock.nowNanos(), leaseNanos: Self.leaseNanos, transports: transports)
        } catch {
            logger.error(
                "outbox relay cannot read its outbox; trying again at the next poll",
                metadata: ["outbox": "\(name)", "error": "\(error.message)"])
            return 0
        }
        for (seq, reason) in claim.setAside {
            logger.error(
                "outbox relay set aside a message it cannot read; it stays in the outbox table with last_error, never sent (inspect it, then delete the row)",
                metadata: ["outbox": "\(name)", "seq": "\(seq)", "error": "\(reason)"])
        }
        guard !claim.rows.isEmpty else { return 0 }
        var published: [Int64] = []
        // One batch per transport, in commit order. A batch the transport refuses is tried one
        // message at a time, so only the destinations whose message fails wait (with everything
        // after it there, to keep their order); a receiver's inbox drops what of a failed batch
        // had been published.
        var byTransport: [(transport: String, rows: [OutboxRow])] = []
        for row in claim.rows {
            if let index = byTransport.firstIndex(where: { $0.transport == row.transport }) {
                byTransport[index].rows.append(row)
            } else {
                byTransport.append((row.transport, [row]))
            }
        }
        for (transport, batch) in byTransport {
            do throws(TransportError) {
                try publish(transport, batch.map(\.message))
                published += batch.map(\.seq)
                relayed.increment(by: batch.count)
                recovered(transport, batch)
                continue
            } catch  where batch.count == 1 {
                hold(batch, transport: transport, error: error)
                continue
            } catch {}
            var blocked: [String: TransportError] = [:]
            var waiting: [Int64] = []
            for row in batch {
                if blocked[row.message.channel] != nil {
                    waiting.append(row.seq)  // behind the refused one, which holds its destination
                    continue
                }
                do throws(TransportError) {
                    try publish(transport, [row.message])
                    published.append(row.seq)
                    relayed.increment()
                    recovered(transport, [row])
                } catch {
                    blocked[row.message.channel] = error
                    hold([row], transport: transport, error: error)
                }
            }
            do {
                try storage.unclaim(waiting)
            } catch {
                // Claimed until the lease runs out, then claimed again: only later.
                logger.error("outbox relay cannot hand back messages waiting behind a refused one", metadata: ["outbox": "\(name)", "error": "\(error.message)"])
            }
        }
        do {
            try storage.remove(published)
        } catch {
            // Published but still in the outbox: relayed again once the claim expires, and
            // dropped as a duplicate by the receiver's inbox.
            logger.error("outbox relay cannot remove published messages", metadata: ["outbox": "\(name)", "error": "\(error.message)"])
        }
        return published.count
    }

    /// Gives failed messages back with backoff, logging the first failure of each destination.
    private func hold(_ rows: [OutboxRow], transport: String, error: TransportError) {
        failed.increment()
        let attempts = rows.map(\.attempts).max() ?? 0
        let backoff = min(Int64(1_000_000_000) << Int64(min(attempts, 5)), 30_000_000_000)
        let channels = Set(rows.map(\.message.channel))
        let newlyFailing = state.withLock { state in
            channels.filter { state.failing.insert(Destination(transport: transport, channel: $0)).inserted }.sorted()
        }
        if !newlyFailing.isEmpty {
            logger.warning(
                "outbox relay cannot publish; the messages stay in the outbox and are retried with backoff (messages after them to the same channel wait, to keep their order)",
                metadata: [
                    "outbox": "\(name)", "transport": "\(transport)", "channel": "\(newlyFailing.joined(separator: ","))",
                    "seq": "\(rows.map(\.seq).map(String.init).joined(separator: ","))", "attempts": "\(attempts + 1)", "error": "\(error.message)",
                ])
        }
        do {
            try storage.release(rows.map(\.seq), retryAtNanos: WallClock.nowNanos() + backoff, error: error.message)
        } catch {
            logger.error("outbox relay cannot note a failed publish", metadata: ["outbox": "\(name)", "error": "\(error.message)"])
        }
    }

    /// Once a minute, while idle: warns of messages for transports this process does not run
    /// that have waited over a minute — another process with this outbox relays them if it runs
    /// that transport, and none seems to. Told once per transport, again when more wait.
    private func reportStale() {
        let now = WallClock.nowNanos()
        let due = state.withLock { state -> Bool in
            guard now - state.staleLookedAt >= Self.staleAfterNanos else { return false }
            state.staleLookedAt = now
            return true
        }
        guard due, let stale = try? storage.stale(createdBeforeNanos: now - Self.staleAfterNanos, nowNanos: now, excluding: transports) else { return }
        let report = state.withLock { state -> [(transport: String, count: Int)] in
            let growing = stale.filter { $0.count > state.staleReported[$0.transport] ?? 0 }
            state.staleReported = Dictionary(uniqueKeysWithValues: stale.map { ($0.transport, $0.count) })
            return growing
        }
        for (transport, count) in report {
            logger.warning(
                "outbox holds messages for a transport this process does not run; a process whose routes use it relays them, and none has for a minute, nor holds any of them (add the transport and a route that uses it to a process with this outbox, or, to drop them, delete their rows)",
                metadata: ["outbox": "\(name)", "transport": "\(transport)", "messages": "\(count)"])
        }
    }

    /// Notes that `rows` went out: a destination among them that had failed is logged as
    /// publishing again.
    private func recovered(_ transport: String, _ rows: [OutboxRow]) {
        let again = state.withLock { state -> [String] in
            guard !state.failing.isEmpty else { return [] }
            return Set(rows.map(\.message.channel)).filter { state.failing.remove(Destination(transport: transport, channel: $0)) != nil }.sorted()
        }
        if !again.isEmpty {
            logger.info("outbox relay publishing again", metadata: ["outbox": "\(name)", "transport": "\(transport)", "channel": "\(again.joined(separator: ","))"])
        }
    }

    /// Stops the thread without waiting for it (a system released without a shutdown).
    func stop() {
        state.withLock { $0.stopping = true }
        wakeup.signal()
    }

    /// A drain: stops the thread (waiting for its pass to end, until `deadline`), then publishes
    /// what is due until nothing more is or `deadline` passes. Messages waiting for a retry, or
    /// claimed by another process, are left to their relays.
    func drainAndStop(until deadline: ContinuousClock.Instant) async {
        let running = state.withLock { state -> Bool in
            state.stopping = true
            return state.started
        }
        if running {
            wakeup.signal()
            let nanos = max(0, (deadline - ContinuousClock.now).nanoseconds)
            _ = await blockingOperation { [finished] in finished.wait(timeout: .now() + .nanoseconds(Int(min(nanos, Int64(Int.max))))) }
        }
        while ContinuousClock.now < deadline {
            if await blockingOperation({ self.relayOnce() }) == 0 { break }
        }
        guard let left = try? storage.depth(transports: transports), left > 0 else { return }
        if storage is MemoryOutboxStorage {
            logger.warning("stopped with messages in the in-memory outbox; they are lost", metadata: ["outbox": "\(name)", "messages": "\(left)"])
        } else {
            logger.notice(
                "stopped with messages in the outbox; a process with this outbox relays them when it runs", metadata: ["outbox": "\(name)", "messages": "\(left)"])
        }
    }
}

/// The relays of one actor system, one per outbox database; routes that share an inbox database
/// share its relay. Created while the config is checked, started once it all passed.
final class OutboxRelays: Sendable {
    private let relays = Guarded<[String: OutboxRelay]>([:])
    /// The write gates of the SQLite files the system's inboxes and outboxes commit to: the
    /// process's, since every system in it shares the cooperative pool.
    let writeGates = SQLiteWriteGates.shared
    private let transports: TransportSet?
    private let logger: Logger

    init(transports: TransportSet?, logger: Logger) {
        self.transports = transports
        self.logger = logger
    }

    /// The relay of the database `identity` (its storage made by `storage` the first time);
    /// `name` appears in logs and metrics.
    func relay(identity: String, name: String, storage makeStorage: () throws(TransportError) -> any OutboxStorage) throws(TransportError) -> OutboxRelay {
        try relays.withLock { (relays) throws(TransportError) -> OutboxRelay in
            if let existing = relays[identity] { return existing }
            let storage = try makeStorage()
            let transports = self.transports
            let relay = OutboxRelay(name: name, storage: storage, transports: transports?.names ?? [], logger: logger) { (transport, messages) throws(TransportError) in
                guard let target = transports?[transport] else {
                    throw TransportError(
                        .config,
                        "transport '\(transport)' is not running here: add it under transports: with a route that uses it (only transports that routes use are started), or, to drop these messages, stop every process with this outbox and delete their rows"
                    )
                }
                try target.client.publish(batch: messages)
            }
            relays[identity] = relay
            return relay
        }
    }

    /// Starts every relay's thread (once the whole config passed its checks).
    func start() {
        for relay in relays.withLock({ Array($0.values) }) { relay.start() }
    }

    /// Stops every relay's thread without draining.
    func stop() {
        for relay in relays.withLock({ Array($0.values) }) { relay.stop() }
    }

    /// Hangs up every relay's database connections (after ``drainAndStop(until:)``).
    func closeConnections() {
        for relay in relays.withLock({ Array($0.values) }) { relay.storage.closeConnections() }
    }

    /// Drains and stops every relay (``SwitchyardActorSystem/shutdown(deadline:)``).
    func drainAndStop(until deadline: ContinuousClock.Instant) async {
        for relay in relays.withLock({ Array($0.values) }) { await relay.drainAndStop(until: deadline) }
    }
}

/// One gate per SQLite file that a system commits transactions to — its inboxes' files and its
/// `outboxes:` entries' — so that this process's writers of one file take turns without blocking
/// a thread of the cooperative pool on SQLite's write lock. A `transaction(on:)` holds the lock
/// across `await`s; an inbox's commit on the same file, blocked on the lock on a pool thread,
/// could leave no thread to resume that transaction (a stall until the busy timeout, 10 s).
/// Other processes' writers still wait on the lock itself.
final class SQLiteWriteGates: Sendable {
    /// The process's: two systems in one process share the cooperative pool too.
    static let shared = SQLiteWriteGates()

    private let gates = Guarded<[String: AsyncGate]>([:])

    /// The gate of the file at `path` (one writer at a time), found by its real path where the
    /// file exists, so that one file named two ways has one gate.
    func gate(for path: String) -> AsyncGate {
        let key = Self.realPath(path) ?? (path as NSString).standardizingPath
        return gates.withLock { gates in
            if let existing = gates[key] { return existing }
            let gate = AsyncGate(limit: 1)
            gates[key] = gate
            return gate
        }
    }

    private static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
