import Foundation
import SwitchyardABI
import SwitchyardConfig
import SwitchyardTransportKit

/// An application database from `outboxes:`: its connections for transactions, and the relay of
/// its outbox table.
final class ApplicationOutbox: Sendable {
    let name: String
    let path: String
    let relay: OutboxRelay
    /// Idle connections, reused by later transactions (one transaction uses one at a time).
    private let idle = Guarded<[SQLiteDatabase]>([])

    init(_ entry: SwitchyardConfig.OutboxEntry, relays: OutboxRelays) throws(TransportError) {
        name = entry.name
        path = entry.path
        relay = try relays.relay(database: entry.path, name: entry.name, sharedWithApplication: true)
    }

    func checkout() throws(TransportError) -> SQLiteDatabase {
        if let database = idle.withLock({ $0.popLast() }) { return database }
        let database = try SQLiteDatabase(path: path)
        try database.configureDurable(sharedWithApplication: true)
        return database
    }

    func checkin(_ database: SQLiteDatabase) {
        idle.withLock { if $0.count < 8 { $0.append(database) } }
    }
}

extension SwitchyardActorSystem {
    static func applicationOutboxes(_ config: SwitchyardConfig, relays: OutboxRelays) throws(ConfigError) -> [String: ApplicationOutbox] {
        var outboxes: [String: ApplicationOutbox] = [:]
        for entry in config.outboxes {
            do {
                outboxes[entry.name] = try ApplicationOutbox(entry, relays: relays)
            } catch {
                throw ConfigError(key: "outboxes.\(entry.name).path", line: entry.line, message: error.message)
            }
        }
        return outboxes
    }

    /// Runs `body` in one transaction on the application database `name` (configured under
    /// `outboxes:`), and makes the fire-and-forget calls it makes part of that transaction:
    ///
    /// ```swift
    /// try await system.transaction(on: "shop") { db in
    ///     _ = try db.run("INSERT INTO orders (id, customer) VALUES (?, ?)", [.int(order.id), .text(order.customer)])
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
    /// - Throws: ``SwitchyardError/routing(target:reason:)`` when no outbox has that name;
    ///   ``SwitchyardError/transport(target:transport:reason:)`` when the database fails (nothing
    ///   was committed); whatever `body` throws.
    public func transaction<T>(on name: String, _ body: (SQLiteDatabase) async throws -> T) async throws -> T {
        guard let outbox = outboxes[name] else {
            let names = outboxes.keys.sorted()
            throw SwitchyardError.routing(
                target: "transaction(on: \"\(name)\")",
                reason: "no outbox named '\(name)' (configured under outboxes: \(names.isEmpty ? "none; add outboxes: { \(name): { path: FILE } }" : names.joined(separator: ", ")))")
        }
        func failed(_ error: TransportError) -> SwitchyardError {
            SwitchyardError.transport(target: "transaction(on: \"\(name)\")", reason: "\(outbox.path): \(error.message)")
        }
        let database: SQLiteDatabase
        do {
            database = try outbox.checkout()
            try database.execute("BEGIN IMMEDIATE")
        } catch {
            throw failed(error)
        }
        defer { outbox.checkin(database) }
        let capture = OutboxCapture()
        let value: T
        do {
            value = try await Switchyard.$outboxCapture.withValue(capture) { try await body(database) }
        } catch {
            try? database.execute("ROLLBACK")
            throw error
        }
        do throws(TransportError) {
            try SQLiteOutboxStorage.insert(capture.messages, into: database)
            try database.execute("COMMIT")
        } catch {
            try? database.execute("ROLLBACK")
            throw failed(error)
        }
        if !capture.messages.isEmpty { outbox.relay.wake() }
        return value
    }
}
