import ArgumentParser
import Foundation
import Logging
import SwitchyardHost

/// `switchyard plugin-host`: the child process of a transport configured with
/// `isolation: process`. Started by the host, never by hand: it speaks the isolation protocol on
/// an inherited socket (docs/reliability.md, "A crashing plugin").
struct PluginHostCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugin-host",
        abstract: "Run one transport plugin for a parent host over an inherited socket (started by the host).",
        shouldDisplay: false)

    @Option(help: ArgumentHelp("The inherited socket's file descriptor.", valueName: "fd"))
    var fd: Int32 = 3

    @Option(help: ArgumentHelp("Log level of the plugin's messages (to stderr).", valueName: "level"))
    var logLevel: String = "info"

    func run() throws {
        var logger = Logger(label: "switchyard.plugin-host")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        throw ExitCode(PluginHostServer.serve(fd: fd, logger: logger))
    }
}
