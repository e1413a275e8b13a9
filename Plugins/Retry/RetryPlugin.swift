// retry — wraps an inner transport and applies a retry policy to failed deliveries: a failure
// (settle with retry) is re-delivered after an exponential backoff with full jitter, up to
// max_attempts; then, or at once for a non-retryable failure, the message is dead-lettered with
// its reason and attempt history. The attempt count travels in the message, so it survives
// restarts of a durable inner transport. Semantics: docs/transports.md.

import SwitchyardABI
import SwitchyardPluginKit
import SwitchyardTransportKit

@c(switchyard_plugin_entry)
public func switchyardPluginEntry(_ hostABIMajor: UInt32) -> UnsafePointer<sy_plugin_descriptor>? {
    PluginExport.descriptor(for: RetryTransport.self, hostABIMajor: hostABIMajor)
}

final class RetryTransport: DecoratorTransport, @unchecked Sendable {
    override class var info: PluginInfo {
        PluginInfo(
            name: "retry", version: "1.0.0",
            description: "Retries failed deliveries with exponential backoff and jitter, then dead-letters them",
            capabilities: [.retry, .deadLetter, .wrapsInner],
            // Publishes pass through unchanged: without blocking where the inner transport can.
            atomicPublishAndSettle: false, extendsLeases: true, publishesAsynchronously: true)
    }

    /// Attempt number of each delivery handed out and not yet settled. A delivery that expires
    /// unsettled is never settled here, so entries older than an hour — neither handed out nor
    /// extended for that long — are dropped once the table grows large (the inner transport
    /// redelivers such a message under a new delivery id).
    private final class Attempts: Sendable {
        private let table = Guarded<[DeliveryID: (attempt: UInt32, at: ContinuousClock.Instant)]>([:])

        func record(_ delivery: DeliveryID, _ attempt: UInt32) {
            add { table, now in table[delivery] = (attempt, now) }
        }

        /// Records the batch's deliveries not settled as they were handed over, under one lock.
        func record(_ deliveries: UnsafeBufferPointer<DeliveryID>, _ messages: [MessageView]) {
            add { table, now in
                for (index, message) in messages.enumerated() where !message.flags.contains(.settled) {
                    table[deliveries[index]] = (message.attempt, now)
                }
            }
        }

        /// Adds entries under the lock, once the table is large first dropping those older than an hour.
        private func add(_ fill: (inout [DeliveryID: (attempt: UInt32, at: ContinuousClock.Instant)], ContinuousClock.Instant) -> Void) {
            table.withLock { table in
                let now = ContinuousClock.now
                if table.count >= 100_000 { table = table.filter { now - $0.value.at < .seconds(3600) } }
                fill(&table, now)
            }
        }

        /// Forgets deliveries the subscriber refused.
        func forget(_ deliveries: some Sequence<DeliveryID>) {
            table.withLock { table in for delivery in deliveries { table.removeValue(forKey: delivery) } }
        }

        func take(_ delivery: DeliveryID) -> UInt32? {
            table.withLock { $0.removeValue(forKey: delivery)?.attempt }
        }

        /// Marks `deliveries` as still held now (their leases were extended), so that a delivery
        /// held longer than an hour keeps its entry.
        func touch(_ deliveries: some Sequence<DeliveryID>) {
            let now = ContinuousClock.now
            table.withLock { table in
                for delivery in deliveries where table[delivery] != nil { table[delivery]!.at = now }
            }
        }
    }

    private let policy: RetryPolicy
    private let attempts = Attempts()
    private let host: HostServices

    required init(context: TransportContext) throws(TransportError) {
        policy = try context.decodeConfig(RetryPolicy.self)
        host = context.host
        try policy.validate()
        try super.init(context: context)
        let missing = Capabilities([.retry, .deadLetter]).subtracting(innerCapabilities)
        if !missing.isEmpty {
            throw TransportError(.config, "transport '\(context.instanceName)': the inner transport lacks \(missing), which retry needs")
        }
    }

    override func subscribe(_ options: SubscribeOptions, _ subscriber: Subscriber) throws(TransportError) -> SubscriptionID {
        // Batches pass through whole (ABI 1.3) when the subscriber takes them: the inner
        // transport's array is handed on as it came.
        let attempts = self.attempts
        let relay: BatchDeliveryHandler = { deliveries, messages in
            attempts.record(deliveries, messages)
            let taken = subscriber.deliver(batch: deliveries, relaying: messages)
            if taken < messages.count { attempts.forget(deliveries[taken..<messages.count]) }
            return taken
        }
        return track(
            try inner.subscribe(
                options,
                handler: { [attempts] delivery, message in
                    // A delivery settled as it was handed over is never settled, so never retried.
                    if !message.flags.contains(.settled) { attempts.record(delivery, message.attempt) }
                    let status = subscriber.deliver(delivery, message.pointer)
                    if status != .ok { _ = attempts.take(delivery) }
                    return status
                }, batchHandler: subscriber.takesBatches ? relay : nil))
    }

    override func publish(_ batch: [MessageView], settling delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {
        // A retry is this decorator's decision (settle below); everything else goes through as one unit.
        if case .retry = settlement {
            try publish(batch: batch)
            return try settle(delivery, settlement)
        }
        _ = attempts.take(delivery)
        try super.publish(batch, settling: delivery, settlement)
    }

    override func extend(_ deliveries: UnsafeBufferPointer<DeliveryID>) -> [TransportError?] {
        let results = super.extend(deliveries)
        attempts.touch(zip(deliveries, results).lazy.filter { $0.1 == nil }.map(\.0))
        return results
    }

    override func settle(_ delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {
        let attempt = attempts.take(delivery)
        guard case .retry(let after, let reason) = settlement, let attempt else {
            return try inner.settle(delivery, settlement)
        }
        // The decisions are this decorator's metrics; the inner transport reports the moves.
        if !policy.isRetryable(reason) {
            host.count("dead_lettered")
            return try inner.settle(delivery, .deadLetter(reason: "not retryable: \(reason)"))
        }
        if Int(attempt) >= policy.maxAttempts {
            host.count("dead_lettered")
            return try inner.settle(delivery, .deadLetter(reason: "gave up after \(attempt) attempt\(attempt == 1 ? "" : "s"): \(reason)"))
        }
        host.count("retried")
        try inner.settle(delivery, .retry(afterNanos: max(after, policy.backoff(afterAttempt: attempt)), reason: reason))
    }
}
