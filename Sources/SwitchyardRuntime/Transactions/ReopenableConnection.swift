import SwitchyardABI
import SwitchyardTransportKit

/// One SQLite connection to an inbox's or an outbox's file, used under a lock, that the system's
/// shutdown closes (``close()``) and the next use opens again. Closed only when the system was
/// released, the connection outlived a CLI command that exits without releasing it, and the
/// `-wal` and `-shm` files stayed: the last connection's close is what checkpoints the WAL and
/// removes them.
final class ReopenableConnection: Sendable {
    private let connection: Guarded<SQLiteDatabase?>
    private let reopen: @Sendable () throws(TransportError) -> SQLiteDatabase

    /// Uses `first`; `reopen` opens the file again after ``close()``.
    init(_ first: SQLiteDatabase, reopen: @escaping @Sendable () throws(TransportError) -> SQLiteDatabase) {
        connection = Guarded<SQLiteDatabase?>(first)
        self.reopen = reopen
    }

    /// Runs `body` on the connection, under its lock; opens it again after ``close()``.
    func withDatabase<R>(_ body: (SQLiteDatabase) throws(TransportError) -> R) throws(TransportError) -> R {
        try connection.withLock { (connection) throws(TransportError) -> R in
            if connection == nil { connection = try reopen() }
            return try body(connection!)
        }
    }

    /// Closes the connection now (after a statement running on it).
    func close() {
        connection.withLock { connection in
            connection?.close()
            connection = nil
        }
    }
}
