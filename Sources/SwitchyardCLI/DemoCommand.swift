import ArgumentParser
import Foundation
import Logging
import OrdersExample
import SwitchyardConfig
import SwitchyardRuntime

/// `switchyard demo`: the orders example end to end, on the embedded default or another config.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run the orders example system end to end and print a summary.",
        discussion: """
            Places orders through a retried queue with a flaky payment step, fans an event out to \
            two subscriber groups and schedules a delayed reminder, then prints calls, deliveries \
            per group, retries, dead letters and latency. The default config keeps every transport \
            durable in SQLite under a temporary directory ($SWITCHYARD_DATA); --config runs the same \
            code with another routing (examples/orders/direct.yaml: everything in process).
            """)

    @Option(help: ArgumentHelp("The routing to run with (default: the embedded one).", valueName: "file"))
    var config: String?

    @Option(help: "How many orders to place.")
    var orders = 200

    @Option(help: "How many callers place orders at once.")
    var concurrency = 16

    @Option(name: [.customLong("plugins-dir")], help: ArgumentHelp("A directory to search for plugins first (repeatable).", valueName: "dir"))
    var pluginDirectories: [String] = []

    @Flag(help: "Log what the runtime does (info level).")
    var verbose = false

    func validate() throws {
        guard orders > 0 else { throw ValidationError("--orders must be at least 1") }
        guard concurrency > 0 else { throw ValidationError("--concurrency must be at least 1") }
    }

    func run() async throws {
        // Decided before SWITCHYARD_DATA is set below: a directory the user named is theirs to
        // keep; one made here is removed when the run ends, however it ends.
        let userData = ProcessInfo.processInfo.environment["SWITCHYARD_DATA"]
        let data = try makeDataDirectory(given: userData)
        defer { if userData == nil { try? FileManager.default.removeItem(atPath: data) } }
        setenv("SWITCHYARD_DATA", data, 0)
        guard let configPath = config ?? OrdersDemo.defaultConfigPath else {
            throw ValidationError("the embedded config is missing from this build; pass --config examples/orders/switchyard.yaml")
        }
        var logger = Logger(label: "switchyard.demo")
        logger.logLevel = verbose ? .info : .warning
        print("Switchyard demo: the orders example")
        print("  config   \(config ?? "embedded default (examples/orders/switchyard.yaml)")")
        print("  data     \(data)")
        let system = try startSystem(configPath: configPath, pluginDirectories: pluginDirectories, logger: logger)
        for (pattern, transport) in system.routeDescriptions { print("  route    \(pattern) → \(transport)") }
        print("")
        let summary = try await OrdersDemo.run(system: system, orders: orders, concurrency: concurrency) { line in
            print("  … \(line)")
        }
        await system.shutdown()
        print("")
        print(summary.table.split(separator: "\n", omittingEmptySubsequences: false).prefix { !$0.isEmpty }.joined(separator: "\n"))
        guard summary.isConsistent else {
            printError("error: the run does not add up (every order must succeed or be declined, and every succeeded order must reach every group)")
            throw ExitCode(1)
        }
    }

    private func makeDataDirectory(given: String?) throws -> String {
        if let given {
            try FileManager.default.createDirectory(atPath: given, withIntermediateDirectories: true)
            return given
        }
        // NSTemporaryDirectory() ends with a slash.
        let temporary = NSTemporaryDirectory().hasSuffix("/") ? NSTemporaryDirectory() : NSTemporaryDirectory() + "/"
        var template = Array((temporary + "switchyard-demo-XXXXXX").utf8CString)
        guard mkdtemp(&template) != nil else { throw ValidationError("cannot create a temporary directory") }
        return String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
