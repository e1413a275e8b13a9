import ArgumentParser
import Foundation
import SwitchyardABI
import SwitchyardHost

/// The `switchyard` command.
@main
struct SwitchyardCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchyard",
        abstract: "Route typed method calls through transport plugins chosen by configuration.",
        version: "0.1.0",
        subcommands: [
            DemoCommand.self, RunCommand.self, CallCommand.self, PluginsCommand.self, DeadLetterCommand.self, StatsCommand.self, ConsoleCommand.self, BenchCommand.self,
            SoakCommand.self, SoakWorkerCommand.self, PluginHostCommand.self, BenchServeCommand.self,
        ])

    /// ArgumentParser's `main`, except that a mistyped option is named: ArgumentParser reports a
    /// missing required option before an unknown one, so `--confg x` read "Missing expected
    /// argument '--config <file>'", which sends the user looking for the wrong thing.
    static func main() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        var command: any ParsableCommand
        do {
            command = try parseAsRoot(arguments)
        } catch {
            // Only for a usage error: help, --version and a completion script end parsing too.
            if exitCode(for: error) == .validationFailure, let unknown = UnknownOption(in: arguments) {
                FileHandle.standardError.write(Data(("Error: " + unknown.message + "\n").utf8))
                Foundation.exit(ExitCode.validationFailure.rawValue)
            }
            exit(withError: error)
        }
        do {
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}

/// An option given to a subcommand that does not have it: the first one, with the subcommand's
/// option of the nearest spelling.
struct UnknownOption {
    /// "unknown option '--confg' for 'switchyard run' (did you mean '--config'?)", and where to
    /// see the options.
    let message: String

    /// Nil when every `--option` the named subcommand reads is one it has. The scan ends at a
    /// lone `--`, and for `call` at its route (what follows is the call's own arguments); a
    /// word where a subcommand was expected is left to ArgumentParser ("Unexpected argument").
    init?(in arguments: [String]) {
        var command: any ParsableCommand.Type = SwitchyardCommand.self
        var rest = arguments[...]
        while let next = rest.first, let sub = command.configuration.subcommands.first(where: { Self.name(of: $0) == next }) {
            command = sub
            rest = rest.dropFirst()
        }
        if !command.configuration.subcommands.isEmpty, let next = rest.first, !next.hasPrefix("-") { return nil }
        let options = Self.options(of: command)
        var index = rest.startIndex
        while index < rest.endIndex {
            let word = rest[index]
            if word == "--" { break }
            if word.hasPrefix("--") {
                let name = String(word.prefix { $0 != "=" })
                guard let takesValue = options[name] else {
                    message = Self.describe(name, for: command)
                    return
                }
                if takesValue && !word.contains("=") { index += 1 }  // its value, whatever it looks like
            } else if !word.hasPrefix("-") && command == CallCommand.self {
                break  // the route: the rest are its arguments
            }
            index += 1
        }
        return nil
    }

    /// The message for `option`, which `command` does not have.
    static func describe(_ option: String, for command: any ParsableCommand.Type) -> String {
        let name = ([name(of: SwitchyardCommand.self)] + path(to: command)).joined(separator: " ")
        let nearest = NearestName.nearest(to: option, among: Array(options(of: command).keys))
        return "unknown option '\(option)' for '\(name)'\(nearest.map { " (did you mean '\($0)'?)" } ?? "")\n"
            + "  See '\(name) --help' for its options."
    }

    /// Every `--option` of `command` (hidden ones and ArgumentParser's own included), and whether
    /// it takes a value (`--config <file>` in its help).
    static func options(of command: any ParsableCommand.Type) -> [String: Bool] {
        var found: [String: Bool] = [:]
        for builtIn in ["--help", "--version", "--help-hidden", "--experimental-dump-help"] { found[builtIn] = false }
        found["--generate-completion-script"] = true
        let help = SwitchyardCommand.helpMessage(for: command, includeHidden: true)
        var characters = help[...]
        while let start = characters.range(of: "--") {
            let after = characters[start.upperBound...]
            let name = after.prefix { $0.isLetter || $0.isNumber || $0 == "-" }
            if let first = name.first, first.isLetter {
                let takesValue = after.dropFirst(name.count).hasPrefix(" <")
                found["--" + name] = (found["--" + name] ?? false) || takesValue
            }
            characters = after
        }
        return found
    }

    /// A command's name on the command line: its configured name, else its type's name in lower
    /// case (as ArgumentParser derives it for one word, e.g. `dlq`'s `List`).
    private static func name(of command: any ParsableCommand.Type) -> String {
        command.configuration.commandName ?? String(describing: command).lowercased()
    }

    /// The subcommand names from the root to `command`.
    private static func path(to command: any ParsableCommand.Type) -> [String] {
        func walk(_ from: any ParsableCommand.Type, _ trail: [String]) -> [String]? {
            if from == command { return trail }
            for sub in from.configuration.subcommands {
                if let found = walk(sub, trail + [name(of: sub)]) { return found }
            }
            return nil
        }
        return walk(SwitchyardCommand.self, []) ?? []
    }
}

/// `switchyard plugins …`: find, inspect and verify transport plugins.
struct PluginsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugins",
        abstract: "Find, inspect and verify transport plugins.",
        subcommands: [ListPlugins.self, InspectPlugin.self, VerifyPlugin.self, TestPlugin.self])
}
