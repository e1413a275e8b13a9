// A host process for the drain test: serves a WorkerService from a config file until SIGTERM,
// drains through swift-service-lifecycle, prints how many calls it finished, exits 0.
import Foundation
import Logging
import ServiceLifecycle
import SwitchyardRuntime
import SwitchyardTestServices

/// Writes a line to standard output at once (the test reads it while the process runs).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

let configPath = CommandLine.arguments[1]
let pluginsDirectory = CommandLine.arguments[2]
var logger = Logger(label: "drain-probe")
logger.logLevel = .warning
let system = try SwitchyardActorSystem(configPath: configPath, pluginDirectories: [pluginsDirectory], logger: logger)
let worker = try system.host("worker", as: $Worker.self) { WorkerService(actorSystem: $0, onFirstCall: { say("working") }) }
say("ready")
// As docs/services.md shows it: the system as a service with a drain deadline of its own.
let group = ServiceGroup(
    configuration: .init(services: [.init(service: system.service(drainingWithin: .seconds(30)))], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
try await group.run()
say("finished \(try await worker.finishedCount())")
