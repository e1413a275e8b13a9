import SwitchyardABI
import SwitchyardPluginKit

/// A plugin that wraps an inner transport (capability `wrapsInner`): by default every call goes
/// straight through to the inner one, unchanged and uncopied. Subclasses override the calls they
/// change (`delay` overrides publish; `retry` overrides subscribe and settle, and passes
/// `publish_async` through).
open class DecoratorTransport: TransportPlugin, @unchecked Sendable {
    // @unchecked: immutable after init; the inner client is thread-safe.

    /// Subclasses override: the plugin's identity (must include `.wrapsInner`).
    open class var info: PluginInfo { fatalError("DecoratorTransport subclasses must override info") }

    /// The inner transport. The host owns it and destroys it after this instance.
    public let inner: TransportClient
    /// What the inner transport keeps as configured: its plugin's capabilities, less those its
    /// config turned off (ABI 1.8 `instance_capabilities`; a `queue` without `path` is not durable).
    public let innerCapabilities: Capabilities
    /// Subscriptions this instance holds on the inner transport. They end with this instance:
    /// the inner one outlives it and must not deliver to subscribers that are gone.
    private let innerSubscriptions = Guarded<Set<SubscriptionID>>([])

    /// Takes the inner transport from the context; refuses to start without one.
    public required init(context: TransportContext) throws(TransportError) {
        guard let inner = context.inner else {
            throw TransportError(.config, "transport '\(context.instanceName)': \(Self.info.name) needs an inner transport ('inner' in config)")
        }
        self.inner = inner
        innerCapabilities = inner.instanceCapabilities
        passesPublishAsync = Self.info.publishesAsynchronously
    }

    open func publish(_ message: MessageView) throws(TransportError) { try inner.publish(message.pointer) }
    open func publish(batch: [MessageView]) throws(TransportError) { try inner.publish(batch: batch.map { $0.copy() }) }
    /// Straight through to the inner transport's `publish_async` (ABI 1.7), where the subclass
    /// declares ``PluginInfo/publishesAsynchronously`` — do so only if it changes no publish, or
    /// overrides this too; otherwise ``publish(batch:)``, then `done`, as for any plugin. Over an
    /// inner transport without `publish_async` the inner publish runs on a thread of this
    /// instance's (``BlockingCalls``), never the caller's — though a host that knows the chain
    /// publishes through `publish_batch` itself then. A publish passed to the inner
    /// `publish_async` is told at the latest when the innermost transport's `destroy` returns
    /// (this one's must not wait for it: a publish waiting for room in a full inner transport
    /// would hold it up for its `full_wait`); one running on this instance's threads, before this
    /// instance's `destroy` returns (the inner one must not be destroyed under it). Publishes
    /// passed on skip a subclass's `publish(batch:)`: one that changes publishes overrides this
    /// too, calling `super` for what it leaves as it is.
    open func publish(_ batch: [MessageView], done: @escaping @Sendable (TransportError?) -> Void) {
        guard passesPublishAsync else {
            do throws(TransportError) {
                try publish(batch: batch)
                done(nil)
            } catch {
                done(error)
            }
            return
        }
        guard inner.publishesAsynchronously else {
            // One `publish` each would not be all or nothing.
            if batch.count > 1 && inner.descriptor.pointee.publish_batch == nil {
                return done(
                    TransportError(.unsupported, "\(Self.info.name)'s inner transport has no publish_batch (before ABI 1.1): publish these one at a time"))
            }
            let messages = batch.map { $0.copy() }
            return innerPublishes.run { [inner] in
                do throws(TransportError) {
                    try inner.publish(batch: messages)
                    done(nil)
                } catch {
                    done(error)
                }
            }
        }
        inner.publish(batch.map { $0.copy() }, done: done)
    }
    /// Every capability of the subclass's info. Override where config turns some off (`delay`
    /// without `path` holds messages in memory: not `.durable`).
    open var configuredCapabilities: Capabilities? { nil }

    /// Whether the subclass's info says ``PluginInfo/publishesAsynchronously`` (read once).
    private let passesPublishAsync: Bool
    /// Where publishes wait for an inner transport without `publish_async`.
    private let innerPublishes = BlockingCalls(name: "switchyard-inner-pub", maxThreads: 8)

    open func subscribe(_ options: SubscribeOptions, _ subscriber: Subscriber) throws(TransportError) -> SubscriptionID {
        track(try inner.subscribe(options, passing: subscriber.raw))
    }

    /// Records a subscription made on the inner transport so that ``shutdown()`` ends it.
    public func track(_ id: SubscriptionID) -> SubscriptionID {
        innerSubscriptions.withLock { _ = $0.insert(id) }
        return id
    }

    open func unsubscribe(_ id: SubscriptionID) throws(TransportError) {
        try inner.unsubscribe(id)
        innerSubscriptions.withLock { _ = $0.remove(id) }
    }
    open func settle(_ delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) { try inner.settle(delivery, settlement) }
    /// Straight through to the inner transport, which stores and settles as one unit if it can.
    open func publish(_ batch: [MessageView], settling delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {
        try inner.publish(batch.map { $0.copy() }, settling: delivery, settlement)
    }
    /// The inner transport's lease (0 when it cannot extend leases: then nothing is extended);
    /// its error when it could not answer. A decorator offers `extend`
    /// (``PluginInfo/extendsLeases``) for the inner transport's sake.
    open var leaseNanos: Int64 {
        get throws(TransportError) { try inner.leaseNanos() ?? 0 }
    }
    /// Straight through to the inner transport, whose deliveries these are.
    open func extend(_ deliveries: UnsafeBufferPointer<DeliveryID>) -> [TransportError?] {
        do throws(TransportError) {
            return try inner.extend(Array(deliveries))
        } catch {
            return deliveries.map { _ in error }
        }
    }
    open func drain(deadlineNanos: Int64) throws(TransportError) { try inner.drain(deadlineNanos: deadlineNanos) }
    open func stats() -> TransportStats { (try? inner.stats()) ?? TransportStats() }
    /// The inner transport's channels (nil where it reports none): a decorator that holds messages
    /// of its own adds them (`delay`).
    open func channelStats() throws(TransportError) -> [ChannelStats]? { try inner.channelStats() }
    /// Ends this instance's subscriptions on the inner transport, and waits for the inner
    /// publishes running on this instance's threads (``publish(_:done:)``): the inner transport
    /// is destroyed next. Overrides call `super.shutdown()`.
    open func shutdown() {
        for id in innerSubscriptions.withLock({ all in
            defer { all.removeAll() }; return all
        }) { try? inner.unsubscribe(id) }
        innerPublishes.waitUntilIdle()
    }
}
