import Foundation
import Logging
import SwitchyardConfig
import SwitchyardRuntime

/// One hot path run a fixed number of times, for counting the instructions it costs (see
/// ``InstructionsSuite``). The `switchyard-hot-path` program runs one in a process of its own.
public enum HotPath: String, CaseIterable, Sendable {
    /// The bare producer/consumer hand-off `memory-queue` compares against.
    case bareHandOff = "bare-hand-off"
    /// Publish in batches of 256 → deliver in batches → acknowledge in batches, the queue plugin.
    case queueBatched = "queue-batched"
    /// One publish call per message → deliver → acknowledge, the queue plugin.
    case queueSingle = "queue-single"
    /// A typed fire-and-forget call through the queue plugin, handler run.
    case typedFireAndForget = "typed-fire-and-forget"
    /// A typed request-reply call through the queue plugin, one caller.
    case typedRequestReply = "typed-request-reply"
    /// The caller's share of a typed fire-and-forget call: published to the queue plugin, which
    /// keeps it (nobody hosts the actor).
    case typedSendOnly = "typed-send-only"
    /// A typed call through a `$P.resolve` stub on a direct route: in process, nothing encoded.
    case typedDirectStub = "typed-direct-stub"
    /// The raw SQLite loop `durable-queue` compares against: 100 inserts per transaction.
    case rawSQLiteBatched = "raw-sqlite-batched"
    /// `publish_batch` of 100 messages into the durable (SQLite) queue plugin: one commit each.
    case durableBatched = "durable-batched"
    /// 64 tasks each publishing one message at a time into the durable queue plugin through
    /// `publish_async` (ABI 1.7), awaiting each commit: group commit as an application's calls make it.
    case durableGroupCommit = "durable-group-commit"

    /// What one unit of the path is.
    var unit: String {
        switch self {
        case .bareHandOff, .queueBatched, .queueSingle, .rawSQLiteBatched, .durableBatched, .durableGroupCommit: "msg"
        case .typedFireAndForget, .typedRequestReply, .typedDirectStub, .typedSendOnly: "call"
        }
    }

    /// How many units the suite runs under the counter (the difference between two counts is
    /// what is reported: start-up and tear-down cancel out). Typed calls cost ten times more.
    var counts: (Int, Int) {
        switch self {
        case .bareHandOff, .queueBatched, .queueSingle: (25_600, 51_200)
        case .typedFireAndForget, .typedRequestReply, .typedDirectStub, .typedSendOnly: (2_000, 4_000)
        case .rawSQLiteBatched, .durableBatched, .durableGroupCommit: (5_000, 10_000)
        }
    }

    /// Runs the path `count` times, plugins from `pluginDirectories`.
    public func run(count: Int, pluginDirectories: [String]) throws {
        let context = BenchContext(quick: true, pluginDirectories: pluginDirectories, progress: { _ in })
        let queue = MemoryQueueSuite()
        switch self {
        case .bareHandOff:
            _ = queue.handOffRate(count)
        case .queueBatched:
            _ = try queue.pluginRate(BenchPlugins(context), count: count, consumers: 1, batch: 256)
        case .queueSingle:
            _ = try queue.pluginRate(BenchPlugins(context), count: count, consumers: 1, batch: 1)
        case .typedDirectStub:
            try blocking { try await directStubCalls(count: count) }
        case .typedFireAndForget, .typedRequestReply, .typedSendOnly:
            try blocking { try await typedCalls(count: count, pluginDirectories: pluginDirectories) }
        case .rawSQLiteBatched, .durableBatched, .durableGroupCommit:
            let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-hot-path-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: scratch) }
            let durable = DurableQueueSuite()
            let path = scratch.appendingPathComponent("queue.db").path
            if self == .rawSQLiteBatched {
                _ = try durable.rawSQLiteBatched(path: path, count: count)
            } else if self == .durableGroupCommit {
                _ = try durable.pluginTaskRate(BenchPlugins(context), path: path, count: count, publishers: 64)
            } else {
                _ = try durable.batchedRate(BenchPlugins(context), path: path, count: count)
            }
        }
    }

    private func directStubCalls(count: Int) async throws {
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        let config = try SwitchyardConfig.parse(yaml: "routes:\n  BenchCalls.*: { transport: direct }\n", baseDirectory: "/")
        let system = try SwitchyardActorSystem(config: config, logger: logger)
        try system.host("bench", as: $BenchCalls.self) { BenchCallsService(actorSystem: $0, received: BenchCallsService.Counter()) }
        let calls = try $BenchCalls.resolve(id: "bench", using: system)
        for i in 0..<count { _ = try await calls.add(i, 1) }
        await system.shutdown()
    }

    private func typedCalls(count: Int, pluginDirectories: [String]) async throws {
        // Under callgrind the runtime's clock sees every publish take ~50x its native time; this
        // keeps publishes inline, where a native run keeps them.
        CallCost.keepEveryCallInline()
        // And workers that have nothing to do suspend at once: serialised by valgrind, a
        // spinning worker's rounds never overlap the work it waits for (see DeliveryQueue).
        DeliveryQueue.keepWorkersFromSpinning()
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        let config = try SwitchyardConfig.parse(yaml: TypedCallSuite.queueYAML, baseDirectory: "/")
        let system = try SwitchyardActorSystem(config: config, pluginDirectories: pluginDirectories, logger: logger)
        let received = BenchCallsService.Counter()
        if self == .typedSendOnly {
            let calls = try $BenchCalls.resolve(id: "bench", using: system)
            for i in 0..<count { try await calls.note(i) }
            await system.shutdown()
            return
        }
        try system.host("bench", as: $BenchCalls.self) { BenchCallsService(actorSystem: $0, received: received) }
        let calls = try $BenchCalls.resolve(id: "bench", using: system)
        if self == .typedFireAndForget {
            for i in 0..<count { try await calls.note(i) }
            while received.value.load(ordering: .relaxed) < count { try await Task.sleep(for: .microseconds(200)) }
        } else {
            for i in 0..<count { _ = try await calls.add(i, 1) }
        }
        await system.shutdown()
    }
}

/// `instructions`: machine instructions per message and per call on the hot paths, counted by
/// `valgrind --tool=callgrind` — the same on every run however loaded the machine is, so it
/// decides between designs where timings cannot. Each path runs in a child process at two counts
/// and the difference is divided by the difference in count, so start-up cancels out; the raw
/// queue paths are set against the bare hand-off, the typed calls through the queue against the
/// raw queue's one-message-at-a-time path they ride on; a direct call through a stub stands on
/// its own. Needs valgrind (`apt-get install valgrind`).
struct InstructionsSuite: BenchSuite {
    let name = "instructions"
    let summary = "instructions per message and per call on the hot paths (callgrind; repeatable on a noisy machine)"
    // An instrument for comparing designs, run when named: it takes a minute and a half under
    // valgrind, more than the rest of a `--quick` run together.
    let runsByDefault = false

    func run(_ context: BenchContext) throws -> [BenchResult] {
        guard let valgrind = Self.executable("valgrind") else {
            throw BenchUnavailable("valgrind is not installed (apt-get install valgrind)")
        }
        // The paths run in `switchyard-hot-path` (built next to `switchyard`), from a copy without
        // debug information: valgrind 3.19 gives up on the DWARF 5 that clang writes for the
        // package's C targets. Symbols stay, for callgrind_annotate.
        guard let objcopy = Self.executable("objcopy") else {
            throw BenchUnavailable("objcopy is not installed (apt-get install binutils)")
        }
        let directory = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
        let program = directory.appendingPathComponent("switchyard-hot-path")
        guard FileManager.default.isExecutableFile(atPath: program.path) else {
            throw BenchUnavailable("\(program.path) is missing: it is built with the package (swift build -c release) and not installed")
        }
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-instructions-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let executable = scratch.appendingPathComponent("switchyard-hot-path").path
        try Self.runQuietly(objcopy, ["--strip-debug", program.path, executable])
        let pluginDirectory = context.pluginDirectories.first ?? directory.path
        var perUnit: [HotPath: Double] = [:]
        for path in HotPath.allCases {
            context.progress("instructions: \(path.rawValue) ×\(path.counts.0) and ×\(path.counts.1) under callgrind")
            let low = try Self.instructions(valgrind: valgrind, executable: executable, plugins: pluginDirectory, path: path, count: path.counts.0)
            let high = try Self.instructions(valgrind: valgrind, executable: executable, plugins: pluginDirectory, path: path, count: path.counts.1)
            perUnit[path] = Double(high - low) / Double(path.counts.1 - path.counts.0)
        }
        func row(_ path: HotPath, against baseline: HotPath? = nil) -> BenchResult {
            let metric = { (path: HotPath) in path.rawValue.replacingOccurrences(of: "-", with: "_") + "_instructions_per_" + path.unit }
            return BenchResult(
                suite: name, metric: metric(path), value: perUnit[path]!, unit: "instr",
                baseline: baseline.map { (metric($0), perUnit[$0]!) })
        }
        return [
            row(.bareHandOff), row(.queueBatched, against: .bareHandOff), row(.queueSingle, against: .bareHandOff),
            row(.typedFireAndForget, against: .queueSingle), row(.typedRequestReply, against: .queueSingle),
            row(.typedSendOnly, against: .typedFireAndForget), row(.typedDirectStub),
            row(.rawSQLiteBatched), row(.durableBatched, against: .rawSQLiteBatched),
            row(.durableGroupCommit, against: .rawSQLiteBatched),
        ]
    }

    /// Instructions callgrind counted in a child running `path` `count` times.
    private static func instructions(valgrind: String, executable: String, plugins: String, path: HotPath, count: Int) throws -> UInt64 {
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-callgrind-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: output) }
        // A fixed hash seed: with the per-process random one, dictionary probes make the counts
        // differ by a few hundred instructions from run to run.
        let text = try runQuietly(
            valgrind, ["--tool=callgrind", "--callgrind-out-file=\(output.path)", executable, path.rawValue, String(count), plugins],
            environment: ["SWIFT_DETERMINISTIC_HASHING": "1"])
        // callgrind ends with "==PID== Collected : 123456789".
        guard let line = text.split(separator: "\n").last(where: { $0.contains("Collected :") }),
            let value = line.split(separator: ":").last.flatMap({ UInt64($0.trimmingCharacters(in: .whitespaces)) })
        else {
            throw BenchFailure("callgrind on \(path.rawValue) counted nothing: \(text.suffix(600))")
        }
        return value
    }

    /// Runs `tool` with `arguments`, its output discarded, and returns what it wrote to standard
    /// error; throws with that text unless it succeeds.
    @discardableResult
    private static func runQuietly(_ tool: String, _ arguments: [String], environment: [String: String] = [:]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new } }
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw BenchFailure("\(tool) \(arguments.joined(separator: " ")) failed (exit \(process.terminationStatus)): \(text.suffix(600))")
        }
        return text
    }

    /// The full path of `name` on `PATH`, if it is there.
    private static func executable(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        return path.split(separator: ":").map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }
}
