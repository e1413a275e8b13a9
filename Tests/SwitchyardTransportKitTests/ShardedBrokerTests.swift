import Foundation
import SwitchyardABI
import SwitchyardConformance
import SwitchyardHost
import SwitchyardLoader
import SwitchyardTestSupport
import Testing

/// An in-memory broker transport split into shards (`shards:`) behaves as one transport: every
/// channel reaches its subscribers, ids settle in the shard that made them, a dead letter lands
/// beside its channel, capacity and counters cover every shard.
@Suite("Shards of an in-memory transport")
struct ShardedBrokerTests {
    private func sharded(_ extra: String = "") throws -> Transport {
        try Transport(name: "q", plugin: try BuildProducts.plugin("queue"), configJSON: #"{"shards": 4\#(extra)}"#)
    }

    /// Enough channels that each of four shards holds some (the hash spreads them).
    private let channels = (0..<16).map { "channel-\($0)" }

    /// A subscriber on every channel that leaves its deliveries unsettled, and one message
    /// published to each channel, delivered.
    private func oneUnsettledPerChannel(_ client: TransportClient) throws -> Collector {
        let inbox = Collector()
        for channel in channels { _ = try client.subscribe(SubscribeOptions(channel: channel), handler: inbox.handler(client: client, settle: nil)) }
        try client.publish(batch: channels.map { Message(id: $0, channel: $0) })
        #expect(inbox.wait(for: channels.count))
        return inbox
    }

    @Test("messages on many channels all arrive, each channel in order; ids are unique; counters add up")
    func manyChannels() throws {
        let transport = try sharded()
        defer { transport.close() }
        let client = transport.client
        let inboxes = channels.map { _ in Collector() }
        var subscriptions: Set<SubscriptionID> = []
        for (channel, inbox) in zip(channels, inboxes) {
            subscriptions.insert(try client.subscribe(SubscribeOptions(channel: channel), handler: inbox.handler(client: client)))
        }
        #expect(subscriptions.count == channels.count)
        // One batch spanning every channel: split by shard, in order within each channel.
        try client.publish(batch: (0..<10).flatMap { index in channels.map { Message(id: "\($0)-\(index)", channel: $0) } })
        for (channel, inbox) in zip(channels, inboxes) {
            #expect(inbox.wait(for: 10), "\(channel): \(inbox.count) of 10")
            #expect(inbox.received.map(\.message.id) == (0..<10).map { "\(channel)-\($0)" })
        }
        let deliveries = inboxes.flatMap { $0.received.map(\.delivery) }
        #expect(Set(deliveries).count == deliveries.count, "delivery ids repeat across shards")
        // Acknowledged by their handlers; the counters are every shard's.
        let deadline = Date().addingTimeInterval(5)
        var stats = try #require(try client.stats())
        while stats.acked < 160, Date() < deadline {
            usleep(1_000)
            stats = try #require(try client.stats())
        }
        #expect(stats.published == 160 && stats.delivered == 160 && stats.acked == 160 && stats.depth == 0 && stats.inFlight == 0, "\(stats)")
        // A subscription id names its shard: each unsubscribes once, then is unknown.
        for id in subscriptions { try client.unsubscribe(id) }
        #expect(throws: TransportError.self) { try client.unsubscribe(subscriptions.first!) }
    }

    @Test("settling a batch of deliveries from several shards settles each in its own")
    func batchAcrossShards() throws {
        let transport = try sharded()
        defer { transport.close() }
        let client = transport.client
        let inbox = try oneUnsettledPerChannel(client)
        let deliveries = inbox.received.map(\.delivery)
        let results = try client.settle(batch: deliveries, .ack)
        #expect(results.allSatisfy { $0 == nil }, "\(results)")
        // Settled already: every one is now unknown, in whichever shard.
        let again = try client.settle(batch: deliveries.map { ($0, Settlement.ack) })
        #expect(again.allSatisfy { $0?.code == .notFound }, "\(again)")
        #expect(try client.stats()?.inFlight == 0)
    }

    @Test("a dead letter lands on its channel's dead-letter channel, and a reply published while settling reaches another shard")
    func deadLetterAndPublishSettling() throws {
        let transport = try sharded()
        defer { transport.close() }
        let client = transport.client
        let dead = Collector()
        let replies = Collector()
        for channel in channels {
            _ = try client.subscribe(SubscribeOptions(channel: channel + ".dlq"), handler: dead.handler(client: client))
            _ = try client.subscribe(SubscribeOptions(channel: channel + "-reply"), handler: replies.handler(client: client))
            _ = try client.subscribe(
                SubscribeOptions(channel: channel),
                handler: { delivery, view in
                    let message = view.copy()
                    if message.id.hasSuffix("dead") {
                        try? client.settle(delivery, .deadLetter(reason: "test"))
                    } else {
                        try? client.publish(Message(id: "re-" + message.id, channel: message.channel + "-reply"), settling: delivery, .ack)
                    }
                    return .ok
                })
        }
        for channel in channels {
            try client.publish(Message(id: "\(channel)-dead", channel: channel))
            try client.publish(Message(id: "\(channel)-ask", channel: channel))
        }
        #expect(dead.wait(for: channels.count) && replies.wait(for: channels.count))
        #expect(Set(dead.received.map { "\($0.message.channel)/\($0.message.id)" }) == Set(channels.map { "\($0).dlq/\($0)-dead" }))
        #expect(Set(replies.received.map(\.message.id)) == Set(channels.map { "re-\($0)-ask" }))
        let deadline = Date().addingTimeInterval(5)
        while (try client.stats()?.inFlight ?? 1) > 0, Date() < deadline { usleep(1_000) }
        #expect(try client.stats()?.inFlight == 0, "the requests were settled with their replies")
    }

    @Test("the capacity is the transport's, whatever shard each message goes to")
    func capacityIsShared() throws {
        let transport = try sharded(#", "capacity": 10"#)
        defer { transport.close() }
        for index in 0..<10 { try transport.client.publish(Message(id: "m\(index)", channel: channels[index])) }
        #expect(throws: TransportError.self) { try transport.client.publish(Message(id: "one-too-many", channel: channels[10])) }
        #expect(try transport.client.stats()?.depth == 10)
    }

    @Test("a publisher waiting for room (full_wait) is woken by room made in another shard, and failed by a drain")
    func fullWaitAcrossShards() throws {
        // full_wait far longer than the test may take: the publish must return because a shard
        // told the waiting publisher, not because it looked again or gave up.
        let transport = try sharded(#", "capacity": \#(channels.count), "full_wait": "60s""#)
        defer { transport.close() }
        let client = transport.client
        let inbox = try oneUnsettledPerChannel(client)
        // A delivery id's two low bits name its shard (of four): settle one from a shard other than
        // the waiting publisher's channel's.
        let shard = { (delivery: DeliveryID) in delivery & 3 }
        let waitingShard = try #require(inbox.received.first { $0.message.channel == channels[0] }).delivery
        let elsewhere = try #require(inbox.received.first { shard($0.delivery) != shard(waitingShard) }).delivery

        let publishing = DispatchSemaphore(value: 0)
        let published = DispatchSemaphore(value: 0)
        let outcome = Guarded<Result<Void, TransportError>?>(nil)
        /// Publishes on a thread of its own, and returns once it is about to (and a little more:
        /// long enough to be waiting inside, not still on its way there).
        func publishInBackground(_ id: String) {
            Thread {
                publishing.signal()
                let result = Result { () throws(TransportError) in try client.publish(Message(id: id, channel: channels[0])) }
                outcome.withLock { $0 = result }
                published.signal()
            }.start()
            publishing.wait()
        }
        publishInBackground("waits-for-room")
        #expect(published.wait(timeout: .now() + .milliseconds(200)) == .timedOut, "the transport is full: the publish waits")
        try client.settle(elsewhere, .ack)
        #expect(published.wait(timeout: .now() + .seconds(20)) == .success, "room made in another shard woke the publisher")
        #expect(throws: Never.self) { try outcome.withLock { $0 }?.get() }

        // Full again; a drain fails the waiting publish at once, whatever shard it waits in.
        publishInBackground("failed-by-the-drain")
        #expect(published.wait(timeout: .now() + .milliseconds(200)) == .timedOut, "the transport is full: the publish waits")
        #expect(throws: TransportError.self) { try client.drain(deadlineNanos: monotonicNanoseconds() + 50_000_000) }
        #expect(published.wait(timeout: .now() + .seconds(20)) == .success, "the drain woke the publisher")
        #expect(outcome.withLock { $0 }.map { if case .failure(let error) = $0 { error.code == .closed } else { false } } == true)
    }

    @Test("a batch spanning shards is stored whole or not at all, and so is a reply published while settling")
    func allOrNothingAcrossShards() throws {
        let transport = try sharded(#", "max_message_bytes": 1000"#)
        defer { transport.close() }
        let client = transport.client
        let tooBig = [UInt8](repeating: 1, count: 2_000)
        // Fifteen channels' worth of fine messages, one too large for the last channel's shard.
        let batch = channels.map { Message(id: $0, channel: $0, body: $0 == channels.last ? tooBig : []) }
        #expect(throws: TransportError.self) { try client.publish(batch: batch) }
        #expect(try client.stats()?.depth == 0, "part of a refused batch was stored")
        // A request whose reply batch (to every other channel) holds one message too large: the
        // request stays the subscriber's to settle, and nothing is stored.
        let inbox = Collector()
        _ = try client.subscribe(SubscribeOptions(channel: "requests"), handler: inbox.handler(client: client, settle: nil))
        try client.publish(Message(id: "ask", channel: "requests"))
        #expect(inbox.wait(for: 1))
        let delivery = try #require(inbox.received.first).delivery
        #expect(throws: TransportError.self) { try client.publish(batch, settling: delivery, .ack) }
        #expect(try client.stats()?.depth == 0)
        try client.settle(delivery, .ack)
    }

    @Test("a drain releases what is unsettled in every shard and says so")
    func drainEveryShard() throws {
        let transport = try sharded()
        defer { transport.close() }
        let client = transport.client
        _ = try oneUnsettledPerChannel(client)
        #expect(throws: TransportError.self) { try client.drain(deadlineNanos: monotonicNanoseconds() + 50_000_000) }
        let stats = try #require(try client.stats())
        #expect(stats.released == UInt64(channels.count) && stats.inFlight == 0, "\(stats)")
        #expect(throws: TransportError.self) { try client.publish(Message(id: "late", channel: channels[0])) }
    }

    @Test("config: shards out of range, or with a store that is not in memory, is refused naming the key")
    func config() throws {
        let queue = try BuildProducts.plugin("queue")
        for bad in [#"{"shards": 0}"#, #"{"shards": 1000}"#] {
            #expect {
                try Transport(name: "q", plugin: queue, configJSON: bad)
            } throws: { "\($0)".contains("'shards'") }
        }
        // Not a whole number, or not a number: the key and what it takes, not Swift's type names.
        #expect {
            try Transport(name: "q", plugin: queue, configJSON: #"{"shards": 4.5}"#)
        } throws: { "\($0)".contains("config key 'shards': 4.5 is not a value this key takes (a whole number") }
        #expect {
            try Transport(name: "q", plugin: queue, configJSON: #"{"shards": "four"}"#)
        } throws: { "\($0)".contains("config key 'shards': expected a whole number (found a string)") }
        let dir = try TemporaryDirectory()
        #expect {
            try Transport(name: "q", plugin: queue, configJSON: #"{"shards": 2, "path": "\#(dir.path)/q.db"}"#)
        } throws: { "\($0)".contains("'shards'") && "\($0)".contains("in memory") }
        // Refused before the store was opened: no database files left behind.
        #expect(!FileManager.default.fileExists(atPath: "\(dir.path)/q.db"))
        // One shard with a file is what it always was.
        let durable = try Transport(name: "q", plugin: queue, configJSON: #"{"shards": 1, "path": "\#(dir.path)/one.db"}"#)
        durable.close()
    }
}
