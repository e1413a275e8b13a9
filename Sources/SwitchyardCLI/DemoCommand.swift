import ArgumentParser
import Foundation
import Logging
import OrdersExample
import ServiceLifecycle
import SwitchyardAdmin
import SwitchyardConfig
import SwitchyardRuntime
import UnixSignals

/// `switchyard demo`: the orders example end to end, on its own config (the embedded SQLite store)
/// or another one.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run the orders example system end to end and print a summary.",
        discussion: """
            Places orders through a retried queue with a flaky payment step, fans an event out to \
            two subscriber groups and schedules a delayed reminder, then prints calls, deliveries \
            per group, retries, dead letters and latency. The default config keeps every transport \
            durable in SQLite under a temporary directory, removed at the end (set SWITCHYARD_DATA=DIR \
            to keep the stores there); --config runs the same \
            code with another routing (examples/orders/direct.yaml: everything in process).
            With --serve it keeps the system running instead, placing a few orders a second, with \
            the admin endpoint on (--admin; default: the config's admin section, else \
            127.0.0.1:9464): open http://127.0.0.1:9464/ for the console, /metrics for Prometheus. \
            SIGTERM or Ctrl-C drains and exits 0.
            """)

    @Option(help: ArgumentHelp("The routing to run with (default: the example's switchyard.yaml, on the embedded SQLite store).", valueName: "file"))
    var config: String?

    @Option(help: "How many orders to place.")
    var orders = 200

    @Option(help: "How many callers place orders at once.")
    var concurrency = 16

    @Option(name: [.customLong("plugins-dir")], help: ArgumentHelp("A directory to search for plugins first (repeatable).", valueName: "dir"))
    var pluginDirectories: [String] = []

    @Flag(help: "Log what the runtime does (info level).")
    var verbose = false

    @Flag(help: "Keep running with live traffic and the admin endpoint until SIGTERM or Ctrl-C.")
    var serve = false

    @Option(
        help: ArgumentHelp(
            "With --serve: where the admin endpoint listens (default: the config's admin.listen, else 127.0.0.1:9464; a non-loopback address needs SWITCHYARD_ADMIN_TOKEN).",
            valueName: "host:port"))
    var admin: String?

    @Option(help: ArgumentHelp("With --serve: orders placed per second.", valueName: "n"))
    var rate: Double = 5

    func validate() throws {
        guard orders > 0 else { throw ValidationError("--orders must be at least 1") }
        guard concurrency > 0 else { throw ValidationError("--concurrency must be at least 1") }
        guard rate > 0 else { throw ValidationError("--rate must be more than 0") }
        if let admin, case .failure(let problem) = SwitchyardConfig.AdminSection.parseListen(admin) {
            throw ValidationError("--admin \(admin): \(problem.message)")
        }
    }

    func run() async throws {
        // Before anything starts, as run and console refuse it: the endpoint would refuse only
        // once the system ran. (An endpoint from the config's admin section is checked once the
        // config is read, below.)
        if serve, let admin, case .success(let address) = SwitchyardConfig.AdminSection.parseListen(admin),
            !SwitchyardConfig.AdminSection.isLoopback(address.host),
            (ProcessInfo.processInfo.environment[SwitchyardConfig.AdminSection.tokenVariable] ?? "").isEmpty
        {
            printError(
                "error: --admin \(admin) is not loopback: every request must then carry a token. Export \(SwitchyardConfig.AdminSection.tokenVariable), or listen on 127.0.0.1"
            )
            throw ExitCode(1)
        }
        if serve, let admin, case .success(let address) = SwitchyardConfig.AdminSection.parseListen(admin) {
            try requireAdminAddress(.init(host: address.host, port: address.port))
        }
        // A relative --config from the docs (examples/orders/direct.yaml) run elsewhere than the
        // checkout: say where the example's own configs are, before the banner and a data folder.
        if let config, !config.hasPrefix("/"), !FileManager.default.fileExists(atPath: config), let bundled = OrdersDemo.configPath(URL(fileURLWithPath: config).lastPathComponent)
        {
            throw CommandFailure(
                "no config file at \(config) (relative to \(FileManager.default.currentDirectoryPath)); the example's configs are in \(URL(fileURLWithPath: bundled).deletingLastPathComponent().path): --config \(bundled)"
            )
        }
        // Decided before SWITCHYARD_DATA is set below: a directory the user named is theirs to
        // keep; one made here is removed when the run ends, however it ends.
        let userData = ProcessInfo.processInfo.environment["SWITCHYARD_DATA"]
        let data = try makeDataDirectory(given: userData)
        defer { if userData == nil { Self.remove(data) } }
        // Stopped with Ctrl-C or SIGTERM, a plain run (--serve drains on its own) removes the
        // temporary stores it made on its way out, as it does when it ends.
        let signals = userData == nil && !serve ? Self.removeOnSignal(data) : nil
        defer { signals?.cancel() }
        setenv("SWITCHYARD_DATA", data, 0)
        guard let configPath = config ?? OrdersDemo.defaultConfigPath else {
            throw CommandFailure(
                "the example's config is not here: neither installed (share/switchyard/examples/orders beside this executable's bin/) nor in the checkout it was built from; pass --config PATH/TO/examples/orders/switchyard.yaml"
            )
        }
        var logger = Logger(label: "switchyard.demo")
        logger.logLevel = verbose ? .info : .warning
        print("Switchyard demo: the orders example")
        print("  config   \(config ?? "\(configPath) (the default)")")
        print("  data     \(data)")
        fflush(nil)  // before an error the start may print: piped, the banner would come after it
        let loaded = try readConfig(configPath)
        // Without --admin, the config's own endpoint, as `switchyard console` serves it.
        let endpointSettings = serve ? try adminSettings(loaded, admin: admin, file: configPath) : nil
        if serve { AdminMetrics.bootstrap() }  // before the system: it picks its metrics backend when created
        let system = try startSystem(config: loaded, pluginDirectories: pluginDirectories, logger: logger)
        // Another application's config starts, but every order would fail "no route matches".
        guard system.routes(interface: "Orders", method: "place") else {
            await system.shutdown(deadline: .seconds(5))
            throw CommandFailure(
                "\(configPath) routes no call of the orders example (Orders.place has no route): the demo runs that example, so its config must route the example's interfaces as examples/orders/switchyard.yaml does; pass that file or one of its variants (examples/orders/*.yaml), or leave out --config"
            )
        }
        for (pattern, transport) in system.routeDescriptions { print("  route    \(pattern) → \(transport)") }
        print("")
        // Out now, also into a file or a pipe (block-buffered there): the data line says where the
        // stores are, and a run stopped early must have said it.
        fflush(nil)
        if let endpointSettings { return try await serveUntilStopped(system, settings: endpointSettings) }
        let summary: DemoSummary
        do {
            summary = try await OrdersDemo.run(system: system, orders: orders, concurrency: concurrency) { line in
                print("  … \(line)")
                fflush(nil)
            }
        } catch {
            await system.shutdown()  // drained and closed however the run ended: the stores stay whole
            throw error
        }
        await system.shutdown()
        print("")
        print(summary.table.split(separator: "\n", omittingEmptySubsequences: false).prefix { !$0.isEmpty }.joined(separator: "\n"))
        guard summary.isConsistent else {
            printError("error: the run does not add up (every order must succeed or be declined, and every succeeded order must reach every group)")
            throw ExitCode(1)
        }
        // Where the declined orders' charges went, and whether they can still be looked at.
        if summary.declined > 0 && config == nil {
            print("")
            if userData != nil {
                print("The declined charges wait as dead letters in \(data):")
                print("  SWITCHYARD_DATA=\(data) switchyard dlq list --config \(configPath) --transport work --channel payments")
            } else {
                print("The declined charges were dead-lettered in \(data), removed with it now; to keep the stores")
                print("and look at them (switchyard dlq list … --transport work --channel payments), run with SWITCHYARD_DATA=DIR.")
            }
        }
    }

    /// `--serve`: the admin endpoint and a trickle of orders until SIGTERM or SIGINT, then drain.
    private func serveUntilStopped(_ system: SwitchyardActorSystem, settings: SwitchyardConfig.AdminSection) async throws {
        let endpoint: AdminServer
        do {
            var quiet = Logger(label: "switchyard.admin")
            quiet.logLevel = .warning  // the demo prints the address itself
            endpoint = try AdminServer(system: system, settings: settings, logger: quiet)
        } catch let error as AdminError {
            await system.shutdown(deadline: .seconds(5))
            printError("error: \(error)")
            throw ExitCode(2)
        }
        let perSecond = rate
        let traffic = DemoTraffic(system: system, endpoint: endpoint, perSecond: perSecond)
        let group = ServiceGroup(
            configuration: .init(
                // The endpoint first: on SIGTERM the traffic and the system stop and drain while it
                // still answers (ready: 503), and it stops last.
                services: [.init(service: endpoint), .init(service: traffic)], gracefulShutdownSignals: [.sigterm, .sigint],
                logger: Logger(label: "switchyard.demo")))
        try await group.run()
        print("drained and stopped")
    }

    /// Removes the run's data directory. A store's last file operation can still be finishing
    /// as the run ends (a closed SQLite connection removing its `-wal` and `-shm` files), and a
    /// file that appears while the directory is being emptied makes one removal fail: try again
    /// for up to a second, then say what is left.
    /// On SIGINT or SIGTERM: says so, removes `directory` and exits (130 or 143, as the default
    /// action would). Cancel the task once the run ends.
    private static func removeOnSignal(_ directory: String) -> Task<Void, Never> {
        Task.detached {
            for await signal in await UnixSignalsSequence(trapping: .sigint, .sigterm) {
                printError("stopped: removing the demo's data directory \(directory)")
                remove(directory)
                Foundation.exit(128 + signal.rawValue)
            }
        }
    }

    private static func remove(_ directory: String) {
        for _ in 0..<20 {
            try? FileManager.default.removeItem(atPath: directory)
            if !FileManager.default.fileExists(atPath: directory) { return }
            usleep(50_000)
        }
        printError("warning: could not remove the demo's data directory \(directory); remove it yourself")
    }

    private func makeDataDirectory(given: String?) throws -> String {
        if let given {
            try FileManager.default.createDirectory(atPath: given, withIntermediateDirectories: true)
            return given
        }
        // NSTemporaryDirectory() ends with a slash.
        let temporary = NSTemporaryDirectory().hasSuffix("/") ? NSTemporaryDirectory() : NSTemporaryDirectory() + "/"
        var template = Array((temporary + "switchyard-demo-XXXXXX").utf8CString)
        guard mkdtemp(&template) != nil else { throw CommandFailure("cannot create a temporary directory (\(String(cString: strerror(errno))))") }
        return String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// `demo --serve`'s traffic: places orders until graceful shutdown, then drains the system.
struct DemoTraffic: Service {
    let system: SwitchyardActorSystem
    let endpoint: AdminServer
    let perSecond: Double

    func run() async throws {
        let port = try await endpoint.waitUntilListening()
        print("  console  \(endpoint.settings.url(port: port))   (metrics: /metrics, health: /health/ready, JSON: /api)")
        if endpoint.settings.token == nil {
            // Without one the console only reads: its replay, purge and call forms answer 403.
            print("  read-only: replaying, purging and calling from the console need \(SwitchyardConfig.AdminSection.tokenVariable) exported before the start")
        }
        print("  placing \(perSecond.formatted()) orders a second; Ctrl-C or SIGTERM drains and exits")
        fflush(nil)  // progress reaches a log file as it happens (Swift 6 forbids naming the global stdout)
        let system = self.system
        let rate = perSecond
        do {
            try await cancelWhenGracefulShutdown {
                try await OrdersDemo.serve(system: system, perSecond: rate) { line in
                    print("  … \(line)")
                    fflush(nil)
                }
            }
        } catch is CancellationError {
            // SIGTERM or Ctrl-C: the traffic stops, the system drains below.
        } catch {
            // The traffic could not go on (a service not hosted, a route refused): say so, rather
            // than serve an endpoint with nothing moving, and end the run with status 1 (thrown,
            // the group stops the endpoint too; returned, it would report only that a service
            // finished unexpectedly).
            printError("error: the demo's traffic stopped: \(error)")
            await system.shutdown(deadline: .seconds(10))
            throw ExitCode(1)
        }
        await system.shutdown(deadline: .seconds(10))
    }
}
