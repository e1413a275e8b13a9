import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import SwitchyardRuntime
import SwitchyardSoak

/// `switchyard soak-worker producer|consumer`: the processes `switchyard soak` starts, kills
/// and restarts. Not for use by hand.
struct SoakWorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "soak-worker", abstract: "A producer or consumer process of `switchyard soak`.", shouldDisplay: false)

    enum Role: String, ExpressibleByArgument { case producer, consumer }

    @Argument var role: Role
    @Option var config: String
    @Option(name: .customLong("plugins-dir")) var pluginDirectories: [String] = []
    /// Producer: first item number and one past the last.
    @Option var from = 0
    @Option var to = 0
    /// Producer: pause between items, in microseconds.
    @Option var pace = 0
    /// Consumer: write effects to this database directly instead of through the inbox.
    @Option var effectsDatabase: String?
    /// Outbox mode (see `switchyard soak --outbox`).
    @Flag var outbox = false
    /// PostgreSQL mode: the run's schemas start with this.
    @Option var postgresSchemaPrefix: String?

    func run() async throws {
        var logger = Logger(label: "switchyard.soak.\(role.rawValue)")
        logger.logLevel = .warning
        let system = try startSystem(configPath: config, pluginDirectories: pluginDirectories, logger: logger)
        let engine: SoakEngine = postgresSchemaPrefix.map { .postgres(schemaPrefix: $0) } ?? .sqlite
        switch role {
        case .producer:
            try SoakWorkload.prepareProducer(outbox: outbox, engine: engine)
            try await SoakWorkload.produce(on: system, items: from..<to, paceMicroseconds: pace, outbox: outbox, engine: engine, emit: emit)
            await system.shutdown()
        case .consumer:
            try SoakWorkload.hostConsumers(on: system, effectsDatabase: effectsDatabase, outbox: outbox, engine: engine)
            let host = DrainingHost(system: system, deadline: .seconds(10), serving: { emit("ready") })
            let group = ServiceGroup(
                configuration: .init(
                    services: [.init(service: host)],
                    gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            try await group.run()
        }
    }

    /// One line on stdout, written whole: the parent counts them even after a SIGKILL.
    private func emit(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        bytes.withUnsafeBytes { _ = write(1, $0.baseAddress, $0.count) }
    }
}
