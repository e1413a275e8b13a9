import Foundation
import SwitchyardTestSupport
import Testing

@testable import SwitchyardRuntime

@Suite("The admin API's JSON, read back")
struct SystemOverviewCodingTests {
    /// The admin endpoint writes snake_case and `switchyard stats --url --json` reads it back the
    /// same way: `plugin_process_id` came back as `pluginProcessId`, matched no property, and the
    /// child's pid was dropped from the command's output.
    @Test("a transport's fields survive the snake_case round trip, the plugin child's pid included")
    func transportInfoRoundTrip() throws {
        let info = SystemOverview.TransportInfo(
            name: "work", chain: ["queue"], capabilities: ["queue"], engine: "memory", isolation: "process", pluginProcessID: 4242, stats: nil,
            statsError: "none")
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        let data = try encoder.encode(info)
        #expect(String(decoding: data, as: UTF8.self).contains(#""plugin_process_id":4242"#))
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        let back = try decoder.decode(SystemOverview.TransportInfo.self, from: data)
        #expect(back.pluginProcessID == 4242 && back.statsError == "none" && back.isolation == "process")
    }

    /// A direct route without `deadline:` has none (its calls run as long as they take); the
    /// overview said 30000 ms, the parser's default for routes through a transport.
    @Test("a direct route's deadline is in the overview only when the route sets one")
    func directRouteDeadline() async throws {
        let system = try await makeSystem(
            """
            transports:
              q: { plugin: queue }
            routes:
              Slow.*: { transport: direct }
              Bounded.*: { transport: direct, deadline: 2s }
              Queued.*: { transport: q }
            """)
        let routes = Dictionary(uniqueKeysWithValues: system.overview().routes.map { ($0.pattern, $0) })
        await system.shutdown(deadline: .seconds(1))
        #expect(routes["Slow.*"]?.deadlineMs == nil)
        #expect(routes["Bounded.*"]?.deadlineMs == 2000)
        #expect(routes["Queued.*"]?.deadlineMs == 30000)
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        let slow = String(decoding: try encoder.encode(routes["Slow.*"]), as: UTF8.self)
        #expect(!slow.contains("deadline_ms"), "\(slow)")
    }
}
