import Foundation
import SwitchyardABI
import SwitchyardConformance
import SwitchyardHost
import SwitchyardLoader
import SwitchyardTestSupport
import Testing

/// The bundled transports pass the conformance suite in both modes, loaded from their .so files.
@Suite("Conformance of the bundled plugins")
struct ConformanceTests {
    static let cases: [(plugin: String, durable: Bool)] = [
        ("queue", false), ("queue", true), ("topic", false), ("topic", true), ("delay", false), ("delay", true),
        ("retry", false), ("retry", true), ("example-c", false), ("example-swift", false),
    ]

    @Test("the C template honours a subscriber's max_in_flight: no more deliveries until one settles")
    func cTemplatePrefetch() throws {
        let transport = try Transport(name: "c", plugin: try BuildProducts.plugin("example-c"), configJSON: "{}")
        defer { transport.close() }
        let held = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "c", maxInFlight: 2), handler: held.handler(client: transport.client, settle: { _ in nil }))
        for index in 0..<5 { try transport.client.publish(Message(id: "m\(index)", channel: "c")) }
        #expect(held.wait(for: 2))
        Thread.sleep(forTimeInterval: 0.2)  // a template that ignored the bound delivered all five at once
        #expect(held.count == 2)
        try transport.client.settle(try #require(held.received.first).delivery, .ack)
        #expect(held.wait(for: 3))
        Thread.sleep(forTimeInterval: 0.2)
        #expect(held.count == 3)
    }

    @Test("passes every check its capabilities claim", arguments: cases)
    func conformance(_ plugin: String, _ durable: Bool) async throws {
        let dir = try TemporaryDirectory()
        let loaded = try BuildProducts.plugin(plugin)
        let inner = loaded.capabilities.contains(.wrapsInner) ? try BuildProducts.plugin("queue") : nil
        let results = try await offPool { ConformanceSuite.forPlugin(loaded, inner: inner, durableDirectory: durable ? dir.path : nil).run() }
        expectBundledConformance(results, "\(plugin)\(durable ? " durable" : "")", example: plugin.hasPrefix("example-"))
        // Over a queue, which hands batches over, the decorators hand them on whole (delay passes
        // the subscriber through; retry relays the inner array), so partial acceptance is exercised.
        if !plugin.hasPrefix("example-") {
            let batches = results.first { $0.name == "deliver-batch" }
            #expect(batches?.note == nil, "\(plugin): \(String(describing: batches))")
        }
    }

    /// In memory, the broker transports split their channels among shards (one per two cores by
    /// default: one on a two-core machine), so the suite also runs them with four.
    @Test("passes every check with its channels in four shards", arguments: ["queue", "topic"])
    func sharded(_ plugin: String) async throws {
        let loaded = try BuildProducts.plugin(plugin)
        let results = try await offPool { ConformanceSuite.forPlugin(loaded, configJSON: #"{"shards": 4}"#).run() }
        expectBundledConformance(results, "\(plugin) in 4 shards")
    }

    @Test("plugins test exits 0 for a passing plugin and prints what it ran")
    func cli() async throws {
        let result = try await run(BuildProducts.switchyard, ["plugins", "test", "topic", "--check", "fan-out", "--check", "dead-letter"])
        #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        #expect(result.stdout.contains("pass  fan-out"))
        #expect(result.stdout.contains("2 passed, 0 failed"))
    }

    @Test("settle-on-delivery says whether the plugin honored the option, since it passes either way")
    func settleOnDeliveryNote() async throws {
        let queue = try await run(BuildProducts.switchyard, ["plugins", "test", "queue", "--check", "settle-on-delivery"])
        #expect(queue.status == 0, "\(queue.stdout)\(queue.stderr)")
        #expect(queue.stdout.contains("honored: 40 of 40 deliveries marked"), "\(queue.stdout)")
        let topic = try await run(BuildProducts.switchyard, ["plugins", "test", "topic", "--check", "settle-on-delivery"])
        #expect(topic.status == 0, "\(topic.stdout)\(topic.stderr)")
        #expect(topic.stdout.contains("option not honored"), "\(topic.stdout)")
    }
}
