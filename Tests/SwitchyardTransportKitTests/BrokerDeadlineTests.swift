import Foundation
import SwitchyardABI
import SwitchyardConformance
import SwitchyardHost
import SwitchyardTestSupport
import Synchronization
import Testing

/// Deadlines that mean "as long as it takes" reach the broker as the largest values their types
/// hold; its timed waits must take them as such, not overflow.
@Suite("Broker deadlines")
struct BrokerDeadlineTests {
    @Test("drain with deadline_ns = INT64_MAX (no deadline) drains instead of trapping")
    func drainWithoutDeadline() throws {
        let transport = try Transport(name: "q", plugin: try BuildProducts.plugin("queue"))
        defer { transport.close() }
        try transport.client.publish(Message(id: "m", channel: "c"))
        try transport.client.drain(deadlineNanos: .max)
        #expect(try transport.client.stats()?.depth == 1, "drain keeps what was not delivered")
    }

    @Test("a full_wait of centuries: a publish to a full queue waits, and is let in once there is room")
    func fullWaitOfCenturies() async throws {
        let plugin = try BuildProducts.plugin("queue")
        let transport = try Transport(name: "q", plugin: plugin, configJSON: #"{"capacity": 1, "full_wait": "2500000h"}"#)
        defer { transport.close() }
        try transport.client.publish(Message(id: "first", channel: "c"))
        // The publish blocks its thread until there is room: a thread of its own, not one of the
        // cooperative pool's two here (blocking one starved every other test for 25 s in CI).
        let second = Task { try await offPool { try transport.client.publish(Message(id: "second", channel: "c")) } }
        try await Task.sleep(for: .milliseconds(100))
        let held = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "c"), handler: held.handler(client: transport.client))
        try await second.value
        #expect(held.wait(for: 2))
        #expect(held.received.map(\.message.id) == ["first", "second"])
    }

    /// `publish_async` to a full transport must not wait on the caller's thread (a host's task):
    /// it returns at once and the wait for room runs on a thread of the plugin's; the publish is
    /// told once room is made. Closed meanwhile, the wait ends and the publish is told `.closed`
    /// before `destroy` returns (the host may free what it passed once it has).
    @Test("publish_async to a full queue returns at once and is told when there is room, or closed by a close that waits for it")
    func publishAsyncWaitsForRoomOffThread() async throws {
        let plugin = try BuildProducts.plugin("queue")
        for closeInstead in [false, true] {
            let transport = try Transport(name: "q", plugin: plugin, configJSON: #"{"capacity": 1, "full_wait": "60s"}"#)
            #expect(transport.client.publishesAsynchronously)
            try transport.client.publish(Message(id: "first", channel: "c"))
            let told = Guarded<[TransportError?]>([])
            let started = monotonicNanoseconds()
            transport.client.publish([Message(id: "second", channel: "c")]) { error in told.withLock { $0.append(error) } }
            #expect(monotonicNanoseconds() - started < 1_000_000_000, "publish_async waited for room on the caller's thread")
            try await Task.sleep(for: .milliseconds(100))
            #expect(told.withLock { $0.isEmpty }, "told before there was room")
            if closeInstead {
                transport.close()
                let outcome = told.withLock { $0 }
                #expect(outcome.count == 1 && outcome.first??.code == .closed, "close returned with the waiting publish told \(outcome)")
                continue
            }
            let held = Collector()
            _ = try transport.client.subscribe(SubscribeOptions(channel: "c"), handler: held.handler(client: transport.client))
            #expect(await eventually { told.withLock { $0.count } == 1 })
            #expect(told.withLock { $0 }.first! == nil)
            #expect(held.wait(for: 2))
            #expect(held.received.map(\.message.id) == ["first", "second"])
            transport.close()
        }
    }
    /// Many publishes waiting for room in a full transport wait on a few threads of its own, not
    /// one each; each is still refused once its own full_wait, counted from its arrival, has
    /// passed — also a batch spread over shards, which waits on the first shard's threads.
    @Test("forty publish_async to a full queue (sharded too) are each refused after their own full_wait, not one after another")
    func manyWaitingPublishes() async throws {
        let plugin = try BuildProducts.plugin("queue")
        for config in [#"{"capacity": 1, "full_wait": "2s"}"#, #"{"capacity": 1, "full_wait": "2s", "shards": 2}"#] {
            let transport = try Transport(name: "q", plugin: plugin, configJSON: config)
            defer { transport.close() }
            try transport.client.publish(Message(id: "first", channel: "c"))
            let told = Guarded<[TransportError?]>([])
            // When the last was told, on the plugin's thread (not when this test's task next ran:
            // on a loaded machine a task waits for the cooperative pool for seconds).
            let lastTold = Atomic<Int64>(0)
            let started = monotonicNanoseconds()
            for index in 0..<40 {
                // A batch over eight channels: spread over the shards where there are several.
                let batch = (0..<8).map { Message(id: "m-\(index)-\($0)", channel: "channel-\($0)") }
                transport.client.publish(index % 2 == 0 ? batch : [batch[0]]) { error in
                    told.withLock { $0.append(error) }
                    lastTold.store(monotonicNanoseconds(), ordering: .relaxed)
                }
            }
            #expect(await eventually(90) { told.withLock { $0.count } == 40 })
            let took = Double(lastTold.load(ordering: .relaxed) - started) / 1e9
            #expect(told.withLock { $0 }.allSatisfy { $0?.code == .full }, "\(config): \(told.withLock { $0 })")
            // Each is refused about 2 s after it came. Waits counted from when a thread takes them
            // would take 20 s (four at a time), one after another 80 s; the margin is for a loaded
            // machine running every suite at once (a full run once stalled this test for 6 s).
            #expect(took >= 2 && took < 15, "\(config): every publish refused after its own full_wait, in \(took) s")
            #expect(try transport.client.stats()?.published == 1, "nothing more stored")
        }
    }
}
