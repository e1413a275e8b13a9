import Foundation
import SwitchyardABI
import SwitchyardConformance
import SwitchyardHost
import SwitchyardLoader
import SwitchyardRuntime
import SwitchyardTestSupport
import Testing

@Suite("Durable queue")
struct DurableQueueTests {
    static var probe: String { BuildProducts.path("switchyard-durability-probe") }

    /// A durable queue's file holding `ids` on `channel`, the record of the one at `index`
    /// overwritten with four bytes that do not decode (as a disk fault or an edit by hand would).
    static func storeWithCorruptRecord(
        in dir: TemporaryDirectory, channel: String, ids: [String], corrupting index: Int
    ) async throws -> (db: String, config: String) {
        let db = dir.file("queue.db")
        let config = #"{"path": "\#(db)", "expiry_sweep": "1h"}"#
        let transport = try Transport(name: "q", plugin: try BuildProducts.plugin("queue"), configJSON: config)
        try transport.client.publish(batch: ids.map { Message(id: $0, channel: channel, body: Array($0.utf8)) })
        transport.close()
        let edited = try await run(
            "/usr/bin/env", ["sqlite3", db, "UPDATE entries SET message = X'DEADBEEF' WHERE id = (SELECT MIN(id) + \(index) FROM entries)"])
        try #require(edited.status == 0, "\(edited.stderr)")
        return (db, config)
    }

    /// A record that no longer decodes (a disk fault, an edit by hand) is dead-lettered with the
    /// reason and its raw bytes, never delivered, and the messages after it still are — at once:
    /// a lease that drops one returns fewer than it was asked for, which the broker otherwise
    /// takes to mean that nothing more is ready.
    @Test("a corrupt record is dead-lettered with its reason, and the messages behind it are still delivered")
    func corruptRecord() async throws {
        let dir = try TemporaryDirectory()
        let (_, config) = try await Self.storeWithCorruptRecord(in: dir, channel: "work", ids: ["a", "b", "c"], corrupting: 1)
        let transport = try Transport(name: "q", plugin: try BuildProducts.plugin("queue"), configJSON: config)
        defer { transport.close() }
        try expectCorruptRecordDeadLettered(transport.client)
    }

    /// A dead letter is not dead-lettered again: a corrupt record in a dead-letter channel is
    /// deleted when a reader meets it (kept, it would be met again on every lease), and the host
    /// logs it as an error naming the channel, the entry and the reason.
    @Test("a corrupt record in a dead-letter channel is deleted and logged as an error, not dropped in silence")
    func corruptDeadLetter() async throws {
        let dir = try TemporaryDirectory()
        let (db, config) = try await Self.storeWithCorruptRecord(in: dir, channel: "work.dlq", ids: ["x", "y"], corrupting: 0)
        let log = CapturedLog()
        let transport = try Transport(name: "q", plugin: try BuildProducts.plugin("queue"), configJSON: config, logger: log.logger())
        defer { transport.close() }
        let dead = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "work.dlq", maxInFlight: 1), handler: dead.handler(client: transport.client))
        #expect(dead.wait(for: 1, seconds: 10))
        #expect(dead.received.map(\.message.id) == ["y"])
        let line = log.all.first { $0.contains("corrupt record in the dead-letter channel 'work.dlq'") }
        #expect(line?.hasPrefix("error") == true, "\(log.all)")
        #expect(line?.contains("4 bytes") == true && line?.contains("not dead-lettered again") == true, "\(line ?? "")")
        let left = try await run("/usr/bin/env", ["sqlite3", db, "SELECT COUNT(*) FROM entries WHERE message = X'DEADBEEF'"])
        #expect(left.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "0")
    }

    /// Closing a transport closes every connection to its file before it returns (the writer's,
    /// the dispatcher's and the beacon watcher's among them), so the last close has checkpointed
    /// and removed the WAL, and another process takes the write lock without waiting. They used
    /// to close when their threads let go of them, just after: `sqlite3` run right after a close
    /// then failed with "database is locked" (the fresh-clone CI hit it in the test above).
    @Test("closing a transport lets go of its file at once: no WAL is left, and another process locks it without waiting")
    func closeLetsGoOfTheFile() async throws {
        let dir = try TemporaryDirectory()
        let db = dir.file("queue.db")
        let plugin = try BuildProducts.plugin("queue")
        for round in 0..<8 {
            let transport = try Transport(name: "q", plugin: plugin, configJSON: #"{"path": "\#(db)"}"#)
            let live = Collector()
            _ = try transport.client.subscribe(SubscribeOptions(channel: "work"), handler: live.handler(client: transport.client))
            try transport.client.publish(batch: (0..<3).map { Message(id: "\(round)-\($0)", channel: "work", body: [1]) })
            #expect(live.wait(for: 3, seconds: 5))
            // The beacon's watcher opens its connection about 20 ms after a write it heard.
            try await Task.sleep(for: .milliseconds(round * 6))
            transport.close()
            #expect(!FileManager.default.fileExists(atPath: db + "-wal"), "round \(round): the WAL outlived the close")
            let locked = try await run("/usr/bin/env", ["sqlite3", db, "BEGIN EXCLUSIVE; COMMIT;"])
            #expect(locked.status == 0, "round \(round): \(locked.stderr)")
        }
    }

    /// The WAL is written ahead, in zeros, to what one checkpoint cycle fills when a store opens
    /// (`SQLiteWriter.writeWALAhead`): syncing frames appended to a file cost 1.5x syncing frames
    /// written over it here. Only past its end, under the write lock: a second store opening the
    /// file while the first has committed frames in it must leave them readable.
    @Test("a store writes its WAL ahead to a whole checkpoint cycle when it opens, and a second store opening the file loses none of the first one's commits")
    func walWrittenAhead() async throws {
        let dir = try TemporaryDirectory()
        let db = dir.file("queue.db")
        let plugin = try BuildProducts.plugin("queue")
        let config = #"{"path": "\#(db)"}"#
        let first = try Transport(name: "first", plugin: plugin, configJSON: config)
        defer { first.close() }
        let size = { ((try? FileManager.default.attributesOfItem(atPath: db + "-wal"))?[.size] as? Int) ?? 0 }
        #expect(size() >= 1000 * (4096 + 24), "the WAL is \(size()) bytes")
        try first.client.publish(batch: (0..<50).map { Message(id: "m-\($0)", channel: "work", body: Array(repeating: 7, count: 100)) })
        let written = size()
        let second = try Transport(name: "second", plugin: plugin, configJSON: config)
        defer { second.close() }
        #expect(size() == written, "the second store's open changed the WAL's length")
        let inbox = Collector()
        _ = try second.client.subscribe(SubscribeOptions(channel: "work"), handler: inbox.handler(client: second.client))
        #expect(inbox.wait(for: 50, seconds: 10))
        #expect(inbox.received.map(\.message.id).sorted() == (0..<50).map { "m-\($0)" }.sorted())
    }

    /// operations.md: back a store up while it runs with `VACUUM INTO`, restore by copying the
    /// backup to the file with the store's other files deleted.
    @Test("a store backed up while it runs with sqlite3 VACUUM INTO (operations.md) restores with every message it held")
    func backupWhileRunning() async throws {
        let dir = try TemporaryDirectory()
        let db = dir.file("queue.db")
        let copy = dir.file("copy.db")
        let plugin = try BuildProducts.plugin("queue")
        let running = try Transport(name: "q", plugin: plugin, configJSON: #"{"path": "\#(db)"}"#)
        try running.client.publish(batch: (0..<20).map { Message(id: "m-\($0)", channel: "work", body: [UInt8($0)]) })
        let backup = try await run("/usr/bin/env", ["sqlite3", "-cmd", ".timeout 5000", db, "VACUUM INTO '\(copy)'"])
        #expect(backup.status == 0, "\(backup.stderr)")
        try running.client.publish(Message(id: "after-the-backup", channel: "work"))
        running.close()
        // Restored: the store's files deleted, the backup copied in its place.
        for suffix in ["", "-wal", "-shm", "-wake"] { try? FileManager.default.removeItem(atPath: db + suffix) }
        try FileManager.default.copyItem(atPath: copy, toPath: db)
        let restored = try Transport(name: "q", plugin: plugin, configJSON: #"{"path": "\#(db)"}"#)
        defer { restored.close() }
        let inbox = Collector()
        _ = try restored.client.subscribe(SubscribeOptions(channel: "work"), handler: inbox.handler(client: restored.client))
        #expect(inbox.wait(for: 20, seconds: 10))
        try await Task.sleep(for: .milliseconds(300))
        #expect(inbox.received.map(\.message.id).sorted() == (0..<20).map { "m-\($0)" }.sorted(), "what the backup held, and nothing published after it")
    }

    @Test("a durable topic keeps the last `retain` messages of each channel, a quiet one beside a busy one too")
    func retainedPerChannel() async throws {
        let dir = try TemporaryDirectory()
        let topic = try Transport(name: "t", plugin: try BuildProducts.plugin("topic"), configJSON: #"{"path": "\#(dir.file("topic.db"))", "retain": 3}"#)
        defer { topic.close() }
        try await expectRetainedPerChannel(topic.client)
    }

    @Test("every acknowledged publish survives the publisher being killed with SIGKILL")
    func survivesSIGKILL() async throws {
        let dir = try TemporaryDirectory()
        let db = dir.file("queue.db")
        // The rounds block on the child's output: off the cooperative pool.
        let acked = try await offPool { () throws -> Set<String> in
            var acked = Set<String>()
            for round in 0..<3 {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: Self.probe)
                process.arguments = [BuildProducts.directory, db, "100000", "r\(round)"]
                let out = Pipe()
                process.standardOutput = out
                try process.run()
                // Read acknowledgements until a random point, then kill it mid-stream.
                let stopAfter = Int.random(in: 20...200)
                var buffer = Data()
                var seen = 0
                while seen < stopAfter {
                    let chunk = out.fileHandleForReading.availableData
                    if chunk.isEmpty { break }
                    buffer.append(chunk)
                    seen = buffer.split(separator: UInt8(ascii: "\n")).count
                }
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
                buffer.append(out.fileHandleForReading.readDataToEndOfFile())
                let lines = String(decoding: buffer, as: UTF8.self).split(separator: "\n")
                acked.formUnion(lines.filter { $0.hasPrefix("acked ") }.map { String($0.dropFirst(6)) })
                #expect(process.terminationReason == .uncaughtSignal)
            }
            return acked
        }
        #expect(acked.count >= 60)
        let plugin = try BuildProducts.plugin("queue")
        let transport = try Transport(name: "after-crash", plugin: plugin, configJSON: "{\"path\": \"\(db)\"}")
        defer { transport.close() }
        let inbox = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "durable", maxInFlight: 1000), handler: inbox.handler(client: transport.client))
        // Wait until every acknowledged message is back, or until deliveries stop for 10 s: the
        // three rounds may have stored thousands more than were acknowledged, and a slow machine
        // (a sanitizer, a busy CI host) delivers them slowly, which is not losing them.
        var received = Set<String>()
        var lastCount = -1
        var idleSince = Date()
        while !acked.isSubset(of: received) && Date().timeIntervalSince(idleSince) < 10 {
            try await Task.sleep(for: .milliseconds(100))
            received = Set(inbox.received.map(\.message.id))
            if received.count != lastCount { (lastCount, idleSince) = (received.count, Date()) }
        }
        let lost = acked.subtracting(received)
        #expect(lost.isEmpty, "\(lost.count) of \(acked.count) acknowledged messages were lost (\(received.count) delivered), e.g. \(lost.prefix(5))")
        let sample = try #require(inbox.received.first { acked.contains($0.message.id) })
        #expect(String(decoding: sample.message.body, as: UTF8.self).hasPrefix("payload "))
    }

    @Test("processes opening one new store at the same moment all start: the schema is set up once, under the write lock")
    func concurrentFirstOpen() async throws {
        // Two consumers started together on a new file each saw a column missing and both added
        // it; the second failed to start ("duplicate column name: expires_at"): here about one
        // round in four of eight processes on a fresh file hit it. Twelve rounds.
        for round in 0..<12 {
            let dir = try TemporaryDirectory()
            let db = dir.file("queue.db")
            let results = try await withThrowingTaskGroup(of: ProcessResult.self) { group in
                for index in 0..<8 {
                    group.addTask { try await run(Self.probe, [BuildProducts.directory, db, "3", "p\(index)"]) }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            for result in results {
                #expect(result.status == 0, "round \(round): \(result.stderr)")
                #expect(result.stdout.split(separator: "\n").count == 3, "round \(round): \(result.stdout)")
            }
        }
    }

    @Test("a consumer in this process is woken by a producer in another process, without polling")
    func crossProcessWakeup() async throws {
        let dir = try TemporaryDirectory()
        let db = dir.file("shared.db")
        let plugin = try BuildProducts.plugin("queue")
        let transport = try Transport(name: "consumer", plugin: plugin, configJSON: "{\"path\": \"\(db)\"}")
        defer { transport.close() }
        let inbox = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "durable"), handler: inbox.handler(client: transport.client))
        let result = try await run(Self.probe, [BuildProducts.directory, db, "20", "x"])
        #expect(result.status == 0, "\(result.stderr)")
        // Counted from the producer's exit, not its start: starting a process on a loaded machine
        // takes seconds, and that is not what this test is about.
        // Measured to the deliveries' own times, not to when a polling wait saw them.
        let producerDone = wallClockNanoseconds()
        #expect(await eventually(30) { inbox.count >= 20 }, "got \(inbox.count) of 20 from the other process")
        let last = inbox.received.prefix(20).map(\.at).max() ?? .max
        #expect(last - producerDone < 3_000_000_000, "messages arrived \(Double(last - producerDone) / 1e9) s after the producer finished")
    }

    @Test("a file that is not SQLite, or another application's database, is refused with a clear error")
    func foreignFiles() async throws {
        let dir = try TemporaryDirectory()
        let plugin = try BuildProducts.plugin("queue")
        try "definitely not sqlite, but long enough to look like a header ..........................................".write(
            toFile: dir.file("text.db"), atomically: true, encoding: .utf8)
        let notSQLite = #expect(throws: TransportError.self) { _ = try Transport(name: "t", plugin: plugin, configJSON: "{\"path\": \"\(dir.file("text.db"))\"}") }
        #expect(notSQLite?.message.contains("not a SQLite database") == true, "\(notSQLite?.message ?? "")")
        _ = try await run("/usr/bin/env", ["sqlite3", dir.file("other.db"), "CREATE TABLE invoices (id INTEGER);"])
        if FileManager.default.fileExists(atPath: dir.file("other.db")) {
            let foreign = #expect(throws: TransportError.self) { _ = try Transport(name: "t", plugin: plugin, configJSON: "{\"path\": \"\(dir.file("other.db"))\"}") }
            #expect(foreign?.message.contains("another application") == true, "\(foreign?.message ?? "")")
            // Refused before anything was changed: not even switched to WAL.
            let mode = try await run("/usr/bin/env", ["sqlite3", dir.file("other.db"), "PRAGMA journal_mode;"])
            #expect(mode.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "delete", "\(mode.stdout)")
        }
        let topic = try BuildProducts.plugin("topic")
        let queueFile = try Transport(name: "q", plugin: plugin, configJSON: "{\"path\": \"\(dir.file("q.db"))\"}")
        queueFile.close()
        let wrongKind = #expect(throws: TransportError.self) { _ = try Transport(name: "t", plugin: topic, configJSON: "{\"path\": \"\(dir.file("q.db"))\"}") }
        #expect(wrongKind?.message.contains("holds a queue store") == true, "\(wrongKind?.message ?? "")")
        // A store of another kind is refused before this kind's tables are added to it.
        let inner = try Transport(name: "inner", plugin: plugin)
        defer { inner.close() }
        let delay = try BuildProducts.plugin("delay")
        let delayOnQueue = #expect(throws: TransportError.self) {
            _ = try Transport(name: "d", plugin: delay, configJSON: "{\"path\": \"\(dir.file("q.db"))\"}", inner: inner)
        }
        #expect(delayOnQueue?.message.contains("holds a queue store") == true, "\(delayOnQueue?.message ?? "")")
        let tables = try await run("/usr/bin/env", ["sqlite3", dir.file("q.db"), "SELECT name FROM sqlite_master WHERE name = 'held';"])
        #expect(tables.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "the delay store's table was added: \(tables.stdout)")
    }

    @Test(
        "malformed broker config names the key",
        arguments: [
            ("{\"capacity\": -1}", "'capacity'"), ("{\"visibility_timeout\": \"soon\"}", "'visibility_timeout'"),
            ("{\"max_in_flight\": 0}", "'max_in_flight'"), ("{\"retain\": 5}", "unknown config key 'retain'"),
            ("{\"full_wait\": 5}", "'full_wait'"), ("{\"full_wait\": 5}", "has no unit: write a duration as a string with one, like \"5s\""),
            ("{\"full_wait\": \"5\"}", "'5' has no unit: write it with one, like \"5s\""),
            ("{\"full_wait\": \"-2s\"}", "'-2s' is negative"), ("{\"full_wait\": -2}", "'-2' is negative"),
            ("{\"full_wait\": \"1e300s\"}", "is too long"),
        ])
    func badConfig(_ json: String, _ expected: String) throws {
        let plugin = try BuildProducts.plugin("queue")
        let error = #expect(throws: TransportError.self) { _ = try Transport(name: "t", plugin: plugin, configJSON: json) }
        #expect(error?.code == .config)
        #expect(error?.message.contains(expected) == true, "\(error?.message ?? "")")
    }

    @Test("a duration of a bare 0 is zero, as \"0\" is")
    func bareZeroDuration() throws {
        let transport = try Transport(name: "t", plugin: try BuildProducts.plugin("queue"), configJSON: #"{"full_wait": 0, "expiry_sweep": "1s"}"#)
        transport.close()
    }

    @Test("with full_wait, a publish to a full queue waits for room instead of failing")
    func fullWait() throws {
        let plugin = try BuildProducts.plugin("queue")
        // A wait far longer than the test needs: under a loaded CI machine (sanitizers) the
        // delayed acknowledgements can come late, and a publish that ran out of its wait threw.
        let transport = try Transport(name: "small", plugin: plugin, configJSON: #"{"capacity": 1, "full_wait": "30s"}"#)
        defer { transport.close() }
        let client = transport.client
        _ = try client.subscribe(SubscribeOptions(channel: "c")) { delivery, _ in
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(100)) { try? client.settle(delivery, .ack) }
            return .ok
        }
        let started = Date()
        for index in 0..<3 { try client.publish(Message(id: "w\(index)", channel: "c")) }
        let waited = Date().timeIntervalSince(started)
        #expect(waited >= 0.15 && waited < 20, "three publishes through a queue of capacity 1 took \(waited) s")
    }

    /// Room made by consumers elsewhere (another process; here another store on the same file,
    /// which announces its commits the same way) lets a waiting publish in, long before its
    /// `full_wait` is over.
    @Test("with full_wait, a publish to a full shared store is let in once another store's consumer acknowledges")
    func fullWaitAcrossStores() async throws {
        let dir = try TemporaryDirectory()
        let plugin = try BuildProducts.plugin("queue")
        let config = #"{"path": "\#(dir.file("q.db"))", "capacity": 1, "full_wait": "20s"}"#
        let publisher = try Transport(name: "publisher", plugin: plugin, configJSON: config)
        let consumer = try Transport(name: "consumer", plugin: plugin, configJSON: config)
        defer { publisher.close(); consumer.close() }
        let held = Collector()
        _ = try consumer.client.subscribe(SubscribeOptions(channel: "c"), handler: held.handler(client: consumer.client, settle: { _ in nil }))
        try publisher.client.publish(Message(id: "first", channel: "c"))
        #expect(await eventually { held.count == 1 })
        // The publisher's counts (cached for at least 100 ms, longer when counting is slow) say
        // full: waited for, not slept on (300 ms of sleep fell short on a loaded machine).
        #expect(await eventually { ((try? publisher.client.stats()) ?? nil).map { $0.depth + $0.inFlight } == 1 })
        let second = Task { try await offPool { try publisher.client.publish(Message(id: "second", channel: "c")) } }
        try await Task.sleep(for: .milliseconds(300))
        #expect(held.count == 1, "the second publish went through a full queue")
        let acknowledged = Date()
        try consumer.client.settle(try #require(held.received.first).delivery, .ack)
        try await second.value
        let waited = Date().timeIntervalSince(acknowledged)
        #expect(waited < 5, "the publish waited \(waited) s after the room was made")
    }

    @Test("a full queue refuses a publish with a clear error, and nothing is dropped")
    func capacity() throws {
        let plugin = try BuildProducts.plugin("queue")
        let transport = try Transport(name: "small", plugin: plugin, configJSON: "{\"capacity\": 3}")
        defer { transport.close() }
        for index in 0..<3 { try transport.client.publish(Message(id: "m\(index)", channel: "c")) }
        let full = #expect(throws: TransportError.self) { try transport.client.publish(Message(id: "m3", channel: "c")) }
        #expect(full?.code == .full)
        #expect(full?.message.contains("capacity of 3") == true)
        #expect(try transport.client.stats()?.depth == 3)
    }

    /// The counts are read on a connection of their own (not the writer's) and cached between
    /// reads: they must still follow the file.
    @Test("a durable queue's depth and in-flight counts follow publishes and deliveries")
    func durableCounts() async throws {
        let dir = try TemporaryDirectory()
        let transport = try Transport(name: "counted", plugin: try BuildProducts.plugin("queue"), configJSON: #"{"path": "\#(dir.file("q.db"))"}"#)
        defer { transport.close() }
        for index in 0..<5 { try transport.client.publish(Message(id: "m\(index)", channel: "c")) }
        #expect(await eventually { ((try? transport.client.stats()) ?? nil)?.depth == 5 })
        let held = Collector()
        _ = try transport.client.subscribe(
            SubscribeOptions(channel: "c", maxInFlight: 2), handler: held.handler(client: transport.client, settle: { _ in nil }))
        #expect(await eventually { held.count == 2 })
        #expect(
            await eventually {
                let stats = (try? transport.client.stats()) ?? nil
                return stats?.depth == 3 && stats?.inFlight == 2
            })
    }

    /// The counts are cached between counts, and one caller counts while the others get the last
    /// counts. Before the first count there are none: callers that arrive then wait for it (they
    /// once got zeroes, and a restarted queue looked empty to whoever asked first).
    @Test("callers asking for the counts of a reopened queue all at once all get the real counts")
    func firstCountsTogether() async throws {
        let dir = try TemporaryDirectory()
        let config = #"{"path": "\#(dir.file("q.db"))"}"#
        do {
            let transport = try Transport(name: "filled", plugin: try BuildProducts.plugin("queue"), configJSON: config)
            defer { transport.close() }
            for index in 0..<20 { try transport.client.publish(Message(id: "m\(index)", channel: "c")) }
        }
        for round in 0..<5 {
            let transport = try Transport(name: "reopened", plugin: try BuildProducts.plugin("queue"), configJSON: config)
            defer { transport.close() }
            let depths = Guarded<[UInt64?]>([])
            try await offPool {
                DispatchQueue.concurrentPerform(iterations: 8) { _ in
                    let depth = ((try? transport.client.stats()) ?? nil)?.depth
                    depths.withLock { $0.append(depth) }
                }
            }
            #expect(depths.withLock { $0 } == Array(repeating: 20, count: 8), "round \(round)")
        }
    }
}
