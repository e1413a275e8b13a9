import Foundation
import SwitchyardConfig
import SwitchyardRuntime
import SwitchyardTestServices
import SwitchyardTestSupport
import Testing

/// Calls by readable name (`readable_targets`): the receiver maps `Worker.work(_:milliseconds:)`
/// to its hosted protocol's own method, from what is compiled into the process, and refuses
/// everything else with the reason.
@Suite("Calls by readable name")
struct ReadableTargetTests {
    /// A config over one SQLite queue shared by the systems of a test; `route` is the Worker route's extra keys.
    static func config(_ directory: TemporaryDirectory, route: String) throws -> SwitchyardConfig {
        let yaml = """
            transports:
              work: { plugin: queue, config: { path: "\(directory.file("work.db"))" } }
            routes:
              Worker.*: { transport: work, deadline: 20s\(route) }

            """
        return try SwitchyardConfig.parse(yaml: yaml, baseDirectory: "/", environment: [:])
    }

    static func system(_ config: SwitchyardConfig) async throws -> SwitchyardActorSystem {
        try await offPool { try SwitchyardActorSystem(config: config, pluginDirectories: [BuildProducts.directory]) }
    }

    @Test("a hosted method is called by its readable name, full or base, with JSON arguments; switchyard call does the same from a shell")
    func calls() async throws {
        let directory = try TemporaryDirectory()
        let config = try Self.config(directory, route: ", encoding: json, readable_targets: true")
        let host = try await Self.system(config)
        try host.host("worker", as: $Worker.self) { WorkerService(actorSystem: $0) }
        #expect(try await host.callReadable("Worker.work(_:milliseconds:)", actor: "worker", argumentsJSON: ["7", "0"]) == "7")
        #expect(try await host.callReadable("Worker.work", actor: "worker", argumentsJSON: ["8", "1"]) == "8")

        // From another process, through the same SQLite queue.
        let file = directory.file("switchyard.yaml")
        try
            "transports:\n  work: { plugin: queue, config: { path: \"\(directory.file("work.db"))\" } }\nroutes:\n  Worker.*: { transport: work, deadline: 20s, encoding: json, readable_targets: true }\n"
            .write(toFile: file, atomically: true, encoding: .utf8)
        let shell = try await run(
            BuildProducts.switchyard, ["call", "--config", file, "--plugins-dir", BuildProducts.directory, "Worker.work", "42", "0"])
        #expect(shell.status == 0 && shell.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "42", "\(shell.stdout)\(shell.stderr)")
        await host.shutdown()
    }

    @Test("the receiver refuses what it should, saying why, and the caller hears it: no such method, wrong arguments, a route without readable_targets, a source not listed")
    func refusals() async throws {
        let directory = try TemporaryDirectory()
        let caller = try await Self.system(try Self.config(directory, route: ", encoding: json, readable_targets: true"))
        // The host's own route for Worker decides, not the caller's.
        for (hostRoute, expected) in [
            (", encoding: json", "takes no calls by readable name"),
            (", encoding: json, readable_targets: { sources: [python-shop] }", "may not call Worker.work(_:milliseconds:) by readable name"),
        ] {
            let host = try await Self.system(try Self.config(directory, route: hostRoute))
            try host.host("worker", as: $Worker.self) { WorkerService(actorSystem: $0) }
            let error = await #expect(throws: SwitchyardError.self) {
                _ = try await caller.callReadable("Worker.work(_:milliseconds:)", actor: "worker", argumentsJSON: ["1", "0"])
            }
            #expect(error?.code == .rejected && error?.reason.contains(expected) == true, "\(String(describing: error))")
            await host.shutdown()
        }
        let host = try await Self.system(try Self.config(directory, route: ", encoding: json, readable_targets: true"))
        try host.host("worker", as: $Worker.self) { WorkerService(actorSystem: $0) }
        let unknown = await #expect(throws: SwitchyardError.self) {
            _ = try await caller.callReadable("Worker.vanish(_:)", actor: "worker", argumentsJSON: ["1"])
        }
        #expect(unknown?.code == .rejected && unknown?.reason.contains("has no method 'Worker.vanish(_:)'") == true, "\(String(describing: unknown))")
        #expect(unknown?.reason.contains("Worker.work(_:milliseconds:)") == true, "the refusal lists what it serves")
        let wrongType = await #expect(throws: SwitchyardError.self) {
            _ = try await caller.callReadable("Worker.work", actor: "worker", argumentsJSON: [#""seven""#, "0"])
        }
        #expect(wrongType?.code == .rejected, "\(String(describing: wrongType))")
        // Refused before anything is sent: not JSON, no readable_targets on the caller's route.
        let notJSON = await #expect(throws: SwitchyardError.self) {
            _ = try await caller.callReadable("Worker.work", actor: "worker", argumentsJSON: ["widget", "0"])
        }
        #expect(notJSON?.code == .routing && notJSON?.reason.contains("argument 1 is not JSON") == true)
        let plain = try await Self.system(try Self.config(directory, route: ""))
        let off = await #expect(throws: SwitchyardError.self) {
            _ = try await plain.callReadable("Worker.work", actor: "worker", argumentsJSON: ["1", "0"])
        }
        #expect(off?.code == .routing && off?.reason.contains("set readable_targets: true") == true)
        await host.shutdown()
        await caller.shutdown()
        await plain.shutdown()
    }

    @Test(
        "readable_targets needs encoding: json and a transport; its sources are a list",
        arguments: [
            (", readable_targets: true", "routes.Worker.*.readable_targets", "needs encoding: json"),
            (", encoding: json, readable_targets: { sources: [] }", "routes.Worker.*.readable_targets.sources", "name at least one source"),
            (", encoding: json, readable_targets: { source: x }", "routes.Worker.*.readable_targets.source", "unknown key"),
        ])
    func configErrors(_ route: String, _ key: String, _ message: String) throws {
        let directory = try TemporaryDirectory()
        let error = #expect(throws: ConfigError.self) { _ = try Self.config(directory, route: route) }
        #expect(error?.key == key && error?.message.contains(message) == true, "\(String(describing: error))")
    }
}
