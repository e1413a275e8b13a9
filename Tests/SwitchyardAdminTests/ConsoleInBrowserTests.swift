import Foundation
import SwitchyardTestSupport
import Synchronization
import Testing

/// The console as a person uses it: `switchyard demo --serve` with live traffic, driven in
/// Debian's headless Chromium (Tests/Browser/console_check.py, over the DevTools protocol).
@Suite("Console in a browser")
struct ConsoleInBrowserTests {
    static let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first { FileManager.default.isExecutableFile(atPath: $0) }

    @Test(
        "the route map lists every route of the orders example, counters and rates move, a dead letter opens and is replayed from the page (and goes through)",
        .disabled(if: chromium == nil, "Chromium is not installed (scripts/test installs Debian's chromium)"),
        .disabled(if: ProcessInfo.processInfo.environment["SWITCHYARD_SANITIZER"] != nil, "the plain run covers it: the browser is not what a sanitizer checks"))
    func console() async throws {
        let directory = try TemporaryDirectory()
        let token = "console-test-\(UInt32.random(in: 0...UInt32.max))"
        let demo = Process()
        demo.executableURL = URL(fileURLWithPath: BuildProducts.switchyard)
        demo.arguments = ["demo", "--serve", "--admin", "127.0.0.1:0", "--rate", "20"]
        var environment = ProcessInfo.processInfo.environment
        environment["SWITCHYARD_ADMIN_TOKEN"] = token
        environment["SWITCHYARD_DATA"] = directory.path
        demo.environment = environment
        let output = Pipe()
        demo.standardOutput = output
        demo.standardError = output
        let lines = LineBuffer()
        let follower = output.follow { text in lines.feed(text) }
        try demo.run()
        defer { if demo.isRunning { kill(demo.processIdentifier, SIGKILL) } }
        let console = try Regex(#"console\s+(http://127\.0\.0\.1:\d+)/"#)
        var base: String?
        for _ in 0..<600 where base == nil {
            base = lines.all.lazy.compactMap { try? console.firstMatch(in: $0)?.output[1].substring.map(String.init) }.first
            if base == nil { try await Task.sleep(for: .milliseconds(100)) }
        }
        let url = try #require(base, "the demo printed no console address: \(lines.all.joined(separator: "\n"))")
        // A few seconds of traffic, so that some payments have been dead-lettered.
        try await Task.sleep(for: .seconds(4))

        let screenshot = ProcessInfo.processInfo.environment["SWITCHYARD_CONSOLE_SCREENSHOT"] ?? directory.file("console.png")
        let drive = try await run(
            "/usr/bin/python3", [Repository.root + "/Tests/Browser/console_check.py", Self.chromium!, url, token, screenshot])
        #expect(drive.status == 0, "the browser run failed: \(drive.stderr)")
        let seen = try #require(try JSONSerialization.jsonObject(with: Data(drive.stdout.utf8)) as? [String: Any], "\(drive.stdout)")
        let first = try #require(seen["first"] as? [String: Any])
        let second = try #require(seen["second"] as? [String: Any])

        // The route map: every route of examples/orders/switchyard.yaml, and its transports.
        #expect(Set(first["routeMap"] as? [String] ?? []) == ["Orders.place", "Payments.charge", "OrderEvents.*", "Reminders.*"])
        #expect(Set(first["mapTransports"] as? [String] ?? []) == ["work", "events", "later"])
        #expect(second["state"] as? String == "running")

        // Counters move between two looks 2.5 s apart, and the second look shows a rate.
        let headings = second["transportHeadings"] as? [String] ?? []
        let publishedColumn = try #require(headings.firstIndex(of: "published"))
        let rateColumn = try #require(headings.firstIndex(of: "published/s"))
        let depthColumn = try #require(headings.firstIndex(of: "depth"))
        func row(_ look: [String: Any], _ transport: String) -> [String] {
            (look["transports"] as? [[String]] ?? []).first { $0.first == transport } ?? []
        }
        let before = Int(row(first, "work")[safe: publishedColumn] ?? "") ?? -1
        let after = Int(row(second, "work")[safe: publishedColumn] ?? "") ?? -1
        #expect(before >= 0 && after > before, "published on work: \(before) then \(after)")
        #expect((Double(row(second, "work")[safe: rateColumn] ?? "") ?? 0) > 0, "\(row(second, "work"))")
        #expect(Int(row(second, "work")[safe: depthColumn] ?? "") != nil, "depth is shown: \(row(second, "work"))")

        // The channels page (ABI 1.9): the payments' dead letters on work, linked to their page,
        // and each of the events topic's subscriber groups.
        let channels = seen["channels"] as? [[String]] ?? []
        let paymentsDLQ = channels.first { $0.count == 7 && $0[0] == "work" && $0[1] == "payments.dlq" }
        #expect((Int(paymentsDLQ?[3] ?? "") ?? 0) > 0 && paymentsDLQ?[6] == "dead letters", "\(channels)")
        #expect((seen["channelLinks"] as? [String] ?? []).contains { $0.hasSuffix("/dead-letters/work/payments") }, "\(seen["channelLinks"] ?? "")")
        let groups = Set(channels.filter { $0.count == 7 && $0[0] == "events" }.map { $0[2] })
        #expect(groups.isSuperset(of: ["analytics", "email"]), "\(channels)")

        // A dead letter opened (its call decoded, its history) and replayed from the page.
        let deadLetters = try #require(seen["deadLetters"] as? [String: Any], "no channel had dead letters: \(second["deadLetterChannels"] ?? "")")
        #expect((deadLetters["calls"] as? [String])?.contains("Payments.charge(_:)") == true, "\(deadLetters)")
        let opened = seen["opened"] as? String ?? ""
        #expect(opened.contains("Payments.charge(_:)") && opened.contains("attempt 1 at ") && opened.contains("card blocked"), "\(opened)")
        let replayed = try #require(seen["replayed"] as? [String: Any])
        #expect(replayed["note"] as? String == "replayed 1", "replayed as fire-and-forget, without a warning: \(replayed)")
        let lettersAfter = replayed["idsAfter"] as? [String] ?? []
        #expect(!lettersAfter.contains(replayed["id"] as? String ?? "-"), "the blocked card goes through when replayed: \(replayed)")
        #expect((seen["dialogs"] as? [String])?.contains { $0.hasPrefix("Replay the selected dead letters") } == true, "the page asked first")
        let png = try Data(contentsOf: URL(fileURLWithPath: screenshot))
        #expect(png.count > 10_000 && png.starts(with: [0x89, 0x50, 0x4E, 0x47]), "a PNG screenshot of the console")

        // SIGTERM: the demo drains and exits 0.
        demo.terminate()
        let exited = await eventually(30) { !demo.isRunning }
        if !exited {
            // A demo that does not stop: SIGABRT makes the Swift runtime print every thread's
            // backtrace to its output, which the failure below shows. (Reading the exit status of
            // a running process traps: the check once crashed the whole test run.)
            kill(demo.processIdentifier, SIGABRT)
            _ = await eventually(30) { !demo.isRunning }
            if demo.isRunning { kill(demo.processIdentifier, SIGKILL) }
            follower.finish()
            Issue.record("the demo did not stop within 30 s of SIGTERM; its last output:\n\(lines.all.suffix(400).joined(separator: "\n"))")
            return
        }
        follower.finish()  // its last lines ("drained and stopped") may still be in the pipe
        #expect(demo.terminationStatus == 0, "exit status \(demo.terminationStatus):\n\(lines.all.suffix(20).joined(separator: "\n"))")
        #expect(await eventually(30) { lines.all.contains("drained and stopped") }, "\(lines.all.suffix(10))")
    }
}

extension Array {
    subscript(safe index: Int) -> Element? { indices.contains(index) ? self[index] : nil }
}
