import ArgumentParser
import Foundation
import Logging
import SwitchyardHost
import SwitchyardLoader

/// `switchyard plugin-host`: the child process of a transport configured with
/// `isolation: process`. Started by the host, never by hand: it speaks the isolation protocol on
/// an inherited socket (docs/reliability.md, "A crashing plugin"). With `--probe` it is the
/// host's plugin discovery probe instead (``DiscoveryProbe``).
struct PluginHostCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugin-host",
        abstract: "Run one transport plugin for a parent host over an inherited socket (started by the host).",
        shouldDisplay: false)

    @Option(help: ArgumentHelp("The inherited socket's file descriptor.", valueName: "fd"))
    var fd: Int32 = 3

    @Option(help: ArgumentHelp("Log level of the plugin's messages (to stderr).", valueName: "level"))
    var logLevel: String = "info"

    @Flag(help: "Probe plugin discovery instead: load every plugin file in the directories, reporting each on stdout.")
    var probe = false

    @Option(name: .customLong("exclude"), help: ArgumentHelp("With --probe: a file not to load (repeatable).", valueName: "file"))
    var excluded: [String] = []

    @Option(name: .customLong("pin"), help: ArgumentHelp("With --probe: a sha256 pin, NAME=SHA256 (repeatable).", valueName: "pin"))
    var pins: [String] = []

    @Flag(help: "With --probe: refuse plugins without a pin.")
    var requirePins = false

    @Flag(help: "With --probe: do not check file ownership and permissions.")
    var lenientPermissions = false

    @Argument(help: ArgumentHelp("With --probe: the directories to search.", valueName: "directory"))
    var directories: [String] = []

    func run() throws {
        // The parent reports a plugin that crashes this process, naming the file.
        LoadCrashHint.disable()
        if probe {
            var pinned: [String: String] = [:]
            for pin in pins {
                let parts = pin.split(separator: "=", maxSplits: 1).map(String.init)
                guard parts.count == 2 else { throw ValidationError("--pin takes NAME=SHA256, not '\(pin)'") }
                pinned[parts[0]] = parts[1]
            }
            let trust = TrustPolicy(strictPermissions: !lenientPermissions, pins: pinned, requirePins: requirePins)
            throw ExitCode(DiscoveryProbe.serve(directories: directories, excluding: excluded, trust: trust))
        }
        var logger = Logger(label: "switchyard.plugin-host")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        throw ExitCode(PluginHostServer.serve(fd: fd, logger: logger))
    }
}
