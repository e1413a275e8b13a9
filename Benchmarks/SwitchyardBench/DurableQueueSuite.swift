import CSQLite
import Foundation
import SwitchyardABI
import SwitchyardHost
import Synchronization

/// `durable-queue`: publishes to the durable (SQLite) queue plugin, each acknowledged only after
/// its commit — with 64 concurrent publishers (group commit), and with one publisher sending
/// batches of 100 (`publish_batch`), both against a raw SQLite loop inserting batches of 100 per
/// transaction with the same pragmas; and with one publisher and a commit per message against a
/// raw loop of 64-byte writes each followed by fdatasync.
struct DurableQueueSuite: BenchSuite {
    let name = "durable-queue"
    let summary = "durable queue publish (group commit, per-message commit) vs raw SQLite batches and raw fdatasync"

    func run(_ context: BenchContext) throws -> [BenchResult] {
        let plugins = BenchPlugins(context)
        let scratch = NSTemporaryDirectory() + "/switchyard-bench-durable-\(getpid())"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let grouped = context.quick ? 40_000 : 200_000
        let single = context.quick ? 1_000 : 5_000
        let rounds = context.quick ? 1 : 3
        var round = 0
        /// The median of `rounds` runs, each on a fresh file.
        func median(_ run: (String) throws -> Double) throws -> Double {
            Measure.median(
                try (0..<rounds).map { _ in
                    round += 1
                    return try run(scratch + "/round-\(round)")
                })
        }

        context.progress("durable-queue: raw SQLite, batches of 100 ×\(grouped)")
        let rawBatched = try median { try rawSQLiteBatched(path: $0 + "-raw.db", count: grouped) }
        context.progress("durable-queue: plugin, 64 concurrent publishers ×\(grouped)")
        let groupCommit = try median { try pluginRate(plugins, path: $0 + "-group.db", count: grouped, publishers: 64) }
        context.progress("durable-queue: plugin, 64 concurrent publishing tasks (publish_async) ×\(grouped)")
        let groupCommitTasks = try median { try pluginTaskRate(plugins, path: $0 + "-tasks.db", count: grouped, publishers: 64) }
        context.progress("durable-queue: plugin, 1 publisher, batches of 100 ×\(grouped)")
        let batched = try median { try batchedRate(plugins, path: $0 + "-batched.db", count: grouped) }
        context.progress("durable-queue: raw fdatasync ×\(single)")
        let rawSync = try median { rawFdatasync(path: $0 + "-sync.bin", count: single) }
        context.progress("durable-queue: plugin, 1 publisher ×\(single)")
        let perMessage = try median { try pluginRate(plugins, path: $0 + "-single.db", count: single, publishers: 1) }
        return [
            BenchResult(suite: name, metric: "raw_sqlite_batched_inserts_per_s", value: rawBatched, unit: "msg/s"),
            BenchResult(
                suite: name, metric: "group_commit_msgs_per_s", value: groupCommit, unit: "msg/s",
                baseline: ("raw_sqlite_batched_inserts_per_s", rawBatched)),
            BenchResult(
                suite: name, metric: "group_commit_tasks_msgs_per_s", value: groupCommitTasks, unit: "msg/s",
                baseline: ("raw_sqlite_batched_inserts_per_s", rawBatched)),
            BenchResult(
                suite: name, metric: "batched_publish_msgs_per_s", value: batched, unit: "msg/s",
                baseline: ("raw_sqlite_batched_inserts_per_s", rawBatched)),
            BenchResult(suite: name, metric: "raw_fdatasync_per_s", value: rawSync, unit: "op/s"),
            BenchResult(
                suite: name, metric: "per_message_commit_msgs_per_s", value: perMessage, unit: "msg/s",
                baseline: ("raw_fdatasync_per_s", rawSync)),
        ]
    }

    func pluginRate(_ plugins: BenchPlugins, path: String, count: Int, publishers: Int) throws -> Double {
        let queue = try plugins.transport("queue", config: #"{"path": "\#(path)", "capacity": 0}"#)
        defer { queue.close() }
        let body = [UInt8](repeating: 0x5A, count: 64)
        let failures = Atomic<Int>(0)
        // Real threads, one per publisher: each blocks until its commit, as an application's would
        // (a dispatch queue would cap the concurrency at the core count).
        let finished = DispatchGroup()
        let start = Measure.now()
        for worker in 0..<publishers {
            finished.enter()
            Thread {
                for index in stride(from: worker, to: count, by: publishers) {
                    do {
                        try queue.client.publish(Message(id: "m-\(index)", channel: "bench", body: body))
                    } catch {
                        failures.add(1, ordering: .relaxed)
                    }
                }
                finished.leave()
            }.start()
        }
        finished.wait()
        let seconds = Double(Measure.now() - start) / 1e9
        if failures.load(ordering: .relaxed) > 0 { throw BenchFailure("\(failures.load(ordering: .relaxed)) publishes failed") }
        return Double(count) / seconds
    }

    /// `publishers` Swift tasks, each publishing one message at a time and awaiting its commit
    /// through `publish_async` (ABI 1.7): how a Switchyard application's calls publish. A task
    /// waiting for its commit holds no thread, so a commit wakes the writer once and resumes its
    /// batch's tasks on the pool's few threads, instead of waking one thread per message.
    func pluginTaskRate(_ plugins: BenchPlugins, path: String, count: Int, publishers: Int) throws -> Double {
        let queue = try plugins.transport("queue", config: #"{"path": "\#(path)", "capacity": 0}"#)
        defer { queue.close() }
        guard queue.client.publishesAsynchronously else { throw BenchUnavailable("the queue plugin does not offer publish_async") }
        let client = queue.client
        let body = [UInt8](repeating: 0x5A, count: 64)
        let finished = DispatchSemaphore(value: 0)
        let failures = Guarded(0)
        let start = Measure.now()
        Task { [publishers, count] in
            let failed = await withTaskGroup(of: Int.self) { group in
                for worker in 0..<publishers {
                    group.addTask {
                        var failed = 0
                        for index in stride(from: worker, to: count, by: publishers) {
                            do {
                                try await client.publishAsync(Message(id: "m-\(index)", channel: "bench", body: body))
                            } catch {
                                failed += 1
                            }
                        }
                        return failed
                    }
                }
                return await group.reduce(0, +)
            }
            failures.withLock { $0 = failed }
            finished.signal()
        }
        finished.wait()
        let seconds = Double(Measure.now() - start) / 1e9
        let failed = failures.withLock { $0 }
        if failed > 0 { throw BenchFailure("\(failed) publishes failed") }
        return Double(count) / seconds
    }

    /// One publisher, `publish_batch` of 100 messages: one commit per batch, like the raw loop.
    func batchedRate(_ plugins: BenchPlugins, path: String, count: Int) throws -> Double {
        let queue = try plugins.transport("queue", config: #"{"path": "\#(path)", "capacity": 0}"#)
        defer { queue.close() }
        let body = [UInt8](repeating: 0x5A, count: 64)
        let start = Measure.now()
        for first in stride(from: 0, to: count, by: 100) {
            try queue.client.publish(batch: (first..<min(count, first + 100)).map { Message(id: "m-\($0)", channel: "bench", body: body) })
        }
        return Double(count) / (Double(Measure.now() - start) / 1e9)
    }

    /// The floor for group commit: the same row shape, 100 rows per transaction, WAL + FULL.
    func rawSQLiteBatched(path: String, count: Int) throws -> Double {
        var db: OpaquePointer?
        guard sqlite3_open(path, &db) == SQLITE_OK else { throw BenchUnavailable("cannot open \(path)") }
        defer { sqlite3_close(db) }
        sqlite3_exec(
            db,
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT, grp TEXT, attempt INTEGER, visible_at INTEGER, message BLOB)",
            nil, nil, nil)
        var statement: OpaquePointer?
        sqlite3_prepare_v2(db, "INSERT INTO t (channel, grp, attempt, visible_at, message) VALUES ('bench', '', 0, ?, ?)", -1, &statement, nil)
        defer { sqlite3_finalize(statement) }
        let blob = [UInt8](repeating: 0x5A, count: 110)  // a 64-byte body with its encoded envelope
        let start = Measure.now()
        for batch in stride(from: 0, to: count, by: 100) {
            sqlite3_exec(db, "BEGIN", nil, nil, nil)
            for index in batch..<min(count, batch + 100) {
                sqlite3_bind_int64(statement, 1, Int64(index))
                blob.withUnsafeBytes { _ = sqlite3_bind_blob(statement, 2, $0.baseAddress, Int32($0.count), nil) }
                sqlite3_step(statement)
                sqlite3_reset(statement)
            }
            sqlite3_exec(db, "COMMIT", nil, nil, nil)
        }
        return Double(count) / (Double(Measure.now() - start) / 1e9)
    }

    /// The floor for a commit per message: a 64-byte append and fdatasync, one at a time.
    func rawFdatasync(path: String, count: Int) -> Double {
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        defer { close(fd) }
        let record = [UInt8](repeating: 0x5A, count: 64)
        let start = Measure.now()
        for _ in 0..<count {
            _ = record.withUnsafeBytes { write(fd, $0.baseAddress, 64) }
            fdatasync(fd)
        }
        return Double(count) / (Double(Measure.now() - start) / 1e9)
    }
}
