import Foundation
import SwitchyardABI
import SwitchyardPluginKit
import SwitchyardTestSupport
import Synchronization
import Testing

/// `TransportClient.destroy()` against calls already running: the ABI has the host call `destroy`
/// only after every other call returned, and a check of "still alive" before each call left a
/// window in which the instance could be freed under a call that had passed it.
@Suite("A transport client destroys its instance only once the calls into it have returned")
struct ClientLifetimeTests {
    /// A transport whose `publish` blocks until released, and which records what happened in order.
    final class SlowPublisher: TransportInstance, @unchecked Sendable {
        // @unchecked: `events` is guarded; the semaphores are thread-safe.
        let events = Guarded<[String]>([])
        let publishing = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let publishes = Atomic<Int>(0)

        /// The first publish blocks until `release` is signalled; later ones return at once.
        func publish(_ message: MessageView) throws(TransportError) {
            guard publishes.add(1, ordering: .relaxed).newValue == 1 else {
                events.withLock { $0.append("a later publish returned") }
                return
            }
            publishing.signal()
            release.wait()
            events.withLock { $0.append("publish returned") }
        }
        func subscribe(_ options: SubscribeOptions, _ subscriber: Subscriber) throws(TransportError) -> SubscriptionID { 1 }
        func unsubscribe(_ id: SubscriptionID) throws(TransportError) {}
        func settle(_ delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {}
        func shutdown() { events.withLock { $0.append("shutdown") } }
    }

    static func client(for transport: SlowPublisher) -> TransportClient {
        let (descriptor, instance) = PluginExport.inProcess(
            transport, info: PluginInfo(name: "slow-publisher", version: "1.0.0", description: "publish blocks", capabilities: []))
        return TransportClient(descriptor: descriptor, instance: instance)
    }

    /// Publishes one message on a thread of its own; the returned semaphore is signalled once
    /// the publish returned, its outcome in `outcome`.
    static func publishInBackground(_ client: TransportClient, outcome: Guarded<String?>) -> DispatchSemaphore {
        let done = DispatchSemaphore(value: 0)
        Thread {
            do throws(TransportError) {
                try client.publish(Message(id: "m1", channel: "c"))
                outcome.withLock { $0 = "ok" }
            } catch {
                outcome.withLock { $0 = "\(error.code)" }
            }
            done.signal()
        }.start()
        return done
    }

    @Test("destroy waits for a publish in flight, then destroys; calls made meanwhile fail as closed")
    func destroyWaitsForCallsInFlight() async throws {
        try await offPool { Self.destroyWaits() }
    }

    /// On threads of its own, with a long wait for destroy: on a loaded machine a starved task
    /// can be held for seconds, which must not read as destroy giving up.
    static func destroyWaits() {
        let transport = SlowPublisher()
        let client = Self.client(for: transport)
        let outcome = Guarded<String?>(nil)
        let published = Self.publishInBackground(client, outcome: outcome)
        transport.publishing.wait()  // the publish is inside the plugin now

        let destroyed = DispatchSemaphore(value: 0)
        let result = Guarded<Bool?>(nil)
        Thread {
            result.withLock { $0 = client.destroy(waitNanos: 120_000_000_000) }
            destroyed.signal()
        }.start()
        // destroy has begun (it waits): a new call is refused rather than run on the instance.
        var refused = false
        let deadline = Date().addingTimeInterval(60)
        while !refused && Date() < deadline {
            do throws(TransportError) {
                try client.publish(Message(id: "m2", channel: "c"))
                usleep(1_000)
            } catch {
                refused = error.code == .closed
            }
        }
        #expect(refused, "a publish made while destroy waited was not refused as closed")
        #expect(destroyed.wait(timeout: .now() + 0.2) == .timedOut, "destroy returned while a publish was still inside the plugin")
        #expect(!transport.events.withLock { $0 }.contains("shutdown"))

        transport.release.signal()
        #expect(published.wait(timeout: .now() + 60) == .success)
        #expect(destroyed.wait(timeout: .now() + 60) == .success)
        #expect(result.withLock { $0 } == true)
        #expect(outcome.withLock { $0 } == "ok")
        // (A publish tried before destroy began ran and returned: "a later publish returned".)
        #expect(transport.events.withLock { $0 }.filter { $0 != "a later publish returned" } == ["publish returned", "shutdown"])
    }

    @Test("a call still running when the wait ends leaves the instance undestroyed, and destroy says so until it can destroy it")
    func destroyLeavesTheInstanceWhenACallNeverReturns() async throws {
        try await offPool { Self.destroyLeaves() }
    }

    static func destroyLeaves() {
        let transport = SlowPublisher()
        let client = Self.client(for: transport)
        let outcome = Guarded<String?>(nil)
        let published = Self.publishInBackground(client, outcome: outcome)
        transport.publishing.wait()

        #expect(client.destroy(waitNanos: 50_000_000) == false)
        #expect(transport.events.withLock { $0 }.isEmpty, "the instance was destroyed under a running publish")
        // Asked again while the publish still runs: it waits again, and says so again.
        #expect(client.destroy(waitNanos: 50_000_000) == false, "a second destroy reported an instance destroyed that was not")
        #expect(transport.events.withLock { $0 }.isEmpty)

        transport.release.signal()
        #expect(published.wait(timeout: .now() + 60) == .success)
        #expect(outcome.withLock { $0 } == "ok")
        // Once the publish has returned, destroy does destroy; after that it does nothing.
        #expect(client.destroy(waitNanos: 60_000_000_000) == true)
        #expect(client.destroy() == true)
        #expect(transport.events.withLock { $0 } == ["publish returned", "shutdown"])
    }
}
