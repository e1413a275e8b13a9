import Foundation
import SwitchyardABI
import SwitchyardHost
import SwitchyardLoader
import SwitchyardTestSupport
import Testing

/// `switchyard stats --config`: the config's transports opened by the command itself.
@Suite("switchyard stats")
struct StatsCommandTests {
    @Test("--config shows what a durable queue stores: its depth, from another process")
    func durableDepth() async throws {
        let directory = try TemporaryDirectory()
        let database = directory.file("work.db")
        let config = directory.file("switchyard.yaml")
        try "transports:\n  work: { plugin: queue, config: { path: \(database) } }\nroutes: {}\n".write(toFile: config, atomically: true, encoding: .utf8)
        try await offPool {
            let transport = try Transport(name: "work", plugin: try BuildProducts.plugin("queue"), configJSON: #"{"path": "\#(database)"}"#)
            for index in 0..<3 { try transport.client.publish(Message(id: "m\(index)", channel: "orders", body: [1])) }
            transport.close()
        }
        let result = try await run(BuildProducts.switchyard, ["stats", "--config", config, "--plugins-dir", BuildProducts.directory, "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        let transports = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]]
        let work = transports?.first { $0["name"] as? String == "work" }
        #expect((work?["stats"] as? [String: Any])?["depth"] as? Int == 3, "\(result.stdout)")
        #expect(work?["engine"] as? String == "SQLite (work.db)")
    }

    @Test("an endpoint that does not answer, or no source at all, is an error that says what to do")
    func errors() async throws {
        let unreachable = try await run(BuildProducts.switchyard, ["stats", "--url", "http://127.0.0.1:1"])
        #expect(unreachable.status == 1 && unreachable.stderr.contains("is the system running with its admin endpoint on?"), "\(unreachable.stderr)")
        let neither = try await run(BuildProducts.switchyard, ["stats"])
        #expect(neither.status != 0 && neither.stderr.contains("--config FILE") && neither.stderr.contains("--url URL"), "\(neither.stderr)")
    }
}
