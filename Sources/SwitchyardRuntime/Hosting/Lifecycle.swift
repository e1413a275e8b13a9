import Foundation
import Logging
import ServiceLifecycle
import SwitchyardABI

extension SwitchyardActorSystem: Service {
    /// Runs until graceful shutdown (SIGTERM or SIGINT when run in a `ServiceGroup` with those
    /// signals), then drains with ``shutdown(deadline:)``.
    public func run() async throws {
        try? await gracefulShutdown()
        await shutdown()
    }

    /// Drains and stops, within `deadline`:
    ///
    /// 1. stops taking deliveries (they stay with the transport for other hosts), except calls
    ///    made from this process, which running calls may be waiting for;
    /// 2. lets running calls finish and send their replies;
    /// 3. waits for this process's own outstanding calls to get their replies;
    /// 4. releases the deliveries that were taken but not started, so they are redelivered at once;
    /// 5. relays what the finished calls committed to outboxes (what is left stays in the
    ///    database, for the next process with that outbox);
    /// 6. fails whatever is still waiting, unsubscribes and closes the transports.
    ///
    /// Calling it again does nothing.
    public func shutdown(deadline: Duration = .seconds(30)) async {
        guard
            state.compareExchange(
                expected: SystemState.running.rawValue, desired: SystemState.draining.rawValue,
                ordering: .acquiringAndReleasing
            ).exchanged
        else { return }
        let started = ContinuousClock.now
        let until = started + deadline
        server.accepting.store(false, ordering: .releasing)
        logger.info("draining", metadata: ["deadline": "\(deadline)"])
        let subscriptions = server.takeSubscriptions()
        // Workers keep running what they have taken; wait for the queues and the calls to empty.
        // Woken by the last one to finish (or the deadline), not by polling.
        while ContinuousClock.now < until, server.inFlight.value > 0 || pending.count > 0 {
            if server.inFlight.value > 0 {
                await server.inFlight.waitUntilZero(until: until)
            } else {
                await pending.waitUntilEmpty(until: until)
            }
        }
        let released = await blockingOperation {
            var released = 0
            for subscription in subscriptions {
                for item in subscription.queue.close() {
                    try? subscription.transport.client.settle(item.delivery, .release)
                    released += 1
                }
                try? subscription.transport.client.unsubscribe(subscription.id)
            }
            return released
        }
        // Workers end once their queue is closed and their call is done; past the deadline, the
        // calls still running are cancelled rather than waited for (a call that ends because it
        // was cancelled goes back to its transport: see `handle`). Waited for through the count
        // of running calls, which keeps the deadline, not by awaiting each worker's value: that
        // cannot be cancelled, and a call running past the deadline held the drain until it
        // ended (30 s in the orders example, whose calls have that deadline, against its 10 s).
        while ContinuousClock.now < until, server.inFlight.value > 0 {
            await server.inFlight.waitUntilZero(until: until)
        }
        for subscription in subscriptions {
            for worker in subscription.workers { worker.cancel() }
        }
        // What the finished calls committed to outboxes goes out before the transports close.
        await outboxRelays.drainAndStop(until: until)
        state.store(SystemState.stopped.rawValue, ordering: .releasing)
        let unfinished = pending.count
        pending.failAll { _ in SwitchyardError.shuttingDown(target: "") }
        await blockingOperation {
            self.unsubscribeReplies()
            self.transports?.close()
        }
        logger.info(
            "stopped",
            metadata: [
                "drained_in": "\(ContinuousClock.now - started)", "released": "\(released)", "unfinished_calls": "\(unfinished)",
            ])
    }
}

/// Runs `work` on a thread of its own and awaits it. Plugin operations are synchronous C calls,
/// and unsubscribing or closing may wait for a plugin's own threads (a NATS fetch ends within its
/// timeout, a plugin host process exits, a store's writer flushes): that must not hold one of the
/// cooperative pool's threads, of which there are as many as cores.
func blockingOperation<R: Sendable>(_ work: @escaping @Sendable () -> R) async -> R {
    await withCheckedContinuation { continuation in
        let thread = Thread { continuation.resume(returning: work()) }
        thread.name = "switchyard-blocking"
        thread.start()
    }
}
