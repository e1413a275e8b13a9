import Foundation
import Logging
import SwitchyardABI
import SwitchyardConfig
import SwitchyardHost
import SwitchyardLoader
import SwitchyardPostgres
import SwitchyardRuntime
import SwitchyardTransportKit
import SwitchyardWire

/// What `switchyard soak` was asked for.
package struct SoakOptions: Sendable {
    /// How many times to SIGKILL a process.
    package var cycles = 10
    /// How many items the producer publishes (each is one queue call and one topic event).
    package var messages = 2000
    /// Use the idempotent inbox (effects commit with the inbox record).
    package var inbox = true
    /// Outbox mode: the producer commits its calls with a row of its own, and the work handler's
    /// follow-up call commits with its effect (both through outboxes); needs the inbox.
    package var outbox = false
    /// Keep queues, topics, inboxes and outboxes in PostgreSQL (libpq's `PG*` environment)
    /// instead of SQLite files; needs the inbox.
    package var postgres = false
    /// Outbox mode's control run: the work route without `outbox: true`, so the handler's
    /// follow-ups go out as it makes them (and `phantom_follow_ups` shows what the outbox prevents).
    package var followUpsWithoutOutbox = false
    /// Random seed, to repeat a run's kill schedule; nil picks one.
    package var seed: UInt64?
    /// Keep the run's databases and logs here instead of a temporary directory.
    package var directory: String?
    /// Longest wait for the consumers to catch up at the end, in seconds.
    package var settleTimeout: Double = 120
    /// Directories to search for plugins first.
    package var pluginDirectories: [String] = []

    /// The defaults.
    package init() {}
}

/// What a soak run found.
package struct SoakReport: Encodable {
    var cycles: Int
    var inbox: Bool
    var outbox: Bool
    var engine: String
    var seed: UInt64
    /// Items the producer started to publish.
    var published: Int
    /// Items whose publishes the transports acknowledged.
    var acknowledged: Int
    /// Items handled on the queue (a `work` effect exists).
    var handled: Int
    /// Acknowledged items missing an effect (work, audit or mail).
    var lost: Int
    /// Effects beyond the first per item and kind.
    var duplicateEffects: Int
    /// Outbox mode: follow-ups sent by a handler attempt that rolled back, and effects of items
    /// whose producer transaction did not commit.
    var phantomFollowUps: Int
    /// Messages left in the transports at the end.
    var stuck: Int
    var kills: [String: Int]
    var seconds: Double
    var lostSample: [String]

    /// The control run (follow-ups without the outbox) is expected to show phantoms, and so a
    /// second `follow` effect for those items.
    var phantomsExpected = false
    package var passed: Bool {
        lost == 0 && stuck == 0 && (phantomsExpected || (phantomFollowUps == 0 && (!inbox || duplicateEffects == 0)))
    }

    enum CodingKeys: String, CodingKey {
        case cycles, inbox, outbox, engine, seed, published, acknowledged, handled, lost, stuck, kills, seconds, passed
        case duplicateEffects = "duplicate_effects"
        case phantomFollowUps = "phantom_follow_ups"
        case lostSample = "lost_sample"
    }

    package func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(cycles, forKey: .cycles)
        try container.encode(inbox, forKey: .inbox)
        try container.encode(outbox, forKey: .outbox)
        try container.encode(engine, forKey: .engine)
        try container.encode(seed, forKey: .seed)
        try container.encode(published, forKey: .published)
        try container.encode(acknowledged, forKey: .acknowledged)
        try container.encode(handled, forKey: .handled)
        try container.encode(lost, forKey: .lost)
        try container.encode(duplicateEffects, forKey: .duplicateEffects)
        try container.encode(phantomFollowUps, forKey: .phantomFollowUps)
        try container.encode(stuck, forKey: .stuck)
        try container.encode(kills, forKey: .kills)
        try container.encode((seconds * 10).rounded() / 10, forKey: .seconds)
        try container.encode(passed, forKey: .passed)
        try container.encode(lostSample, forKey: .lostSample)
    }

    package var summary: String {
        """
        soak: \(cycles) kills (\(kills.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))), \(engine), inbox \(inbox ? "on" : "off"), outbox \(outbox ? "on" : "off"), seed \(seed), \(String(format: "%.1f", seconds)) s
          published \(published), acknowledged \(acknowledged), handled \(handled)
          lost \(lost), duplicate_effects \(duplicateEffects), phantom_follow_ups \(phantomFollowUps), stuck \(stuck)\(lostSample.isEmpty ? "" : "\n  lost, e.g.: \(lostSample.joined(separator: ", "))")
        \(passed ? "PASS" : "FAIL")\(cycles == 0 ? " (no process was killed: --cycles 0 checks a run without crashes only)" : "")
        """
    }
}

/// One soak run: the directory, the processes, the kill schedule and the final count.
package final class SoakRun: @unchecked Sendable {
    // @unchecked: used from the command's task only; the workers' output is behind locks.
    let options: SoakOptions
    let directory: String
    let keepDirectory: Bool
    let executable: String
    var random: SplitMix
    let seed: UInt64

    /// A run as `options` say, in a fresh directory (or the one they name).
    package init(_ options: SoakOptions) throws {
        self.options = options
        seed = options.seed ?? UInt64.random(in: 1...UInt64.max)
        random = SplitMix(seed: seed)
        if let directory = options.directory {
            // An earlier run's databases would be counted again: every item read as a duplicate
            // effect, the old queue's messages as stuck, and a message this run lost hidden.
            let left = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { !$0.hasPrefix(".") }
            guard left.isEmpty else {
                throw SoakError(
                    "--directory \(directory) is not empty (\(left.sorted().prefix(5).joined(separator: ", "))\(left.count > 5 ? ", …" : "")): a soak counts everything in its databases, so an earlier run's would be counted again; name an empty or new directory, or delete this one's contents"
                )
            }
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            self.directory = (directory as NSString).standardizingPath
            keepDirectory = true
        } else {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-soak-\(getpid())").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            keepDirectory = false
        }
        executable = SearchDirectory.currentExecutableDirectory().map { $0 + "/switchyard" } ?? CommandLine.arguments[0]
    }

    deinit {
        if !keepDirectory { try? FileManager.default.removeItem(atPath: directory) }
    }

    var configPath: String { directory + "/soak.yaml" }
    var effectsPath: String { directory + (options.inbox ? "/inbox.db" : "/effects.db") }
    /// Where the run's durable state lives; in PostgreSQL, schemas named after this run.
    lazy var engine: SoakEngine = options.postgres ? .postgres(schemaPrefix: "soak_\(getpid())_\(seed % 100_000)") : .sqlite

    func writeConfig() throws {
        let transports: String
        var inbox = ""
        var outboxes = ""
        switch engine {
        case .sqlite:
            transports = """
                  work: { plugin: queue, config: { path: "\(directory)/work.db", visibility_timeout: 3s } }
                  events: { plugin: topic, config: { path: "\(directory)/events.db", visibility_timeout: 3s } }
                """
            if options.inbox { inbox = ", inbox: { window: 24h, path: \"\(directory)/inbox.db\" }" }
            if options.outbox { outboxes = "outboxes:\n  app: { path: \"\(directory)/app.db\" }\n" }
        case .postgres:
            transports = """
                  work: { plugin: postgres, config: { schema: \(engine.schema("work")), visibility_timeout: 3s } }
                  events: { plugin: postgres-topic, config: { schema: \(engine.schema("events")), visibility_timeout: 3s } }
                """
            inbox = ", inbox: { window: 24h, postgres: { schema: \(engine.schema("tx")) } }"
            if options.outbox { outboxes = "outboxes:\n  app: { postgres: { schema: \(engine.schema("app")) } }\n" }
        }
        let outbox = options.outbox && !options.followUpsWithoutOutbox ? ", outbox: true" : ""
        let followUps = options.outbox ? "\n  SoakFollowUps.*: { transport: work, mode: fire-and-forget\(inbox) }" : ""
        try """
        # Written by switchyard soak.
        transports:
        \(transports)
        \(outboxes)routes:
          SoakWork.*: { transport: work, mode: fire-and-forget, retry: { max_attempts: 10, initial_delay: 20ms, max_delay: 200ms }\(inbox)\(outbox) }
          SoakEvents.*: { transport: events, mode: fire-and-forget\(inbox) }\(followUps)
        """.write(toFile: configPath, atomically: true, encoding: .utf8)
    }

    /// What every worker is told besides its role.
    var modeArguments: [String] {
        var arguments = options.pluginDirectories.flatMap { ["--plugins-dir", $0] }
        if options.outbox { arguments.append("--outbox") }
        if case .postgres(let prefix) = engine { arguments += ["--postgres-schema-prefix", prefix] }
        return arguments
    }

    /// Starts the processes, kills them on schedule, waits for the consumers and counts.
    package func run() async throws -> SoakReport {
        try writeConfig()
        defer { dropSchemas() }
        let started = Date()
        let consumerArguments =
            ["soak-worker", "consumer", "--config", configPath] + modeArguments
            + (options.inbox ? [] : ["--effects-database", effectsPath])
        // Spread the items over the kill schedule (a kill every ~375 ms on average).
        let pace = max(0, Int(Double(options.cycles) * 375_000 / Double(options.messages)))
        let producerLog = WorkerOutput()
        func producerArguments() -> [String] {
            ["soak-worker", "producer", "--config", configPath, "--from", "\(producerLog.nextItem)", "--to", "\(options.messages)", "--pace", "\(pace)"] + modeArguments
        }
        let consumers = try (1...2).map { try Worker(name: "consumer-\($0)", executable: executable, arguments: consumerArguments, logDirectory: directory) }
        for consumer in consumers { try await consumer.waitUntilReady() }
        let producer = try Worker(name: "producer", executable: executable, arguments: producerArguments(), logDirectory: directory, output: producerLog)

        var kills: [String: Int] = [:]
        for _ in 0..<options.cycles {
            try await Task.sleep(for: .milliseconds(Int(150 + random.next() % 450)))
            let candidates = producerLog.done ? consumers : consumers + [producer]
            let victim = candidates[Int(random.next() % UInt64(candidates.count))]
            // The producer's arguments are made after it is gone and its last output read: where
            // it carries on depends on the last item it said it tried.
            try await victim.killAndRestart(arguments: victim === producer ? producerArguments : { consumerArguments })
            kills[victim.role, default: 0] += 1
        }
        // Let the producer finish (starting it again if it exited early), then the consumers.
        while !producerLog.done {
            if !producer.isRunning {
                await producer.waitForOutput()
                if !producerLog.done { try producer.start(arguments: producerArguments()) }
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        let acknowledged = producerLog.acknowledged
        let expectedKinds = ["work", "audit", "mail"] + (options.outbox ? ["follow"] : [])
        var effects = EffectCount()
        var lastProgress = Date()
        var lastCount = -1
        while true {
            effects = (try? countEffects()) ?? EffectCount()
            let missing = acknowledged.filter { seq in expectedKinds.contains { effects.count(kind: $0, seq: seq) == 0 } }
            if missing.isEmpty { break }
            if effects.rows != lastCount { lastCount = effects.rows; lastProgress = Date() }
            if Date().timeIntervalSince(lastProgress) > options.settleTimeout { break }
            try await Task.sleep(for: .milliseconds(250))
        }
        // Every effect is there; now let the queues empty too. A message whose handler ran just
        // before its consumer was killed comes back once its lease runs out (3 s) and is only
        // then acknowledged (the inbox drops the repeat): stopping the consumers before that left
        // it counted as stuck, though nothing was wrong (CI saw "stuck 2" on a loaded machine).
        if missingNone(effects, acknowledged, expectedKinds) {
            let drainedBy = Date().addingTimeInterval(options.settleTimeout)
            while Date() < drainedBy, ((try? stuckMessages(countingLeased: true)) ?? 1) > 0 {
                try await Task.sleep(for: .milliseconds(250))
            }
        }
        // A moment more for duplicates in flight to show up, then stop the consumers cleanly.
        try await Task.sleep(for: .milliseconds(500))
        for consumer in consumers { await consumer.stop() }
        await producer.stop()
        effects = (try? countEffects()) ?? EffectCount()

        let missing = acknowledged.sorted().flatMap { seq in expectedKinds.filter { effects.count(kind: $0, seq: seq) == 0 }.map { (kind: $0, seq: seq) } }
        return SoakReport(
            cycles: options.cycles, inbox: options.inbox, outbox: options.outbox, engine: options.postgres ? "postgres" : "sqlite", seed: seed,
            published: producerLog.tried.count, acknowledged: acknowledged.count,
            handled: effects.distinct(kind: "work"), lost: Set(missing.map(\.seq)).count,
            duplicateEffects: effects.duplicates, phantomFollowUps: options.outbox ? effects.phantoms : 0,
            stuck: try stuckMessages(), kills: kills,
            seconds: Date().timeIntervalSince(started), lostSample: missing.prefix(10).map { "\($0.kind):\($0.seq)" },
            phantomsExpected: options.followUpsWithoutOutbox)
    }

    /// The effects so far, from the inbox's database (or the direct effects file).
    func countEffects() throws -> EffectCount {
        switch engine {
        case .sqlite:
            var count = try EffectCount(path: effectsPath)
            if options.outbox { try count.readSent(sqlitePath: directory + "/app.db") }
            return count
        case .postgres:
            return try EffectCount(postgres: engine, outbox: options.outbox)
        }
    }

    /// Whether every acknowledged item has every effect it should.
    func missingNone(_ effects: EffectCount, _ acknowledged: Set<Int>, _ kinds: [String]) -> Bool {
        acknowledged.allSatisfy { seq in kinds.allSatisfy { effects.count(kind: $0, seq: seq) > 0 } }
    }

    /// Messages still held by the durable transports once every process has stopped, and calls
    /// still waiting in outboxes. With `countingLeased`, messages leased to a consumer count too
    /// (while consumers run: a lease of a killed consumer holds its message until it runs out).
    func stuckMessages(countingLeased: Bool = false) throws -> Int {
        let config = try SwitchyardConfig.load(path: configPath)
        var quiet = Logger(label: "switchyard.soak")
        quiet.logLevel = .error
        let set = try TransportSet.start(config, discovery: PluginDiscovery(commandLine: options.pluginDirectories), logger: quiet)
        defer { set.close() }
        let held = set.transports.values.reduce(0) { total, transport in
            let stats = (try? transport.client.stats()) ?? nil
            return total + Int(stats?.depth ?? 0) + (countingLeased ? Int(stats?.inFlight ?? 0) : 0)
        }
        guard options.outbox else { return held }
        var waiting = 0
        switch engine {
        case .sqlite:
            for file in ["inbox.db", "app.db"] {
                guard let database = try? SQLiteDatabase(path: directory + "/" + file) else { continue }
                _ = try? database.run("SELECT count(*) FROM switchyard_outbox") { row in waiting += Int(row.int(0)) }
            }
        case .postgres:
            let database = try PostgresDatabase(conninfo: "")
            for part in ["tx", "app"] {
                try database.run("SELECT count(*)::bigint FROM \"\(engine.schema(part))\".outbox") { row in waiting += Int(row.int(0)) }
            }
        }
        return held + waiting
    }

    /// Removes the run's PostgreSQL schemas (unless the run keeps its directory).
    func dropSchemas() {
        guard case .postgres = engine, !keepDirectory, let database = try? PostgresDatabase(conninfo: "") else { return }
        for part in ["work", "events", "tx", "app"] {
            try? database.execute("DROP SCHEMA IF EXISTS \"\(engine.schema(part))\" CASCADE")
        }
    }
}

/// Effects rows by (kind, seq).
struct EffectCount {
    private var counts: [String: [Int: Int]] = [:]
    private(set) var rows = 0

    init() {}

    init(path: String) throws {
        guard FileManager.default.fileExists(atPath: path) else { return }
        let database = try SQLiteDatabase(path: path)
        try database.execute("PRAGMA busy_timeout = 10000")
        var tables = Set<String>()
        try database.run("SELECT name FROM sqlite_master WHERE type = 'table'") { row in tables.insert(row.text(0)) }
        guard tables.contains("effects") else { return }
        var effects: [(String, Int, Int)] = []
        try database.run("SELECT kind, seq, attempt FROM effects") { row in effects.append((row.text(0), Int(row.int(1)), Int(row.int(2)))) }
        add(effects)
    }

    /// Reads the PostgreSQL run's effects (and, in outbox mode, the producer's `sent` rows).
    init(postgres engine: SoakEngine, outbox: Bool) throws {
        let database = try PostgresDatabase(conninfo: "")
        var exists = false
        try database.run("SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'effects'", [.text(engine.schema("tx"))]) { _ in exists = true }
        guard exists else { return }
        var effects: [(String, Int, Int)] = []
        try database.run("SELECT kind, seq, attempt FROM \"\(engine.schema("tx"))\".effects") { row in
            effects.append((row.text(0), Int(row.int(1)), Int(row.int(2))))
        }
        add(effects)
        if outbox {
            var sent = Set<Int>()
            try database.run("SELECT seq FROM \"\(engine.schema("app"))\".sent") { row in sent.insert(Int(row.int(0))) }
            self.sent = sent
        }
    }

    /// Items whose producer transaction committed (outbox mode), from the producer's database.
    mutating func readSent(sqlitePath path: String) throws {
        guard FileManager.default.fileExists(atPath: path) else { return }
        let database = try SQLiteDatabase(path: path)
        try database.execute("PRAGMA busy_timeout = 10000")
        var tables = Set<String>()
        try database.run("SELECT name FROM sqlite_master WHERE type = 'table'") { row in tables.insert(row.text(0)) }
        guard tables.contains("sent") else { return }
        var sent = Set<Int>()
        try database.run("SELECT seq FROM sent") { row in sent.insert(Int(row.int(0))) }
        self.sent = sent
    }

    private mutating func add(_ effects: [(kind: String, seq: Int, attempt: Int)]) {
        for effect in effects {
            counts[effect.kind, default: [:]][effect.seq, default: 0] += 1
            rows += 1
            // A follow-up from an attempt that rolled back (every seventh item's first).
            if effect.kind == "follow" && effect.seq % 7 == 0 && effect.attempt == 1 { rolledBackFollowUps += 1 }
        }
    }

    /// Outbox mode: items the producer committed (nil until read).
    private var sent: Set<Int>?
    private var rolledBackFollowUps = 0

    /// Follow-ups of rolled-back handler attempts, plus items with effects whose producer
    /// transaction never committed.
    var phantoms: Int {
        guard let sent else { return rolledBackFollowUps }
        let effectSeqs = Set(counts.values.flatMap(\.keys))
        return rolledBackFollowUps + effectSeqs.subtracting(sent).count
    }

    func count(kind: String, seq: Int) -> Int { counts[kind]?[seq] ?? 0 }
    func distinct(kind: String) -> Int { counts[kind]?.count ?? 0 }
    var duplicates: Int { counts.values.reduce(0) { $0 + $1.values.reduce(0) { $0 + max(0, $1 - 1) } } }
}

/// The lines a worker printed: items tried and acknowledged, readiness, completion.
final class WorkerOutput: Sendable {
    private struct State {
        var tried: Set<Int> = []
        var acknowledged: Set<Int> = []
        var done = false
        var lines: [String] = []
        var partial = ""
    }
    private let state = Guarded(State())

    func append(_ data: Data) {
        state.withLock { state in
            state.partial += String(decoding: data, as: UTF8.self)
            while let newline = state.partial.firstIndex(of: "\n") {
                let line = String(state.partial[..<newline])
                state.partial.removeSubrange(...newline)
                state.lines.append(line)
                let parts = line.split(separator: " ")
                if parts.count == 2, let seq = Int(parts[1]) {
                    if parts[0] == "try" { state.tried.insert(seq) }
                    if parts[0] == "ack" { state.acknowledged.insert(seq) }
                }
                if line == "done" { state.done = true }
            }
        }
    }

    var tried: Set<Int> { state.withLock { $0.tried } }
    var acknowledged: Set<Int> { state.withLock { $0.acknowledged } }
    var done: Bool { state.withLock { $0.done } }
    /// Where a restarted producer carries on: after the last item it tried.
    var nextItem: Int { state.withLock { ($0.tried.max() ?? -1) + 1 } }
    func saw(_ line: String) -> Bool { state.withLock { $0.lines.contains(line) } }
    func forget(_ line: String) { state.withLock { $0.lines.removeAll { $0 == line } } }
}

/// One worker process, started again after each kill; its stderr goes to `<name>.log`.
final class Worker: @unchecked Sendable {
    // @unchecked: driven by the soak's task alone.
    let name: String
    let executable: String
    let output: WorkerOutput
    let log: FileHandle?
    let logPath: String
    private var process: Process?
    /// The current process's stdout, and its handler's state.
    private var stdout: (pipe: Pipe, state: Guarded<OutputState>)?

    /// Whether the stdout handler is reading or recording a chunk (set before it reads), and
    /// whether it must not read any more (the pipe is being drained).
    struct OutputState {
        var reading = false
        var closed = false
    }

    var role: String { name.hasPrefix("consumer") ? "consumer" : name }

    init(name: String, executable: String, arguments: [String], logDirectory: String, output: WorkerOutput = WorkerOutput()) throws {
        self.name = name
        self.executable = executable
        self.output = output
        logPath = "\(logDirectory)/\(name).log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)  // the handle below says if it failed
        log = FileHandle(forWritingAtPath: logPath)
        try start(arguments: arguments)
    }

    var isRunning: Bool { process?.isRunning ?? false }

    func start(arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = log ?? FileHandle.nullDevice
        let output = self.output
        let state = Guarded(OutputState())
        stdout = (pipe, state)
        pipe.fileHandleForReading.readabilityHandler = { handle in
            let open = state.withLock { state -> Bool in
                state.reading = !state.closed
                return state.reading
            }
            guard open else { return }
            defer { state.withLock { $0.reading = false } }
            let data = handle.availableData
            if data.isEmpty { handle.readabilityHandler = nil } else { output.append(data) }
        }
        try process.run()
        self.process = process
    }

    /// SIGKILL, wait for it to be gone and its output read, start it again with the `arguments`
    /// made then (consumers: until ready).
    func killAndRestart(arguments: () -> [String]) async throws {
        if let process, process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            while process.isRunning { try? await Task.sleep(for: .milliseconds(5)) }
        }
        await waitForOutput()
        output.forget("ready")
        try start(arguments: arguments())
        if role == "consumer" { try await waitUntilReady() }
    }

    /// Reads and records everything the exited process left in its stdout. Its exit is noticed
    /// on another thread than its output, and the pipe's handler is not called again once the
    /// writing end is closed, whatever is still in the pipe: a producer killed just after
    /// writing `try N` and publishing item N was once restarted from N — that line never read —
    /// and published N a second time under a new message id, which the inbox rightly let through.
    func waitForOutput() async {
        guard let (pipe, state) = stdout else { return }
        stdout = nil
        state.withLock { $0.closed = true }
        pipe.fileHandleForReading.readabilityHandler = nil
        let deadline = Date().addingTimeInterval(5)
        while state.withLock({ $0.reading }) && Date() < deadline { try? await Task.sleep(for: .milliseconds(1)) }
        // A dead process writes no more: whatever is in the pipe now is the rest.
        let rest = bytesWaiting(in: pipe.fileHandleForReading.fileDescriptor)
        if !rest.isEmpty { output.append(Data(rest)) }
    }

    /// Waits for a consumer to say it is ready. A consumer that exits first could not start,
    /// and the soak fails with the end of its log rather than running on with one consumer short
    /// (a store's schema race once cost every CI run a silent minute here).
    func waitUntilReady(seconds: Double = 60) async throws {
        let deadline = Date().addingTimeInterval(seconds)
        while !output.saw("ready") {
            if !isRunning {
                try await Task.sleep(for: .milliseconds(200))  // its last output may still be on the way
                if output.saw("ready") { return }
                throw SoakError("\(name) exited before it was ready: \(logTail())")
            }
            if Date() >= deadline { throw SoakError("\(name) was not ready within \(Int(seconds)) s: \(logTail())") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// The last lines of the worker's log, for an error.
    private func logTail() -> String {
        guard let data = FileManager.default.contents(atPath: logPath) else { return "(no log at \(logPath))" }
        let lines = String(decoding: data, as: UTF8.self).split(separator: "\n").suffix(5)
        return lines.isEmpty ? "(its log \(logPath) is empty)" : lines.joined(separator: "\n")
    }

    /// SIGTERM (the consumers drain), then SIGKILL after 20 s.
    func stop() async {
        guard let process, process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(20)
        while process.isRunning && Date() < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}

/// Why a soak could not run to its verdict (a worker that would not start).
struct SoakError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
