import Foundation
import Logging
import ServiceLifecycle
import SwitchyardABI
import SwitchyardHost
import SwitchyardWire

extension SwitchyardActorSystem: Service {
    /// Runs until graceful shutdown (SIGTERM or SIGINT when run in a `ServiceGroup` with those
    /// signals), then drains with ``shutdown(deadline:)``.
    public func run() async throws {
        try? await gracefulShutdown()
        await shutdown()
    }

    /// The system as a `Service` that drains within `deadline` on graceful shutdown (the system
    /// itself, as a service, drains within 30 s):
    /// `ServiceGroup(configuration: .init(services: [.init(service: system.service(drainingWithin: .seconds(60)))], …))`.
    public func service(drainingWithin deadline: Duration) -> some Service {
        DrainingWithin(system: self, deadline: deadline)
    }

    /// Drains and stops, within `deadline`:
    ///
    /// 1. stops taking deliveries (they stay with the transport for other hosts), except calls
    ///    made from this process, which running calls may be waiting for;
    /// 2. gives back the calls it had taken but not started (a worker's queue, up to a route's
    ///    `prefetch`), so that other hosts take them at once; lets the calls running finish and
    ///    send their replies (calls made from this process stay: a running call may wait for
    ///    them);
    /// 3. waits for this process's own outstanding calls to get their replies; once nothing is
    ///    running or awaited, stops taking anything (one atomic step with the count of calls taken);
    /// 4. unsubscribes; past the deadline, it first releases the deliveries that were taken but not
    ///    started, so they are redelivered at once, and then stops the calls still running (each
    ///    goes back to its transport);
    /// 5. relays what the finished calls committed to outboxes (what is left stays in the
    ///    database, for the next process with that outbox);
    /// 6. fails whatever is still waiting, closes the transports, and hangs up the connections
    ///    of PostgreSQL inboxes and outboxes.
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
        // What the drain waits for, so that "stopped" (released, unfinished) reads against it.
        logger.info(
            "draining", metadata: ["deadline": "\(deadline)", "calls_in_flight": "\(server.inFlight.value)", "calls_awaiting_replies": "\(pending.count)"])
        let subscriptions = server.takeSubscriptions()
        // Calls queued for a worker but not started go back to their transports now, for other
        // hosts: waiting for them here could take the whole deadline (a route's prefetch of slow
        // calls), and they are not this process's to finish. Its own calls stay queued.
        let ownSource = Envelope.defaultSource
        let handedBack = subscriptions.flatMap { subscription in
            subscription.queue.remove { $0.envelope.source != ownSource }.map { (subscription.transport, $0) }
        }
        if !handedBack.isEmpty { await release(handedBack) }
        // Workers keep running what they have started, and own calls are still taken: wait for
        // the calls taken here (own calls queued, or running) and the calls made from here to end, then close
        // the count of calls taken in the same atomic step that finds it at zero. Looking at the
        // count and then closing the queues missed a call taken in between: it ran with its
        // subscription gone, its own calls to this process were never served, and it waited out
        // its deadline (4 drains of 110 of the orders demo under load stalled so). Woken by
        // the last one to finish (or the deadline), not by polling.
        while ContinuousClock.now < until {
            if server.inFlight.value > 0 {
                await server.inFlight.waitUntilZero(until: until)
            } else if pending.count > 0 {
                await pending.waitUntilEmpty(until: until)
            } else if server.inFlight.closeIfIdle() {
                break
            }
        }
        // Nothing more is taken now. Past the deadline, what was taken but not started goes back
        // to its transport at once, and the calls still running are cancelled rather than waited
        // for (a call that ends because it was cancelled goes back to its transport: see
        // `handle`). Waiting on the count, above, kept the deadline; awaiting each worker's value
        // did not (it cannot be cancelled: a call running past the deadline held the drain until
        // it ended, 30 s in the orders example against its 10 s). Unsubscribed at once, off the
        // pool (a release commits on a durable transport; an unsubscribe may wait for a plugin's
        // thread): a subscription left open would only hand back everything offered to it.
        server.inFlight.close()
        let unstarted = subscriptions.flatMap { subscription in subscription.queue.close().map { (subscription.transport, $0) } }
        await blockingOperation {
            self.releaseNow(unstarted)
            for subscription in subscriptions {
                try? subscription.transport.client.unsubscribe(subscription.id)
                // Here, off the pool: it waits for an extension under way (the transport closes next).
                subscription.leases?.stop()
            }
        }
        for subscription in subscriptions {
            for worker in subscription.workers { worker.cancel() }
        }
        // A cancelled call ends by settling (releasing) into its transport: give those a moment
        // before the transports close. A settle racing the close ran inside a plugin whose
        // instance was being freed, and wrote into its freed lock (glibc's mutex code: no
        // sanitizer sees it). Bounded, as the drain is: a call that ignores cancellation does not
        // hold the shutdown (the client refuses its late settle once the transport is closed).
        await server.inFlight.waitUntilZero(until: ContinuousClock.now + .seconds(2))
        // What the finished calls committed to outboxes goes out before the transports close.
        await outboxRelays.drainAndStop(until: until)
        state.store(SystemState.stopped.rawValue, ordering: .releasing)
        let unfinished = pending.count
        pending.failAll { _ in SwitchyardError.shuttingDown(target: "") }
        await blockingOperation {
            self.unsubscribeReplies()
            self.transports?.close()
            // Connections to database servers end now, not when the system is released: a
            // process that shuts a system down and goes on (a restart, tests) must not hold them.
            for route in self.routes.routes { route.inbox?.database?.closeConnections() }
            self.outboxRelays.closeConnections()
            for outbox in self.outboxes.values { outbox.closeConnections() }
        }
        logger.info(
            "stopped",
            metadata: [
                "drained_in": "\(ContinuousClock.now - started)", "released": "\(handedBack.count + unstarted.count)", "unfinished_calls": "\(unfinished)",
            ])
    }
}

extension SwitchyardActorSystem {
    /// Gives taken, unstarted calls back to their transports (off the pool: a release commits on
    /// a durable transport), redelivered at once without an attempt counted.
    fileprivate func release(_ items: [(Transport, Inbound)]) async {
        await blockingOperation { self.releaseNow(items) }
    }

    fileprivate func releaseNow(_ items: [(Transport, Inbound)]) {
        for (transport, item) in items {
            item.leases?.letGo(item)
            try? transport.client.settle(item.delivery, .release)
            server.inFlight.leave()
        }
    }
}

/// Runs `work` on a thread of its own and awaits it. Plugin operations are synchronous C calls,
/// and unsubscribing or closing may wait for a plugin's own threads (a NATS fetch ends within its
/// timeout, a plugin host process exits, a store's writer flushes): that must not hold one of the
/// cooperative pool's threads, of which there are as many as cores.
func blockingOperation<R: Sendable>(_ work: @escaping @Sendable () -> R) async -> R {
    await withCheckedContinuation { continuation in
        let thread = Thread(named: "switchyard-blocking") { continuation.resume(returning: work()) }
        thread.start()
    }
}

/// ``SwitchyardActorSystem/service(drainingWithin:)``.
private struct DrainingWithin: Service {
    let system: SwitchyardActorSystem
    let deadline: Duration
    func run() async throws {
        try? await gracefulShutdown()
        await system.shutdown(deadline: deadline)
    }
}
