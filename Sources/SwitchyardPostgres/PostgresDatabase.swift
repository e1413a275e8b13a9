import CLibPQ
import Foundation
import SwitchyardABI

#if canImport(Glibc)
    import Glibc
#endif

/// One PostgreSQL connection (libpq): what the postgres plugins store in, and what a handler's
/// or an application's transaction runs its SQL on (`Switchyard.inboxTransaction`,
/// `SwitchyardActorSystem.transaction(on:)`). Not thread-safe: one owner at a time.
///
/// Statements go through `PQexecParams` with parameters `$1`, `$2`… and binary results:
/// integers are read as `bigint` (cast smaller ones: `SELECT count(*)::bigint`), text as UTF-8,
/// `bytea` as its bytes. Errors are `TransportError`s: `.unavailable` when the connection is
/// gone, `.io` with the server's message otherwise. The connection string is never part of an
/// error: it may hold a password.
public final class PostgresDatabase {
    /// A statement parameter.
    public enum Value {
        /// A `bigint` (int8).
        case int(Int64)
        /// `text`.
        case text(String)
        /// `bytea`.
        case blob([UInt8])
        /// NULL.
        case null
    }

    /// One row of a result, read by column index (from 0).
    public struct Row {
        fileprivate let result: OpaquePointer
        fileprivate let index: Int32

        /// Whether column `column` is NULL.
        public func isNull(_ column: Int32) -> Bool { PQgetisnull(result, index, column) == 1 }

        /// Column `column` as an integer: a `bigint`, `integer` or `smallint` column (0 for NULL or
        /// another type: cast it in SQL). An `integer` column read 0 before, silently (a test
        /// reading `pg_backend_pid()` found it).
        public func int(_ column: Int32) -> Int64 {
            guard !isNull(column), let value = PQgetvalue(result, index, column) else { return 0 }
            let bytes = UnsafeRawBufferPointer(start: value, count: Int(PQgetlength(result, index, column)))
            switch bytes.count {
            case 8: return Int64(bigEndian: bytes.loadUnaligned(as: Int64.self))
            case 4: return Int64(Int32(bigEndian: bytes.loadUnaligned(as: Int32.self)))
            case 2: return Int64(Int16(bigEndian: bytes.loadUnaligned(as: Int16.self)))
            default: return 0
            }
        }

        /// Column `column`'s bytes (the UTF-8 of text, the bytes of `bytea`).
        public func bytes(_ column: Int32) -> [UInt8] {
            guard !isNull(column), let value = PQgetvalue(result, index, column) else { return [] }
            let count = Int(PQgetlength(result, index, column))
            return value.withMemoryRebound(to: UInt8.self, capacity: count) { Array(UnsafeBufferPointer(start: $0, count: count)) }
        }

        /// Column `column` as text.
        public func text(_ column: Int32) -> String { String(decoding: bytes(column), as: UTF8.self) }
    }

    private let conninfo: String
    private var connection: OpaquePointer?

    /// Connects with `conninfo` (a libpq connection string or URI; empty: the `PG*` environment
    /// variables and libpq's defaults).
    public init(conninfo: String) throws(TransportError) {
        try Self.validate(conninfo)
        self.conninfo = conninfo
        try connect()
    }

    deinit { close() }

    /// Hangs up now rather than when released; a later ``ensureConnected()`` connects again.
    public func close() {
        if let connection { PQfinish(connection) }
        connection = nil
    }

    /// Settings a connection gets unless the connection string says otherwise: a connection
    /// attempt, and a peer that stops answering mid-statement, fail within seconds instead of
    /// the operating system's minutes (every store call waits on this connection).
    static let defaults: [(String, String)] = [
        ("connect_timeout", "10"), ("keepalives_idle", "30"), ("keepalives_interval", "10"), ("keepalives_count", "3"),
        ("tcp_user_timeout", "30000"), ("client_encoding", "UTF8"), ("application_name", "switchyard"),
    ]

    /// Checks that `conninfo` parses, without repeating any of it: libpq's parse errors quote the
    /// offending text, which may be part of a password.
    public static func validate(_ conninfo: String) throws(TransportError) {
        var error: UnsafeMutablePointer<CChar>?
        guard let options = PQconninfoParse(conninfo, &error) else {
            if let error { PQfreemem(error) }
            throw TransportError(.config, "config key 'conninfo': does not parse as a libpq connection string (key=value ...) or URI (postgresql://...)")
        }
        PQconninfoFree(options)
    }

    private func connect() throws(TransportError) {
        if let connection { PQfinish(connection) }
        // The defaults first, then the connection string (expanded: its settings win).
        var settings = Self.defaults
        if !conninfo.isEmpty { settings.append(("dbname", conninfo)) }
        let keywords = settings.map { strdup($0.0) } + [nil]
        let values = settings.map { strdup($0.1) } + [nil]
        defer { for pointer in keywords + values { free(pointer) } }
        connection = keywords.map { UnsafePointer($0) }.withUnsafeBufferPointer { keywordPointers in
            values.map { UnsafePointer($0) }.withUnsafeBufferPointer { valuePointers in
                PQconnectdbParams(keywordPointers.baseAddress, valuePointers.baseAddress, 1)
            }
        }
        guard PQstatus(connection) == CONNECTION_OK else {
            let reason = lastError
            PQfinish(connection)
            connection = nil
            // What to check, without the connection string itself (it may hold a password).
            let source = conninfo.isEmpty ? "libpq's PGHOST, PGPORT, PGUSER, PGPASSWORD and PGDATABASE (config key 'conninfo' is empty)" : "config key 'conninfo'"
            throw TransportError(.unavailable, "postgres: cannot connect: \(reason) (is the server running? check \(source))")
        }
        // Notices ("relation already exists, skipping") are not errors; libpq would print them.
        PQclear(PQexec(connection, "SET client_min_messages = error"))
    }

    /// libpq's last error, one line.
    public var lastError: String {
        guard let connection, let text = PQerrorMessage(connection) else { return "no connection" }
        let message = Self.oneLine(String(cString: text))
        return message.isEmpty ? "connection lost" : message
    }

    /// Connected and usable; reconnects once when the server went away (a restart).
    public func ensureConnected() throws(TransportError) {
        // An idle connection the server closed still reads as connected until libpq reads the
        // close: a readable idle socket is read first (one poll, no round trip), which tells
        // libpq. (On a connection that listens, a notification read here waits in libpq's queue
        // for ``drainNotifications()``, but no longer wakes a `poll` on the socket.)
        if let connection, PQstatus(connection) == CONNECTION_OK {
            var idle = pollfd(fd: PQsocket(connection), events: Int16(POLLIN), revents: 0)
            if poll(&idle, 1, 0) > 0 { _ = PQconsumeInput(connection) }
        }
        if connection == nil || PQstatus(connection) != CONNECTION_OK { try connect() }
    }

    /// The socket, for waiting on notifications.
    public var socket: Int32 { connection.map { PQsocket($0) } ?? -1 }

    /// The server process serving this connection (to tell its own notifications apart).
    public var backendPID: Int32 { connection.map { PQbackendPID($0) } ?? 0 }

    /// Runs SQL without parameters or results (several statements allowed).
    public func execute(_ sql: String) throws(TransportError) {
        let result = PQexec(connection, sql)
        defer { PQclear(result) }
        try check(result)
    }

    /// Runs several statements in one round trip, as one transaction of their own (one
    /// "simple query"), handing each row of the last one's result to `row` — in text form: read
    /// it with ``Row/text(_:)`` (`t`/`f` for a boolean); returns the number of rows the last one
    /// changed or returned. No parameters: put only values made by your own code in `sql`
    /// (numbers), never text from outside.
    @discardableResult
    public func runScript(_ sql: String, row: ((Row) throws(TransportError) -> Void)? = nil) throws(TransportError) -> Int {
        let result = PQexec(connection, sql)
        defer { PQclear(result) }
        return try consume(result, row: row)
    }

    /// Runs one statement with `parameters` (`$1`…), handing each result row to `row`; returns
    /// the number of rows it changed or returned.
    @discardableResult
    public func run(_ sql: String, _ parameters: [Value] = [], row: ((Row) throws(TransportError) -> Void)? = nil) throws(TransportError) -> Int {
        var types: [Oid] = []
        var formats: [Int32] = []
        var lengths: [Int32] = []
        var buffers: [UnsafeMutableRawPointer?] = []
        defer { for buffer in buffers { free(buffer) } }
        for parameter in parameters {
            switch parameter {
            case .int(let value):
                let buffer = malloc(8)!
                buffer.storeBytes(of: value.bigEndian, as: Int64.self)
                buffers.append(buffer)
                types.append(20)  // int8
                formats.append(1)
                lengths.append(8)
            case .text(let value):
                let utf8 = Array(value.utf8) + [0]
                let buffer = malloc(utf8.count)!
                buffer.copyMemory(from: utf8, byteCount: utf8.count)
                buffers.append(buffer)
                types.append(25)  // text
                formats.append(0)
                lengths.append(0)
            case .blob(let value):
                let buffer = malloc(max(1, value.count))!
                value.withUnsafeBytes { if let base = $0.baseAddress { buffer.copyMemory(from: base, byteCount: $0.count) } }
                buffers.append(buffer)
                types.append(17)  // bytea
                formats.append(1)
                lengths.append(Int32(value.count))
            case .null:
                buffers.append(nil)
                types.append(0)
                formats.append(0)
                lengths.append(0)
            }
        }
        let values = buffers.map { UnsafePointer<CChar>($0?.assumingMemoryBound(to: CChar.self)) }
        let result = PQexecParams(connection, sql, Int32(parameters.count), types, values, lengths, formats, 1)
        defer { PQclear(result) }
        return try consume(result, row: row)
    }

    /// Checks `result`, hands its rows to `row`; the number of rows it changed or returned.
    private func consume(_ result: OpaquePointer?, row: ((Row) throws(TransportError) -> Void)?) throws(TransportError) -> Int {
        try check(result)
        guard let result else { return 0 }
        if PQresultStatus(result) == PGRES_TUPLES_OK {
            let count = PQntuples(result)
            if let row {
                for index in 0..<count { try row(Row(result: result, index: index)) }
            }
            return Int(count)
        }
        return Int(String(cString: PQcmdTuples(result))) ?? 0
    }

    /// Runs `body` in a transaction: committed when it returns, rolled back when it throws.
    ///
    /// With `synchronousCommit` false, the commit does not wait for the server to flush it to
    /// disk (`SET LOCAL synchronous_commit TO off`): for a change whose loss in a server crash
    /// is harmless — an acknowledgement forgotten delivers its message again. Otherwise the
    /// server's own setting decides.
    public func transaction<R>(synchronousCommit: Bool = true, _ body: () throws(TransportError) -> R) throws(TransportError) -> R {
        try ensureConnected()
        // One round trip either way: several statements in one simple query.
        let begin = synchronousCommit ? "BEGIN" : "BEGIN; SET LOCAL synchronous_commit TO off"
        do throws(TransportError) {
            try execute(begin)
        } catch {
            // An idle connection the server dropped (a restart) is noticed only by using it; a
            // failed BEGIN did nothing, so connect again and begin once more.
            guard error.code == .unavailable else { throw error }
            try connect()
            try execute(begin)
        }
        do throws(TransportError) {
            let value = try body()
            try commit()
            return value
        } catch {
            if PQstatus(connection) == CONNECTION_OK { try? execute("ROLLBACK") }
            throw error
        }
    }

    /// Notifies `channels` (`NOTIFY`, no payload) now, outside any transaction, in one of its own
    /// that does not wait for the disk. A failure is not reported: call it after the change it
    /// tells of committed, which stands whatever happens here. (PostgreSQL commits notifying
    /// transactions one at a time, through their flush to disk: a `NOTIFY` inside a change's
    /// transaction serialises every such change in the database.)
    public func notify(_ channels: Set<String>) {
        let statements = channels.map { "NOTIFY \(Self.quotedIdentifier($0))" }.joined(separator: "; ")
        try? execute("BEGIN; SET LOCAL synchronous_commit TO off; \(statements); COMMIT")
        // A NOTIFY that failed (cancelled, a read-only server) skips the COMMIT after it: the
        // connection would stay in an aborted transaction, failing every later statement.
        if let connection, PQtransactionStatus(connection) != PQTRANS_IDLE { try? execute("ROLLBACK") }
    }

    /// `name` as a double-quoted SQL identifier.
    static func quotedIdentifier(_ name: String) -> String {
        "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    /// Commits the open transaction. Throws when it did not commit: a statement in it failed
    /// (PostgreSQL then rolls the whole transaction back, and `COMMIT` answers `ROLLBACK`), or the
    /// connection went away during `COMMIT` — then the server may or may not have committed, and
    /// the error says so.
    public func commit() throws(TransportError) {
        if PQtransactionStatus(connection) == PQTRANS_INERROR {
            try? execute("ROLLBACK")
            throw Self.aborted
        }
        let result = PQexec(connection, "COMMIT")
        defer { PQclear(result) }
        do throws(TransportError) {
            try check(result)
        } catch {
            guard error.code == .unavailable else { throw error }
            throw TransportError(.unavailable, "\(error.message) (during COMMIT: the change may have been stored)")
        }
        if let result, String(cString: PQcmdStatus(result)) == "ROLLBACK" { throw Self.aborted }
    }

    private static let aborted = TransportError(
        .io,
        "postgres: the transaction was rolled back: a statement in it failed earlier (PostgreSQL aborts the whole transaction then; nothing was committed — use a SAVEPOINT or ON CONFLICT to carry on after an expected error)"
    )

    private func check(_ result: OpaquePointer?) throws(TransportError) {
        let status = result.map { PQresultStatus($0) } ?? PGRES_FATAL_ERROR
        if status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK { return }
        if PQstatus(connection) != CONNECTION_OK {
            throw TransportError(.unavailable, "postgres: connection lost: \(lastError)")
        }
        // 25P02: a statement after one that failed; say what happened, not just "aborted".
        if let result, let state = PQresultErrorField(result, Int32(UInt8(ascii: "C"))), String(cString: state) == "25P02" {
            throw Self.aborted
        }
        let message = result.flatMap { PQresultErrorMessage($0) }.map { String(cString: $0) } ?? lastError
        throw TransportError(.io, "postgres: \(Self.oneLine(message))")
    }

    /// libpq's multi-line messages as one line.
    private static func oneLine(_ text: String) -> String {
        text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }.joined(separator: "; ")
    }

    // MARK: Notifications

    /// Consumes what arrived on the socket and returns the notifications' senders (server
    /// process ids) and channel names.
    public func drainNotifications() throws(TransportError) -> [(pid: Int32, channel: String)] {
        guard PQconsumeInput(connection) == 1 else { throw TransportError(.unavailable, "postgres: connection lost: \(lastError)") }
        var received: [(Int32, String)] = []
        while let notification = PQnotifies(connection) {
            received.append((notification.pointee.be_pid, String(cString: notification.pointee.relname)))
            PQfreemem(notification)
        }
        return received
    }
}

// MARK: Schemas

extension PostgresDatabase {
    /// `name` quoted for SQL, once checked: 1 to 48 letters, digits, '_' or '-'. Throws a
    /// `.config` error naming `key`.
    public static func quotedSchema(_ name: String, key: String = "schema") throws(TransportError) -> String {
        guard !name.isEmpty, name.count <= 48, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }) else {
            throw TransportError(.config, "config key '\(key)': '\(name)' must be 1 to 48 letters, digits, '_' or '-'")
        }
        return "\"\(name)\""
    }

    /// Creates the schema `name` with a `meta` table saying what `kind` of Switchyard store it
    /// is, and `tables` (SQL, `$schema` standing for the quoted schema), when missing; refuses a
    /// schema that holds another kind of store. Safe when several processes start at once.
    /// Returns the quoted schema.
    @discardableResult
    public func prepareSchema(_ name: String, kind: String, tables: String, key: String = "schema") throws(TransportError) -> String {
        let quoted = try Self.quotedSchema(name, key: key)
        // Which tables this caller needs, as a marker in `meta`: once they exist, later starts
        // run no DDL at all. (`CREATE INDEX IF NOT EXISTS` locks its table even when the index
        // exists, and a process starting while others write to the tables deadlocked with them.)
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in tables.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        let marker = "tables " + String(hash, radix: 16)
        var ready = false
        try run(
            "SELECT 1 FROM pg_tables t WHERE t.schemaname = $1 AND t.tablename = 'meta'", [.text(name)]
        ) { _ in ready = true }
        if ready {
            ready = false
            try run("SELECT 1 FROM \(quoted).meta WHERE key = $1", [.text(marker)]) { _ in ready = true }
        }
        try transaction { () throws(TransportError) in
            if !ready {
                // Two processes starting at once must not both create the tables.
                try run("SELECT pg_advisory_xact_lock(hashtext($1))", [.text("switchyard " + name)])
                var exists = false
                try run("SELECT 1 FROM pg_namespace WHERE nspname = $1", [.text(name)]) { _ in exists = true }
                if !exists { try execute("CREATE SCHEMA \(quoted)") }
                try execute(
                    """
                    CREATE TABLE IF NOT EXISTS \(quoted).meta (key text PRIMARY KEY, value text NOT NULL);
                    INSERT INTO \(quoted).meta VALUES ('schema', '1'), ('kind', '\(kind)') ON CONFLICT DO NOTHING;
                    """ + tables.replacingOccurrences(of: "$schema", with: quoted))
                try run("INSERT INTO \(quoted).meta VALUES ($1, 'created') ON CONFLICT DO NOTHING", [.text(marker)])
            }
            var stored = ""
            try run("SELECT value FROM \(quoted).meta WHERE key = 'kind'") { row in stored = row.text(0) }
            guard stored == kind else {
                throw TransportError(.config, "config key '\(key)': '\(name)' holds a \(stored) store; a \(kind) cannot use it")
            }
        }
        return quoted
    }
}

// MARK: Pool

/// Connections to one database for callers on many threads: each use takes an idle connection
/// (or opens one, up to `maxOpen`; beyond that it waits for one), and gives it back afterwards.
/// A connection that failed is given back too: its next use reconnects
/// (``PostgresDatabase/ensureConnected()``).
public final class PostgresPool: @unchecked Sendable {
    // @unchecked: the idle list is behind the lock; a connection is used by one caller at a time.
    private let conninfo: String
    private let lock = NSCondition()
    private var idle: [PostgresDatabase] = []
    /// Taken by callers (or being opened for one), not yet given back.
    private var inUse = 0
    /// Set by ``close()``: connections given back are closed, not kept.
    private var closed = false
    private let slots: DispatchSemaphore
    /// How long ``close()`` waits for connections in use to come back and be closed.
    static let closePatience: TimeInterval = 2

    /// A pool for `conninfo` (empty: the `PG*` environment) with at most `maxOpen` connections.
    public init(conninfo: String, maxOpen: Int = 8) {
        self.conninfo = conninfo
        slots = DispatchSemaphore(value: max(1, maxOpen))
    }

    /// An idle connection, or a new one (waiting while `maxOpen` are in use); give it back with
    /// ``checkin(_:)``.
    public func checkout() throws(TransportError) -> PostgresDatabase {
        slots.wait()
        lock.lock()
        let pooled = idle.popLast()
        inUse += 1
        lock.unlock()
        if let pooled { return pooled }
        do {
            return try PostgresDatabase(conninfo: conninfo)
        } catch {
            lock.lock()
            inUse -= 1
            lock.broadcast()
            lock.unlock()
            slots.signal()
            throw error
        }
    }

    /// Gives a connection back (after ``close()``: closes it).
    public func checkin(_ database: PostgresDatabase) {
        lock.lock()
        let keep = !closed
        if keep { idle.append(database) }
        lock.unlock()
        if !keep { database.close() }
        lock.lock()
        inUse -= 1
        lock.broadcast()  // close() may wait for this
        lock.unlock()
        slots.signal()
    }

    /// Closes the idle connections now, and each one in use when it is given back, so that its
    /// owner's close lets go of the server's connections at once rather than when the pool is
    /// released. With `waitingForConnectionsInUse`, it also waits for those to come back and be
    /// closed (up to ``closePatience``): a transport's close then lets go of every connection
    /// before it returns, not a moment later (a CI run saw one still open right after one
    /// returned). Not from a thread that holds a connection of the pool, nor from Swift's
    /// cooperative pool. A checkout afterwards still works, with a connection of its own.
    public func close(waitingForConnectionsInUse: Bool = false) {
        lock.lock()
        closed = true
        let closing = idle
        idle = []
        lock.unlock()
        for database in closing { database.close() }
        guard waitingForConnectionsInUse else { return }
        lock.lock()
        let until = Date(timeIntervalSinceNow: Self.closePatience)
        while inUse > 0 && lock.wait(until: until) {}
        lock.unlock()
    }

    /// Runs `body` on a connection of the pool (connected again first if the server dropped it).
    public func withConnection<R>(_ body: (PostgresDatabase) throws(TransportError) -> R) throws(TransportError) -> R {
        let database = try checkout()
        defer { checkin(database) }
        try database.ensureConnected()
        return try body(database)
    }
}
