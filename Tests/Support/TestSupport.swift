import Foundation
import Logging
import SwitchyardABI
import SwitchyardLoader
import Synchronization
import Testing

/// Where `swift build` put the products (the switchyard binary and the plugin .so files): the
/// directory of the test bundle itself.
package enum BuildProducts {
    package static let directory: String = {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent().path
    }()

    package static func path(_ name: String) -> String { directory + "/" + name }
    package static var switchyard: String { path("switchyard") }
    package static var exampleC: String { path("libswitchyard-example-c.so") }
    package static var exampleSwift: String { path("libswitchyard-example-swift.so") }

    /// Every plugin in the build directory, found once by the real loader (the first discovery
    /// loads every file, which takes seconds under a sanitizer).
    private static let catalog = PluginLoader().discover(in: [SearchDirectory(path: directory, source: .executableDirectory)])

    /// The bundled plugin called `name`, loaded by the real loader from the build directory.
    package static func plugin(_ name: String) throws -> LoadedPlugin {
        try #require(catalog.plugin(named: name))
    }
}

/// Paths inside this repository.
package enum Repository {
    package static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    package static let headerDirectory = root + "/SDK/CSwitchyard/include"
    package static let fixtures = root + "/Tests/Fixtures"
}

/// A fresh temporary directory, removed when the value is deinitialised... or at process exit.
package final class TemporaryDirectory: Sendable {
    package let path: String
    package init() throws {
        let template = (NSTemporaryDirectory() as NSString).appendingPathComponent("switchyard-test-XXXXXX")
        var bytes = Array(template.utf8CString)
        guard mkdtemp(&bytes) != nil else { throw POSIXError(.EIO) }
        path = String(decoding: bytes.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    package func file(_ name: String) -> String { path + "/" + name }
}

/// The result of running a program to completion.
package struct ProcessResult {
    package var status: Int32
    package var signaled: Bool
    package var stdout: String
    package var stderr: String
}

/// Runs `executable` with `arguments`, capturing its output.
package func run(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) throws -> ProcessResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if let environment { process.environment = environment }
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    // Drain both pipes at once: a child that fills one pipe while we block reading the other
    // would otherwise never exit.
    let stderrData = Guarded(Data())
    let stderrDone = DispatchSemaphore(value: 0)
    let errHandle = err.fileHandleForReading
    DispatchQueue.global().async {
        let data = errHandle.readDataToEndOfFile()
        stderrData.withLock { $0 = data }
        stderrDone.signal()
    }
    let stdoutData = out.fileHandleForReading.readDataToEndOfFile()
    stderrDone.wait()
    process.waitUntilExit()
    return ProcessResult(
        status: process.terminationStatus, signaled: process.terminationReason == .uncaughtSignal,
        stdout: String(decoding: stdoutData, as: UTF8.self), stderr: String(decoding: stderrData.withLock { $0 }, as: UTF8.self))
}

/// Makes sure a server this test process started does not outlive it: a detached watchdog
/// SIGKILLs `pid` once this process is gone, and ends by itself when the server stops first.
///
/// A test process that crashes never runs the deinit that stops its servers, and the servers
/// would keep running (and keep their ports and shared memory) until the machine restarts.
/// `PR_SET_PDEATHSIG` is not enough: it fires when the *thread* that started the child ends, and
/// pool threads come and go. The watchdog checks once a second, so a crashed run's servers are
/// gone a second later.
package func killWhenTestProcessEnds(_ pid: pid_t) {
    // The outer shell backgrounds the loop and exits at once (reaped here), so the loop belongs to
    // init and never lingers as a zombie child of this process.
    // A crashed test process stays a zombie until swift test reaps it, and kill -0 succeeds on a
    // zombie: swift test waited for the output pipe the server held, the server for the test
    // process to end, and the run hung for good. So a zombie counts as gone.
    let loop =
        #"( alive() { kill -0 "$1" 2>/dev/null && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]; }; while alive "$1" && kill -0 "$2" 2>/dev/null; do sleep 1; done; alive "$1" || kill -9 "$2" 2>/dev/null ) >/dev/null 2>&1 &"#
    _ = spawnAndWait(["/bin/sh", "-c", loop, "sh", "\(getpid())", "\(pid)"], output: "/dev/null")
}

/// Runs `argv` with stdin from /dev/null and stdout and stderr into `output`, with no other
/// descriptor of this process; its exit status (-1 when it did not start or was killed).
///
/// Spawned directly, not with Foundation's Process: Process learns that its child ended when a
/// socket it shares with the child closes, so a daemon the child leaves running (pg_ctl's server,
/// a watchdog) would keep `waitUntilExit` from ever returning, and an inherited pipe or socket of
/// another test's child would keep that test waiting.
package func spawnAndWait(_ argv: [String], output: String) -> Int32 {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    // (glibc ≥ 2.34 has posix_spawn_file_actions_addclosefrom_np; its header hides it from Swift.)
    if let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") {
        typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
        _ = unsafeBitCast(symbol, to: CloseFrom.self)(&actions, 3)
    }
    var cArguments = argv.map { strdup($0) } + [nil]
    defer { for argument in cArguments { free(argument) } }
    var pid: pid_t = 0
    guard posix_spawn(&pid, argv[0], &actions, nil, &cArguments, environ) == 0 else { return -1 }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return (status & 0x7f) == 0 ? (status >> 8) & 0xff : -1
}

/// The C compiler the tests build fixtures with: $CC, else the clang that ships with Swift, else cc.
package enum CCompiler {
    package static let c: String = find(environment: "CC", candidates: ["clang", "cc", "gcc"])
    package static let cxx: String = find(environment: "CXX", candidates: ["clang++", "c++", "g++"])

    private static func find(environment: String, candidates: [String]) -> String {
        if let chosen = ProcessInfo.processInfo.environment[environment], !chosen.isEmpty { return chosen }
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":")
        for name in candidates {
            for dir in path where FileManager.default.isExecutableFile(atPath: "\(dir)/\(name)") { return "\(dir)/\(name)" }
        }
        return candidates.last!
    }

    /// Compiles C `source` into `output` with `flags`; fails the test with the compiler's output.
    /// The compiler runs off the cooperative pool (see ``offPool(_:)``).
    @discardableResult
    package static func compile(_ source: String, to output: String, flags: [String], compiler: String = c) async throws -> ProcessResult {
        let result = try await run(compiler, flags + ["-I", Repository.headerDirectory, source, "-o", output])
        if result.status != 0 {
            Issue.record("\(compiler) failed for \(output): \(result.stderr)")
        }
        return result
    }

    /// Builds the fixture plugin with `defines` into `directory/name`.
    @discardableResult
    package static func fixture(_ name: String, in directory: String, defines: [String] = []) async throws -> String {
        let output = directory + "/" + name
        try await compile(
            Repository.fixtures + "/fixture_plugin.c", to: output,
            flags: ["-std=c99", "-shared", "-fPIC", "-w"] + defines.map { "-D" + $0 })
        return output
    }
}

/// Runs blocking work (a child process, a conformance run) on a thread of its own and awaits it,
/// so the test's task gives its cooperative-pool thread back while it waits. Tests run in
/// parallel on a pool as wide as the machine (2 threads here); a test that blocks a pool thread
/// for seconds starves every async test, and the runtime's own tasks with them.
///
/// The work runs as part of the calling task (on a task executor that gives each job a new
/// thread), not on a bare thread: an `#expect` inside it is still recorded against the test
/// that ran it. (On a bare thread Swift Testing cannot tell which test it belongs to, and its
/// failure shows as «unknown» — seen under ThreadSanitizer, where such a failure could not be
/// traced to its test, nor that test run again.)
package func offPool<R: Sendable>(_ work: @escaping @Sendable () throws -> R) async throws -> R {
    try await withTaskExecutorPreference(ThreadPerJobExecutor.shared) { try work() }
}

/// A task executor that runs every job on a new thread (see ``offPool(_:)``).
private final class ThreadPerJobExecutor: TaskExecutor {
    static let shared = ThreadPerJobExecutor()

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        Thread { job.runSynchronously(on: self.asUnownedTaskExecutor()) }.start()
    }
}

/// ``run(_:_:environment:)`` without holding a pool thread while the program runs.
package func run(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) async throws -> ProcessResult {
    try await offPool { try run(executable, arguments, environment: environment) }
}

/// Waits until `condition` holds, polling, for at most `seconds`. The default is generous: it
/// returns as soon as the condition holds, and only a failing test waits it out, while a machine
/// loaded by other work can delay a passing one by many seconds. The first test phase runs
/// nearly 400 tests side by side on two cores, beside CI's background release build: there 50
/// fire-and-forget calls through the in-memory queue took 9.6 s from the first publish to the last
/// run with two busy loops beside them, and in two CI runs the last of such a burst had not run
/// after the old default of 15 s (a test's diagnosis now says where such a call waits:
/// ``SwitchyardActorSystem/hostingDiagnosis``).
package func eventually(_ seconds: Double = 60, _ condition: () -> Bool) async -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    // From 1 ms, doubling to 20 ms: a condition met at once is seen at once, and a hundred tests
    // waiting side by side do not flood the two-thread cooperative pool with wakeups every 2 ms
    // (the pool also runs the code under test: admin requests, replies, timers).
    var pause = 1
    while Date() < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(pause))
        pause = min(pause * 2, 20)
    }
    return condition()
}

/// A swift-log handler that keeps every line, for tests that check what was logged.
package final class CapturedLog: @unchecked Sendable {
    // @unchecked: `lines` is guarded by `lock`.
    private let lock = NSLock()
    private var lines: [(level: Logger.Level, message: String, metadata: Logger.Metadata)] = []

    /// An empty log.
    package init() {}

    /// A logger whose lines land here.
    package func logger(_ label: String = "test") -> Logger {
        Logger(label: label) { _ in Handler(log: self) }
    }

    /// Every line so far, as "level message key=value…".
    package var all: [String] {
        lock.withLock {
            lines.map { line in
                "\(line.level) \(line.message) " + line.metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            }
        }
    }

    fileprivate func append(_ level: Logger.Level, _ message: String, _ metadata: Logger.Metadata) {
        lock.withLock { lines.append((level, message, metadata)) }
    }

    private struct Handler: LogHandler {
        let log: CapturedLog
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            log.append(event.level, event.message.description, metadata.merging(event.metadata ?? [:]) { $1 })
        }
    }
}

/// Polls `condition` for up to `seconds`, blocking this (non-pool) thread.
package func waitUntil(_ seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(20_000)
    }
    return condition()
}

extension Pipe {
    /// Hands each chunk read from this pipe to `chunk` as it arrives, until end of file (the child
    /// exited): then the readability handler is removed, so Dispatch never keeps watching a
    /// descriptor that gets closed and reused. A handler left in place crashed a test process in
    /// libdispatch's event loop (`_dispatch_event_loop_drain`, a bad pointer) after its child ended.
    /// Once the child exited, ``PipeFollower/finish()`` hands over what the handler will not.
    @discardableResult
    package func follow(_ chunk: @escaping @Sendable (String) -> Void) -> PipeFollower {
        let follower = PipeFollower(self, chunk)
        fileHandleForReading.readabilityHandler = { handle in
            guard follower.startReading() else { return }
            defer { follower.doneReading() }
            let data = handle.availableData
            guard !data.isEmpty else {
                handle.readabilityHandler = nil
                return
            }
            chunk(String(decoding: data, as: UTF8.self))
        }
        return follower
    }
}

/// What ``Foundation/Pipe/follow(_:)`` started. The readability handler is not called again once
/// the pipe's writing end is closed, whatever is still in the pipe: a child's last output (its
/// final log line, a backtrace it printed dying) can stay unread unless `finish()` reads it.
package final class PipeFollower: @unchecked Sendable {
    // @unchecked: the pipe is only read from here once the handler is stopped; the rest is behind
    // the mutex.
    private let pipe: Pipe
    private let chunk: @Sendable (String) -> Void
    private let state = Guarded((reading: false, finished: false))

    fileprivate init(_ pipe: Pipe, _ chunk: @escaping @Sendable (String) -> Void) {
        self.pipe = pipe
        self.chunk = chunk
    }

    fileprivate func startReading() -> Bool {
        state.withLock { state in
            state.reading = !state.finished
            return state.reading
        }
    }

    fileprivate func doneReading() { state.withLock { $0.reading = false } }

    /// After the child exited: stops the handler, waits for a chunk it is handing over, and hands
    /// `chunk` the rest of the pipe.
    package func finish() {
        state.withLock { $0.finished = true }
        pipe.fileHandleForReading.readabilityHandler = nil
        _ = waitUntil(5) { !state.withLock { $0.reading } }
        let rest = bytesWaiting(in: pipe.fileHandleForReading.fileDescriptor)
        if !rest.isEmpty { chunk(String(decoding: rest, as: UTF8.self)) }
    }
}

/// Lines read so far, shared with a pipe's readability handler.
package final class LineBuffer: Sendable {
    private let state = Guarded((lines: [String](), partial: ""))
    /// No lines yet.
    package init() {}
    package func append(_ new: [String]) { state.withLock { $0.lines += new } }
    /// Adds text read from a stream, where a chunk may end in the middle of a line: the lines it
    /// completes now, an unfinished last line once its newline comes (or ``flush()``).
    package func feed(_ text: String) {
        state.withLock { state in
            var pieces = (state.partial + text).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            state.partial = pieces.removeLast()
            state.lines += pieces.filter { !$0.isEmpty }
        }
    }
    /// Adds the unfinished last line fed, if any (the stream ended without a newline).
    package func flush() {
        state.withLock { state in
            if !state.partial.isEmpty { state.lines.append(state.partial) }
            state.partial = ""
        }
    }
    package var all: [String] { state.withLock { $0.lines } }
}

/// Runs `publish` until it succeeds (a transport whose server is restarting refuses for a while),
/// for at most `seconds`; whether it succeeded.
package func publishUntilAcknowledged(seconds: Double = 30, _ publish: () throws -> Void) async -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        do {
            try publish()
            return true
        } catch {
            try? await Task.sleep(for: .milliseconds(100))
        }
    }
    return false
}
