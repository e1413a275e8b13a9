import ArgumentParser
import Foundation
import SwitchyardABI
import SwitchyardConformance
import SwitchyardHost
import SwitchyardLoader

/// `switchyard plugins test NAME|PATH`: the conformance suite against one plugin.
struct TestPlugin: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "test",
        abstract: "Run the transport conformance suite against a plugin: exit 0 when every check its capabilities claim passes.")

    @Argument(help: "A plugin name on the search path, or the path of a plugin file.")
    var plugin: String

    @Flag(help: "Test durable instances: each check gets a fresh SQLite file (config key 'path').")
    var durable = false

    @Option(help: ArgumentHelp("The plugin's instance config as a JSON object.", valueName: "json"))
    var pluginConfig = "{}"

    @Option(
        help: ArgumentHelp(
            "For plugins whose state lives in a server: a config key set to a fresh name for each check (e.g. 'stream' for nats), which also runs the durable checks.",
            valueName: "key"))
    var isolationKey: String?

    @Flag(help: "Run every instance in a child process, as 'isolation: process' does (not for decorators).")
    var processIsolation = false

    @Option(help: ArgumentHelp("For decorators: the plugin of the inner transport (default: queue).", valueName: "name"))
    var inner: String?

    @Option(help: ArgumentHelp("Run only these checks (repeatable).", valueName: "check"))
    var check: [String] = []

    @Option(parsing: .unconditional, help: ArgumentHelp("Fail a check that has not finished after this many seconds (default: 60).", valueName: "seconds"), transform: seconds)
    var checkTimeout: Double = 60

    @OptionGroup var search: PluginSearchOptions

    func validate() throws {
        // Zero or less would fail every check as "timed out", blaming the plugin.
        guard checkTimeout.isFinite, checkTimeout > 0 else { throw ValidationError("--check-timeout must be more than 0 seconds (default 60)") }
        // With --durable or --isolation-key the config gets a key added: JSON that does not
        // parse became {} there, and the suite ran against the plugin's defaults.
        guard (try? JSONSerialization.jsonObject(with: Data(pluginConfig.utf8))) is [String: Any] else {
            throw ValidationError("--plugin-config must be a JSON object, e.g. '{\"capacity\": 10}' (got: \(pluginConfig))")
        }
    }

    func run() throws {
        // A misspelled --check ran nothing and passed: "0 passed, 0 failed".
        let known = ConformanceSuite.checks.map(\.name)
        if let unknown = check.first(where: { !known.contains($0) }) {
            let near = NearestName.nearest(to: unknown, among: known)
            throw CommandFailure(
                "no conformance check named '\(unknown)'\(near.map { ": did you mean '\($0)'?" } ?? "") (checks: \(known.joined(separator: ", ")))")
        }
        let config = try search.loadConfig()
        let loader = search.discovery(config).loader
        let catalog = search.discover(config)
        let target: LoadedPlugin
        do {
            target = plugin.contains("/") || plugin.hasSuffix(".so") ? try loader.load(path: plugin) : try found(plugin, in: catalog)
        } catch let rejection as Rejection {
            printError("\(rejection.path): \(rejection.reason)")
            throw ExitCode.failure
        }
        let innerPlugin = target.capabilities.contains(.wrapsInner) ? try found(inner ?? "queue", in: catalog) : nil
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-conformance-\(getpid())").path
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var suite = ConformanceSuite.forPlugin(
            target, inner: innerPlugin, configJSON: pluginConfig, durableDirectory: durable ? scratch : nil, isolationKey: isolationKey,
            processIsolation: processIsolation ? ProcessIsolation() : nil)
        print(
            "conformance: \(target.name) \(target.version) [\(suite.capabilities)]\(innerPlugin.map { " over \($0.name)" } ?? "")\(suite.durable ? ", durable" : "")\(processIsolation ? ", in a child process" : "")"
        )
        if !processIsolation {
            print("  (the plugin runs in this process: if it crashes, this run ends there; --process-isolation runs it in a child and reports the check)")
        }
        // Options that do not apply change nothing: say so, rather than let the run read as tested that way.
        if let inner, innerPlugin == nil {
            print("  (--inner \(inner) ignored: \(target.name) does not declare wraps-inner, so it takes no inner transport)")
        }
        if durable && !suite.durable {
            print(
                "  (--durable ignored: \(target.name)\(innerPlugin.map { " over \($0.name)" } ?? "") does not declare the durable capability, so the durable checks do not apply and no 'path' is set)"
            )
        }
        fflush(nil)
        suite.checkTimeoutSeconds = checkTimeout
        // Each line as soon as its check ends, also into a pipe (CI logs, `| tee`).
        let results = suite.run(only: Set(check)) { result in
            print("  \(result)")
            fflush(nil)  // every output stream; Swift 6 forbids naming the global stdout
        }
        let failed = results.filter(\.failed)
        let passed = results.filter { if case .passed = $0.outcome { true } else { false } }
        print("\(passed.count) passed, \(failed.count) failed, \(results.count - passed.count - failed.count) skipped")
        // A refused config is the command line's mistake, not the plugin's failing a check: say so.
        let uncreated = results.contains { if case .skipped(let why) = $0.outcome { why.hasPrefix(ConformanceSuite.notCreatedReason) } else { false } }
        if uncreated {
            // The config given is named only where the plugin refused a config: the instance can
            // also fail for a key the kit set (--durable's path), or a child that did not start.
            let configRefused = pluginConfig != "{}" && failed.contains { $0.description.contains("config error") }
            printError(
                configRefused
                    ? "error: no instance could be created with --plugin-config \(pluginConfig), so the other checks did not run: the failure above says which key was refused"
                    : "error: no instance could be created, so the other checks did not run (the failure above says why)"
            )
        }
        if !failed.isEmpty { throw ExitCode.failure }
    }

    private func found(_ name: String, in catalog: PluginCatalog) throws -> LoadedPlugin {
        guard let plugin = catalog.plugin(named: name) else {
            printError(PluginSearchOptions.notFound(name, in: catalog))
            throw ExitCode.failure
        }
        return plugin
    }
}
