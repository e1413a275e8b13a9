import Foundation
import SwitchyardABI
import SwitchyardConformance
import SwitchyardHost
import SwitchyardTestSupport
import Testing

/// A decorator passes `publish_async` (ABI 1.7) on to its inner transport; the host uses it only
/// where every transport of the chain offers it.
@Suite("publish_async through a decorator")
struct DecoratorPublishAsyncTests {
    @Test("retry over a durable queue publishes without blocking: stored, told once, delivered")
    func retryOverDurableQueue() async throws {
        let directory = try TemporaryDirectory()
        let queue = try Transport(name: "q", plugin: try BuildProducts.plugin("queue"), configJSON: #"{"path": "\#(directory.file("q.db"))"}"#)
        let retry = try Transport(name: "r", plugin: try BuildProducts.plugin("retry"), inner: queue)
        defer {
            retry.close()
            queue.close()
        }
        #expect(retry.client.publishesAsynchronously, "retry and the queue under it both offer publish_async")
        let received = Guarded<[String]>([])
        let client = retry.client
        _ = try client.subscribe(SubscribeOptions(channel: "c")) { delivery, message in
            received.withLock { $0.append(message.id) }
            try? client.settle(delivery, .ack)
            return .ok
        }
        try await client.publishAsync(Message(id: "m-1", channel: "c"))
        #expect(try queue.client.stats()?.published == 1, "stored by the queue once told")
        #expect(await eventually { received.withLock { $0 } == ["m-1"] })
        let told = Guarded<[TransportError?]>([])
        client.publish([Message(id: "", channel: "c")]) { error in told.withLock { $0.append(error) } }
        #expect(await eventually { told.withLock { $0.count } == 1 })
        #expect(told.withLock { $0.first??.code } == .invalidArgument, "a bad message is refused through done: \(told.withLock { $0 })")
    }

    @Test(
        "retry over a queue without publish_async (isolated): the host publishes through publish_batch; asked anyway, retry publishes from a thread of its own, and its destroy waits until it told"
    )
    func retryOverTransportWithoutPublishAsync() async throws {
        let isolation = ProcessIsolation(
            callTimeoutNanos: 5_000_000_000, restartBackoffNanos: 50_000_000, maxRestartBackoffNanos: 500_000_000,
            hostExecutable: BuildProducts.switchyard)
        let queue = try Transport(name: "q", plugin: try BuildProducts.plugin("queue"), isolation: isolation)
        defer { queue.close() }
        let retry = try Transport(name: "r", plugin: try BuildProducts.plugin("retry"), inner: queue)
        #expect(!queue.client.publishesAsynchronously && !retry.client.publishesAsynchronously)
        // The host's client knows the chain: publish_batch, on this thread, told before returning.
        let told = Guarded<[TransportError?]>([])
        retry.client.publish([Message(id: "m-1", channel: "c")]) { error in told.withLock { $0.append(error) } }
        #expect(told.withLock { $0.count } == 1 && told.withLock { $0[0] } == nil, "\(told.withLock { $0 })")
        // A client that knows nothing of the chain calls retry's publish_async: the inner publish
        // runs on a thread of retry's, and closing retry waits until each is told.
        let unaware = TransportClient(descriptor: retry.client.descriptor, instance: retry.client.instance)
        #expect(unaware.publishesAsynchronously)
        for index in 2...9 { unaware.publish([Message(id: "m-\(index)", channel: "c")]) { error in told.withLock { $0.append(error) } } }
        retry.close()
        let outcome = told.withLock { $0 }
        #expect(outcome.count == 9 && outcome.allSatisfy { $0 == nil }, "every publish told by the time destroy returned: \(outcome)")
        #expect(try queue.client.stats()?.published == 9)
    }
    @Test("delay over a durable queue publishes without blocking: a message due later is held, told once committed, and delivered when due; one due now goes straight through")
    func delayOverDurableQueue() async throws {
        let directory = try TemporaryDirectory()
        let queue = try Transport(name: "q", plugin: try BuildProducts.plugin("queue"), configJSON: #"{"path": "\#(directory.file("q.db"))"}"#)
        let delay = try Transport(
            name: "d", plugin: try BuildProducts.plugin("delay"), configJSON: #"{"path": "\#(directory.file("d.db"))"}"#, inner: queue)
        defer {
            delay.close()
            queue.close()
        }
        #expect(delay.client.publishesAsynchronously, "delay and the queue under it both offer publish_async")
        let received = Guarded<[(id: String, at: Int64)]>([])
        let client = delay.client
        _ = try client.subscribe(SubscribeOptions(channel: "c")) { delivery, message in
            received.withLock { $0.append((message.id, wallClockNanoseconds())) }
            try? client.settle(delivery, .ack)
            return .ok
        }
        let due = wallClockNanoseconds() + 1_000_000_000
        try await client.publishAsync(Message(id: "later", channel: "c", deliverAtNanos: due))
        let depth = try delay.client.stats()?.depth
        // (A machine loaded enough to reach the due time first has forwarded it already.)
        #expect(depth == 1 || wallClockNanoseconds() >= due, "held by delay once told: depth \(String(describing: depth))")
        try await client.publishAsync(Message(id: "now", channel: "c"))
        #expect(await eventually { received.withLock { $0.count } == 2 })
        let got = received.withLock { $0 }
        #expect(Set(got.map(\.id)) == ["now", "later"], "\(got.map(\.id))")
        #expect(got.first { $0.id == "later" }.map { $0.at >= due } == true, "delivered when due, not before")
    }
    @Test("delay's capacity holds with many publish_async in flight at once, and a drained delay holds nothing more")
    func delayCapacityAndDrain() async throws {
        let directory = try TemporaryDirectory()
        let queue = try Transport(name: "q", plugin: try BuildProducts.plugin("queue"), configJSON: #"{"path": "\#(directory.file("q.db"))"}"#)
        let delay = try Transport(
            name: "d", plugin: try BuildProducts.plugin("delay"), configJSON: #"{"path": "\#(directory.file("d.db"))", "capacity": 5}"#,
            inner: queue)
        defer {
            delay.close()
            queue.close()
        }
        let later = wallClockNanoseconds() + 3_600_000_000_000
        let told = Guarded<[TransportError?]>([])
        for index in 0..<40 {
            delay.client.publish([Message(id: "m-\(index)", channel: "c", deliverAtNanos: later)]) { error in told.withLock { $0.append(error) } }
        }
        #expect(await eventually { told.withLock { $0.count } == 40 })
        let outcome = told.withLock { $0 }
        #expect(outcome.filter { $0 == nil }.count == 5 && outcome.filter { $0?.code == .full }.count == 35, "\(outcome)")
        #expect(try delay.client.stats()?.depth == 5)
        try delay.client.drain(deadlineNanos: monotonicNanoseconds() + 100_000_000)
        let afterDrain = Guarded<[TransportError?]>([])
        delay.client.publish([Message(id: "late", channel: "c", deliverAtNanos: later)]) { error in afterDrain.withLock { $0.append(error) } }
        #expect(afterDrain.withLock { $0.first??.code } == .closed, "\(afterDrain.withLock { $0 })")
        #expect(throws: TransportError.self) { try delay.client.publish(Message(id: "late-2", channel: "c", deliverAtNanos: later)) }
    }

    /// Once drain has begun the inner transport refuses publishes, so a held message that comes
    /// due is not forwarded (it used to be retried every 100 ms against the closed inner
    /// transport, a warning each time, until destroy): it stays in the delay store and is
    /// forwarded after the next start.
    /// A held message its inner transport refuses each time (here too large for it) was retried
    /// ten times a second, a warning each time, forever. It stays held, is tried again with
    /// backoff (100 ms doubling to a minute), and the warning comes on the first refusal, then
    /// once a minute; a message the inner transport takes after a refusal goes on as before.
    @Test("a held message the inner transport keeps refusing is retried with backoff and warned of once, not ten times a second")
    func refusedForwardBacksOff() async throws {
        let log = CapturedLog()
        let queue = try Transport(name: "q", plugin: try BuildProducts.plugin("queue"), configJSON: #"{"max_message_bytes": 100}"#)
        let delay = try Transport(name: "d", plugin: try BuildProducts.plugin("delay"), inner: queue, logger: log.logger())
        defer {
            delay.close()
            queue.close()
        }
        let received = Collector()
        _ = try delay.client.subscribe(SubscribeOptions(channel: "c"), handler: received.handler(client: delay.client))
        let due = wallClockNanoseconds() + 50_000_000
        try delay.client.publish(Message(id: "too-large", channel: "c", body: Array(repeating: 7, count: 1000), deliverAtNanos: due))
        try delay.client.publish(Message(id: "fits", channel: "c", deliverAtNanos: due))
        #expect(await eventually { received.received.map(\.message.id) == ["fits"] })
        try await Task.sleep(for: .milliseconds(1500))  // tries at about 0.05, 0.15, 0.35, 0.75 and 1.55 s
        let warnings = log.all.filter { $0.contains("refused held message too-large") }
        #expect(warnings.count == 1 && warnings[0].contains("max_message_bytes"), "\(log.all)")
        #expect(received.received.map(\.message.id) == ["fits"])
    }

    @Test("a message that comes due while a durable delay drains stays held, quietly, and is delivered after the next start")
    func delayDueDuringDrain() async throws {
        let directory = try TemporaryDirectory()
        let queueConfig = #"{"path": "\#(directory.file("q.db"))"}"#
        let delayConfig = #"{"path": "\#(directory.file("d.db"))"}"#
        let log = CapturedLog()
        do {
            let queue = try Transport(name: "q", plugin: try BuildProducts.plugin("queue"), configJSON: queueConfig)
            let delay = try Transport(name: "d", plugin: try BuildProducts.plugin("delay"), configJSON: delayConfig, inner: queue, logger: log.logger())
            // Due well after the drain begins, however slow the commit before it.
            try delay.client.publish(Message(id: "soon", channel: "c", deliverAtNanos: wallClockNanoseconds() + 1_500_000_000))
            try delay.client.drain(deadlineNanos: monotonicNanoseconds() + 100_000_000)
            try await Task.sleep(for: .milliseconds(2_000))  // due meanwhile
            delay.close()
            queue.close()
        }
        #expect(!log.all.contains { $0.contains("refused held message") }, "\(log.all)")
        #expect(log.all.contains { $0.contains("draining with 1 messages held") && $0.contains("forwarded after the next start") }, "\(log.all)")
        let queue = try Transport(name: "q", plugin: try BuildProducts.plugin("queue"), configJSON: queueConfig)
        let delay = try Transport(name: "d", plugin: try BuildProducts.plugin("delay"), configJSON: delayConfig, inner: queue)
        defer {
            delay.close()
            queue.close()
        }
        let received = Guarded<[String]>([])
        let client = delay.client
        _ = try client.subscribe(SubscribeOptions(channel: "c")) { delivery, message in
            received.withLock { $0.append(message.id) }
            try? client.settle(delivery, .ack)
            return .ok
        }
        #expect(await eventually { received.withLock { $0 } == ["soon"] }, "\(received.withLock { $0 })")
    }
}
