import ArgumentParser
import Foundation

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
            if let unknown = UnknownOption(in: arguments) {
                FileHandle.standardError.write(Data((unknown.message + "\n").utf8))
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
    let message: String

    /// Nil when every `--option` before a lone `--` is one the named subcommand has.
    init?(in arguments: [String]) {
        var command: any ParsableCommand.Type = SwitchyardCommand.self
        var rest = arguments[...]
        while let next = rest.first, let sub = command.configuration.subcommands.first(where: { Self.name(of: $0) == next }) {
            command = sub
            rest = rest.dropFirst()
        }
        let help = SwitchyardCommand.helpMessage(for: command, includeHidden: true)
        let known = Self.longOptions(in: help).union(["--help", "--version", "--help-hidden", "--experimental-dump-help"])
        let given = rest.prefix { $0 != "--" }.filter { $0.hasPrefix("--") && $0.count > 2 }.map { String($0.prefix { $0 != "=" }) }
        guard let unknown = given.first(where: { !known.contains($0) }) else { return nil }
        let name = ([Self.name(of: SwitchyardCommand.self)] + Self.path(to: command)).joined(separator: " ")
        let nearest = known.filter { Self.distance($0, unknown) <= 2 }.min { Self.distance($0, unknown) < Self.distance($1, unknown) }
        message =
            "Error: unknown option '\(unknown)' for '\(name)'\(nearest.map { " (did you mean '\($0)'?)" } ?? "")\n"
            + "  See '\(name) --help' for its options."
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

    /// Every `--name` in a help text.
    static func longOptions(in help: String) -> Set<String> {
        var found: Set<String> = []
        var characters = help[...]
        while let start = characters.range(of: "--") {
            let name = characters[start.upperBound...].prefix { $0.isLetter || $0.isNumber || $0 == "-" }
            if let first = name.first, first.isLetter { found.insert("--" + name) }
            characters = characters[start.upperBound...]
        }
        return found
    }

    /// Levenshtein distance, for the suggestion.
    static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a)
        let b = Array(b)
        var previous = Array(0...b.count)
        for i in 1...max(a.count, 1) where !a.isEmpty {
            var current = [i] + Array(repeating: 0, count: b.count)
            for j in stride(from: 1, through: b.count, by: 1) {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return a.isEmpty ? b.count : previous[b.count]
    }
}

/// `switchyard plugins …`: find, inspect and verify transport plugins.
struct PluginsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugins",
        abstract: "Find, inspect and verify transport plugins.",
        subcommands: [ListPlugins.self, InspectPlugin.self, VerifyPlugin.self, TestPlugin.self])
}
