import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import SwitchyardAdmin
import SwitchyardConfig
import SwitchyardRuntime

/// `switchyard run`: a host that needs no Swift code of its own.
struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Start the actor system from a config file and serve until SIGTERM, then drain.",
        discussion: """
            Loads the plugins, creates the transports and checks every route before anything \
            starts; a config problem exits 1 naming the key and line. On SIGTERM or SIGINT it \
            stops taking deliveries, finishes the calls it is running and exits within --drain. \
            With an admin: section in the config it also serves the admin endpoint (metrics, \
            health, the console; docs/operations.md).
            """)

    @Option(help: ArgumentHelp("The config file.", valueName: "file"))
    var config: String

    @Option(name: [.customLong("plugins-dir")], help: ArgumentHelp("A directory to search for plugins first (repeatable).", valueName: "dir"))
    var pluginDirectories: [String] = []

    @Option(parsing: .unconditional, help: ArgumentHelp("How long draining may take, in seconds (default: 30).", valueName: "seconds"), transform: seconds)
    var drain: Double = 30

    func validate() throws {
        // Double parses "inf" and "nan" too; either would trap when made a duration.
        guard drain.isFinite, (0...86_400).contains(drain) else { throw ValidationError("--drain must be between 0 and 86400 seconds") }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("unknown log level '\(logLevel)' (one of: \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
    }

    @Option(help: ArgumentHelp("Log level: trace, debug, info, notice, warning, error, critical", valueName: "level"))
    var logLevel: String = "info"

    @Flag(help: "Run even when the config has no native modules to host (transports still run: a delay transport keeps forwarding).")
    var allowEmpty = false

    func run() async throws {
        guard let level = Logger.Level(rawValue: logLevel) else { throw ValidationError("unknown log level '\(logLevel)'") }
        var logger = Logger(label: "switchyard")
        logger.logLevel = level
        let configured = try readConfig(config)
        if var problem = configured.admin?.servingProblem() {
            // Before anything starts: the endpoint would refuse only once the transports ran.
            problem.file = config
            printError("error: \(problem)")
            throw ExitCode(1)
        }
        // A port in use stops the host here, before any transport opens.
        if let admin = configured.admin { try requireAdminAddress(admin) }
        if configured.admin != nil { AdminMetrics.bootstrap() }  // before the system: it picks its metrics backend when created
        // Every configured transport, routed or not: a host runs them all (a delay transport keeps
        // forwarding), and a problem in any of them stops it here, naming the key.
        let refusedAsEmpty = configured.native.isEmpty && !allowEmpty
        var startLogger = logger
        // A run refused below starts the system only for the config's own checks: its routine
        // start and drain lines would read as if it had run, before the error that says it did not.
        if refusedAsEmpty && startLogger.logLevel < .warning { startLogger.logLevel = .warning }
        let system = try startSystem(
            config: configured, pluginDirectories: pluginDirectories, logger: startLogger, openingEveryTransport: true, loadingEveryNativeModule: true)
        // After the config's own checks (a mistake in it is what to fix first), so the stores
        // the config names exist by now.
        if refusedAsEmpty {
            await system.shutdown(deadline: .seconds(1))
            printError(
                """
                error: nothing to host: \(config) has no native modules, and switchyard run hosts only those. \
                Swift services are hosted by your own executable (SwitchyardActorSystem.host, see docs/services.md). \
                Pass --allow-empty to run anyway (the transports still run, e.g. a delay transport keeps forwarding).
                """)
            throw ExitCode(2)
        }
        // The admin endpoint first: on SIGTERM the system drains while it still answers (ready: 503).
        let admin = try system.config.admin.map { _ in try AdminServer(system: system, logger: logger) }
        let drainSeconds = drain
        let host = DrainingHost(
            system: system, deadline: .milliseconds(Int(drainSeconds * 1000)),
            start: { [logger] in
                // Hosting waits for the endpoint to listen: a port in use stops the process
                // before it takes any call (it used to host, then drain and exit).
                if let admin { _ = try await admin.waitUntilListening(timeout: 30) }
                try system.hostNative()
                for (pattern, transport) in system.routeDescriptions {
                    logger.info("route", metadata: ["pattern": "\(pattern)", "transport": "\(transport)"])
                }
            },
            serving: { [logger] in logger.info("running; SIGTERM or SIGINT drains and stops") })
        let group = ServiceGroup(
            configuration: .init(
                services: (admin.map { [ServiceGroupConfiguration.ServiceConfiguration(service: $0)] } ?? []) + [.init(service: host)],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        // The endpoint logs where it listens itself ("admin endpoint listening", with its url).
        do {
            try await group.run()
        } catch let error as ConfigError {
            // Hosting a native module found its library missing: said as every config problem is.
            printError("error: \(error)")
            throw ExitCode(1)
        }
    }
}

/// Runs the system until graceful shutdown, then drains it within `deadline`.
struct DrainingHost: Service {
    let system: SwitchyardActorSystem
    let deadline: Duration
    /// Starts serving (hosting what the process hosts), inside the group: it may wait for another
    /// service first, and a failure stops the system and the group.
    var start: @Sendable () async throws -> Void = {}
    /// Announces that the host is serving. It runs here, not before `ServiceGroup.run()`, because
    /// the group registers its signal handlers before it starts services: a SIGTERM sent after the
    /// announcement drains instead of killing the process with the default action.
    var serving: @Sendable () -> Void = {}

    init(system: SwitchyardActorSystem, deadline: Duration, start: @escaping @Sendable () async throws -> Void = {}, serving: @escaping @Sendable () -> Void = {}) {
        self.system = system
        self.deadline = deadline
        self.start = start
        self.serving = serving
    }

    func run() async throws {
        do {
            try await start()
        } catch {
            // Another service failed first (the admin port in use), or hosting did: stop cleanly.
            await system.shutdown(deadline: deadline)
            throw error
        }
        serving()
        try? await gracefulShutdown()
        await system.shutdown(deadline: deadline)
    }
}

/// Starts the actor system from a config file; a config problem is printed with its key and line
/// and the command exits 1.
func startSystem(configPath: String, pluginDirectories: [String], logger: Logger) throws -> SwitchyardActorSystem {
    try startSystem(config: readConfig(configPath), pluginDirectories: pluginDirectories, logger: logger)
}

/// Starts the actor system from a config already read (`openingEveryTransport`: also the
/// transports no route uses; `loadingEveryNativeModule`: every native library, first); a config
/// problem is printed with its key and line and the command exits 1.
func startSystem(
    config: SwitchyardConfig, pluginDirectories: [String], logger: Logger, openingEveryTransport: Bool = false, loadingEveryNativeModule: Bool = false
) throws -> SwitchyardActorSystem {
    do {
        return try SwitchyardActorSystem(
            config: config, pluginDirectories: pluginDirectories, logger: logger, openingEveryTransport: openingEveryTransport,
            loadingEveryNativeModule: loadingEveryNativeModule)
    } catch let error as ConfigError {
        printError("error: \(error)")
        throw ExitCode(1)
    }
}

/// A number of seconds for an option parsed `.unconditional` (so that `-1` is read as its value,
/// then refused by the command's range check, rather than as an option): a word that starts with
/// `--` is the next option, the value missing.
func seconds(_ text: String) throws -> Double {
    if text.hasPrefix("--") { throw ValidationError("the value is missing ('\(text)' is the next option)") }
    guard let value = Double(text) else { throw ValidationError("'\(text)' is not a number of seconds") }
    return value
}

/// Reads a config file; a problem is printed with its key and line and the command exits 1.
func readConfig(_ path: String) throws -> SwitchyardConfig {
    do {
        return try SwitchyardConfig.load(path: path)
    } catch {
        printError("error: \(error)")
        throw ExitCode(1)
    }
}
