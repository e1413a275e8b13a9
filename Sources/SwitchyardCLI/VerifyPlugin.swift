import ArgumentParser
import Foundation
import SwitchyardConfig
import SwitchyardHost
import SwitchyardLoader

/// `switchyard plugins verify PATH`: exit 0 for a valid plugin, 1 with the reason otherwise.
///
/// Loading a file runs its code, and code can crash. So the check runs in a child process (this
/// same executable with `--in-process`), and a child killed by a signal becomes a rejection like
/// any other; one that does not finish within the time discovery allows a file (`--timeout`) is
/// killed and the file refused as hung: whatever the file, verify itself never crashes or hangs.
struct VerifyPlugin: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check that a file is a loadable plugin: exit 0 if so, 1 with the reason on stderr if not.")

    @Argument(help: "The plugin file.")
    var path: String

    @OptionGroup var search: PluginSearchOptions

    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "Give up on a file whose loading takes longer than this many seconds (default: what discovery allows: the config's isolation call_timeout, or 30).",
            valueName: "seconds"), transform: seconds)
    var timeout: Double?

    @Flag(help: .hidden)
    var inProcess = false

    func validate() throws {
        if let timeout, !timeout.isFinite || !(0.001...86_400).contains(timeout) {
            throw ValidationError("--timeout must be between 0.001 and 86400 seconds")
        }
        // The file is loaded in a child process, which reads the config again: a pipe would be
        // empty there (and its pins unchecked), a descriptor's name another file.
        if !inProcess, let config = search.config, FileManager.default.fileExists(atPath: config), SwitchyardConfig.isStream(config) {
            throw ValidationError("--config \(config) is a pipe or a descriptor, which the process that loads the plugin cannot read again: pass the config file itself")
        }
    }

    func run() throws {
        if inProcess {
            LoadCrashHint.disable()  // the parent reports the crash, with the file
            return try verifyHere()
        }
        // The limit discovery applies with this config: its isolated transport's call_timeout.
        // Read before the child starts: a config that does not load must not leave it running.
        let limitNanos = try timeout.map { Int64($0 * 1e9) } ?? DiscoveryProbe.loadTimeoutNanos(search.discovery(search.loadConfig()).probe ?? ProcessIsolation())
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/proc/self/exe")
        child.arguments = ["plugins", "verify", "--in-process", path] + (search.config.map { ["--config", $0] } ?? [])
        // A crash is an expected outcome here: skip the Swift runtime's backtrace for it.
        var environment = ProcessInfo.processInfo.environment
        environment["SWIFT_BACKTRACE"] = "enable=no"
        child.environment = environment
        do {
            try child.run()
        } catch {
            // Could not isolate it: check here instead.
            return try verifyHere()
        }
        let deadline = Date().addingTimeInterval(Double(limitNanos) / 1e9)
        while child.isRunning && Date() < deadline { usleep(10_000) }
        if child.isRunning {
            kill(child.processIdentifier, SIGKILL)
            child.waitUntilExit()
            printError(
                "\(path): hung while loading: its initialisers or entry function did not return within \(limitNanos / 1_000_000) ms (the same limit discovery applies, which refuses the file)"
            )
            throw ExitCode.failure
        }
        switch child.terminationReason {
        case .exit where child.terminationStatus == 0:
            return
        case .exit:
            throw ExitCode(child.terminationStatus)
        default:
            let signal = child.terminationStatus
            let again = ([CommandLine.arguments[0], "plugins", "verify", "--in-process", path] + (search.config.map { ["--config", $0] } ?? []))
                .map { "'\($0.replacingOccurrences(of: "'", with: #"'\''"#))'" }.joined(separator: " ")
            printError(
                "\(path): crashed the loader with signal \(signal) (\(String(cString: strsignal(signal)))): its entry function or a static initialiser crashed as the file was loaded "
                    + "(or its descriptor holds a pointer the loader could not read). Keep both cheap and free of side effects (docs/writing-a-plugin.md); "
                    + "to see where, run the load under a debugger: gdb -ex run --args \(again)")
            throw ExitCode.failure
        }
    }

    private func verifyHere() throws {
        let config = try search.loadConfig()
        do {
            let plugin = try search.discovery(config).loader.load(path: path)
            print("ok: \(plugin.name) \(plugin.version), ABI \(plugin.abiVersion), capabilities: \(plugin.capabilities)")
        } catch {
            printError("\(error.path): \(error.reason)")
            if error.kind == .unreadable, !path.contains("/"), !FileManager.default.fileExists(atPath: path) {
                // A plugin's name where a file was meant.
                // The name as a person types it: "nope", "nope.so" or "libswitchyard-nope.so".
                var name = path.hasSuffix(".so") ? String(path.dropLast(3)) : path
                if name.hasPrefix("libswitchyard-") { name = String(name.dropFirst("libswitchyard-".count)) }
                printError(
                    "(plugins verify takes the path of a .so file, e.g. ./libswitchyard-\(name).so; for a plugin found on the search path by name, "
                        + "'switchyard plugins inspect \(name)' or 'plugins test \(name)')"
                )
            }
            if error.kind == .notELF, !error.reason.contains("cc -shared") {
                printError(
                    "(a plugin is a shared library: a Swift package's .library(type: .dynamic) product, or C built with cc -shared -fPIC; "
                        + "docs/writing-a-plugin.md)")
            }
            throw ExitCode.failure
        }
    }
}
