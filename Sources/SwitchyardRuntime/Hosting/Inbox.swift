import DequeModule
import Synchronization
import SwitchyardABI
import SwitchyardTransportKit

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
    private let storage: Mutex<Storage>

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
        var storage = Storage()
        if let path {
            let database = try SQLiteDatabase(path: path)
            try database.configureDurable()
            try database.execute("""
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
        self.storage = Mutex(storage)
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

    /// Ends a claim: remembers the call when it was handled (`handled` non-nil), or lets a later
    /// delivery run it (a failure to be retried).
    func finish(_ key: String, _ handled: Handled?) throws(TransportError) {
        defer { storage.withLock { _ = $0.running.remove(key) } }
        if let handled { try record(key, handled) }
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

    /// Remembers that the call with `key` was handled, with its reply.
    private func record(_ key: String, _ handled: Handled) throws(TransportError) {
        let now = WallClock.nowNanos()
        let cutoff = now - windowNanos
        try storage.withLock { (storage) throws(TransportError) in
            if let database = storage.database {
                _ = try database.run(
                    "INSERT OR REPLACE INTO inbox (key, at, outcome, reply) VALUES (?, ?, ?, ?)",
                    [.text(key), .int(now), .text(handled.outcome), .blob(handled.reply)])
                storage.writesSincePrune += 1
                if storage.writesSincePrune >= 1000 {
                    storage.writesSincePrune = 0
                    _ = try database.run("DELETE FROM inbox WHERE at < ?", [.int(cutoff)])
                }
                return
            }
            storage.memory[key] = (now, handled)
            storage.order.append((key, now))
            while let oldest = storage.order.first, oldest.at < cutoff {
                storage.order.removeFirst()
                if let entry = storage.memory[oldest.key], entry.at == oldest.at { storage.memory[oldest.key] = nil }
            }
        }
    }
}
