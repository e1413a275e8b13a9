import Foundation
import SwitchyardABI
import SwitchyardConformance
import SwitchyardHost
import SwitchyardLoader
import SwitchyardRuntime
import SwitchyardTestSupport
import Testing

@Suite("switchyard dlq")
struct DeadLetterToolTests {
    /// A durable queue with three dead letters on orders.dlq, configured as transport 'orders'.
    func setUp(_ dir: TemporaryDirectory) async throws -> String {
        let db = dir.file("orders.db")
        try """
        transports:
          orders:
            plugin: queue
            config:
              path: \(db)
              visibility_timeout: 30s
        """.write(toFile: dir.file("switchyard.yaml"), atomically: true, encoding: .utf8)
        let queue = try Transport(name: "orders", plugin: try BuildProducts.plugin("queue"), configJSON: #"{"path": "\#(db)"}"#)
        defer { queue.close() }
        let inbox = Collector()
        _ = try queue.client.subscribe(
            SubscribeOptions(channel: "orders"),
            handler: inbox.handler(client: queue.client) { m in
                .deadLetter(reason: "payment declined for \(m.id)")
            })
        for id in ["o-1", "o-2", "o-3"] { try queue.client.publish(Message(id: id, channel: "orders", body: Array("order \(id)".utf8))) }
        #expect(await eventually { inbox.count >= 3 })
        // The collector records a delivery before it settles it: wait for the dead letters
        // themselves, not a fixed time (a preempted handler's would be released at the close).
        #expect(await eventually { ((try? queue.client.stats()) ?? nil)?.deadLettered == 3 })
        return dir.file("switchyard.yaml")
    }

    func dlq(_ arguments: [String], config: String) async throws -> ProcessResult {
        try await run(BuildProducts.switchyard, ["dlq"] + arguments + ["--config", config, "--transport", "orders", "--channel", "orders"])
    }

    @Test("list, show, replay and purge, end to end on a durable queue")
    func endToEnd() async throws {
        let dir = try TemporaryDirectory()
        let config = try await setUp(dir)
        struct Letter: Decodable { let id, reason, channel: String; let attempts: Int; let history: [String] }

        let list = try await dlq(["list", "--json"], config: config)
        #expect(list.status == 0, "\(list.stderr)")
        let letters = try JSONDecoder().decode([Letter].self, from: Data(list.stdout.utf8))
        #expect(Set(letters.map(\.id)) == ["o-1", "o-2", "o-3"])
        #expect(letters.first { $0.id == "o-2" }?.reason == "payment declined for o-2")
        #expect(letters.allSatisfy { $0.channel == "orders" && $0.attempts == 1 && $0.history.count == 1 })

        let show = try await dlq(["show", "o-1"], config: config)
        #expect(show.status == 0)
        #expect(show.stdout.contains("order o-1"))

        // Listing does not consume: the letters are still there.
        #expect(try JSONDecoder().decode([Letter].self, from: Data(try await dlq(["list", "--json"], config: config).stdout.utf8)).count == 3)

        let replay = try await dlq(["replay", "o-1"], config: config)
        #expect(replay.status == 0, "\(replay.stderr)")
        #expect(replay.stdout.contains("replayed 1 message"))

        let purge = try await dlq(["purge", "o-2"], config: config)
        #expect(purge.stdout.contains("purged 1 message"))

        let left = try JSONDecoder().decode([Letter].self, from: Data(try await dlq(["list", "--json"], config: config).stdout.utf8))
        #expect(left.map(\.id) == ["o-3"])

        // o-1 is back on its channel, clean, with its body.
        let queue = try Transport(name: "orders", plugin: try BuildProducts.plugin("queue"), configJSON: #"{"path": "\#(dir.file("orders.db"))"}"#)
        defer { queue.close() }
        let inbox = Collector()
        _ = try queue.client.subscribe(SubscribeOptions(channel: "orders"), handler: inbox.handler(client: queue.client))
        #expect(await eventually { inbox.count >= 1 })
        let back = try #require(inbox.received.first?.message)
        #expect(back.id == "o-1" && back.body == Array("order o-1".utf8) && back.attempt == 1)
        #expect(!back.headers.contains { $0.key.hasPrefix("sy-dlq-") })
    }

    /// On a topic each subscriber group's dead letter of a message has the message's id: purging
    /// one group's by id deleted every group's. An id with copies of several groups needs --group.
    @Test("on a topic, an id dead-lettered by several groups needs --group: purge acts on that group's copy alone; show shows each")
    func topicCopiesNeedAGroup() async throws {
        let dir = try TemporaryDirectory()
        let db = dir.file("events.db")
        let config = dir.file("switchyard.yaml")
        try "transports:\n  events: { plugin: topic, config: { path: \"\(db)\" } }\n".write(toFile: config, atomically: true, encoding: .utf8)
        do {
            let topic = try Transport(name: "events", plugin: try BuildProducts.plugin("topic"), configJSON: #"{"path": "\#(db)"}"#)
            defer { topic.close() }
            for group in ["a", "b"] {
                _ = try topic.client.subscribe(
                    SubscribeOptions(channel: "alerts", group: group), handler: Collector().handler(client: topic.client) { _ in .deadLetter(reason: "failed in \(group)") })
            }
            try topic.client.publish(Message(id: "e-1", channel: "alerts"))
            #expect(await eventually { ((try? topic.client.stats()) ?? nil)?.deadLettered == 2 })
        }
        func dlq(_ arguments: [String]) async throws -> ProcessResult {
            try await run(BuildProducts.switchyard, ["dlq"] + arguments + ["--config", config, "--transport", "events", "--channel", "alerts"])
        }
        let show = try await dlq(["show", "e-1"])
        #expect(show.status == 0 && show.stdout.contains("group:           a") && show.stdout.contains("group:           b"), "\(show.stdout)\(show.stderr)")
        let refused = try await dlq(["purge", "e-1"])
        #expect(refused.status == 1 && refused.stderr.contains("--group") && refused.stderr.contains("groups: a, b"), "\(refused.stderr)")
        let purged = try await dlq(["purge", "e-1", "--group", "a"])
        #expect(purged.status == 0 && purged.stdout.contains("purged 1 message"), "\(purged.stdout)\(purged.stderr)")
        let left = try await dlq(["list"])
        #expect(left.stdout.contains("e-1") && left.stdout.contains("b") && !left.stdout.contains("failed in a"), "\(left.stdout)")
        // Ids and --all together: refused (--all won silently, acting on the whole channel).
        let both = try await dlq(["purge", "e-1", "--all"])
        #expect(both.status != 0 && both.stderr.contains("not both"), "\(both.stderr)")
        #expect(try await dlq(["list"]).stdout.contains("e-1"))
    }

    @Test("a channel with no dead letters (a typo) is told which channels of the transport have some")
    func mistypedChannel() async throws {
        let dir = try TemporaryDirectory()
        let config = try await setUp(dir)
        let typo = try await run(BuildProducts.switchyard, ["dlq", "list", "--config", config, "--transport", "orders", "--channel", "ordres"])
        #expect(typo.status == 0, "\(typo.stderr)")
        #expect(typo.stdout.contains("No dead letters on ordres.dlq"), "\(typo.stdout)")
        #expect(typo.stdout.contains("Transport 'orders' holds dead letters of: orders (3). Pass one of those as --channel."), "\(typo.stdout)")
        // With --json the answer stays the admin API's (an empty array); the hint goes to stderr.
        let json = try await run(
            BuildProducts.switchyard, ["dlq", "list", "--json", "--config", config, "--transport", "orders", "--channel", "ordres"])
        #expect(json.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "[\n\n]" || json.stdout.contains("[]") || json.stdout.contains("[\n]"), "\(json.stdout)")
        #expect(json.stderr.contains("holds dead letters of: orders (3)"), "\(json.stderr)")
        _ = try await dlq(["purge", "--all"], config: config)
        let none = try await dlq(["list"], config: config)
        #expect(none.stdout.contains("Transport 'orders' holds no dead letters on any channel."), "\(none.stdout)")
    }

    @Test("an in-memory transport's dead letters live in its process: dlq says where to read them, not that there are none")
    func inMemoryTransport() async throws {
        let dir = try TemporaryDirectory()
        let config = dir.file("switchyard.yaml")
        try "transports:\n  work: { plugin: queue }\n".write(toFile: config, atomically: true, encoding: .utf8)
        let result = try await run(BuildProducts.switchyard, ["dlq", "list", "--config", config, "--transport", "work", "--channel", "orders"])
        #expect(result.status == 1 && result.stderr.contains("in memory") && result.stderr.contains("/api/dead-letters/work/orders"), "\(result.stderr)")
    }

    @Test("errors: unknown transport, no dead-letter support, unknown id")
    func errors() async throws {
        let dir = try TemporaryDirectory()
        let config = try await setUp(dir)
        let unknown = try await run(BuildProducts.switchyard, ["dlq", "list", "--config", config, "--transport", "nope", "--channel", "x"])
        // The command line is well formed: exit 1 and the reason, not a usage error (64) with the usage.
        #expect(unknown.status == 1)
        #expect(unknown.stderr.contains("no transport named 'nope'"))
        #expect(!unknown.stderr.contains("Usage:"), "\(unknown.stderr)")
        let missing = try await dlq(["show", "o-9"], config: config)
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("no dead letter with id 'o-9'"))
        try "transports:\n  plain:\n    plugin: example-c\n".write(toFile: dir.file("plain.yaml"), atomically: true, encoding: .utf8)
        let plain = try await run(BuildProducts.switchyard, ["dlq", "list", "--config", dir.file("plain.yaml"), "--transport", "plain", "--channel", "x"])
        #expect(plain.status == 1)
        #expect(plain.stderr.contains("has no dead-letter support") && !plain.stderr.contains("Usage:"), "\(plain.stderr)")

        // Ids that are not there: the ones that are get purged, the rest named, and it fails.
        let partly = try await dlq(["purge", "o-3", "o-404"], config: config)
        #expect(partly.status == 1)
        #expect(partly.stdout.contains("purged 1 message"))
        #expect(partly.stderr.contains("no dead letter with id 'o-404'"), "\(partly.stderr)")
        let replayMissing = try await dlq(["replay", "o-3"], config: config)  // purged just now
        #expect(replayMissing.status == 1)
        #expect(replayMissing.stderr.contains("no dead letter with id 'o-3'"), "\(replayMissing.stderr)")

        // A store that is not there is refused, not created: a mistyped path would read as empty.
        let gone = dir.file("elsewhere/orders.db")
        try FileManager.default.createDirectory(atPath: dir.file("elsewhere"), withIntermediateDirectories: true)
        try "transports:\n  orders:\n    plugin: queue\n    config: { path: \(gone) }\n".write(
            toFile: dir.file("wrong.yaml"), atomically: true, encoding: .utf8)
        let wrong = try await dlq(["list"], config: dir.file("wrong.yaml"))
        #expect(wrong.status != 0)
        #expect(wrong.stderr.contains("no store at \(gone)"), "\(wrong.stderr)")
        #expect(!wrong.stderr.contains("Usage:"), "not a usage error: \(wrong.stderr)")
        #expect(!FileManager.default.fileExists(atPath: gone))
    }

    @Test("--limit: list says when there may be more; purge --all goes on in passes until the channel is empty")
    func limitAndPasses() async throws {
        let dir = try TemporaryDirectory()
        let config = try await setUp(dir)  // three dead letters
        let list = try await dlq(["list", "--limit", "2"], config: config)
        #expect(list.status == 0, "\(list.stderr)")
        #expect(list.stderr.contains("showing the first 2 dead letters; there may be more"), "\(list.stderr)")
        let all = try await dlq(["list"], config: config)
        #expect(!all.stderr.contains("there may be more"), "\(all.stderr)")

        // Held two at a time: the first pass purges two, the second the last one.
        let purge = try await dlq(["purge", "--all", "--limit", "2"], config: config)
        #expect(purge.status == 0, "\(purge.stderr)")
        #expect(purge.stdout.contains("purged 3 messages"), "\(purge.stdout)")
        let empty = try await dlq(["list"], config: config)
        #expect(empty.stdout.contains("No dead letters on orders.dlq"), "\(empty.stdout)")

        let zero = try await dlq(["list", "--limit", "0"], config: config)
        #expect(zero.status != 0 && zero.stderr.contains("--limit must be at least 1"), "\(zero.stderr)")
    }

    @Test("without --config it is a usage error (exit 64) naming --config as required and what it is; the usage line shows it required")
    func needsConfig() async throws {
        let result = try await run(BuildProducts.switchyard, ["dlq", "list", "--transport", "orders", "--channel", "orders"])
        #expect(result.status == 64)
        #expect(
            result.stderr.contains("Missing expected argument '--config <file>'") && result.stderr.contains("The config file that declares the transport")
                && result.stderr.contains(" --config <file> --transport"), "\(result.stderr)")
        let stats = try await run(BuildProducts.switchyard, ["stats"])
        #expect(stats.status != 0)
        #expect(stats.stderr.contains("--config FILE") && stats.stderr.contains("--url URL"), "\(stats.stderr)")
    }

    @Test("--json writes the admin API's field names")
    func jsonFieldNames() async throws {
        let dir = try TemporaryDirectory()
        let config = try await setUp(dir)
        let list = try await dlq(["list", "--json"], config: config)
        #expect(list.status == 0, "\(list.stderr)")
        #expect(list.stdout.contains("\"dead_lettered_at\""), "\(list.stdout)")
        #expect(!list.stdout.contains("deadLetteredAt"))
    }

    @Test("an admin endpoint beyond loopback needs its token where it is served: dlq reads the file without it, run refuses before it starts")
    func adminTokenOnlyWhereServed() async throws {
        let dir = try TemporaryDirectory()
        let config = try await setUp(dir)
        let text = try String(contentsOfFile: config, encoding: .utf8)
        try (text + "\nadmin:\n  listen: 0.0.0.0:0\n").write(toFile: config, atomically: true, encoding: .utf8)
        var environment = ProcessInfo.processInfo.environment
        environment["SWITCHYARD_ADMIN_TOKEN"] = nil
        let list = try await run(
            BuildProducts.switchyard, ["dlq", "list", "--config", config, "--transport", "orders", "--channel", "orders"], environment: environment)
        #expect(list.status == 0, "\(list.stderr)")
        #expect(list.stdout.contains("o-1"), "\(list.stdout)")
        let host = try await run(BuildProducts.switchyard, ["run", "--config", config, "--allow-empty"], environment: environment)
        #expect(host.status == 1)
        #expect(host.stderr.contains("'admin.token': is required to listen on 0.0.0.0"), "\(host.stderr)")
        #expect(host.stderr.contains("line 8"), "\(host.stderr)")
        // The console too, before it opens a transport (its outbox relays would run meanwhile).
        let console = try await run(BuildProducts.switchyard, ["console", "--config", config], environment: environment)
        #expect(console.status == 1)
        #expect(console.stderr.contains("'admin.token': is required to listen on 0.0.0.0"), "\(console.stderr)")
        let beyond = try await run(BuildProducts.switchyard, ["console", "--config", config, "--admin", "0.0.0.0:0"], environment: environment)
        #expect(beyond.status == 1, "\(beyond.stderr)")
        // The demo as well, before its system starts (it used to start, print its routes, then exit 2).
        let demo = try await run(BuildProducts.switchyard, ["demo", "--serve", "--admin", "0.0.0.0:0"], environment: environment)
        #expect(demo.status == 1 && demo.stderr.contains("SWITCHYARD_ADMIN_TOKEN") && !demo.stdout.contains("route "), "\(demo.stdout)\(demo.stderr)")
        // Without --admin the demo serves the config's own section, as the console does: refused
        // the same way, naming the file's key, before its system starts.
        let demoOfConfig = try await run(BuildProducts.switchyard, ["demo", "--serve", "--config", config], environment: environment)
        #expect(demoOfConfig.status == 1, "\(demoOfConfig.stdout)\(demoOfConfig.stderr)")
        #expect(demoOfConfig.stderr.contains("'admin.token': is required to listen on 0.0.0.0"), "\(demoOfConfig.stderr)")
        #expect(demoOfConfig.stderr.contains("--admin 127.0.0.1:PORT") && !demoOfConfig.stdout.contains("route "), "\(demoOfConfig.stdout)\(demoOfConfig.stderr)")
    }
}
