import CSQLite
import Foundation
import SwitchyardABI

/// A thin, safe wrapper over one SQLite connection: prepared statements cached by SQL text,
/// errors as `TransportError(.io, …)` carrying SQLite's message. Not thread-safe: one owner.
public final class SQLiteDatabase {
    /// The database file.
    public let path: String
    private var handle: OpaquePointer?
    /// Keyed by the SQL's text, hashed fast: statements run per row look themselves up per row.
    private var statements: [FastStringKey: OpaquePointer] = [:]

    /// Opens (creating) the database at `path`; with `waitingWhenBusy`, waits out another
    /// connection's lock as ``configureDurable(sharedWithApplication:)`` does (for a connection that
    /// only reads a store another connection set up).
    public init(path: String, waitingWhenBusy: Bool = false) throws(TransportError) {
        self.path = path
        // SQLite would open "" as a temporary database (then refuse WAL mode) and a directory
        // as "unable to open database file" (in a directory that exists).
        guard !path.isEmpty else { throw TransportError(.config, "config key 'path': must not be empty") }
        var isFolder: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isFolder), isFolder.boolValue {
            throw TransportError(.config, "config key 'path': \(path) is a directory; name a file in it, e.g. \((path as NSString).appendingPathComponent("store.db"))")
        }
        // SQLite's own word for a missing directory is "unable to open database file": say which
        // directory, and what to do.
        let directory = (path as NSString).deletingLastPathComponent
        var isDirectory: ObjCBool = false
        if !directory.isEmpty, !FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory) || !isDirectory.boolValue {
            // A relative path is the working directory's (not the config file's): say which that was.
            let resolved = directory.hasPrefix("/") ? "" : " (relative to the working directory \(FileManager.default.currentDirectoryPath))"
            throw TransportError(
                .config,
                "config key 'path': the directory \(directory) does not exist\(resolved) (create it, or point path at a file in an existing directory): \(path)")
        }
        var db: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        let status = sqlite3_open_v2(path, &db, flags, nil)
        guard status == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close(db)
            throw TransportError(.io, "cannot open SQLite database '\(path)': \(message) (check that its directory exists and that this user may write there)")
        }
        handle = db
        sqlite3_extended_result_codes(db, 1)
        if waitingWhenBusy { waitWhenBusy() }
    }

    deinit { close() }

    /// Closes the connection now rather than when the last reference goes (a thread that ends
    /// after its owner returned may hold that): once it returns, the file is no longer this
    /// connection's, and the last connection's close has checkpointed the WAL. Later statements
    /// fail. Calling it again does nothing. Not while an application's transaction (an inbox's or
    /// an outbox's) is using the connection: its pool closes it once it is back, at shutdown.
    package func close() {
        guard let open = handle else { return }
        if walTracked { sqlite3_wal_hook(open, nil, nil) }
        for statement in statements.values { sqlite3_finalize(statement) }
        statements.removeAll()
        sqlite3_close_v2(open)
        handle = nil
    }

    /// The write-ahead log's file as SQLite names it (beside the file a symbolic link points to,
    /// not beside the link); nil for an in-memory database.
    var walPath: String? {
        guard let database = sqlite3_db_filename(handle, "main"), database.pointee != 0, let wal = sqlite3_filename_wal(database) else { return nil }
        return String(cString: wal)
    }

    /// Pages in the write-ahead log after the last commit, once ``trackWAL()`` was called.
    public fileprivate(set) var walPages: Int32 = 0
    private var walTracked = false

    /// Counts the pages in the write-ahead log after each commit (``walPages``), and so turns
    /// SQLite's automatic checkpoints off (they run from the same hook): the owner checkpoints
    /// itself, at a moment when the checkpoint's own syncs are wanted.
    public func trackWAL() {
        walTracked = true
        sqlite3_wal_hook(
            handle,
            { context, _, _, pages in
                Unmanaged<SQLiteDatabase>.fromOpaque(context!).takeUnretainedValue().walPages = pages
                return SQLITE_OK
            }, Unmanaged.passUnretained(self).toOpaque())
    }

    private func error(_ what: String) -> TransportError {
        let message = String(cString: sqlite3_errmsg(handle))
        let code = sqlite3_extended_errcode(handle)
        if code & 0xFF == SQLITE_NOTADB {
            return TransportError(
                .io,
                "'\(path)' is not a SQLite database (or is corrupt): \(message). The file was left as it is: check that 'path' names this "
                    + "transport's store (not another file), restore it from a backup, or move it aside to start an empty one")
        }
        if code & 0xFF == SQLITE_FULL {
            return TransportError(.io, "the disk holding '\(path)' is full: \(message)")
        }
        return TransportError(.io, "\(what) on '\(path)': \(message)")
    }

    /// Runs SQL without results (may hold several statements).
    public func execute(_ sql: String) throws(TransportError) {
        var message: UnsafeMutablePointer<CChar>?
        if sqlite3_exec(handle, sql, nil, nil, &message) != SQLITE_OK {
            let text = message.map { String(cString: $0) } ?? ""
            sqlite3_free(message)
            let base = error("SQL failed")
            throw TransportError(.io, text.isEmpty ? base.message : base.message + " (\(text))")
        }
    }

    /// A value bound to a statement parameter.
    public enum Value {
        /// An integer.
        case int(Int64)
        /// Text.
        case text(String)
        /// Bytes.
        case blob([UInt8])
        /// NULL.
        case null
    }

    /// One result row, read by column index.
    public struct Row {
        let statement: OpaquePointer
        /// Column `column` as an integer.
        public func int(_ column: Int32) -> Int64 { sqlite3_column_int64(statement, column) }
        /// Whether column `column` is NULL.
        public func isNull(_ column: Int32) -> Bool { sqlite3_column_type(statement, column) == SQLITE_NULL }
        /// Column `column` as text.
        public func text(_ column: Int32) -> String {
            guard let pointer = sqlite3_column_text(statement, column) else { return "" }
            return String(decoding: UnsafeBufferPointer(start: pointer, count: Int(sqlite3_column_bytes(statement, column))), as: UTF8.self)
        }
        /// Column `column`'s bytes, copied (as `PostgresDatabase.Row.bytes` reads a `bytea`).
        public func bytes(_ column: Int32) -> [UInt8] {
            guard let pointer = sqlite3_column_blob(statement, column) else { return [] }
            return Array(UnsafeRawBufferPointer(start: pointer, count: Int(sqlite3_column_bytes(statement, column))))
        }
        /// Column `column`'s bytes, borrowed for `body` (no copy). Inside a `row:` closure, name
        /// the closure's error type — `{ (row) throws(TransportError) in try row.blob(0) { … } }`
        /// — since a closure with a `try` is otherwise inferred to throw `any Error`.
        public func blob<R>(_ column: Int32, _ body: (UnsafeRawBufferPointer) throws(TransportError) -> R) throws(TransportError) -> R {
            let pointer = sqlite3_column_blob(statement, column)
            return try body(UnsafeRawBufferPointer(start: pointer, count: Int(sqlite3_column_bytes(statement, column))))
        }
    }

    /// Runs one statement with `values`, calling `row` for each result row; returns the number of
    /// rows changed.
    @discardableResult
    public func run(_ sql: String, _ values: [Value] = [], row: ((Row) throws(TransportError) -> Void)? = nil) throws(TransportError) -> Int {
        try run(
            sql,
            binding: { parameters in
                for (index, value) in values.enumerated() {
                    let position = Int32(index + 1)
                    switch value {
                    case .int(let v): parameters.bind(v, at: position)
                    case .text(let v): parameters.bind(v, at: position)
                    case .blob(let v): parameters.bind(v, at: position)
                    case .null: parameters.bindNull(at: position)
                    }
                }
            }, row: row)
    }

    /// A prepared statement's parameters, bound by position (from 1). Values are copied.
    public struct Parameters {
        let statement: OpaquePointer
        /// Binds an integer.
        public func bind(_ value: Int64, at position: Int32) { sqlite3_bind_int64(statement, position, value) }
        /// Binds text.
        public func bind(_ value: String, at position: Int32) {
            var value = value
            value.withUTF8 { _ = sqlite3_bind_text(statement, position, $0.baseAddress, Int32($0.count), csqlite_transient()) }
        }
        /// Binds bytes.
        public func bind(_ value: [UInt8], at position: Int32) {
            value.withUnsafeBytes { _ = sqlite3_bind_blob(statement, position, $0.baseAddress, Int32($0.count), csqlite_transient()) }
        }
        /// Binds NULL.
        public func bindNull(at position: Int32) { sqlite3_bind_null(statement, position) }
        /// Binds UTF-8 text without copying it (`SQLITE_STATIC`): `bytes` must stay valid and
        /// unchanged until the statement has run, and must have an address even when empty
        /// (SQLite binds a NULL pointer as NULL).
        func bindBorrowedText(_ bytes: UnsafeRawBufferPointer, at position: Int32) {
            sqlite3_bind_text(statement, position, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(bytes.count), nil)
        }
        /// Binds bytes without copying them (`SQLITE_STATIC`), under ``bindBorrowedText(_:at:)``'s rule.
        func bindBorrowedBlob(_ bytes: UnsafeRawBufferPointer, at position: Int32) {
            sqlite3_bind_blob(statement, position, bytes.baseAddress, Int32(bytes.count), nil)
        }
    }

    /// Runs one statement, its parameters bound by `binding`, calling `row` for each result row;
    /// returns the number of rows changed. For statements run per row: no array of values.
    @discardableResult
    public func run(
        _ sql: String, binding: (Parameters) -> Void, row: ((Row) throws(TransportError) -> Void)? = nil
    ) throws(TransportError) -> Int {
        let statement = try prepare(sql)
        defer {
            sqlite3_reset(statement)
            sqlite3_clear_bindings(statement)
        }
        binding(Parameters(statement: statement))
        while true {
            let status = sqlite3_step(statement)
            if status == SQLITE_ROW {
                try row?(Row(statement: statement))
            } else if status == SQLITE_DONE {
                return Int(sqlite3_changes(handle))
            } else {
                throw error("statement failed")
            }
        }
    }

    private func prepare(_ sql: String) throws(TransportError) -> OpaquePointer {
        if let cached = statements[FastStringKey(sql)] { return cached }
        var statement: OpaquePointer?
        guard sqlite3_prepare_v3(handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &statement, nil) == SQLITE_OK, let statement else {
            throw error("cannot prepare statement")
        }
        statements[FastStringKey(sql)] = statement
        return statement
    }

    /// The rowid of the last insert.
    public var lastInsertRowID: Int64 { sqlite3_last_insert_rowid(handle) }

    /// WAL, synchronous=FULL, a busy timeout for other processes; and a refusal of databases that
    /// belong to another application (tables but no `switchyard_meta`), unless
    /// `sharedWithApplication` (the runtime's outbox lives in the application's own database).
    public func configureDurable(sharedWithApplication: Bool = false) throws(TransportError) {
        waitWhenBusy()
        // Refused before anything is changed (the switch to WAL below rewrites the file's header).
        var tables = Set<String>()
        try run("SELECT name FROM sqlite_master WHERE type = 'table'") { row in tables.insert(row.text(0)) }
        if !sharedWithApplication && !tables.isEmpty && !tables.contains("switchyard_meta") {
            if tables.contains("switchyard_outbox") {
                // The runtime's outbox made it first (`outboxes:`), for the application's tables.
                throw TransportError(
                    .config,
                    "config key 'path': '\(path)' was created by an outbox (outboxes:), as an application's database: a file an inbox or a transport shares with an outbox must be created by the inbox or transport. Give this one a new file, or start the process whose config names the inbox or transport first"
                )
            }
            throw TransportError(.config, "config key 'path': '\(path)' is a SQLite database of another application (no switchyard_meta table)")
        }
        // Switching a new file to WAL needs its exclusive lock, and SQLite answers SQLITE_BUSY
        // without calling the busy handler while another process does the same (two consumers
        // starting together on fresh files): wait for that here, up to about 10 s.
        var journal = ""
        for attempt in 0... {
            do throws(TransportError) {
                try run("PRAGMA journal_mode = WAL") { row in journal = row.text(0) }
                break
            } catch {
                guard sqlite3_errcode(handle) & 0xFF == SQLITE_BUSY, attempt < 1_000 else { throw error }
                usleep(10_000)
            }
        }
        guard journal.lowercased() == "wal" else {
            throw TransportError(.io, "'\(path)': cannot switch to WAL mode (journal mode is \(journal))")
        }
        try execute("PRAGMA synchronous = FULL")
    }

    /// Throws unless the database is new or holds a Switchyard store of `kind` (its
    /// `switchyard_meta` says so). Call it inside the transaction that sets the store up, before
    /// anything is created: a store of another kind is refused, not given this kind's tables.
    func refuseOtherKind(than kind: String) throws(TransportError) {
        var hasMeta = false
        try run("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'switchyard_meta'") { row in hasMeta = row.int(0) > 0 }
        guard hasMeta else { return }
        var stored: String?
        try run("SELECT value FROM switchyard_meta WHERE key = 'kind'") { row in stored = row.text(0) }
        if let stored, stored != kind {
            throw TransportError(.config, "config key 'path': '\(path)' holds a \(stored) store; a \(kind) cannot use it")
        }
    }

    /// Copies the WAL into the database and makes the next write start the WAL from its beginning
    /// again (SQLite's `RESTART` checkpoint), waiting briefly for readers still on the WAL; if they
    /// stay, what could be copied was copied and the WAL goes on growing until the next time.
    ///
    /// A `PASSIVE` checkpoint alone never brought the WAL back to its start while two processes
    /// shared the store: SQLite restarts the WAL only when a writer finds no reader on it, and
    /// with two processes reading and writing in turn one always was. The WAL then grew without
    /// end (10 MB in a minute of `durable-rr`), and every synced commit, the WAL past
    /// ``SQLiteWriter/checkpointPages``, ran a checkpoint with its own two fsyncs.
    func checkpoint() {
        sqlite3_busy_handler(
            handle,
            { _, attempt in
                guard attempt < 8 else { return 0 }
                usleep(50)
                return 1
            }, nil)
        defer { waitWhenBusy() }
        _ = sqlite3_wal_checkpoint_v2(handle, nil, SQLITE_CHECKPOINT_RESTART, nil, nil)
    }

    /// Another connection holding the lock this one needs (several processes share one file) is
    /// waited for in microseconds, not SQLite's default busy_timeout steps (1, 2, 5 … 100 ms), which
    /// cost two processes exchanging calls milliseconds per hop. Gives up after about 10 s.
    private func waitWhenBusy() {
        sqlite3_busy_handler(
            handle,
            { _, attempt in
                guard attempt < 10_000 else { return 0 }
                usleep(UInt32(min(1_000, 10 << min(Int(attempt), 7))))
                return 1
            }, nil)
    }
}
