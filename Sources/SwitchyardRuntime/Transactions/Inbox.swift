import DequeModule
import SwitchyardABI
import SwitchyardTransportKit
import SwitchyardWire

/// The idempotent inbox of a route: remembers the calls it has handled (by idempotency key) for a
/// window, with their replies, so a redelivered call is answered again instead of run again.
/// At-least-once delivery plus the inbox gives effectively-once execution.
///
/// In memory by default; with a `path`, kept in SQLite so it survives restarts (and is shared by
/// the processes that use the same file).
final class Inbox: Sendable {
    /// What the inbox keeps of a handled call: the reply it sent, if any.
    struct Handled: Sendable {
        let outcome: String
        let reply: [UInt8]
    }

    private let windowNanos: Int64
    private let storage: Guarded<Storage>

    private struct Storage {
        /// Keys being handled in this process now: a second delivery of the same call waits for
        /// the first instead of running alongside it.
        var running: Set<String> = []
        var memory: [String: (at: Int64, handled: Handled)] = [:]
        var order: Deque<(key: String, at: Int64)> = []
        var database: SQLiteDatabase?
        var writesSincePrune = 0
    }

    init(windowNanos: Int64, path: String?) throws(TransportError) {
        self.windowNanos = windowNanos
        isDurable = path != nil
        var storage = Storage()
        if let path {
            let database = try SQLiteDatabase(path: path)
            try database.configureDurable()
            try database.execute(
                """
                CREATE TABLE IF NOT EXISTS switchyard_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                INSERT OR IGNORE INTO switchyard_meta VALUES ('schema', '1'), ('kind', 'inbox');
                CREATE TABLE IF NOT EXISTS inbox (key TEXT PRIMARY KEY, at INTEGER NOT NULL, outcome TEXT NOT NULL, reply BLOB NOT NULL);
                CREATE INDEX IF NOT EXISTS inbox_at ON inbox (at);
                """)
            var kind = ""
            _ = try database.run("SELECT value FROM switchyard_meta WHERE key = 'kind'") { row in kind = row.text(0) }
            guard kind == "inbox" else {
                throw TransportError(.config, "'\(path)' is a Switchyard \(kind) store, not an inbox; give the inbox its own file")
            }
            storage.database = database
        }
        self.storage = Guarded(storage)
    }

    /// What a delivery finds in the inbox.
    enum Claim {
        /// Handled before: answer with this, do not run it.
        case handled(Handled)
        /// Not handled yet, and now claimed by the caller, who must call ``finish(_:_:)``.
        case claimed
        /// Another delivery of the same call is running in this process.
        case running
    }

    /// Looks `key` up and, when it is new, claims it for the caller.
    func claim(_ key: String) throws(TransportError) -> Claim {
        try storage.withLock { (storage) throws(TransportError) -> Claim in
            if storage.running.contains(key) { return .running }
            if let handled = try Self.lookup(key, in: &storage, cutoff: WallClock.nowNanos() - windowNanos) { return .handled(handled) }
            storage.running.insert(key)
            return .claimed
        }
    }

    /// Whether the inbox is kept in SQLite (and so can commit effects with its records).
    let isDurable: Bool

    /// Ends a claim: remembers the call when it was handled (`handled` non-nil), or lets a later
    /// delivery run it (a failure to be retried).
    ///
    /// In a durable inbox, `effects` run in the same SQLite transaction that records the call, so
    /// they happen exactly once however often the call is delivered. If another process recorded
    /// the same call meanwhile (a redelivery that ran there at the same time), nothing of ours is
    /// committed and its record is returned: answer with that. Throws (committing nothing) when
    /// an effect or the write fails.
    func finish(_ key: String, _ handled: Handled?, effects: [InboxEffect] = []) throws(TransportError) -> Handled? {
        defer { storage.withLock { _ = $0.running.remove(key) } }
        guard let handled else { return nil }
        return try record(key, handled, effects: effects)
    }

    private static func lookup(_ key: String, in storage: inout Storage, cutoff: Int64) throws(TransportError) -> Handled? {
        if let database = storage.database {
            var found: Handled?
            _ = try database.run("SELECT outcome, reply FROM inbox WHERE key = ? AND at >= ?", [.text(key), .int(cutoff)]) { (row) throws(TransportError) in
                found = Handled(outcome: row.text(0), reply: try row.blob(1) { (bytes) throws(TransportError) in Array(bytes) })
            }
            return found
        }
        guard let entry = storage.memory[key], entry.at >= cutoff else { return nil }
        return entry.handled
    }

    /// Remembers that the call with `key` was handled, with its reply and effects; returns the
    /// record another process made first, if any (then nothing of ours is committed).
    private func record(_ key: String, _ handled: Handled, effects: [InboxEffect]) throws(TransportError) -> Handled? {
        let now = WallClock.nowNanos()
        let cutoff = now - windowNanos
        return try storage.withLock { (storage) throws(TransportError) -> Handled? in
            if let database = storage.database {
                // IMMEDIATE: take the write lock first, so the check and the insert see one state
                // across every process sharing the file.
                try database.execute("BEGIN IMMEDIATE")
                do throws(TransportError) {
                    if let first = try Self.lookup(key, in: &storage, cutoff: cutoff) {
                        try database.execute("ROLLBACK")
                        return first
                    }
                    for effect in effects {
                        do { try effect.apply(database) } catch let error as TransportError { throw error } catch {
                            throw TransportError(.internalError, "an inbox transaction effect failed: \(error)")
                        }
                    }
                    _ = try database.run(
                        "INSERT OR REPLACE INTO inbox (key, at, outcome, reply) VALUES (?, ?, ?, ?)",
                        [.text(key), .int(now), .text(handled.outcome), .blob(handled.reply)])
                    try database.execute("COMMIT")
                } catch {
                    try? database.execute("ROLLBACK")
                    throw error
                }
                storage.writesSincePrune += 1
                if storage.writesSincePrune >= 1000 {
                    storage.writesSincePrune = 0
                    _ = try database.run("DELETE FROM inbox WHERE at < ?", [.int(cutoff)])
                }
                return nil
            }
            storage.memory[key] = (now, handled)
            storage.order.append((key, now))
            while let oldest = storage.order.first, oldest.at < cutoff {
                storage.order.removeFirst()
                if let entry = storage.memory[oldest.key], entry.at == oldest.at { storage.memory[oldest.key] = nil }
            }
            return nil
        }
    }
}

/// Work a handler adds to the transaction that records its call in a durable inbox
/// (``Switchyard/inboxTransaction(_:)``).
struct InboxEffect: Sendable {
    let apply: @Sendable (SQLiteDatabase) throws -> Void
}

/// The effects one running call has added so far; bound to the call's task while it runs.
final class InboxEffects: Sendable {
    let durable: Bool
    private let effects = Guarded<[InboxEffect]>([])
    init(durable: Bool) { self.durable = durable }
    func add(_ effect: InboxEffect) { effects.withLock { $0.append(effect) } }
    var all: [InboxEffect] { effects.withLock { $0 } }
}

extension Switchyard {
    /// The running call's effects list, on routes with an inbox.
    @TaskLocal static var inboxEffects: InboxEffects?

    /// Whether ``inboxTransaction(_:)`` can be used here: inside a handler whose route has a
    /// durable inbox. Code that runs on several configs (a durable inbox in production, none in a
    /// test) asks this first.
    public static var inboxTransactionAvailable: Bool { inboxEffects?.durable == true }

    /// Adds `work` to the transaction that records the running call in its route's durable inbox
    /// (`inbox: { path: ... }`): it runs once the handler has returned, against the inbox's SQLite
    /// database, and commits together with the record that the call was handled. However often
    /// the call is delivered — after a crash, a visibility timeout, a publisher's retry — and
    /// however many processes share the file, its effects are committed exactly once:
    ///
    /// ```swift
    /// distributed func charge(_ order: Order) async throws -> Receipt {
    ///     let receipt = Receipt(order)
    ///     try Switchyard.inboxTransaction { db in
    ///         try db.run("INSERT INTO ledger (order_id, cents) VALUES (?, ?)", [.int(order.id), .int(order.cents)])
    ///     }
    ///     return receipt
    /// }
    /// ```
    ///
    /// Keep your tables apart from the inbox's own (`inbox`, `switchyard_meta`,
    /// `switchyard_outbox`). If `work` throws, nothing is committed and the call is delivered
    /// again later. If the handler throws, its effects are dropped (a rollback): the inbox
    /// remembers the error it threw as the call's outcome, on routes where that is the outcome. Effects outside this
    /// transaction (another database, an HTTP call) are at-least-once: the inbox skips a handled
    /// call, but a crash between such an effect and the inbox's commit repeats it.
    ///
    /// Throws ``SwitchyardError/routing(target:reason:)`` outside a handler on a route with a
    /// durable inbox.
    public static func inboxTransaction(_ work: @escaping @Sendable (SQLiteDatabase) throws -> Void) throws {
        guard let effects = inboxEffects, effects.durable else {
            throw SwitchyardError.routing(target: "Switchyard.inboxTransaction", reason: "only inside a handler whose route has a durable inbox (inbox: { path: ... })")
        }
        effects.add(InboxEffect(apply: work))
    }
}
