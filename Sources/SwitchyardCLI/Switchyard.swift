import ArgumentParser

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
}

/// `switchyard plugins …`: find, inspect and verify transport plugins.
struct PluginsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugins",
        abstract: "Find, inspect and verify transport plugins.",
        subcommands: [ListPlugins.self, InspectPlugin.self, VerifyPlugin.self, TestPlugin.self])
}
