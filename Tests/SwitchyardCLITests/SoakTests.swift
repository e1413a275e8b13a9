import Foundation
import SwitchyardTestSupport
import Testing

@testable import SwitchyardSoak

@Suite("Crash soak")
struct SoakTests {
    /// The numbers `switchyard soak --json` prints.
    struct Report: Decodable {
        var published: Int
        var acknowledged: Int
        var handled: Int
        var lost: Int
        var duplicate_effects: Int
        var phantom_follow_ups: Int
        var stuck: Int
        var passed: Bool
        var kills: [String: Int]
    }

    @Test("switchyard soak: producer and consumers SIGKILLed at random; nothing acknowledged is lost, no effect happens twice with the inbox")
    func shortSoak() async throws {
        let result = try await run(BuildProducts.switchyard, ["soak", "--cycles", "4", "--messages", "300", "--json", "--seed", "42"])
        #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)")
        let report = try JSONDecoder().decode(Report.self, from: Data(result.stdout.utf8))
        #expect(report.lost == 0)
        #expect(report.duplicate_effects == 0)
        #expect(report.stuck == 0)
        #expect(report.acknowledged > 0 && report.acknowledged <= report.published)
        #expect(report.handled >= report.acknowledged)
        #expect(report.kills.values.reduce(0, +) == 4)
        #expect(report.passed)
    }

    /// The race behind one CI run's `duplicate_effects: 1`: the soak restarted a killed producer
    /// from the last `try N` line it had read, not the last one the producer wrote, and the
    /// producer published item N again. The child here writes 100,000 lines (more than a pipe
    /// holds, so the last ones are still unread when it exits) and dies; the restart must be made
    /// from its very last line.
    @Test("a restarted producer carries on after the last item its killed predecessor wrote, read or not yet")
    func restartSeesTheLastLine() async throws {
        let directory = try TemporaryDirectory()
        let output = WorkerOutput()
        let worker = try Worker(
            name: "producer", executable: "/bin/sh",
            arguments: ["-c", "awk 'BEGIN { for (i = 0; i < 100000; i++) print \"try \" i }'; kill -9 $$"],
            logDirectory: directory.path, output: output)
        let deadline = Date().addingTimeInterval(60)
        while worker.isRunning && Date() < deadline { try await Task.sleep(for: .milliseconds(1)) }
        var carriesOnFrom = -1
        try await worker.killAndRestart {
            carriesOnFrom = output.nextItem
            return ["-c", "true"]
        }
        #expect(carriesOnFrom == 100_000)
    }

    /// The control the outbox soak's zeros are read against: without `outbox: true` on the work
    /// route, the follow-ups of every seventh item's first attempt (which throws after sending
    /// them) go out although the attempt rolled back. Without kills it is deterministic: items 0,
    /// 7, …, 63 of 70. Were the soak's counting of phantoms broken, this would read 0 too.
    @Test(
        "switchyard soak --follow-ups-without-outbox counts the phantom follow-ups the outbox prevents (the control of the outbox soak)",
        .enabled(if: ProcessInfo.processInfo.environment["SWITCHYARD_SANITIZER"] == nil, "run unsanitized (scripts/test, .ci/run)"))
    func outboxSoakControl() async throws {
        let result = try await run(
            BuildProducts.switchyard, ["soak", "--outbox", "--follow-ups-without-outbox", "--cycles", "0", "--messages", "70", "--json", "--seed", "1"])
        #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)")
        let report = try JSONDecoder().decode(Report.self, from: Data(result.stdout.utf8))
        #expect(report.phantom_follow_ups >= 10, "\(result.stdout)")
        #expect(report.lost == 0 && report.stuck == 0)
        #expect(report.passed, "phantoms are expected in the control, not a failure")
    }

    /// Not under a sanitizer: two more soaks beside the heavy suites there made timing-bound
    /// isolation tests miss their waits; `.ci/run` runs outbox soaks on both engines besides.
    @Test(
        "switchyard soak --outbox: calls commit with the producer's rows and the handler's effects; nothing lost, doubled or sent by a rolled-back handler",
        .enabled(if: ProcessInfo.processInfo.environment["SWITCHYARD_SANITIZER"] == nil, "run unsanitized (scripts/test, .ci/run)"),
        // PostgreSQL's case only where its server is installed: a case that returned early passed
        // without running anything.
        arguments: ["sqlite"] + (PostgresServer.binDirectory != nil ? ["postgres"] : []))
    func outboxSoak(engine: String) async throws {
        var environment: [String: String]?
        var server: PostgresServer?
        if engine == "postgres" {
            server = try await offPool { try PostgresServer() }
            environment = ProcessInfo.processInfo.environment.merging(server!.environment) { $1 }
        }
        let result = try await run(
            BuildProducts.switchyard, ["soak", "--outbox", "--engine", engine, "--cycles", "4", "--messages", "200", "--json", "--seed", "7"],
            environment: environment)
        #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)")
        let report = try JSONDecoder().decode(Report.self, from: Data(result.stdout.utf8))
        #expect(report.lost == 0)
        #expect(report.duplicate_effects == 0)
        #expect(report.phantom_follow_ups == 0)
        #expect(report.stuck == 0)
        #expect(report.handled >= report.acknowledged && report.acknowledged > 0)
        #expect(report.passed)
        _ = server
    }
}
