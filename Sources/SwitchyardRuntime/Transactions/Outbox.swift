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

/// The calls made while a transaction is open; bound to the transaction's task.
final class OutboxCapture: Sendable {
    private let captured = Guarded<[OutboxMessage]>([])
    func add(_ message: OutboxMessage) { captured.withLock { $0.append(message) } }
    var messages: [OutboxMessage] { captured.withLock { $0 } }
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

/// Where an outbox keeps its messages until they are relayed.
protocol OutboxStorage: Sendable {
    /// Claims up to `limit` messages for `leaseNanos`, oldest first, skipping every destination
    /// (transport and channel) that has a message claimed or waiting for a retry: so messages to
    /// one destination go out in the order they were committed, even with several relays (one per
    /// process) on one database.
    func claim(limit: Int, nowNanos: Int64, leaseNanos: Int64) throws(TransportError) -> [OutboxRow]
    /// Forgets relayed messages.
    func remove(_ seqs: [Int64]) throws(TransportError)
    /// Hands messages back, to be tried again from `retryAtNanos`.
    func release(_ seqs: [Int64], retryAtNanos: Int64, error: String) throws(TransportError)
    /// How many messages wait to be relayed.
    func depth() throws(TransportError) -> Int
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

    /// Writes `messages` in the open transaction of `database`, claimed by this process for
    /// ``OutboxRelay/leaseNanos`` (its relay publishes them from memory once the transaction
    /// commits: ``OutboxRelay/handOff(_:)``; after a crash the claim expires and any relay takes
    /// them). Returns the rows as written.
    static func insert(_ messages: [OutboxMessage], into database: SQLiteDatabase) throws(TransportError) -> [OutboxRow] {
        guard !messages.isEmpty else { return [] }
        let now = WallClock.nowNanos()
        var rows: [OutboxRow] = []
        for outgoing in messages {
            _ = try database.run(
                "INSERT INTO switchyard_outbox (transport, channel, message, created_at, claimed_until) VALUES (?, ?, ?, ?, ?)",
                [
                    .text(outgoing.transport), .text(outgoing.message.channel), .blob(MessageCodec.encode(outgoing.message)), .int(now),
                    .int(now + OutboxRelay.leaseNanos),
                ])
            rows.append(OutboxRow(seq: database.lastInsertRowID, transport: outgoing.transport, message: outgoing.message, attempts: 0))
        }
        return rows
    }

    /// The relay's own connection (the transactions that write rows use theirs).
    private let database: Guarded<SQLiteDatabase>

    init(path: String, sharedWithApplication: Bool) throws(TransportError) {
        let database = try SQLiteDatabase(path: path)
        try database.configureDurable(sharedWithApplication: sharedWithApplication)
        try database.execute(Self.schema)
        self.database = Guarded(database)
    }

    func claim(limit: Int, nowNanos: Int64, leaseNanos: Int64) throws(TransportError) -> [OutboxRow] {
        try database.withLock { (database) throws(TransportError) -> [OutboxRow] in
            // A read first: an idle outbox costs its relay no write lock.
            var due = false
            _ = try database.run("SELECT 1 FROM switchyard_outbox WHERE claimed_until <= ? LIMIT 1", [.int(nowNanos)]) { _ in due = true }
            guard due else { return [] }
            try database.execute("BEGIN IMMEDIATE")
            do throws(TransportError) {
                var rows: [OutboxRow] = []
                _ = try database.run(
                    """
                    SELECT seq, transport, message, attempts FROM switchyard_outbox
                    WHERE claimed_until <= ?1
                      AND (transport, channel) NOT IN (SELECT transport, channel FROM switchyard_outbox WHERE claimed_until > ?1)
                    ORDER BY seq LIMIT ?2
                    """, [.int(nowNanos), .int(Int64(limit))]
                ) { (row) throws(TransportError) in
                    let message = try row.blob(2) { (bytes) throws(TransportError) in try MessageCodec.decode(bytes) }
                    rows.append(OutboxRow(seq: row.int(0), transport: row.text(1), message: message, attempts: Int(row.int(3))))
                }
                for row in rows {
                    _ = try database.run("UPDATE switchyard_outbox SET claimed_until = ? WHERE seq = ?", [.int(nowNanos + leaseNanos), .int(row.seq)])
                }
                try database.execute("COMMIT")
                return rows
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

    func release(_ seqs: [Int64], retryAtNanos: Int64, error: String) throws(TransportError) {
        try update(seqs) { (database, seq) throws(TransportError) in
            _ = try database.run(
                "UPDATE switchyard_outbox SET claimed_until = ?, attempts = attempts + 1, last_error = ? WHERE seq = ?",
                [.int(retryAtNanos), .text(error), .int(seq)])
        }
    }

    func depth() throws(TransportError) -> Int {
        try database.withLock { (database) throws(TransportError) -> Int in
            var count = 0
            _ = try database.run("SELECT count(*) FROM switchyard_outbox") { row in count = Int(row.int(0)) }
            return count
        }
    }

    private func update(_ seqs: [Int64], _ each: (SQLiteDatabase, Int64) throws(TransportError) -> Void) throws(TransportError) {
        guard !seqs.isEmpty else { return }
        try database.withLock { (database) throws(TransportError) in
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

    /// Writes `messages` in the open transaction of `database`, claimed by this process (as the
    /// SQLite outbox does); returns the rows as written.
    static func insert(_ messages: [OutboxMessage], into database: PostgresDatabase, schema: String) throws(TransportError) -> [OutboxRow] {
        guard !messages.isEmpty else { return [] }
        let now = WallClock.nowNanos()
        var rows: [OutboxRow] = []
        for outgoing in messages {
            var seq: Int64 = 0
            try database.run(
                "INSERT INTO \(schema).outbox (transport, channel, message, created_at, claimed_until) VALUES ($1, $2, $3, $4, $5) RETURNING seq",
                [
                    .text(outgoing.transport), .text(outgoing.message.channel), .blob(MessageCodec.encode(outgoing.message)), .int(now),
                    .int(now + OutboxRelay.leaseNanos),
                ]
            ) { row in seq = row.int(0) }
            rows.append(OutboxRow(seq: seq, transport: outgoing.transport, message: outgoing.message, attempts: 0))
        }
        return rows
    }

    private let database: Guarded<PostgresDatabase>
    private let schema: String

    init(conninfo: String, schema name: String) throws(TransportError) {
        let database = try PostgresDatabase(conninfo: conninfo)
        schema = try database.prepareSchema(name, kind: "transactions", tables: PostgresInboxDatabase.tables)
        self.database = Guarded(database)
    }

    func claim(limit: Int, nowNanos: Int64, leaseNanos: Int64) throws(TransportError) -> [OutboxRow] {
        try database.withLock { (database) throws(TransportError) -> [OutboxRow] in
            try database.ensureConnected()
            var due = false
            try database.run("SELECT 1 FROM \(schema).outbox WHERE claimed_until <= $1 LIMIT 1", [.int(nowNanos)]) { _ in due = true }
            guard due else { return [] }
            return try database.transaction { () throws(TransportError) -> [OutboxRow] in
                // One claimer at a time per schema: the destination check and the claim see one state.
                try database.run("SELECT pg_advisory_xact_lock(hashtext($1))", [.text("switchyard outbox " + schema)])
                var rows: [OutboxRow] = []
                var failure: TransportError?
                try database.run(
                    """
                    UPDATE \(schema).outbox SET claimed_until = $3 WHERE seq IN (
                        SELECT seq FROM \(schema).outbox
                        WHERE claimed_until <= $1
                          AND (transport, channel) NOT IN (SELECT transport, channel FROM \(schema).outbox WHERE claimed_until > $1)
                        ORDER BY seq LIMIT $2)
                    RETURNING seq, transport, message, attempts
                    """, [.int(nowNanos), .int(Int64(limit)), .int(nowNanos + leaseNanos)]
                ) { row in
                    do throws(TransportError) {
                        rows.append(OutboxRow(seq: row.int(0), transport: row.text(1), message: try MessageCodec.decode(row.bytes(2)), attempts: Int(row.int(3))))
                    } catch {
                        failure = error
                    }
                }
                if let failure { throw failure }
                return rows.sorted { $0.seq < $1.seq }
            }
        }
    }

    func remove(_ seqs: [Int64]) throws(TransportError) {
        guard !seqs.isEmpty else { return }
        _ = try database.withLock { (database) throws(TransportError) in
            try database.run("DELETE FROM \(schema).outbox WHERE seq = ANY(string_to_array($1, ',')::bigint[])", [.text(seqs.map(String.init).joined(separator: ","))])
        }
    }

    func release(_ seqs: [Int64], retryAtNanos: Int64, error: String) throws(TransportError) {
        guard !seqs.isEmpty else { return }
        _ = try database.withLock { (database) throws(TransportError) in
            try database.run(
                "UPDATE \(schema).outbox SET claimed_until = $1, attempts = attempts + 1, last_error = $2 WHERE seq = ANY(string_to_array($3, ',')::bigint[])",
                [.int(retryAtNanos), .text(error), .text(seqs.map(String.init).joined(separator: ","))])
        }
    }

    func depth() throws(TransportError) -> Int {
        try database.withLock { (database) throws(TransportError) -> Int in
            var count = 0
            try database.run("SELECT count(*)::bigint FROM \(schema).outbox") { row in count = Int(row.int(0)) }
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

    func claim(limit: Int, nowNanos: Int64, leaseNanos: Int64) -> [OutboxRow] {
        entries.withLock { state in
            struct Destination: Hashable { let transport: String, channel: String }
            var blocked = Set<Destination>()
            for entry in state.rows where entry.claimedUntil > nowNanos {
                blocked.insert(Destination(transport: entry.row.transport, channel: entry.row.message.channel))
            }
            var claimed: [OutboxRow] = []
            for index in state.rows.indices where claimed.count < limit {
                let entry = state.rows[index]
                guard entry.claimedUntil <= nowNanos,
                    !blocked.contains(Destination(transport: entry.row.transport, channel: entry.row.message.channel))
                else { continue }
                state.rows[index].claimedUntil = nowNanos + leaseNanos
                claimed.append(OutboxRow(seq: entry.row.seq, transport: entry.row.transport, message: entry.row.message, attempts: entry.attempts))
            }
            return claimed
        }
    }

    func remove(_ seqs: [Int64]) {
        let gone = Set(seqs)
        entries.withLock { $0.rows.removeAll { gone.contains($0.row.seq) } }
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

    func depth() -> Int { entries.withLock { $0.rows.count } }
}

/// Publishes what one outbox holds until its transports accept it: a thread of its own, woken by
/// each commit that wrote to the outbox, and every `pollInterval` for messages left by another
/// process or by a crash (a crashed relay's claims expire after `lease`). A destination whose
/// publish fails is retried with backoff (100 ms doubling to 30 s), its later messages held back
/// so they keep their order; other destinations go on.
final class OutboxRelay: Sendable {
    /// The outbox's name in logs and metrics: `outboxes:` entry or the inbox's database file.
    let name: String
    let storage: any OutboxStorage
    private let publish: @Sendable (_ transport: String, _ messages: [Message]) throws(TransportError) -> Void
    private let logger: Logger
    private let wakeup = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private let state = Guarded<State>(State())
    private let relayed: Counter
    private let failed: Counter

    static let pollInterval: Duration = .seconds(1)
    static let leaseNanos: Int64 = 10_000_000_000
    static let batchSize = 256

    private struct State {
        var stopping = false
        var started = false
        /// Rows this process committed and claimed, to publish without reading them back.
        var handedOff: [OutboxRow] = []
        /// Destinations whose last publish failed (logged once until they recover).
        var failing: Set<String> = []
    }

    init(
        name: String, storage: any OutboxStorage, logger: Logger,
        publish: @escaping @Sendable (_ transport: String, _ messages: [Message]) throws(TransportError) -> Void
    ) {
        self.name = name
        self.storage = storage
        self.logger = logger
        self.publish = publish
        relayed = Counter(label: "switchyard_outbox_relayed_total", dimensions: [("outbox", name)])
        failed = Counter(label: "switchyard_outbox_publish_failures_total", dimensions: [("outbox", name)])
    }

    /// Starts the relay's thread (once).
    func start() {
        let first = state.withLock { state -> Bool in
            defer { state.started = true }
            return !state.started
        }
        guard first else { return }
        let thread = Thread { [self] in
            while !state.withLock({ $0.stopping }) {
                if relayOnce() == 0 { _ = wakeup.wait(timeout: .now() + .milliseconds(Int(Self.pollInterval.components.seconds * 1000))) }
            }
            finished.signal()
        }
        thread.name = "switchyard-outbox"
        thread.start()
    }

    /// A transaction committed messages: relay them now rather than at the next poll.
    func wake() { wakeup.signal() }

    /// A transaction of this process committed `rows` (claimed when written): publish them now,
    /// from memory, without claiming them again.
    func handOff(_ rows: [OutboxRow]) {
        guard !rows.isEmpty else { return }
        state.withLock { $0.handedOff += rows }
        wakeup.signal()
    }

    /// Relays what was handed off and what is due; returns how many messages were published.
    @discardableResult
    func relayOnce() -> Int {
        var rows = state.withLock { state in
            defer { state.handedOff = [] }
            return state.handedOff
        }
        do {
            rows += try storage.claim(limit: Self.batchSize, nowNanos: WallClock.nowNanos(), leaseNanos: Self.leaseNanos)
        } catch {
            logger.error("outbox relay cannot read its outbox; trying again", metadata: ["outbox": "\(name)", "error": "\(error.message)"])
        }
        guard !rows.isEmpty else { return 0 }
        var published: [Int64] = []
        // One batch per transport, in commit order; a failed batch is retried whole (a receiver's
        // inbox drops what of it had been published).
        var byTransport: [(transport: String, rows: [OutboxRow])] = []
        for row in rows {
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
                if state.withLock({ $0.failing.remove(transport) != nil }) {
                    logger.info("outbox relay publishing again", metadata: ["outbox": "\(name)", "transport": "\(transport)"])
                }
            } catch {
                failed.increment()
                let attempts = batch.map(\.attempts).max() ?? 0
                let backoff = min(Int64(100_000_000) << Int64(min(attempts, 9)), 30_000_000_000)
                if state.withLock({ $0.failing.insert(transport).inserted }) {
                    logger.warning(
                        "outbox relay cannot publish; the messages stay in the outbox and are retried with backoff",
                        metadata: [
                            "outbox": "\(name)", "transport": "\(transport)", "messages": "\(batch.count)", "error": "\(error.message)",
                        ])
                }
                do {
                    try storage.release(batch.map(\.seq), retryAtNanos: WallClock.nowNanos() + backoff, error: error.message)
                } catch {
                    logger.error("outbox relay cannot note a failed publish", metadata: ["outbox": "\(name)", "error": "\(error.message)"])
                }
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

    /// Stops the thread without waiting for it (a system released without a shutdown).
    func stop() {
        state.withLock { $0.stopping = true }
        wakeup.signal()
    }

    /// Waits until the outbox is empty or `deadline` passes (a drain), then stops the thread.
    func drainAndStop(until deadline: ContinuousClock.Instant) async {
        while ContinuousClock.now < deadline, ((try? storage.depth()) ?? 0) > 0 {
            wake()
            try? await Task.sleep(for: .milliseconds(10))
        }
        let running = state.withLock { state -> Bool in
            state.stopping = true
            return state.started
        }
        guard running else { return }
        wakeup.signal()
        await blockingOperation { [finished] in finished.wait() }
        if let left = try? storage.depth(), left > 0 {
            logger.notice("stopped with messages in the outbox; they are relayed when a process with this outbox starts", metadata: ["outbox": "\(name)", "messages": "\(left)"])
        }
    }
}

/// The relays of one actor system, one per outbox database; routes that share an inbox file
/// share its relay.
final class OutboxRelays: Sendable {
    private let relays = Guarded<[String: OutboxRelay]>([:])
    private let transports: TransportSet?
    private let logger: Logger

    init(transports: TransportSet?, logger: Logger) {
        self.transports = transports
        self.logger = logger
    }

    /// The relay of the database `identity` (its storage made by `storage` the first time, and
    /// started); `name` appears in logs and metrics.
    func relay(identity: String, name: String, storage makeStorage: () throws(TransportError) -> any OutboxStorage) throws(TransportError) -> OutboxRelay {
        try relays.withLock { (relays) throws(TransportError) -> OutboxRelay in
            if let existing = relays[identity] { return existing }
            let storage = try makeStorage()
            let transports = self.transports
            let relay = OutboxRelay(name: name, storage: storage, logger: logger) { (transport, messages) throws(TransportError) in
                guard let target = transports?[transport] else {
                    throw TransportError(.config, "no transport named '\(transport)' is configured (the message was written when one was)")
                }
                try target.client.publish(batch: messages)
            }
            relays[identity] = relay
            relay.start()
            return relay
        }
    }

    /// Stops every relay's thread without draining.
    func stop() {
        for relay in relays.withLock({ Array($0.values) }) { relay.stop() }
    }

    /// Drains and stops every relay (``SwitchyardActorSystem/shutdown(deadline:)``).
    func drainAndStop(until deadline: ContinuousClock.Instant) async {
        for relay in relays.withLock({ Array($0.values) }) { await relay.drainAndStop(until: deadline) }
    }
}
