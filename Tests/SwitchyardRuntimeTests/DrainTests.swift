import Foundation
import SwitchyardConfig
import SwitchyardRuntime
import SwitchyardTestServices
import SwitchyardTestSupport
import Synchronization
import Testing

/// A child host process (switchyard-drain-probe) whose output lines can be awaited.
final class ChildHost: @unchecked Sendable {
    let process = Process()
    private let lines = LineBuffer()
    private let follower: PipeFollower

    init(config: String) throws {
        process.executableURL = URL(fileURLWithPath: BuildProducts.path("switchyard-drain-probe"))
        process.arguments = [config, BuildProducts.directory]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.standardError
        let lines = self.lines
        follower = out.follow { text in lines.feed(text) }
        try process.run()
    }

    var output: [String] { lines.all }

    func waitFor(_ prefix: String, seconds: Double = 20) async -> String? {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            if let line = output.first(where: { $0.hasPrefix(prefix) }) { return line }
            try? await Task.sleep(for: .milliseconds(20))
        }
        // Once more after the limit: a task resumed late (a busy pool) must not miss a line
        // that came in time.
        return output.first(where: { $0.hasPrefix(prefix) })
    }

    func waitForExit(seconds: Double = 30) async -> Int32? {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while process.isRunning && ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        if process.isRunning { return nil }
        // Its last lines ("finished N" comes just before it exits) may still be in the pipe.
        follower.finish()
        lines.flush()
        return process.terminationStatus
    }

    deinit { if process.isRunning { process.terminate() } }
}

@Suite("Draining")
struct DrainTests {
    @Test("SIGTERM under load fails no in-flight request-reply call: running calls finish, the rest go to the next host")
    func sigtermDrains() async throws {
        let directory = try TemporaryDirectory()
        let configPath = directory.file("switchyard.yaml")
        // A visibility timeout longer than the calls' deadline: a call the drain did not give
        // back would come round only when its lease ran out, after its caller had timed out, and
        // the test would fail. Given back at once, every call finishes on the second host.
        try """
        transports:
          work: { plugin: queue, config: { path: "\(directory.file("work.db"))", visibility_timeout: 120s } }
        routes:
          Worker.*: { transport: work, deadline: 60s, concurrency: 4 }
        """.write(toFile: configPath, atomically: true, encoding: .utf8)
        let first = try ChildHost(config: configPath)
        #expect(await first.waitFor("ready") != nil)

        let caller = try await offPool { try SwitchyardActorSystem(configPath: configPath, pluginDirectories: [BuildProducts.directory]) }
        let worker = try $Worker.resolve(id: "worker", using: caller)
        let calls = 48
        let results = Task {
            try await withThrowingTaskGroup(of: Int.self) { group in
                // 6 s of work in all (four at a time): SIGTERM comes well before the end, even on
                // a loaded machine under ThreadSanitizer (3 s was not always enough there: the
                // first host had finished everything before the signal arrived).
                for value in 0..<calls { group.addTask { try await worker.work(value, milliseconds: 500) } }
                return try await group.reduce(into: [Int]()) { $0.append($1) }
            }
        }
        #expect(await first.waitFor("working") != nil)
        try await Task.sleep(for: .milliseconds(250))
        kill(first.process.processIdentifier, SIGTERM)
        let status = await first.waitForExit()
        #expect(status == 0, "the first host exits cleanly after draining")
        let finishedLine = await first.waitFor("finished ", seconds: 5)
        let finishedByFirst = Int(finishedLine?.split(separator: " ").last ?? "") ?? -1
        #expect(finishedByFirst > 0 && finishedByFirst < calls, "the first host finished \(finishedByFirst) calls before it stopped")

        // What the first host did not start is back in the queue; a second host finishes it.
        let second = try ChildHost(config: configPath)
        #expect(await second.waitFor("ready") != nil)
        let values = try await results.value
        #expect(values.sorted() == Array(0..<calls))
        kill(second.process.processIdentifier, SIGTERM)
        #expect(await second.waitForExit() == 0)
        let finishedBySecond = Int(await second.waitFor("finished ", seconds: 5)?.split(separator: " ").last ?? "") ?? -1
        #expect(finishedByFirst + finishedBySecond >= calls)
        await caller.shutdown()
    }
}
