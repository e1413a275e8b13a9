import Foundation
import Logging
import SwitchyardConfig
import SwitchyardRuntime

#if canImport(Glibc)
    import Glibc
#endif

/// `durable-rr`: typed request-reply between two processes through the durable (SQLite) queue,
/// as an application that has outgrown one process runs it: this process calls
/// `BenchCalls.add`, a child process (`switchyard bench-serve durable-rr`) serves it, both on one
/// database file. One caller's p50/p99, and calls/s with 64 callers, against the fsync floor of
/// the same disk measured in the same run.
///
/// A call takes two synced commits: the call's publish, and the server's reply together with its
/// acknowledgement of the call (`publish_and_settle`). Three more commit without an fsync: the
/// leases (one per side) and the caller's acknowledgement of the reply (after the caller already
/// has its answer; a lost one only means the reply comes again and is dropped). Concurrent
/// callers share commits (group commit).
public struct DurableRequestReplySuite: BenchSuite {
    public let name = "durable-rr"
    public let summary = "typed request-reply across two processes through the SQLite queue vs the disk's fsync floor"

    /// The synced commits one call needs (see the type's note).
    static let syncedCommitsPerCall = 2.0

    public init() {}

    public func run(_ context: BenchContext) throws -> [BenchResult] {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-durable-rr-\(getpid())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        context.progress("durable-rr: fsync floor")
        let floor = try fsyncFloorMillis(in: directory, samples: context.quick ? 50 : 200)
        let database = directory + "/rr.db"

        context.progress("durable-rr: starting the serving process")
        let server = try startServer(database: database)
        defer {
            server.process.terminate()
            server.process.waitUntilExit()
        }
        let result = try blocking { () async throws -> (p50: Double, p99: Double, rate: Double) in
            var logger = Logger(label: "bench")
            logger.logLevel = .error
            let system = try SwitchyardActorSystem(
                config: try SwitchyardConfig.parse(yaml: Self.config(database), baseDirectory: "/"),
                pluginDirectories: context.pluginDirectories, logger: logger)
            let calls = try $BenchCalls.resolve(id: "bench", using: system)
            for i in 0..<20 { _ = try await calls.add(i, 1) }  // warm-up: both sides leased and running
            context.progress("durable-rr: one caller")
            var latencies: [Double] = []
            for i in 0..<(context.quick ? 100 : 400) {
                let start = Measure.now()
                _ = try await calls.add(i, 1)
                latencies.append(Double(Measure.now() - start) / 1e6)
            }
            latencies.sort()
            context.progress("durable-rr: 64 callers")
            let callers = 64
            let each = context.quick ? 20 : 60
            let start = Measure.now()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for caller in 0..<callers {
                    group.addTask { for i in 0..<each { _ = try await calls.add(caller, i) } }
                }
                try await group.waitForAll()
            }
            let rate = Double(callers * each) / (Double(Measure.now() - start) / 1e9)
            await system.shutdown()
            return (percentile(latencies, 0.5), percentile(latencies, 0.99), rate)
        }
        let base = ("fsync_floor_ms", floor)
        return [
            BenchResult(suite: name, metric: "fsync_floor_ms", value: floor, unit: "ms"),
            BenchResult(suite: name, metric: "call_commit_floor_ms", value: floor * Self.syncedCommitsPerCall, unit: "ms", baseline: base),
            BenchResult(
                suite: name, metric: "request_reply_p50_ms", value: result.p50, unit: "ms",
                baseline: ("call_commit_floor_ms", floor * Self.syncedCommitsPerCall)),
            BenchResult(suite: name, metric: "request_reply_p99_ms", value: result.p99, unit: "ms"),
            BenchResult(suite: name, metric: "request_reply_calls_per_s", value: result.rate, unit: "calls/s"),
        ]
    }

    /// The config both processes use: every `BenchCalls` call through one durable queue file.
    static func config(_ database: String) -> String {
        """
        transports:
          durable: { plugin: queue, config: { path: "\(database)", max_in_flight: 256 } }
        routes:
          BenchCalls.*: { transport: durable, concurrency: 64 }
        """
    }

    /// Median milliseconds of one 4 KiB write plus `fdatasync` in `directory`: what one commit
    /// costs at least on this disk.
    func fsyncFloorMillis(in directory: String, samples: Int) throws -> Double {
        let path = directory + "/fsync-floor"
        let fd = open(path, O_CREAT | O_WRONLY, 0o600)
        guard fd >= 0 else { throw BenchUnavailable("cannot create \(path): errno \(errno)") }
        defer { close(fd); unlink(path) }
        let page = [UInt8](repeating: 0x5A, count: 4096)
        var times: [Double] = []
        for index in 0..<samples {
            let start = Measure.now()
            _ = page.withUnsafeBytes { pwrite(fd, $0.baseAddress, 4096, off_t((index % 16) * 4096)) }
            fdatasync(fd)
            times.append(Double(Measure.now() - start) / 1e6)
        }
        return Measure.median(times)
    }

    /// Starts `switchyard bench-serve durable-rr DATABASE` and waits for its "ready" line.
    private func startServer(database: String) throws -> (process: Process, output: Pipe) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        process.arguments = ["bench-serve", "durable-rr", database]
        let output = Pipe()
        let input = Pipe()
        process.standardOutput = output
        process.standardInput = input  // the server exits when this process goes away
        try process.run()
        var seen = Data()
        while !String(decoding: seen, as: UTF8.self).contains("ready") {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty { throw BenchFailure("the serving process exited before it was ready") }
            seen.append(chunk)
        }
        return (process, output)
    }

    /// The serving side, run by `switchyard bench-serve durable-rr DATABASE`: hosts
    /// `BenchCallsService` as "bench" on the durable queue, prints "ready", and serves until its
    /// standard input closes (the benchmark ended or died).
    public static func serve(database: String, pluginDirectories: [String]) throws {
        let system = try blocking { () async throws -> SwitchyardActorSystem in
            var logger = Logger(label: "bench-serve")
            logger.logLevel = .error
            let system = try SwitchyardActorSystem(
                config: try SwitchyardConfig.parse(yaml: config(database), baseDirectory: "/"),
                pluginDirectories: pluginDirectories, logger: logger)
            try system.host("bench", as: $BenchCalls.self) { BenchCallsService(actorSystem: $0, received: BenchCallsService.Counter()) }
            return system
        }
        FileHandle.standardOutput.write(Data("ready\n".utf8))
        // Block this (main) thread, not one of the few threads the calls are served on.
        _ = FileHandle.standardInput.readDataToEndOfFile()
        try blocking { await system.shutdown() }
    }
}
