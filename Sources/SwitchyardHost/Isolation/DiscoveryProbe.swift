import Foundation
import Logging
import SwitchyardABI
import SwitchyardLoader

/// Loads the plugin files of a search path in a child process before this process does, so that
/// a file whose initialisers or entry function crash (or hang) is refused with the reason instead
/// of taking this process down.
///
/// Discovery has to run a plugin's code to learn its name: `dlopen` runs its initialisers and the
/// entry returns its descriptor. Without a probe, one bad file anywhere in the search path kills
/// every host that searches it, `isolation: process` or not. The runtime probes when a transport
/// is configured with `isolation: process`, or `plugins.probe: true`.
///
/// Protocol: `switchyard plugin-host --probe [--exclude FILE]... [--pin NAME=SHA256]...
/// [--require-pins] [--lenient-permissions] -- DIRECTORY...` loads every candidate file the way
/// ``PluginLoader/discover(in:excluding:willLoad:)`` does, writing `loading PATH` before each
/// and `done` at the end. If it dies or stops answering, the last `loading` line names the file;
/// that file is excluded and the probe runs again for the rest.
public enum DiscoveryProbe {
    /// The files in `directories` that crashed or hung a probe process, as rejections of kind
    /// ``Rejection/Kind/crashedWhileLoading``. Empty when every file loaded (or was refused for
    /// an ordinary reason) in the probe.
    ///
    /// The probe is `options`' plugin host executable; a file hangs it when loading it takes
    /// longer than `options`' call timeout (at least a second). Throws `.config` when no
    /// executable is found, or when the probe cannot run or ends before loading any file (an
    /// older `switchyard` without `--probe`, a wrapper script): the files are then not loaded
    /// unprobed, since whoever asked for the probe relies on it. With `unprobedIfFailing` (tools
    /// that list plugins: better an unprobed list than none) it logs why instead, and returns the
    /// files found so far, which the caller's discovery then leaves out.
    public static func crashingFiles(
        in directories: [SearchDirectory], trust: TrustPolicy, options: ProcessIsolation, logger: Logger, unprobedIfFailing: Bool = false
    ) throws(TransportError) -> [Rejection] {
        let executable = try options.resolveExecutable(pluginPath: (directories.first?.path ?? ".") + "/probe")
        let timeoutNanos = loadTimeoutNanos(options)
        var rejected: [Rejection] = []
        // The probe itself failed: an error, or (unprobedIfFailing) a warning and what it found.
        func probeFailed(_ what: String) throws(TransportError) -> [Rejection] {
            let failure = cannotProbe(executable, what)
            guard unprobedIfFailing else { throw failure }
            logger.warning("plugins load unprobed", metadata: ["reason": "\(failure.message)"])
            return rejected
        }
        // Each round either finishes or excludes one more file; a directory cannot hold more
        // candidates than this without the probe being pointless anyway.
        for _ in 0..<256 {
            let round: Round
            do {
                round = try run(
                    executable: executable, directories: directories, trust: trust,
                    excluding: rejected.map(\.path), timeoutNanos: timeoutNanos)
            } catch {
                return try probeFailed("could not run (\(error))")
            }
            if round.finished { return rejected }
            guard let culprit = round.lastLoading, !rejected.contains(where: { $0.path == culprit }) else {
                return try probeFailed("ended before loading any file (\(round.ending))")
            }
            let rejection = Rejection(
                path: culprit, kind: .crashedWhileLoading,
                reason: "loading it \(round.ending); it is not loaded here (check it with 'switchyard plugins verify')")
            logger.error("plugin file refused", metadata: ["path": "\(culprit)", "reason": "\(rejection.reason)"])
            rejected.append(rejection)
        }
        return rejected
    }

    /// Why discovery stops when the probe itself fails, and what to do.
    static func cannotProbe(_ executable: String, _ what: String) -> TransportError {
        TransportError(
            .config,
            "the plugin discovery probe '\(executable)' \(what). It loads each plugin file in a child process first, so that one that "
                + "crashes or hangs is refused instead of taking this process down, and no plugin is loaded without it: make it this "
                + "build's 'switchyard' (isolation.host, or SWITCHYARD_PLUGIN_HOST), or set plugins.probe: false to load plugins in "
                + "this process unprobed")
    }

    /// How long the probe process may take to start, before it reports the first file.
    static let startupGraceNanos: Int64 = 15_000_000_000

    /// How long loading one file may take before it counts as hung: `options`' call timeout, at
    /// least a second. `switchyard plugins verify` gives up after the same time.
    public static func loadTimeoutNanos(_ options: ProcessIsolation = ProcessIsolation()) -> Int64 {
        max(options.callTimeoutNanos, 1_000_000_000)
    }

    /// Plugin discovery behind a probe: ``crashingFiles(in:trust:options:logger:)``, then
    /// `loader`'s discovery of the files the probe survived. The probe's refusals come first among
    /// the catalog's.
    public static func discover(
        in directories: [SearchDirectory], loader: PluginLoader, options: ProcessIsolation,
        logger: Logger, unprobedIfFailing: Bool = false
    ) throws(TransportError) -> PluginCatalog {
        let crashed = try crashingFiles(in: directories, trust: loader.trust, options: options, logger: logger, unprobedIfFailing: unprobedIfFailing)
        var catalog = loader.discover(in: directories, excluding: Set(crashed.map(\.path)))
        catalog.rejected = crashed + catalog.rejected
        return catalog
    }

    /// The child's side: loads the files as discovery would, reporting each before loading it.
    /// Returns the process exit status.
    public static func serve(directories: [String], excluding: [String], trust: TrustPolicy) -> Int32 {
        let loader = PluginLoader(trust: trust)
        _ = loader.discover(
            in: directories.map { SearchDirectory(path: $0, source: .commandLine) },
            excluding: Set(excluding), willLoad: { emit("loading \($0)") })
        emit("done")
        return 0
    }

    /// The arguments that make `switchyard plugin-host` a probe for `directories` under `trust`.
    static func arguments(directories: [SearchDirectory], trust: TrustPolicy, excluding: [String]) -> [String] {
        var arguments = ["plugin-host", "--probe"]
        for file in excluding { arguments += ["--exclude", file] }
        for (name, hash) in trust.pins.sorted(by: { $0.key < $1.key }) { arguments += ["--pin", "\(name)=\(hash)"] }
        if trust.requirePins { arguments.append("--require-pins") }
        if !trust.strictPermissions { arguments.append("--lenient-permissions") }
        return arguments + ["--"] + directories.map(\.path)
    }

    private struct Round {
        /// The probe wrote `done` and exited 0.
        var finished: Bool
        /// The file it was loading when it ended, if any.
        var lastLoading: String?
        /// How it ended, to follow "loading it": "killed a probe process with signal 11 (…)…".
        var ending: String
    }

    private static func run(
        executable: String, directories: [SearchDirectory], trust: TrustPolicy,
        excluding: [String], timeoutNanos: Int64
    ) throws -> Round {
        // A socket pair, not a pipe: it is made close-on-exec atomically (pipe2 needs _GNU_SOURCE,
        // which Glibc's module lacks), so no child another thread starts meanwhile inherits the
        // write end and keeps the probe's output open after the probe has died.
        var ends: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends) == 0 else {
            throw TransportError(.io, "socketpair failed: \(String(cString: strerror(errno)))")
        }
        var fd = ends[0]
        defer { if fd >= 0 { close(fd) } }
        let pid: pid_t
        do {
            defer { close(ends[1]) }
            pid = try PluginProcess.spawnChild(
                executable: executable, arguments: arguments(directories: directories, trust: trust, excluding: excluding), giving: ends[1], as: 1,
                ownProcessGroup: true, what: "the plugin discovery probe")
        }
        // Per file: every line the probe writes (it writes one before each file) restarts the
        // clock, so a long search path of slow-to-load files is not mistaken for a hang. Before
        // the first line the probe is still starting (its own runtime, not any plugin): it gets
        // longer, or a slow start on a loaded machine (a sanitizer build takes seconds) would end
        // the probe before it named a file, and discovery would fail for it.
        var deadline = monotonicNanoseconds() + max(timeoutNanos, Self.startupGraceNanos)
        var bytes: [UInt8] = []
        var timedOut = false
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let remaining = deadline - monotonicNanoseconds()
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = remaining <= 0 ? 0 : poll(&poller, 1, Int32(min(remaining / 1_000_000 + 1, 1000)))
            if ready < 0 && errno == EINTR { continue }
            if ready == 0 {
                if monotonicNanoseconds() >= deadline {
                    timedOut = true
                    kill(pid, SIGKILL)
                    break
                }
                continue
            }
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            bytes += buffer[0..<count]
            deadline = monotonicNanoseconds() + timeoutNanos
            // Every file loaded: what the process does while exiting (plugins' destructors, a
            // sanitizer's report) is not loading, so it is neither waited for nor blamed.
            if bytes.count >= 5, bytes.suffix(5).elementsEqual("done\n".utf8) { break }
        }
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n").map(String.init)
        let sawDone = lines.last == "done"
        // The output is read: a probe still writing gets EPIPE instead of blocking.
        close(fd)
        fd = -1
        // Reaped within the deadline (after `done`, or after the end of its output: it is exiting),
        // else killed first.
        let reaped = PluginProcess.reap(pid, deadlineNanos: deadline)
        let lastLoading = lines.last { $0.hasPrefix("loading ") }.map { String($0.dropFirst("loading ".count)) }
        let finished = !timedOut && sawDone
        let ending: String
        if timedOut {
            ending = "did not finish within \(timeoutNanos / 1_000_000) ms in a probe process (its initialisers or entry function hang)"
        } else if reaped == nil {
            ending = "ended a probe process in a way that could not be told (its exit status was collected elsewhere)"
        } else if let status = reaped, status & 0x7f != 0 {
            let signal = status & 0x7f
            ending = "killed a probe process with signal \(signal) (\(String(cString: strsignal(signal)))): its initialisers or entry function crashed"
        } else {
            ending = "ended a probe process with exit status \(((reaped ?? 0) >> 8) & 0xff)"
        }
        return Round(finished: finished, lastLoading: lastLoading, ending: ending)
    }

    /// One line on stdout, written whole with write(2): it must be out before a crash.
    private static func emit(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        bytes.withUnsafeBytes { _ = write(1, $0.baseAddress, $0.count) }
    }
}
