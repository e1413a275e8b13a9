import Foundation
import SwitchyardABI
import SwitchyardTestSupport
import Testing

/// `switchyard stats --config`: the config's transports opened by the command itself.
@Suite("switchyard stats")
struct StatsCommandTests {
    @Test("--config shows what a durable queue stores: its depth, from another process")
    func durableDepth() async throws {
        let directory = try TemporaryDirectory()
        let config = try await durableQueueConfig(in: directory, holding: (0..<3).map { Message(id: "m\($0)", channel: "orders", body: [1]) })
        let result = try await run(BuildProducts.switchyard, ["stats", "--config", config, "--plugins-dir", BuildProducts.directory, "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        let transports = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]]
        let work = transports?.first { $0["name"] as? String == "work" }
        #expect((work?["stats"] as? [String: Any])?["depth"] as? Int == 3, "\(result.stdout)")
        #expect(work?["engine"] as? String == "SQLite (work.db)")
    }

    @Test("--channels shows what a durable queue holds per channel, from another process; as JSON too")
    func channels() async throws {
        let directory = try TemporaryDirectory()
        let held = (0..<3).map { Message(id: "o\($0)", channel: "orders", body: [1]) } + [Message(id: "i0", channel: "invoices", body: [1])]
        let config = try await durableQueueConfig(in: directory, holding: held)
        let table = try await run(BuildProducts.switchyard, ["stats", "--channels", "--config", config, "--plugins-dir", BuildProducts.directory])
        #expect(table.status == 0, "\(table.stderr)")
        let rows = table.stdout.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
        #expect(rows.contains(["work", "orders", "3", "0", "0"]), "\(table.stdout)")
        #expect(rows.contains(["work", "invoices", "1", "0", "0"]), "\(table.stdout)")
        let json = try await run(BuildProducts.switchyard, ["stats", "--channels", "--json", "--config", config, "--plugins-dir", BuildProducts.directory])
        let transports = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [[String: Any]]
        let channels = transports?.first { $0["transport"] as? String == "work" }?["channels"] as? [[String: Any]]
        #expect(channels?.map { $0["channel"] as? String } == ["invoices", "orders"], "\(json.stdout)")
        #expect(channels?.last?["depth"] as? Int == 3 && channels?.last?["in_flight"] as? Int == 0, "\(json.stdout)")
    }

    @Test("--config on an in-memory transport: no zeros that read as empty, but a note that says where its messages are")
    func inMemory() async throws {
        let directory = try TemporaryDirectory()
        let config = try await durableQueueConfig(in: directory, holding: [Message(id: "m0", channel: "orders", body: [1])])
        try (String(contentsOfFile: config, encoding: .utf8).replacingOccurrences(of: "routes: {}", with: "  mem: { plugin: queue }\nroutes: {}"))
            .write(toFile: config, atomically: true, encoding: .utf8)
        let json = try await run(BuildProducts.switchyard, ["stats", "--config", config, "--plugins-dir", BuildProducts.directory, "--json"])
        #expect(json.status == 0, "\(json.stderr)")
        let transports = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [[String: Any]]
        let mem = transports?.first { $0["name"] as? String == "mem" }
        #expect(mem?["stats"] == nil || mem?["stats"] is NSNull, "\(json.stdout)")
        #expect(
            (mem?["stats_error"] as? String)?.contains("in memory: its messages live only in the process that runs it (read it there: switchyard stats --url") == true,
            "\(json.stdout)")
        let work = transports?.first { $0["name"] as? String == "work" }
        #expect((work?["stats"] as? [String: Any])?["depth"] as? Int == 1 && work?["stats_error"] == nil, "\(json.stdout)")
        let table = try await run(BuildProducts.switchyard, ["stats", "--channels", "--config", config, "--plugins-dir", BuildProducts.directory])
        #expect(table.stdout.contains("in memory: its messages live only in the process that runs it (read it there: switchyard stats --channels --url"), "\(table.stdout)")
    }

    @Test("an endpoint that does not answer, or no source at all, is an error that says what to do")
    func errors() async throws {
        let unreachable = try await run(BuildProducts.switchyard, ["stats", "--url", "http://127.0.0.1:1"])
        #expect(unreachable.status == 1 && unreachable.stderr.contains("is the system running with its admin endpoint on?"), "\(unreachable.stderr)")
        let neither = try await run(BuildProducts.switchyard, ["stats"])
        #expect(neither.status != 0 && neither.stderr.contains("--config FILE") && neither.stderr.contains("--url URL"), "\(neither.stderr)")
        // An address without its scheme: this command's usage, not the top level's.
        let bare = try await run(BuildProducts.switchyard, ["stats", "--channels", "--url", "127.0.0.1:9464"])
        #expect(bare.status == 64 && bare.stderr.contains("expected an endpoint's address such as http://127.0.0.1:9464"), "\(bare.stderr)")
        #expect(bare.stderr.contains("switchyard stats"), "\(bare.stderr)")
        let directory = try TemporaryDirectory()
        let missing = try await run(BuildProducts.switchyard, ["stats", "--channels", "--config", directory.file("nope.yaml")])
        #expect(missing.status == 1 && missing.stderr.contains("no config file at \(directory.file("nope.yaml"))"), "\(missing.stderr)")
    }

    @Test("a transport the config cannot create is reported as run reports it: the file, the line and the key")
    func configErrorNamesTheFile() async throws {
        let directory = try TemporaryDirectory()
        let config = directory.file("bad.yaml")
        try "transports:\n  work:\n    plugin: queue\n    config: { max_in_flight: 0 }\n".write(toFile: config, atomically: true, encoding: .utf8)
        for command in [["stats", "--config", config], ["dlq", "list", "--transport", "work", "--channel", "orders", "--config", config]] {
            let result = try await run(BuildProducts.switchyard, command + ["--plugins-dir", BuildProducts.directory])
            #expect(result.status != 0, "\(command): \(result.stdout)")
            #expect(result.stderr.contains("\(config):line 4") && result.stderr.contains("'transports.work.config.max_in_flight'"), "\(command): \(result.stderr)")
        }
    }
}
