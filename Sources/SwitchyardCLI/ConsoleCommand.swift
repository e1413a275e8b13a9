import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import SwitchyardAdmin
import SwitchyardConfig
import SwitchyardRuntime

/// `switchyard console`: the admin endpoint for a deployment, served from outside its processes.
struct ConsoleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "console",
        abstract: "Serve the admin console and API for a config, from outside the application's processes.",
        discussion: """
            Opens the config's transports and serves the admin endpoint over them: plugins, \
            transports with what their engines hold (depth, in flight), routes, and the dead letters \
            of the channels you name in the address (/dead-letters/TRANSPORT/CHANNEL), with replay \
            and purge. It hosts no services, so the services table is empty and the counters are \
            this process's own; for one process's live counters and in-memory transports, turn its \
            own endpoint on (admin: in its config, or switchyard demo --serve). Like any process of \
            the deployment, it also relays the config's outboxes. SIGTERM or Ctrl-C stops it.
            """)

    @Option(help: ArgumentHelp("The deployment's config file.", valueName: "file"))
    var config: String

    @Option(help: ArgumentHelp("Where to listen (default: the config's admin.listen, else 127.0.0.1:9464).", valueName: "host:port"))
    var admin: String?

    @Option(name: [.customLong("plugins-dir")], help: ArgumentHelp("A directory to search for plugins first (repeatable).", valueName: "dir"))
    var pluginDirectories: [String] = []

    func validate() throws {
        if let admin, case .failure(let problem) = SwitchyardConfig.AdminSection.parseListen(admin) {
            throw ValidationError("--admin \(admin): \(problem.message)")
        }
    }

    func run() async throws {
        var logger = Logger(label: "switchyard.console")
        logger.logLevel = .notice
        AdminMetrics.bootstrap()
        let loaded: SwitchyardConfig
        do {
            loaded = try SwitchyardConfig.load(path: config)
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
        // Before anything starts (transports, outbox relays), as switchyard run does.
        let settings = try adminSettings(loaded, admin: admin, file: config)
        let system: SwitchyardActorSystem
        do {
            system = try SwitchyardActorSystem(config: loaded, pluginDirectories: pluginDirectories, logger: logger, openingEveryTransport: true)
        } catch let error as ConfigError {
            printError("error: \(error)")
            throw ExitCode(1)
        }
        let endpoint: AdminServer
        do {
            endpoint = try AdminServer(system: system, settings: settings, logger: logger)
        } catch let error as AdminError {
            await system.shutdown(deadline: .seconds(5))
            printError("error: \(error)")
            throw ExitCode(1)
        }
        let announce = Task {
            guard let port = try? await endpoint.waitUntilListening() else { return }
            print("console  \(settings.url(port: port))   (JSON: /api, metrics: /metrics; Ctrl-C or SIGTERM stops)")
            fflush(nil)
        }
        defer { announce.cancel() }
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: endpoint), .init(service: DrainingHost(system: system, deadline: .seconds(10)))],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}
