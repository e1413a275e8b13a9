// delay — wraps an inner transport and holds each message whose deliver-at is in the future until
// it is due, then publishes it to the inner transport. A heap of due times and one timer thread
// that sleeps until the next one; durable on SQLite with `path`. Semantics: docs/transports.md.

import SwitchyardPluginKit
import SwitchyardTransportKit

@c(switchyard_plugin_entry)
public func switchyardPluginEntry(_ hostABIMajor: UInt32) -> UnsafePointer<sy_plugin_descriptor>? {
    PluginExport.descriptor(for: DelayTransport.self, hostABIMajor: hostABIMajor)
}

/// Config: `path` (durable holding store; absent: in memory), `capacity` (most held messages).
struct DelayConfig: PluginConfig {
    static let allowedKeys: Set<String> = ["path", "capacity"]
    var path: String?
    var capacity: Int?
}

final class DelayTransport: DecoratorTransport, @unchecked Sendable {
    override class var info: PluginInfo {
        PluginInfo(
            name: "delay", version: "1.0.0",
            description: "Holds messages until their deliver-at time, then forwards them to the inner transport",
            capabilities: [.delay, .wrapsInner, .durable],
            // publish(_:done:) below: held without blocking, or passed on when due.
            atomicPublishAndSettle: false, extendsLeases: true, publishesAsynchronously: true)
    }

    private var scheduler: DelayScheduler!
    private let host: HostServices
    /// Whether held messages are kept in a file (`path`), not only in memory.
    private let durable: Bool

    override var configuredCapabilities: Capabilities? { durable ? nil : Self.info.capabilities.subtracting(.durable) }

    required init(context: TransportContext) throws(TransportError) {
        let config = try context.decodeConfig(DelayConfig.self)
        if let capacity = config.capacity, capacity < 0 { throw TransportError(.config, "config key 'capacity': must be 0 (unbounded) or more") }
        host = context.host
        durable = config.path != nil
        try super.init(context: context)
        let inner = self.inner
        scheduler = try DelayScheduler(path: config.path, capacity: config.capacity ?? 1_000_000, host: context.host) {
            message throws(TransportError) in try inner.publish(message)
        }
    }

    /// Drain: the scheduler stops holding (a hold is refused with `closed`) and forwarding
    /// before the inner transport drains; what is held stays held (see
    /// `DelayScheduler.stopHolding()`).
    override func drain(deadlineNanos: Int64) throws(TransportError) {
        scheduler.stopHolding()
        try super.drain(deadlineNanos: deadlineNanos)
    }

    /// The inner transport's channels, with the messages held here added to their channels'
    /// depth (and, those not due yet, to waiting), under the empty group: over a topic they are not
    /// yet copied to any group. Nil over an inner transport that reports no channels (the held
    /// ones are in ``stats()``'s depth then).
    override func channelStats() throws(TransportError) -> [ChannelStats]? {
        guard let innerChannels = try inner.channelStats() else { return nil }
        let held = try scheduler.heldByChannel(now: host.nowNanos()).map {
            ChannelStats(channel: $0.key, depth: $0.value.held, waiting: $0.value.notDue)
        }
        return ChannelStats.merged(innerChannels + held)
    }

    override func publish(_ message: MessageView) throws(TransportError) {
        // Not due yet: hold it. Due (or no time given): straight through, uncopied.
        if message.deliverAtNanos > host.nowNanos() {
            try scheduler.hold(message.copy())
        } else {
            try inner.publish(message.pointer)
        }
    }

    override func publish(batch: [MessageView]) throws(TransportError) {
        // All or nothing: a batch with anything to hold is held as one (its due messages are
        // forwarded by the timer right away); a batch that is all due goes straight through.
        let now = host.nowNanos()
        if batch.contains(where: { $0.deliverAtNanos > now }) {
            try scheduler.hold(batch: batch.map { $0.copy() })
        } else {
            try inner.publish(batch: batch.map { $0.copy() })
        }
    }

    /// `publish_batch` without blocking (ABI 1.7): a batch with anything to hold is held as one
    /// (committed to the delay store before `done`), a batch that is all due goes to the inner
    /// transport's `publish_async`.
    override func publish(_ batch: [MessageView], done: @escaping @Sendable (TransportError?) -> Void) {
        let now = host.nowNanos()
        if batch.contains(where: { $0.deliverAtNanos > now }) {
            scheduler.hold(batch: batch.map { $0.copy() }, done: done)
        } else {
            super.publish(batch, done: done)
        }
    }

    override func publish(_ batch: [MessageView], settling delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {
        // Messages to hold stay here, the settlement goes to the inner transport: two stores, so
        // not one unit. Messages that are due go with the settlement, atomically if the inner can.
        let now = host.nowNanos()
        guard batch.contains(where: { $0.deliverAtNanos > now }) else { return try super.publish(batch, settling: delivery, settlement) }
        try scheduler.hold(batch: batch.map { $0.copy() })
        try inner.settle(delivery, settlement)
    }

    override func stats() -> TransportStats {
        var stats = super.stats()
        stats.depth += UInt64(scheduler.heldCount)
        return stats
    }

    override func shutdown() {
        scheduler.shutdown()
        super.shutdown()
    }
}
