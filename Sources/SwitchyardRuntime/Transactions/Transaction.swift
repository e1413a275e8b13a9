import Foundation
import SwitchyardABI
import SwitchyardConfig
import SwitchyardPostgres
import SwitchyardTransportKit

/// An application database from `outboxes:`: connections for transactions, and the relay of its
/// outbox table.
final class ApplicationOutbox: Sendable {
    let name: String
    let relay: OutboxRelay
    let database: Database
    /// Transactions of this process at once: one for SQLite (one writer), the pool's size for
    /// PostgreSQL.
    let gate: AsyncGate

    /// Which database, with idle connections that later transactions reuse (a transaction
    /// uses one at a time).
    enum Database: Sendable {
        case sqlite(path: String, idle: Guarded<[SQLiteDatabase]>)
        case postgres(schema: String, pool: PostgresPool)
    }

    /// Hangs up its connections now (the system's shutdown), not when it is released: a server's,
    /// and a file's idle ones (the last close of a file removes its WAL; a transaction running
    /// now holds its own connection, out of the idle list); a later transaction connects again.
    func closeConnections() {
        switch database {
        case .postgres(_, let pool): pool.close()
        case .sqlite(_, let idle):
            idle.withLock { connections in
                for connection in connections { connection.close() }
                connections.removeAll()
            }
        }
    }

    init(_ entry: SwitchyardConfig.OutboxEntry, relays: OutboxRelays) throws(TransportError) {
        name = entry.name
        if let postgres = entry.postgres {
            let quoted = try PostgresDatabase.quotedSchema(postgres.schema)
            database = .postgres(schema: quoted, pool: PostgresPool(conninfo: postgres.conninfo, maxOpen: 8))
            gate = AsyncGate(limit: 8)
            relay = try relays.relay(identity: "postgres:\(postgres.schema):\(postgres.conninfo)", name: entry.name) { () throws(TransportError) in
                try PostgresOutboxStorage(conninfo: postgres.conninfo, schema: postgres.schema)
            }
        } else {
            let path = entry.path ?? ""
            database = .sqlite(path: path, idle: Guarded([]))
            gate = relays.writeGates.gate(for: path)  // shared with an inbox on the same file
            relay = try relays.relay(identity: "sqlite:" + path, name: entry.name) { () throws(TransportError) in
                try SQLiteOutboxStorage(path: path, sharedWithApplication: true)
            }
        }
    }

    var kind: String {
        if case .postgres = database { "PostgreSQL" } else { "SQLite" }
    }
}

extension SwitchyardActorSystem {
    static func applicationOutboxes(_ config: SwitchyardConfig, relays: OutboxRelays) throws(ConfigError) -> [String: ApplicationOutbox] {
        var outboxes: [String: ApplicationOutbox] = [:]
        for entry in config.outboxes {
            do {
                outboxes[entry.name] = try ApplicationOutbox(entry, relays: relays)
            } catch {
                throw ConfigError(key: "outboxes.\(entry.name).\(entry.postgres != nil ? "postgres" : "path")", line: entry.locationLine ?? entry.line, message: error.message)
            }
        }
        return outboxes
    }

    /// Runs `body` in one transaction on the SQLite application database `name` (configured
    /// under `outboxes:`), and makes the fire-and-forget calls it makes part of that transaction:
    ///
    /// ```swift
    /// try await system.transaction(on: "shop") { db in
    ///     _ = try db.run("INSERT INTO orders (id, customer) VALUES (?, ?)", [.int(Int64(order.id)), .text(order.customer)])
    ///     try await fulfilment.ship(order)      // a fire-and-forget route: written to the outbox
    /// }
    /// ```
    ///
    /// The calls are written to the database's `switchyard_outbox` table with your rows and
    /// published after the commit by the outbox's relay, retried until their transports accept
    /// them, in order per destination. If `body` throws, the transaction rolls back and nothing
    /// is sent; the error is rethrown. Calls on request-reply routes are sent at once (their
    /// replies are needed inside `body`), and calls on direct routes run at once: neither is part
    /// of the transaction.
    ///
    /// The transaction holds SQLite's write lock until `body` returns (`BEGIN IMMEDIATE`): keep
    /// it short. Keep your tables apart from `switchyard_outbox`.
    ///
    /// - Throws: ``SwitchyardError/routing(target:reason:)`` when no outbox has that name (or it
    ///   is a PostgreSQL one: use ``transaction(on:_:_:)``);
    ///   ``SwitchyardError/transport(target:transport:reason:)`` when the database fails (nothing
    ///   was committed); whatever `body` throws.
    public func transaction<T>(on name: String, _ body: (SQLiteDatabase) async throws -> T) async throws -> T {
        let outbox = try applicationOutbox(name)
        guard case .sqlite(let path, let idle) = outbox.database else { throw wrongKind(outbox) }
        func failed(_ error: TransportError) -> SwitchyardError {
            SwitchyardError.transport(target: "transaction(on: \"\(name)\")", reason: "\(path): \(error.message)")
        }
        // Inside a transaction on the same file, the gate below would wait for itself for good.
        if let enclosing = Switchyard.outboxCapture, enclosing.writeGate === outbox.gate, !enclosing.isSealed {
            throw SwitchyardError.routing(
                target: "transaction(on: \"\(name)\")",
                reason: "already inside a transaction on \(path), which would wait for itself (SQLite has one writer): use the enclosing transaction's database")
        }
        // One SQLite transaction of this process at a time, waited for without holding a thread:
        // BEGIN IMMEDIATE would otherwise block a thread of the cooperative pool while the
        // transaction it waits for is suspended in its body, waiting for that thread.
        await outbox.gate.enter()
        defer { outbox.gate.leave() }
        let database: SQLiteDatabase
        do throws(TransportError) {
            if let pooled = idle.withLock({ $0.popLast() }) {
                database = pooled
            } else {
                database = try SQLiteDatabase(path: path)
                try database.configureDurable(sharedWithApplication: true)
            }
        } catch {
            throw failed(error)
        }
        defer { idle.withLock { if $0.count < 8 { $0.append(database) } } }
        do throws(TransportError) {
            try database.execute("BEGIN IMMEDIATE")
        } catch {
            throw failed(error)
        }
        let capture = OutboxCapture(writeGate: outbox.gate)  // held until the body returns
        let value: T
        do {
            value = try await Switchyard.$outboxCapture.withValue(capture) { try await body(database) }
        } catch {
            _ = capture.seal()
            try? database.execute("ROLLBACK")
            throw error
        }
        let calls = capture.seal()
        do throws(TransportError) {
            try SQLiteOutboxStorage.insert(calls, into: database)
            try database.execute("COMMIT")
        } catch {
            try? database.execute("ROLLBACK")
            throw failed(error)
        }
        if !calls.isEmpty { outbox.relay.wake() }
        return value
    }

    /// Runs `body` in one transaction on the PostgreSQL application database `name` (configured
    /// under `outboxes:` with `postgres:`), and makes the fire-and-forget calls it makes part of
    /// that transaction — the same promise as ``transaction(on:_:)``, with the outbox table in
    /// the configured schema (default `switchyard`):
    ///
    /// ```swift
    /// try await system.transaction(on: "ledger", PostgresDatabase.self) { db in
    ///     try db.run("INSERT INTO payments (order_id, cents) VALUES ($1, $2)", [.int(Int64(order.id)), .int(Int64(order.cents))])
    ///     try await events.paid(order.id)
    /// }
    /// ```
    ///
    /// The transaction holds one of the outbox's connections (8 at most; more transactions at
    /// once wait for one) until `body` returns. Do not begin or commit transactions inside
    /// `body`. A statement that fails aborts the whole transaction in PostgreSQL: if `body` goes
    /// on after one (catching its error), the commit throws and nothing is committed. A
    /// connection lost during the commit throws an error saying the change may have been stored.
    public func transaction<T>(on name: String, _ database: PostgresDatabase.Type, _ body: (PostgresDatabase) async throws -> T) async throws -> T {
        let outbox = try applicationOutbox(name)
        guard case .postgres(let schema, let pool) = outbox.database else { throw wrongKind(outbox) }
        func failed(_ error: TransportError) -> SwitchyardError {
            SwitchyardError.transport(target: "transaction(on: \"\(name)\")", reason: error.message)
        }
        // At most as many transactions as the pool has connections, waited for without holding
        // a thread (see the SQLite variant).
        await outbox.gate.enter()
        defer { outbox.gate.leave() }
        let connection: PostgresDatabase
        do throws(TransportError) {
            connection = try pool.checkout()
        } catch {
            throw failed(error)
        }
        defer { pool.checkin(connection) }
        do throws(TransportError) {
            do throws(TransportError) {
                try connection.ensureConnected()
                try connection.execute("BEGIN")
            } catch  where error.code == .unavailable {
                // A pooled connection the server dropped (a restart) shows only when used: a
                // failed BEGIN did nothing, so connect again and begin once more.
                try connection.ensureConnected()
                try connection.execute("BEGIN")
            }
        } catch {
            throw failed(error)
        }
        let capture = OutboxCapture()
        let value: T
        do {
            value = try await Switchyard.$outboxCapture.withValue(capture) { try await body(connection) }
        } catch {
            _ = capture.seal()
            try? connection.execute("ROLLBACK")
            throw error
        }
        let calls = capture.seal()
        do throws(TransportError) {
            try PostgresOutboxStorage.insert(calls, into: connection, schema: schema)
            try connection.commit()
        } catch {
            try? connection.execute("ROLLBACK")
            throw failed(error)
        }
        if !calls.isEmpty { outbox.relay.wake() }
        return value
    }

    private func applicationOutbox(_ name: String) throws -> ApplicationOutbox {
        guard let outbox = outboxes[name] else {
            let names = outboxes.keys.sorted()
            throw SwitchyardError.routing(
                target: "transaction(on: \"\(name)\")",
                reason:
                    "no outbox named '\(name)' (configured under outboxes: \(names.isEmpty ? "none; add outboxes: { \(name): { path: FILE } }" : names.joined(separator: ", ")))")
        }
        return outbox
    }

    private func wrongKind(_ outbox: ApplicationOutbox) -> SwitchyardError {
        let call = outbox.kind == "PostgreSQL" ? "transaction(on: \"\(outbox.name)\", PostgresDatabase.self) { db in … }" : "transaction(on: \"\(outbox.name)\") { db in … }"
        return SwitchyardError.routing(target: "transaction(on: \"\(outbox.name)\")", reason: "outbox '\(outbox.name)' is in \(outbox.kind): use \(call)")
    }
}

/// At most `limit` holders at a time; the others wait without holding a thread.
final class AsyncGate: Sendable {
    private let state: Guarded<(available: Int, waiting: [CheckedContinuation<Void, Never>])>

    init(limit: Int) { state = Guarded((limit, [])) }

    func enter() async {
        if state.withLock({ state in
            guard state.available > 0 else { return false }
            state.available -= 1
            return true
        }) {
            return
        }
        await withCheckedContinuation { continuation in
            let now = state.withLock { state -> Bool in
                if state.available > 0 {
                    state.available -= 1
                    return true
                }
                state.waiting.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    func leave() {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if state.waiting.isEmpty {
                state.available += 1
                return nil
            }
            return state.waiting.removeFirst()
        }
        next?.resume()
    }
}
