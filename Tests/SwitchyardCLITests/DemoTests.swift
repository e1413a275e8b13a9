import Foundation
import SwitchyardTestSupport
import Testing

/// `switchyard demo` and `switchyard run`, as real child processes.
@Suite("switchyard demo and run")
struct DemoTests {
    @Test("demo on the embedded default: durable transports, retries, two groups, delayed reminders; exits 0")
    func embeddedDefault() async throws {
        let result = try await run(BuildProducts.switchyard, ["demo", "--orders", "60"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("route    Payments.charge → work (queue)"))
        #expect(result.stdout.contains("route    Reminders.* → later (delay → queue)"))
        // Orders 17 (declined forever) and the flaky ones: 3, 13, …, 53 twice; 5, 12, … once.
        #expect(result.stdout.contains("orders placed                       60"))
        #expect(result.stdout.contains("succeeded                           59"))
        #expect(result.stdout.contains("declined (dead-lettered / refused)  1"))
        #expect(result.stdout.contains("delivered to email                  59"))
        #expect(result.stdout.contains("delivered to analytics              59"))
        #expect(result.stdout.contains("delivered to reminders              59"))
        let expectedRetries = (0..<60).filter { $0 != 17 }.map { $0 % 10 == 3 ? 2 : ($0 % 7 == 5 ? 1 : 0) }.reduce(0, +) + 3
        #expect(result.stdout.contains("payment retries                     \(expectedRetries)"), "\(result.stdout)")
    }

    /// The business outcome a demo run printed: succeeded, declined, payment retries and the
    /// deliveries per group (what must not depend on the routing; latency and timing may).
    static func outcome(_ stdout: String) -> [String] {
        stdout.split(separator: "\n").map(String.init).filter { line in
            ["succeeded ", "declined ", "payment retries ", "delivered to ", "orders placed "].contains { line.hasPrefix($0) }
        }
    }

    /// Configs beyond the bundled ones, each once broken: a delay decorator over a C plugin in a
    /// child process (the host aborted), and the retry plugin owning the payment policy (dead
    /// letters never answered: the callers timed out).
    static let extraConfigs: [String: String] = [
        "delay over isolated example-c": """
        transports:
          work: { plugin: queue }
          events: { plugin: topic }
          isolated: { plugin: example-c, isolation: { mode: process } }
          later: { plugin: delay, inner: isolated }
        routes:
          Orders.place: { transport: work, deadline: 30s }
          Payments.charge: { transport: work, retry: { max_attempts: 4, initial_delay: 20ms, max_delay: 200ms, multiplier: 2 } }
          OrderEvents.*: { transport: events, mode: fire-and-forget }
          Reminders.*: { transport: later, mode: fire-and-forget }
        """,
        "retry decorator": """
        transports:
          base: { plugin: queue }
          work: { plugin: retry, inner: base, config: { max_attempts: 4, initial_delay: 20ms, max_delay: 200ms, multiplier: 2 } }
          events: { plugin: topic }
          later: { plugin: delay, inner: base }
        routes:
          Orders.place: { transport: base, deadline: 30s }
          Payments.charge: { transport: work }
          OrderEvents.*: { transport: events, mode: fire-and-forget }
          Reminders.*: { transport: later, mode: fire-and-forget }
        """,
    ]

    @Test("the same program gives the same business outcome under every bundled config (embedded, direct, NATS, PostgreSQL) and the decorator configs; every call is answered")
    func sameOutcomeEverywhere() async throws {
        let directory = try TemporaryDirectory()
        let nats = try NATSServer(storeDirectory: directory.file("nats"))
        defer { nats.kill() }
        var environment = ProcessInfo.processInfo.environment
        environment["NATS_URL"] = nats.url
        environment["SWITCHYARD_PLUGIN_HOST"] = BuildProducts.switchyard
        var runs: [(name: String, arguments: [String])] = [
            ("embedded", []),
            ("direct.yaml", ["--config", Repository.root + "/examples/orders/direct.yaml"]),
            ("nats.yaml", ["--config", Repository.root + "/examples/orders/nats.yaml"]),
        ]
        var postgres: PostgresServer?
        if PostgresServer.binDirectory != nil {
            let server = try await offPool { try PostgresServer() }
            environment.merge(server.environment) { $1 }
            runs.append(("postgres.yaml", ["--config", Repository.root + "/examples/orders/postgres.yaml"]))
            postgres = server
        }
        defer { withExtendedLifetime(postgres) {} }
        for (name, yaml) in Self.extraConfigs.sorted(by: { $0.key < $1.key }) {
            let path = directory.file(name.replacingOccurrences(of: " ", with: "-") + ".yaml")
            try yaml.write(toFile: path, atomically: true, encoding: .utf8)
            runs.append((name, ["--config", path]))
        }
        var baseline: [String]?
        for (name, arguments) in runs {
            let result = try await run(BuildProducts.switchyard, ["demo", "--orders", "60"] + arguments, environment: environment)
            #expect(result.status == 0, "\(name): \(result.stdout) \(result.stderr)")
            #expect(!result.stdout.contains("unexpected errors"), "\(name): \(result.stdout)")
            let outcome = Self.outcome(result.stdout)
            #expect(outcome.count == 7, "\(name): \(result.stdout)")
            if let baseline {
                #expect(outcome == baseline, "\(name) differs from the embedded run")
            } else {
                baseline = outcome
            }
        }
    }

    @Test("demo leaves nothing in the temporary directory and prints a clean path; a SWITCHYARD_DATA the user set is kept")
    func demoCleansUp() async throws {
        let temporary = try TemporaryDirectory()
        var environment = ProcessInfo.processInfo.environment
        environment["TMPDIR"] = temporary.path
        environment["SWITCHYARD_DATA"] = nil
        let result = try await run(BuildProducts.switchyard, ["demo", "--orders", "5"], environment: environment)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(!result.stdout.contains("//switchyard-demo-"), "\(result.stdout)")
        let left = try FileManager.default.contentsOfDirectory(atPath: temporary.path)
        #expect(left.isEmpty, "left in TMPDIR: \(left)")
        let kept = temporary.file("mine")
        environment["SWITCHYARD_DATA"] = kept
        #expect(try await run(BuildProducts.switchyard, ["demo", "--orders", "5"], environment: environment).status == 0)
        let stores = try FileManager.default.contentsOfDirectory(atPath: kept)
        #expect(!stores.isEmpty)
        // Every connection closed at the end (the inbox's too): SQLite removed the WAL files.
        #expect(!stores.contains { $0.hasSuffix("-wal") || $0.hasSuffix("-shm") }, "\(stores)")
    }

    @Test("demo and run refuse a bad config with the key and line, exit 1")
    func badConfig() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("bad.yaml")
        try "transports:\n  q: { plugin: queue }\nroutes:\n  Orders.place: { transport: q, delay: 5s }\n".write(toFile: path, atomically: true, encoding: .utf8)
        for command in [["demo", "--config", path], ["run", "--config", path]] {
            let result = try await run(BuildProducts.switchyard, command)
            #expect(result.status == 1)
            #expect(result.stderr.contains("line 4: 'routes.Orders.place.delay'"), "\(result.stderr)")
        }
    }

    @Test("run starts every configured transport, routed or not: a bad one exits 1 with its key and line")
    func runChecksUnroutedTransports() async throws {
        let directory = try TemporaryDirectory()
        for (yaml, expected) in [
            ("transports:\n  mem:\n    plugin: queue\n    config:\n      shards: 0\n", "line 5: 'transports.mem.config.shards'"),
            ("transports:\n  held:\n    plugin: queuez\n", "'transports.held'"),
        ] {
            let path = directory.file("unrouted.yaml")
            try yaml.write(toFile: path, atomically: true, encoding: .utf8)
            let result = try await run(BuildProducts.switchyard, ["run", "--config", path, "--allow-empty"])
            #expect(result.status == 1, "\(result.stderr)")
            #expect(result.stderr.contains(expected), "\(result.stderr)")
        }
    }

    @Test("run with nothing to host says so and exits 2; call refuses a Swift service's route before sending anything")
    func nothingToHostAndSwiftRoutes() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("swift-only.yaml")
        try "transports:\n  q: { plugin: queue, config: { path: \"\(directory.file("q.db"))\" } }\nroutes:\n  '*': { transport: q, deadline: 120s }\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        let started = Date()
        let call = try await run(BuildProducts.switchyard, ["call", "--config", path, "Inventory.reserve", "widget", "2"])
        #expect(call.status == 1)
        #expect(call.stderr.contains("'Inventory.reserve' is not a function of a native module") && call.stderr.contains("nothing was sent"), "\(call.stderr)")
        // Far below the route's 120 s deadline, however slow this machine (a sanitizer, CI load).
        #expect(Date().timeIntervalSince(started) < 60, "refused at once, not after the 120 s deadline")
        // Nothing was published: the queue file was never even created.
        #expect(!FileManager.default.fileExists(atPath: directory.file("q.db")))
        let run1 = try await run(BuildProducts.switchyard, ["run", "--config", path])
        #expect(run1.status == 2)
        #expect(run1.stderr.contains("nothing to host") && run1.stderr.contains("docs/services.md") && run1.stderr.contains("--allow-empty"), "\(run1.stderr)")
        // It never ran: no start or drain lines before the error, as if it had.
        #expect(!(run1.stdout + run1.stderr).contains("draining"), "\(run1.stdout)\(run1.stderr)")
    }

    @Test("run, console and demo --serve refuse an admin port in use before they open any transport, exit 1")
    func adminPortInUseStopsBeforeStart() async throws {
        // A listening socket of this test's own holds the port.
        let holder = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(holder) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        try #require(withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(holder, $0, length) } } == 0)
        try #require(listen(holder, 1) == 0)
        try #require(withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(holder, $0, &length) } } == 0)
        let port = Int(UInt16(bigEndian: address.sin_port))
        let directory = try TemporaryDirectory()
        let path = directory.file("admin.yaml")
        try "transports:\n  q: { plugin: queue, config: { path: \"\(directory.file("q.db"))\" } }\nroutes:\n  '*': { transport: q }\nadmin:\n  listen: 127.0.0.1:\(port)\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        for command in [
            ["run", "--config", path, "--allow-empty"], ["console", "--config", path], ["demo", "--serve", "--admin", "127.0.0.1:\(port)"],
            // Without --admin, the config's own address: as console takes it.
            ["demo", "--serve", "--config", path],
        ] {
            let result = try await run(BuildProducts.switchyard, command)
            #expect(result.status == 1, "\(command): \(result.stderr)")
            #expect(result.stderr.contains("127.0.0.1:\(port): the port is in use") && result.stderr.contains("port 0 picks a free one"), "\(command): \(result.stderr)")
            // Refused before any transport opened: the queue's store was never created.
            #expect(!FileManager.default.fileExists(atPath: directory.file("q.db")), "\(command)")
        }
    }

    @Test("run serves until SIGTERM, then drains and exits 0")
    func runDrainsOnSIGTERM() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("run.yaml")
        try "transports:\n  q: { plugin: queue, config: { path: \"\(directory.file("q.db"))\" } }\nroutes:\n  '*': { transport: q, deadline: 120s }\n".write(
            toFile: path, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: BuildProducts.switchyard)
        process.arguments = ["run", "--config", path, "--log-level", "info", "--allow-empty"]
        let err = Pipe()
        process.standardError = err
        process.standardOutput = err
        let output = LineBuffer()
        let follower = err.follow { output.append([$0]) }
        try process.run()
        #expect(await eventually(20) { output.all.joined().contains("running; SIGTERM or SIGINT drains and stops") })
        kill(process.processIdentifier, SIGTERM)
        #expect(await eventually(20) { !process.isRunning })
        #expect(process.terminationStatus == 0)
        follower.finish()  // "stopped", its last line, may still be in the pipe
        #expect(output.all.joined().contains("stopped"), "\(output.all.joined())")
    }
}
