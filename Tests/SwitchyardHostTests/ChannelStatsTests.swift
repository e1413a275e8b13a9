import Foundation
import SwitchyardABI
import SwitchyardConformance
import SwitchyardHost
import SwitchyardLoader
import SwitchyardTestSupport
import Testing

/// ABI 1.9 `channel_stats`: what a transport holds per channel and subscriber group, read by the
/// host through each bundled plugin, a decorator, a sharded store and the isolation wire.
@Suite("what a transport holds per channel")
struct ChannelStatsTests {
    /// Holds one delivery of `channel` at a time without settling it, so that counts stand still.
    @discardableResult
    static func hold(_ transport: Transport, _ channel: String, group: String = "") throws -> Collector {
        let held = Collector()
        _ = try transport.client.subscribe(
            SubscribeOptions(channel: channel, group: group, maxInFlight: 1), handler: held.handler(client: transport.client, settle: nil))
        return held
    }

    /// The transport's entry for `channel` and `group` once `done` holds for it, or the last read
    /// when 5 s ran out (counts of a subscription's first delivery may lag it by a moment).
    static func entry(
        _ transport: Transport, _ channel: String, group: String = "", until done: (ChannelStats?) -> Bool
    ) throws -> ChannelStats? {
        let deadline = Date().addingTimeInterval(Collector.defaultWaitSeconds)
        while true {
            let one = try #require(try transport.client.channelStats()).first { $0.channel == channel && $0.group == group }
            if done(one) || Date() >= deadline { return one }
            Thread.sleep(forTimeInterval: 0.02)
        }
    }

    static func publish(_ transport: Transport, _ channel: String, count: Int, deliverAt: Int64 = 0) throws {
        for index in 0..<count {
            try transport.client.publish(Message(id: "\(channel)-\(index)", channel: channel, body: [1], deliverAtNanos: deliverAt))
        }
    }

    @Test("the bundled queue, in memory (four shards, added up) and in a file: depth, in flight, waiting, dead letters")
    func queue() throws {
        let directory = try TemporaryDirectory()
        let plugin = try BuildProducts.plugin("queue")
        for config in [#"{"shards": 4}"#, #"{"path": "\#(directory.file("q.db"))"}"#] {
            let queue = try Transport(name: "q", plugin: plugin, configJSON: config)
            defer { queue.close() }
            #expect(try queue.client.channelStats() == [], "\(config): a new store holds nothing")
            let held = try Self.hold(queue, "orders")
            try Self.publish(queue, "orders", count: 3)
            try Self.publish(queue, "invoices", count: 2)
            let orders = try Self.entry(queue, "orders") { $0?.inFlight == 1 }
            #expect(orders == ChannelStats(channel: "orders", depth: 2, inFlight: 1), "\(config)")
            #expect(try Self.entry(queue, "invoices") { $0 != nil } == ChannelStats(channel: "invoices", depth: 2), "\(config)")
            #expect(held.wait(for: 1))
            try queue.client.settle(held.received[0].delivery, .deadLetter(reason: "counted"))
            #expect(held.wait(for: 2))
            try queue.client.settle(held.received[1].delivery, .retry(afterNanos: 3_600_000_000_000, reason: "later"))
            #expect(held.wait(for: 3))
            let later = try Self.entry(queue, "orders") { $0?.waiting == 1 }
            #expect(later == ChannelStats(channel: "orders", depth: 1, inFlight: 1, waiting: 1), "\(config): one retried an hour away")
            #expect(try Self.entry(queue, "orders.dlq") { $0 != nil } == ChannelStats(channel: "orders.dlq", depth: 1), "\(config)")
            // Sorted by channel, each once (four shards' reports added up).
            let channels = try #require(try queue.client.channelStats()).map(\.channel)
            #expect(channels == ["invoices", "orders", "orders.dlq"], "\(config)")
        }
    }

    @Test("a topic reports each subscriber group's copies; its dead letters are shared")
    func topic() throws {
        let directory = try TemporaryDirectory()
        let plugin = try BuildProducts.plugin("topic")
        for config in ["{}", #"{"path": "\#(directory.file("t.db"))"}"#] {
            let topic = try Transport(name: "t", plugin: plugin, configJSON: config)
            defer { topic.close() }
            let billing = try Self.hold(topic, "placed", group: "billing")
            try Self.hold(topic, "placed", group: "shipping")
            try Self.publish(topic, "placed", count: 2)
            #expect(billing.wait(for: 1))
            #expect(try Self.entry(topic, "placed", group: "billing") { $0?.inFlight == 1 } == ChannelStats(channel: "placed", group: "billing", depth: 1, inFlight: 1))
            #expect(try Self.entry(topic, "placed", group: "shipping") { $0?.inFlight == 1 } == ChannelStats(channel: "placed", group: "shipping", depth: 1, inFlight: 1))
            try topic.client.settle(billing.received[0].delivery, .deadLetter(reason: "counted"))
            #expect(try Self.entry(topic, "placed.dlq") { $0 != nil } == ChannelStats(channel: "placed.dlq", depth: 1), "\(config): one shared dead-letter channel")
        }
    }

    @Test("decorators: retry passes the question on; delay adds what it holds as waiting on its channel")
    func decorators() throws {
        let directory = try TemporaryDirectory()
        let queue = try Transport(name: "q", plugin: try BuildProducts.plugin("queue"))
        let retry = try Transport(name: "r", plugin: try BuildProducts.plugin("retry"), inner: queue)
        let delay = try Transport(name: "d", plugin: try BuildProducts.plugin("delay"), inner: queue)
        let durableDelay = try Transport(
            name: "dd", plugin: try BuildProducts.plugin("delay"), configJSON: #"{"path": "\#(directory.file("d.db"))"}"#, inner: queue)
        defer {
            for transport in [retry, delay, durableDelay, queue] { transport.close() }
        }
        try Self.publish(retry, "now", count: 2)
        #expect(try Self.entry(retry, "now") { $0 != nil } == ChannelStats(channel: "now", depth: 2))
        let inAnHour = wallClockNanoseconds() + 3_600_000_000_000
        try Self.publish(delay, "later", count: 1, deliverAt: inAnHour)
        try Self.publish(durableDelay, "later", count: 2, deliverAt: inAnHour)
        #expect(try Self.entry(delay, "later") { $0 != nil } == ChannelStats(channel: "later", depth: 1, waiting: 1))
        #expect(try Self.entry(durableDelay, "later") { $0 != nil } == ChannelStats(channel: "later", depth: 2, waiting: 2), "held in the file")
        #expect(try Self.entry(delay, "now") { $0 != nil } == ChannelStats(channel: "now", depth: 2), "the queue's own, under the delay")
    }

    @Test("under isolation: process the child's counts come through the wire")
    func isolated() throws {
        let isolation = ProcessIsolation(
            callTimeoutNanos: 5_000_000_000, restartBackoffNanos: 50_000_000, maxRestartBackoffNanos: 500_000_000,
            hostExecutable: BuildProducts.switchyard)
        let queue = try Transport(name: "q", plugin: try BuildProducts.plugin("queue"), isolation: isolation)
        defer { queue.close() }
        try Self.publish(queue, "apart", count: 3)
        #expect(try Self.entry(queue, "apart") { $0 != nil } == ChannelStats(channel: "apart", depth: 3))
    }

    @Test("a plugin without channel_stats reports none (nil), not an empty store; a 1.8 plugin's 152 bytes still load")
    func without() async throws {
        let directory = try TemporaryDirectory()
        let current = try await CCompiler.fixture("none.so", in: directory.path, defines: ["FIXTURE_NAME=\"none\""])
        // A 1.8 descriptor (152 bytes) followed by a channel_stats that aborts: never read.
        let older = try await CCompiler.fixture(
            "older.so", in: directory.path,
            defines: ["FIXTURE_NAME=\"older\"", "FIXTURE_ABI_MINOR=8", "FIXTURE_STRUCT_SIZE=152", "FIXTURE_CHANNEL_STATS_PAST_SIZE"])
        for path in [current, older] {
            let plugin = try PluginLoader().load(path: path)
            let transport = try Transport(name: "o", plugin: plugin)
            defer { transport.close() }
            #expect(transport.client.descriptor.pointee.channel_stats == nil, "\(plugin.abiVersion)")
            #expect(try transport.client.channelStats() == nil, "\(plugin.abiVersion)")
        }
        #expect(try PluginLoader().load(path: older).abiVersion == "1.8")
    }
}
