import Distributed
import Foundation
import SwitchyardABI
import SwitchyardConfig
import SwitchyardConformance
import SwitchyardHost
import SwitchyardTestSupport
import Testing

@testable import SwitchyardRuntime

/// Limits: message size, header count and size, in flight per subscriber, queue depth (the
/// last is `TransportTests.capacity`). Each refusal names the config key.
@Suite("Limits")
struct LimitsTests {
    @Test("a queue refuses messages over max_message_bytes, max_headers and max_header_bytes, naming the key; nothing is stored")
    func transportLimits() throws {
        let plugin = try BuildProducts.plugin("queue")
        let transport = try Transport(name: "bounded", plugin: plugin, configJSON: #"{"max_message_bytes": 1000, "max_headers": 4, "max_header_bytes": 100}"#)
        defer { transport.close() }
        let cases: [(Message, String)] = [
            (Message(id: "big", channel: "c", body: Array(repeating: 1, count: 1000)), "max_message_bytes is 1000"),
            (Message(id: "many", channel: "c", headers: (0..<5).map { Header("h\($0)", "v") }), "5 headers; max_headers is 4"),
            (Message(id: "long", channel: "c", headers: [Header("h", String(repeating: "x", count: 100))]), "max_header_bytes is 100"),
        ]
        for (message, expected) in cases {
            let error = #expect(throws: TransportError.self) { try transport.client.publish(message) }
            #expect(error?.code == .tooLarge)
            #expect(error?.message.contains(expected) == true, "\(error?.message ?? "")")
        }
        try transport.client.publish(Message(id: "fits", channel: "c", headers: [Header("a", "b")], body: [1, 2, 3]))
        #expect(try transport.client.stats()?.depth == 1)
        for bad in [#"{"max_headers": -1}"#, #"{"max_header_bytes": -5}"#] {
            let error = #expect(throws: TransportError.self) { _ = try Transport(name: "x", plugin: plugin, configJSON: bad) }
            #expect(error?.code == .config)
        }
    }

    @Test("in flight per subscriber: with max_in_flight 3 and nothing settled, three are delivered and the rest wait")
    func inFlightPerSubscriber() async throws {
        let plugin = try BuildProducts.plugin("queue")
        let transport = try Transport(name: "prefetch", plugin: plugin)
        defer { transport.close() }
        let held = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "c", maxInFlight: 3), handler: held.handler(client: transport.client, settle: { _ in nil }))
        for index in 0..<10 { try transport.client.publish(Message(id: "m\(index)", channel: "c")) }
        #expect(await eventually { held.count == 3 })
        try await Task.sleep(for: .milliseconds(200))
        #expect(held.count == 3)
        #expect(try transport.client.stats()?.inFlight == 3)
        #expect(try transport.client.stats()?.depth == 7)
    }

    @Test("limits: in config: a call over them is refused before sending, naming limits.max_message_bytes")
    func runtimeRefusesOversizedCall() async throws {
        let system = try await makeSystem(
            """
            limits: { max_message_bytes: 2000, max_headers: 32 }
            transports:
              memq: { plugin: queue }
            routes:
              "*": { transport: memq, deadline: 60s }
            """)
        let ledger = Ledger()
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        let shop = try $Shop.resolve(id: "shop", using: system)
        #expect(try await shop.place(Order(id: 1, customer: "small", amount: 1)) == "receipt-1-small")
        do {
            _ = try await shop.place(Order(id: 2, customer: String(repeating: "x", count: 3000), amount: 1))
            Issue.record("expected the call to be refused")
        } catch let error as SwitchyardError where error.code == .limitExceeded {
            let reason = error.reason
            #expect(reason.contains("limits.max_message_bytes is 2000"), "\(reason)")
        }
        #expect(ledger.count("shop:place:2") == 0)
        await system.shutdown()
    }

    /// A durable queue's calls go out through `publish_async` (ABI 1.7): the caller's task
    /// waits for the commit without holding a thread. A refusal comes back the same way — at once,
    /// naming the transport's key — for a fire-and-forget call (it throws) and for a request-reply
    /// call (it fails now, not at its deadline).
    @Test("a durable queue's refusal reaches the caller through publish_async at once: fire-and-forget throws, request-reply fails before its deadline")
    func refusalThroughPublishAsync() async throws {
        let dir = try TemporaryDirectory()
        let system = try await makeSystem(
            """
            transports:
              durable: { plugin: queue, config: { path: "\(dir.file("queue.db"))", max_message_bytes: 2000 } }
            routes:
              Shop.record: { transport: durable, mode: fire-and-forget }
              "*": { transport: durable, deadline: 30s }
            """)
        let route = try #require(system.routes.routes.first { $0.pattern == "*" })
        #expect(route.publishesAsynchronously == !ThreadSanitizer.isActive, "the queue plugin offers publish_async")
        let ledger = Ledger()
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        let shop = try $Shop.resolve(id: "shop", using: system)
        #expect(try await shop.place(Order(id: 1, customer: "small", amount: 1)) == "receipt-1-small")
        // Enough commits for the route's meter to see that its publishes wait for storage.
        for id in 10..<16 { try await shop.record(Order(id: id, customer: "small", amount: 1)) }
        #expect(await eventually { (10..<16).allSatisfy { ledger.count("shop:record:\($0)") == 1 } })
        let big = String(repeating: "x", count: 3000)
        let started = ContinuousClock.now
        for call in ["place", "record"] {
            do {
                if call == "place" {
                    _ = try await shop.place(Order(id: 3, customer: big, amount: 1))
                } else {
                    try await shop.record(Order(id: 4, customer: big, amount: 1))
                }
                Issue.record("\(call): expected the transport to refuse the call")
            } catch let error as SwitchyardError where error.code == .transport {
                #expect(error.reason.contains("max_message_bytes is 2000"), "\(call): \(error.reason)")
            }
        }
        #expect(ContinuousClock.now - started < .seconds(20), "the request-reply call waited for its deadline")
        #expect(ledger.count("shop:place:3") == 0 && ledger.count("shop:record:4") == 0)
        await system.shutdown()
    }

    @Test("a receiver with smaller limits dead-letters an oversized call with the reason and tells the caller; a too-large reply becomes an error for the caller")
    func receiverLimits() async throws {
        let directory = try TemporaryDirectory()
        let queuePath = directory.file("q.db")
        // The receiver accepts at most 1500 bytes; the caller's own limits are the defaults.
        let receiver = try await makeSystem(
            """
            limits: { max_message_bytes: 1500 }
            transports:
              q: { plugin: queue, config: { path: "\(queuePath)" } }
            routes:
              "*": { transport: q, deadline: 10s }
            """)
        // A generous deadline: both refusals must reach the caller as errors long before it; a
        // short one made this test fail on a loaded machine (CI, all suites at once) with a timeout.
        let caller = try await makeSystem(
            """
            transports:
              q: { plugin: queue, config: { path: "\(queuePath)" } }
            routes:
              "*": { transport: q, deadline: 30s }
            """)
        let ledger = Ledger()
        try receiver.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        let shop = try $Shop.resolve(id: "shop", using: caller)
        let dlq = try TypedCallTests.Tap(receiver, transport: "q", channel: "shop.dlq")
        // The receiver does not read it, but tells the waiting caller why instead of letting it time out.
        do {
            _ = try await shop.place(Order(id: 3, customer: String(repeating: "y", count: 2000), amount: 1))
            Issue.record("expected an error")
        } catch let error as SwitchyardError where error.code == .limitExceeded {
            let target = error.target
            let reason = error.reason
            #expect(target == "Shop.place(_:)")
            #expect(reason.contains("the call, at the receiver") && reason.contains("limits.max_message_bytes is 1500"), "\(reason)")
        }
        #expect(await eventually { dlq.all.count == 1 })
        #expect(dlq.all.first?.header("sy-dlq-reason")?.contains("over the receiver's limits") == true)
        #expect(ledger.count("shop:place:3") == 0)
        // A reply over the receiver's limit: the caller hears why instead of timing out.
        do {
            _ = try await shop.pad(5000)
            Issue.record("expected an error")
        } catch let error as SwitchyardError where error.code == .limitExceeded {
            let reason = error.reason
            #expect(reason.contains("the reply") && reason.contains("limits.max_message_bytes is 1500"), "\(reason)")
        }
        await receiver.shutdown()
        await caller.shutdown()
    }

    @Test(
        "limits: errors name the key",
        arguments: [
            ("limits: { max_message_bytes: 0 }\n", "limits.max_message_bytes"),
            ("limits: { max_headers: -1 }\n", "limits.max_headers"),
            ("limits: { max_header_bytes: lots }\n", "limits.max_header_bytes"),
            ("limits: { max_body: 3 }\n", "limits.max_body"),
        ])
    func configErrors(_ yaml: String, _ key: String) {
        let error = #expect(throws: ConfigError.self) { try SwitchyardConfig.parse(yaml: yaml, baseDirectory: "/") }
        #expect(error?.key == key)
    }
}
