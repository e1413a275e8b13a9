import Foundation
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

    @Test("demo with every route direct: the same code, no transports")
    func direct() async throws {
        let result = try await run(BuildProducts.switchyard, ["demo", "--orders", "60", "--config", Repository.root + "/examples/orders/direct.yaml"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("route    * → direct (in process)"))
        #expect(result.stdout.contains("payment retries                     0"))
        #expect(result.stdout.contains("orders placed                       60"))
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

    @Test("run serves until SIGTERM, then drains and exits 0")
    func runDrainsOnSIGTERM() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("run.yaml")
        try "transports:\n  q: { plugin: queue, config: { path: \"\(directory.file("q.db"))\" } }\nroutes:\n  '*': { transport: q }\n".write(toFile: path, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: BuildProducts.switchyard)
        process.arguments = ["run", "--config", path, "--log-level", "info"]
        let err = Pipe()
        process.standardError = err
        process.standardOutput = err
        let output = LineBuffer()
        err.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            if !data.isEmpty { output.append([String(decoding: data, as: UTF8.self)]) }
        }
        try process.run()
        #expect(await eventually(20) { output.all.joined().contains("running; SIGTERM or SIGINT drains and stops") })
        kill(process.processIdentifier, SIGTERM)
        #expect(await eventually(20) { !process.isRunning })
        #expect(process.terminationStatus == 0)
        #expect(await eventually(2) { output.all.joined().contains("stopped") }, "\(output.all.joined())")
    }
}
