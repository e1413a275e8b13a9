import Foundation
import SwitchyardABI
import SwitchyardTestSupport
import Synchronization
import Testing

/// `switchyard console --config`: the admin endpoint served over a config's transports, from a
/// process of its own.
@Suite("switchyard console")
struct ConsoleCommandTests {
    @Test("serves what a durable queue holds and its dead letters, and stops on SIGTERM")
    func servesConfig() async throws {
        let directory = try TemporaryDirectory()
        let held = (0..<3).map { Message(id: "m\($0)", channel: "orders", body: [1]) }
        let config = try await durableQueueConfig(
            in: directory, holding: held + [Message(id: "dead-1", channel: "orders.dlq", body: Array("kept for a person".utf8))])
        let console = Process()
        console.executableURL = URL(fileURLWithPath: BuildProducts.switchyard)
        console.arguments = ["console", "--config", config, "--admin", "127.0.0.1:0", "--plugins-dir", BuildProducts.directory]
        let output = Pipe()
        console.standardOutput = output
        console.standardError = output
        let text = Guarded("")
        output.follow { chunk in text.withLock { $0 += chunk } }
        try console.run()
        defer { if console.isRunning { kill(console.processIdentifier, SIGKILL) } }
        let address = try Regex(#"console\s+(http://127\.0\.0\.1:\d+)/"#)
        var base: String?
        for _ in 0..<300 where base == nil {
            base = text.withLock { try? address.firstMatch(in: $0)?.output[1].substring.map(String.init) }
            if base == nil { try await Task.sleep(for: .milliseconds(100)) }
        }
        let url = try #require(base, "no console address in: \(text.withLock { $0 })")
        let transports = try await run("/usr/bin/curl", ["-s", "--max-time", "60", url + "/api/transports"])
        #expect(transports.stdout.contains(#""depth" : 4"#), "3 messages and a dead letter: \(transports.stdout)")
        let letters = try await run("/usr/bin/curl", ["-s", "--max-time", "60", url + "/api/dead-letters/work/orders"])
        #expect(letters.stdout.contains(#""id" : "dead-1""#) && letters.stdout.contains("kept for a person"), "\(letters.stdout)")
        console.terminate()
        #expect(await eventually(20) { !console.isRunning })
        #expect(console.terminationStatus == 0, "\(text.withLock { $0 })")
    }
}
