import Foundation
import SwitchyardABI
import SwitchyardConformance
import SwitchyardHost
import SwitchyardLoader
import SwitchyardTestSupport
import Testing

/// A publish that finds the in-memory broker's dispatcher asleep runs the pass itself (delivers
/// inside `publish`) instead of waking it. The dispatcher planned its sleep without what such a
/// pass does, so these check that nothing then waits for its periodic sweep (`expiry_sweep`, an
/// hour here): not a lease that expires, not a burst, not a message published from inside such a
/// delivery.
@Suite("Passes run by a publisher")
struct InlinePassTests {
    /// An in-memory queue whose dispatcher, once idle, would only wake by itself after an hour.
    private func idleQueue() throws -> Transport {
        let transport = try Transport(name: "q", plugin: try BuildProducts.plugin("queue"), configJSON: #"{"expiry_sweep": "1h"}"#)
        Thread.sleep(forTimeInterval: 0.05)  // the dispatcher goes to sleep
        return transport
    }

    @Test("a message published while the dispatcher sleeps is delivered at once, and again when its lease expires unsettled")
    func leaseGivenInlineExpires() throws {
        let transport = try idleQueue()
        defer { transport.close() }
        let inbox = Collector()
        _ = try transport.client.subscribe(
            SubscribeOptions(channel: "work", visibilityTimeoutNanos: 200_000_000), handler: inbox.handler(client: transport.client, settle: nil))
        // Past two metrics intervals (250 ms), so no report is due either: the dispatcher sleeps
        // until the sweep.
        Thread.sleep(forTimeInterval: 0.6)
        let published = wallClockNanoseconds()
        try transport.client.publish(Message(id: "m", channel: "work"))
        #expect(inbox.wait(for: 1, seconds: 10))
        // Never settled: back after the 200 ms visibility timeout, not the hour's sweep.
        #expect(inbox.wait(for: 2, seconds: 10))
        let again = try #require(inbox.received.last)
        #expect(again.message.attempt == 2)
        #expect(again.at - published >= 150_000_000, "redelivered \((again.at - published) / 1_000_000) ms after publishing")
    }

    @Test("a burst published one message at a time, each while deliveries run, arrives whole and in order")
    func burstArrivesInOrder() throws {
        let transport = try idleQueue()
        defer { transport.close() }
        let inbox = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "burst"), handler: inbox.handler(client: transport.client))
        Thread.sleep(forTimeInterval: 0.05)
        for round in 0..<20 {
            for index in 0..<50 { try transport.client.publish(Message(id: "b-\(round)-\(index)", channel: "burst")) }
            Thread.sleep(forTimeInterval: 0.002)  // the dispatcher lingers, then sleeps, now and then
        }
        #expect(inbox.wait(for: 1_000, seconds: 5))
        let ids = inbox.received.map(\.message.id)
        #expect(ids == (0..<20).flatMap { round in (0..<50).map { "b-\(round)-\($0)" } })
    }

    @Test("a subscriber that publishes from inside a delivery the publisher's pass made gets its message delivered too")
    func publishInsideAnInlineDelivery() throws {
        let transport = try idleQueue()
        defer { transport.close() }
        let replies = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "replies"), handler: replies.handler(client: transport.client))
        let client = transport.client
        _ = try client.subscribe(
            SubscribeOptions(channel: "requests"),
            handler: { delivery, view in
                let request = view.copy()
                try? client.publish(Message(id: "re-" + request.id, channel: "replies"), settling: delivery, .ack)
                return .ok
            })
        Thread.sleep(forTimeInterval: 0.05)
        for index in 0..<5 {
            try client.publish(Message(id: "q-\(index)", channel: "requests"))
            #expect(replies.wait(for: index + 1, seconds: 10), "reply \(index) did not come")
            Thread.sleep(forTimeInterval: 0.01)
        }
        #expect(replies.received.map(\.message.id) == (0..<5).map { "re-q-\($0)" })
    }
}
