import Foundation
import SwitchyardABI
import SwitchyardTestSupport
import Testing

@testable import SwitchyardTransportKit

@Suite("SQLite group commit")
struct SQLiteWriterTests {
    /// Operations that arrive together share one transaction; the one that fails must undo only
    /// its own work (the batch then runs again with a savepoint per operation), and the others
    /// commit as if they had run alone.
    @Test("a failing operation in a shared batch undoes only itself")
    func failureUndoesOnlyItself() throws {
        let dir = try TemporaryDirectory()
        let writer = SQLiteWriter(try Self.database(in: dir, table: "t (v INTEGER NOT NULL)"))
        let results = Self.inOneBatch(writer, count: 10) { value, db throws(TransportError) in
            try db.run("INSERT INTO t (v) VALUES (?)", [.int(Int64(value))])
            if value == 4 { throw TransportError(.invalidArgument, "operation \(value) fails") }
        }
        #expect(results == Dictionary(uniqueKeysWithValues: (0..<10).map { ($0, $0 != 4) }))
        let stored = try writer.perform { db throws(TransportError) -> [Int64] in
            var values: [Int64] = []
            try db.run("SELECT v FROM t ORDER BY v") { row in values.append(row.int(0)) }
            return values
        }
        #expect(stored == [0, 1, 2, 3, 5, 6, 7, 8, 9])
    }

    /// What transactions.md shows an application: a row's columns read back as what was bound,
    /// blobs both copied (`bytes`) and lent (`blob`, whose `row:` closure names its error type).
    @Test("a row reads back what was bound: int, text, bytes, a lent blob, and NULL")
    func rowReadsBackWhatWasBound() throws {
        let dir = try TemporaryDirectory()
        let db = try SQLiteDatabase(path: dir.file("rows.db"))
        try db.execute("CREATE TABLE t (i INTEGER, s TEXT, b BLOB, n BLOB)")
        try db.run("INSERT INTO t VALUES (?, ?, ?, ?)", [.int(-7), .text("größe"), .blob([0, 255, 10]), .null])
        var read: (Int64, String, [UInt8], [UInt8], Bool, [UInt8])?
        try db.run("SELECT i, s, b, n FROM t") { (row) throws(TransportError) in
            read = (row.int(0), row.text(1), row.bytes(2), try row.blob(2) { Array($0) }, row.isNull(3), row.bytes(3))
        }
        let values = try #require(read)
        #expect(values.0 == -7 && values.1 == "größe" && values.2 == [0, 255, 10] && values.3 == [0, 255, 10])
        #expect(values.4 && values.5.isEmpty, "NULL reads as no bytes")
    }

    /// Rows left for the end of a batch are written with it, in the order left; when writing them
    /// fails, the batch runs again one operation at a time, and only the operation whose row failed
    /// fails.
    @Test("rows deferred to the end of a batch commit with their operations, and a bad one fails alone")
    func deferredRows() throws {
        let dir = try TemporaryDirectory()
        let rows = DeferredInts()
        let writer = SQLiteWriter(try Self.database(in: dir, table: "t (v INTEGER NOT NULL CHECK (v != 4))"), deferred: rows)
        let results = Self.inOneBatch(writer, count: 10) { value, _ throws(TransportError) in rows.values.append(Int64(value)) }
        #expect(results == Dictionary(uniqueKeysWithValues: (0..<10).map { ($0, $0 != 4) }))
        let stored = try writer.perform { db throws(TransportError) -> [Int64] in
            var values: [Int64] = []
            try db.run("SELECT v FROM t ORDER BY rowid") { row in values.append(row.int(0)) }
            return values
        }
        // The operations queued in any order; each value is there once, and nothing is left over.
        #expect(stored.sorted() == [0, 1, 2, 3, 5, 6, 7, 8, 9])
        #expect(rows.values.isEmpty)
    }

    /// A caller that finds the writer idle runs its transaction itself: no hand-over to the
    /// writer thread and back (two thread switches per commit). One that finds it busy queues.
    @Test("a caller that finds the writer idle commits on its own thread; one that finds it busy waits for the writer thread")
    func idleWriterRunsInline() throws {
        let dir = try TemporaryDirectory()
        let writer = SQLiteWriter(try Self.database(in: dir, table: "t (v INTEGER NOT NULL)"))
        let caller = pthread_self()
        let ranOn = try writer.perform { db throws(TransportError) -> pthread_t in
            try db.run("INSERT INTO t (v) VALUES (1)")
            return pthread_self()
        }
        #expect(pthread_equal(ranOn, caller) != 0)
        // While one caller holds the writer, the next one's operation runs on the writer thread.
        let hold = Self.holdWriter(writer)
        let queued = Guarded<(caller: pthread_t, ranOn: pthread_t)?>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread {
            let ranOn = try? writer.perform { _ throws(TransportError) -> pthread_t in pthread_self() }
            queued.withLock { $0 = ranOn.map { (pthread_self(), $0) } }
            done.signal()
        }.start()
        #expect(waitUntil(30) { writer.pendingCount == 1 }, "the second caller queued behind the holder")
        hold.signal()
        done.wait()
        let threads = try #require(queued.withLock { $0 })
        #expect(pthread_equal(threads.caller, threads.ranOn) == 0)
    }

    /// `close()` during a turn a caller runs on its own thread: the writer thread must not close
    /// the connection under it (it once broke out of its loop at once, closing the connection
    /// mid-commit and leaving what was queued behind that turn waiting for ever).
    @Test("a close while a caller commits on its own thread waits for that commit, runs what queued behind it, then closes")
    func closeWaitsForTheTurn() throws {
        let dir = try TemporaryDirectory()
        let writer = SQLiteWriter(try Self.database(in: dir, table: "t (v INTEGER NOT NULL)"))
        let hold = Self.holdWriter(writer)
        let queued = Guarded<Bool?>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread {
            let ok = (try? writer.perform { db throws(TransportError) in try db.run("INSERT INTO t (v) VALUES (5)") }) != nil
            queued.withLock { $0 = ok }
            done.signal()
        }.start()
        #expect(waitUntil(30) { writer.pendingCount == 1 }, "the second caller queued behind the holder")
        let closed = DispatchSemaphore(value: 0)
        Thread {
            writer.close()
            closed.signal()
        }.start()
        #expect(closed.wait(timeout: .now() + 0.3) == .timedOut, "the close waits for the turn in progress")
        hold.signal()
        #expect(done.wait(timeout: .now() + 10) == .success, "the queued operation ran")
        #expect(queued.withLock { $0 } == true)
        #expect(closed.wait(timeout: .now() + 10) == .success, "then the close returned")
        var rows: Int64 = -1
        try SQLiteDatabase(path: dir.file("writer.db")).run("SELECT count(*) FROM t WHERE v = 5") { row in rows = row.int(0) }
        #expect(rows == 1)
    }

    /// Synced commits are written with `synchronous=NORMAL` and synced after the write lock is let
    /// go: one `fdatasync` of the WAL per synced batch, none for a batch of unsynced operations.
    @Test("a synced commit syncs the WAL once, outside SQLite; an unsynced one does not sync")
    func syncedAfterTheLock() throws {
        let dir = try TemporaryDirectory()
        let writer = SQLiteWriter(try Self.database(in: dir, table: "t (v INTEGER NOT NULL)"))
        let walSync = try #require(writer.walSync, "the writer opened its WAL")
        let mode = try writer.perform(synced: false) { db throws(TransportError) -> Int64 in
            var mode: Int64 = -1
            try db.run("PRAGMA synchronous") { row in mode = row.int(0) }
            return mode
        }
        #expect(mode == 1, "NORMAL: SQLite itself does not sync commits")
        #expect(walSync.syncs == 0)
        _ = try writer.perform { db throws(TransportError) in try db.run("INSERT INTO t (v) VALUES (1)") }
        #expect(walSync.syncs == 1)
        _ = try writer.perform(synced: false) { db throws(TransportError) in try db.run("INSERT INTO t (v) VALUES (2)") }
        #expect(walSync.syncs == 1)
        let results = Self.inOneBatch(writer, count: 8) { value, db throws(TransportError) in
            try db.run("INSERT INTO t (v) VALUES (?)", [.int(Int64(10 + value))])
        }
        #expect(results.values.allSatisfy { $0 })
        #expect(walSync.syncs == 3, "the holder's batch, then one for the eight queued together")
    }

    /// A sync that fails fails its callers, and every later one: after a failed `fdatasync` the
    /// kernel may have dropped the pages, and a later success would not mean they are on disk.
    /// Later synced operations are not even committed (they would be delivered, yet reported
    /// failed); unsynced ones still are.
    @Test("a failed WAL sync fails the commit's callers, and later synced operations without committing them")
    func failedSyncIsFinal() throws {
        let dir = try TemporaryDirectory()
        // A WAL that cannot be synced: fdatasync of /dev/null fails with EINVAL.
        try FileManager.default.createSymbolicLink(atPath: dir.file("broken.db-wal"), withDestinationPath: "/dev/null")
        let broken = try #require(WALSync(walPath: dir.file("broken.db-wal")))
        let writer = SQLiteWriter(try Self.database(in: dir, table: "t (v INTEGER NOT NULL)"), walSync: broken)
        func insert(_ value: Int64, synced: Bool) throws {
            _ = try writer.perform(synced: synced) { db throws(TransportError) in try db.run("INSERT INTO t (v) VALUES (?)", [.int(value)]) }
        }
        for value: Int64 in [1, 2] {
            #expect {
                try insert(value, synced: true)
            } throws: { error in
                let message = "\(error)"
                return message.contains("cannot sync") && message.contains("broken.db-wal") && message.contains("restart the process")
            }
        }
        try insert(3, synced: false)
        let stored = try writer.perform(synced: false) { db throws(TransportError) -> [Int64] in
            var values: [Int64] = []
            try db.run("SELECT v FROM t ORDER BY v") { row in values.append(row.int(0)) }
            return values
        }
        #expect(stored == [1, 3], "the first was committed before its sync failed; the second never was")
        #expect(broken.syncs == 1, "no sync was tried again")
    }

    /// Submitted operations (`publish_async`'s path) never run on the caller's thread, queue
    /// into the next batch, and are told once their commit is synced — by the syncer thread, one
    /// sync for the batch — so their rows are there when they are told.
    @Test("submitted operations share a batch and are told once after its sync, never on the caller's thread")
    func submittedOperationsAreToldAfterTheSync() throws {
        let dir = try TemporaryDirectory()
        let writer = SQLiteWriter(try Self.database(in: dir, table: "t (v INTEGER NOT NULL)"))
        let walSync = try #require(writer.walSync)
        let caller = pthread_self()
        let hold = Self.holdWriter(writer)
        let syncsBefore = walSync.syncs
        let told = Guarded<[Int: (error: TransportError?, rows: Int64, onCaller: Bool)]>([:])
        let allTold = DispatchSemaphore(value: 0)
        let count = 16
        for value in 0..<count {
            let insert: (SQLiteDatabase) throws(TransportError) -> Void = { db throws(TransportError) in
                try db.run("INSERT INTO t (v) VALUES (?)", [.int(Int64(value))])
            }
            writer.submit(insert) { error in
                // What a reader sees when the operation is told: its row, committed.
                var rows: Int64 = -1
                _ = try? SQLiteDatabase(path: dir.file("writer.db")).run("SELECT count(*) FROM t WHERE v = \(value)") { rows = $0.int(0) }
                let onCaller = pthread_equal(pthread_self(), caller) != 0
                if told.withLock({ told in
                    told[value] = (error, rows, onCaller)
                    return told.count == count
                }) {
                    allTold.signal()
                }
            }
        }
        #expect(writer.pendingCount == count, "the submitted operations wait for the held writer; none ran on the caller's thread")
        hold.signal()
        #expect(allTold.wait(timeout: .now() + 30) == .success, "\(told.withLock { $0.count }) of \(count) operations were told")
        let outcomes = told.withLock { $0 }
        #expect(outcomes.values.allSatisfy { $0.error == nil && $0.rows == 1 && !$0.onCaller })
        // The held operation's own sync, and one for the sixteen submitted together.
        #expect(walSync.syncs - syncsBefore == 2, "\(walSync.syncs - syncsBefore) syncs")
    }

    /// `close()` answers everything submitted before it returns (an instance's `destroy` must
    /// not leave a `publish_async` untold); later submissions are told `.closed` at once.
    @Test("close tells every submitted operation before it returns; a later submission is told it is closed")
    func closeTellsSubmittedOperations() throws {
        let dir = try TemporaryDirectory()
        let writer = SQLiteWriter(try Self.database(in: dir, table: "t (v INTEGER NOT NULL)"))
        let told = Guarded<[TransportError?]>([])
        for value in 0..<50 {
            let insert: (SQLiteDatabase) throws(TransportError) -> Void = { db throws(TransportError) in
                try db.run("INSERT INTO t (v) VALUES (?)", [.int(Int64(value))])
            }
            writer.submit(insert) { error in told.withLock { $0.append(error) } }
        }
        writer.close()
        let outcomes = told.withLock { $0 }
        #expect(outcomes.count == 50 && outcomes.allSatisfy { $0 == nil }, "told \(outcomes.count) of 50 before close returned")
        var late: TransportError?
        let nothing: (SQLiteDatabase) throws(TransportError) -> Void = { _ throws(TransportError) in }
        writer.submit(nothing) { late = $0 }
        #expect(late?.code == .closed)
        var rows: Int64 = 0
        try SQLiteDatabase(path: dir.file("writer.db")).run("SELECT count(*) FROM t") { rows = $0.int(0) }
        #expect(rows == 50)
    }

    /// A failed sync fails the submitted operations of its batch too, and those submitted after
    /// it without committing them, as it fails waiting callers.
    @Test("a failed WAL sync fails the submitted operations it was to make durable")
    func failedSyncFailsSubmittedOperations() throws {
        let dir = try TemporaryDirectory()
        try FileManager.default.createSymbolicLink(atPath: dir.file("broken.db-wal"), withDestinationPath: "/dev/null")
        let broken = try #require(WALSync(walPath: dir.file("broken.db-wal")))
        let writer = SQLiteWriter(try Self.database(in: dir, table: "t (v INTEGER NOT NULL)"), walSync: broken)
        func submit(_ value: Int64) -> TransportError? {
            let told = DispatchSemaphore(value: 0)
            let outcome = Guarded<TransportError?>(nil)
            let insert: (SQLiteDatabase) throws(TransportError) -> Void = { db throws(TransportError) in
                try db.run("INSERT INTO t (v) VALUES (?)", [.int(value)])
            }
            writer.submit(insert) { error in
                outcome.withLock { $0 = error }
                told.signal()
            }
            told.wait()
            return outcome.withLock { $0 }
        }
        #expect(submit(1).map { "\($0)".contains("cannot sync") } == true)
        #expect(submit(2).map { "\($0)".contains("cannot sync") } == true)
        let stored = try writer.perform(synced: false) { db throws(TransportError) -> [Int64] in
            var values: [Int64] = []
            try db.run("SELECT v FROM t ORDER BY v") { row in values.append(row.int(0)) }
            return values
        }
        #expect(stored == [1], "the first was committed before its sync failed; the second never was")
    }

    /// A durable database in `dir` with one table, `CREATE TABLE` `table`.
    static func database(in dir: TemporaryDirectory, table: String) throws -> SQLiteDatabase {
        let db = try SQLiteDatabase(path: dir.file("writer.db"))
        try db.configureDurable()
        try db.execute("CREATE TABLE \(table)")
        return db
    }

    /// Holds `writer` with an operation that waits, on a thread of its own, until the returned
    /// semaphore is signalled: whatever comes meanwhile queues behind it.
    static func holdWriter(_ writer: SQLiteWriter) -> DispatchSemaphore {
        let hold = DispatchSemaphore(value: 0)
        let holding = DispatchSemaphore(value: 0)
        Thread {
            try? writer.perform { _ throws(TransportError) in
                holding.signal()
                hold.wait()
            }
        }.start()
        holding.wait()
        return hold
    }

    /// Runs `operation(0..<count)` from `count` threads while the writer is held, so that they
    /// queue up and run as one batch; returns which succeeded.
    static func inOneBatch(
        _ writer: SQLiteWriter, count: Int, _ operation: @escaping @Sendable (Int, SQLiteDatabase) throws(TransportError) -> Void
    ) -> [Int: Bool] {
        let hold = Self.holdWriter(writer)
        let results = Guarded<[Int: Bool]>([:])
        let done = DispatchGroup()
        for value in 0..<count {
            done.enter()
            Thread {
                do throws(TransportError) {
                    try writer.perform { db throws(TransportError) in try operation(value, db) }
                    results.withLock { $0[value] = true }
                } catch {
                    results.withLock { $0[value] = false }
                }
                done.leave()
            }.start()
        }
        // Every operation queued behind the held one (not a fixed time: a loaded machine starts
        // threads late), then the batch runs.
        #expect(waitUntil(30) { writer.pendingCount == count }, "\(writer.pendingCount) of \(count) operations queued")
        hold.signal()
        done.wait()
        return results.withLock { $0 }
    }
}

/// Integers left by operations, inserted together at the end of the batch.
private final class DeferredInts: SQLiteDeferredWrites, @unchecked Sendable {
    var values: [Int64] = []

    func flush(_ db: SQLiteDatabase) throws(TransportError) {
        guard !values.isEmpty else { return }
        let sql = "INSERT INTO t (v) VALUES " + Array(repeating: "(?)", count: values.count).joined(separator: ", ")
        try db.run(
            sql,
            binding: { parameters in
                for (index, value) in self.values.enumerated() { parameters.bind(value, at: Int32(index + 1)) }
            })
        values.removeAll()
    }

    func discard() { values.removeAll() }
}
