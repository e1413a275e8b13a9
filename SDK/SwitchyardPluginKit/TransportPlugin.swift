@_exported import CSwitchyard
@_exported import SwitchyardABI

/// What a Swift transport plugin implements. One type per plugin; the SDK turns it into the C
/// descriptor and function table (see ``PluginExport``), so plugin code never touches C structs.
///
/// Threading: as ``TransportInstance``; `init` comes first.
public protocol TransportPlugin: TransportInstance {
    /// The plugin's identity and what it can do. Read once, when the host loads the plugin.
    static var info: PluginInfo { get }

    /// Creates an instance. Throw `TransportError(.config, "...")` naming the key for bad config.
    init(context: TransportContext) throws(TransportError)
}

/// The operations of one transport instance, as the ABI's function table defines them. Plugins
/// implement it through ``TransportPlugin``; the host implements it directly for transports it
/// makes itself (``PluginExport/inProcess(_:info:)``).
///
/// Threading: every method may be called from any thread, concurrently, except that `shutdown`
/// comes last, with nothing overlapping it. Methods return promptly; only `drain` may block,
/// until its deadline.
public protocol TransportInstance: AnyObject, Sendable {
    /// Accepts one message; returns once it is stored as the capabilities promise. The view is
    /// borrowed for this call only: call `message.copy()` to keep the message.
    func publish(_ message: MessageView) throws(TransportError)

    /// Accepts a batch all or nothing (ABI 1.1 `publish_batch`): every message stored, or none and
    /// an error. The views are borrowed for this call only. Default: one `publish` each, which is
    /// all-or-nothing only if no publish fails midway (one that fails after the first says how
    /// many before it were stored), so plugins with real batching override it.
    func publish(batch: [MessageView]) throws(TransportError)

    /// Accepts a batch all or nothing, like ``publish(batch:)``, without waiting for it to be
    /// stored (ABI 1.7 `publish_async`): `done` is called exactly once — nil once every message is
    /// stored as the capabilities promise, or the error that stored none — on any thread, possibly
    /// before this returns, and must return promptly. Never wait for storage here: copy the views
    /// (they are borrowed for this call only) and hand them to the thread that stores them.
    /// Offered to the host only when ``PluginInfo/publishesAsynchronously``. Default:
    /// ``publish(batch:)``, then `done`.
    func publish(_ batch: [MessageView], done: @escaping @Sendable (TransportError?) -> Void)

    /// Starts delivering a channel to `subscriber`; returns a non-zero subscription id.
    func subscribe(_ options: SubscribeOptions, _ subscriber: Subscriber) throws(TransportError) -> SubscriptionID

    /// Stops a subscription; when it returns no delivery for it runs or will start, and its
    /// unsettled deliveries are released.
    func unsubscribe(_ id: SubscriptionID) throws(TransportError)

    /// Settles one delivery, exactly once; `.notFound` for an unknown or already settled one.
    func settle(_ delivery: DeliveryID, _ settlement: Settlement) throws(TransportError)

    /// Settles several deliveries, each independently and in order (ABI 1.3 `settle_batch`);
    /// returns exactly one outcome per delivery, in order: its error, or nil where it was settled
    /// (a shorter array reports the missing ones failed). Default: one `settle` each; plugins
    /// that can take one lock or one commit per batch override it.
    func settle(batch: [(DeliveryID, Settlement)]) -> [TransportError?]

    /// Settles every delivery in `deliveries` the same way, each independently and in order;
    /// one outcome per delivery, as ``settle(batch:)``. A `settle_batch` whose settlements
    /// are all acknowledgements (the usual batch) comes here; every other batch comes to
    /// ``settle(batch:)``. `deliveries` is borrowed for the call: copy what you keep. Default:
    /// ``settle(batch:)`` with the pairs; plugins that can settle such a batch more cheaply
    /// override it.
    func settle(batch deliveries: UnsafeBufferPointer<DeliveryID>, _ settlement: Settlement) -> [TransportError?]

    /// Publishes `batch` and settles `delivery` as one unit (ABI 1.3 `publish_and_settle`): both,
    /// in one commit on a durable store, or neither and an error (`.notFound` for an unknown
    /// delivery, with nothing stored). Default: `publish(batch:)`, then `settle` — not atomic, so
    /// durable plugins override it.
    func publish(_ batch: [MessageView], settling delivery: DeliveryID, _ settlement: Settlement) throws(TransportError)

    /// How long a delivery's lease lasts, in ns (ABI 1.6 `extend`'s `out_lease_ns`): a delivery of
    /// a subscription that set no visibility timeout of its own is handed out again after this
    /// long unsettled; 0 when deliveries have no time limit. Read only when
    /// ``PluginInfo/extendsLeases``. Default: 0. Throws when the plugin cannot tell now (a
    /// decorator whose inner transport failed to answer): the host then says why and asks again
    /// every second, extending nothing until it gets an answer, instead of reading "no time limit".
    var leaseNanos: Int64 { get throws(TransportError) }

    /// Extends the leases of `deliveries` (ABI 1.6 `extend`): each one's lease starts again now,
    /// as long as the lease it was handed out with; nothing is delivered and the attempt is not
    /// counted again. Returns each one's error (`.notFound` for an unknown, settled or released
    /// delivery), or nil where it was extended. `deliveries` is borrowed for the call. Offered to
    /// the host only when ``PluginInfo/extendsLeases``. Default: `.unsupported` for each.
    func extend(_ deliveries: UnsafeBufferPointer<DeliveryID>) -> [TransportError?]

    /// Stops new deliveries and publishes, waits for settlements until the monotonic clock passes
    /// `deadlineNanos`, then releases the rest (throwing `.timeout` if it had to). Default: no-op.
    func drain(deadlineNanos: Int64) throws(TransportError)

    /// Counters since creation. Default: all zero.
    func stats() -> TransportStats

    /// The capabilities this instance keeps as configured (ABI 1.8 `instance_capabilities`):
    /// return the plugin's ``PluginInfo/capabilities`` less what this instance's config turned off
    /// — a plugin that is durable only with a `path` leaves out `.durable` without one, so that the
    /// host calls it inline instead of off the threads that must not wait for storage, and tells
    /// operators its messages live in memory. Read after `init`, from any thread; anything beyond
    /// the plugin's capabilities is ignored. Default: nil, every capability the plugin declares.
    /// Declare it with this exact type, `Capabilities?`: a property of another type (a plain
    /// `Capabilities`) is a different property, and the default would answer instead.
    var configuredCapabilities: Capabilities? { get }

    /// What the instance holds per channel and subscriber group, now (ABI 1.9 `channel_stats`):
    /// one entry for every channel and group with a message stored or in flight, in any order;
    /// channels it knows of with nothing on them may be included with zero counts. Operators read
    /// it, not the data path. Throw when the engine cannot be asked now (unreachable). Default:
    /// nil, the transport does not report channels (the host then shows its ``stats()`` totals
    /// only).
    func channelStats() throws(TransportError) -> [ChannelStats]?

    /// Frees everything; called once, last. No deliveries may run once it returns. Default: no-op.
    func shutdown()
}

extension TransportInstance {
    public func publish(batch: [MessageView]) throws(TransportError) {
        for (index, message) in batch.enumerated() {
            do throws(TransportError) {
                try publish(message)
            } catch {
                guard index > 0 else { throw error }
                // Not all or nothing: say what may already be stored (the header's rule).
                var partial = error
                partial.message +=
                    " (message \(index + 1) of \(batch.count): the \(index) before it were stored;"
                    + " publishing the batch again with the same ids repeats at most those)"
                throw partial
            }
        }
    }
    public func publish(_ batch: [MessageView], done: @escaping @Sendable (TransportError?) -> Void) {
        do throws(TransportError) {
            try publish(batch: batch)
            done(nil)
        } catch {
            done(error)
        }
    }
    public func settle(batch: [(DeliveryID, Settlement)]) -> [TransportError?] {
        batch.map { delivery, settlement in
            do throws(TransportError) {
                try settle(delivery, settlement)
                return nil
            } catch {
                return error
            }
        }
    }
    public func settle(batch deliveries: UnsafeBufferPointer<DeliveryID>, _ settlement: Settlement) -> [TransportError?] {
        settle(batch: deliveries.map { ($0, settlement) })
    }
    public func publish(_ batch: [MessageView], settling delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {
        try publish(batch: batch)
        try settle(delivery, settlement)
    }
    public var leaseNanos: Int64 { 0 }
    public func extend(_ deliveries: UnsafeBufferPointer<DeliveryID>) -> [TransportError?] {
        deliveries.map { _ in TransportError(.unsupported, "extend: this transport cannot extend leases") }
    }
    public func drain(deadlineNanos: Int64) throws(TransportError) {}
    public func stats() -> TransportStats { TransportStats() }
    public var configuredCapabilities: Capabilities? { nil }
    public func channelStats() throws(TransportError) -> [ChannelStats]? { nil }
    public func shutdown() {}
}

/// A plugin's identity, as shown by `switchyard plugins list` and used by config.
public struct PluginInfo: Sendable {
    /// Unique name, `[a-z0-9-]`, starting with a letter: config selects the plugin by it.
    public var name: String
    /// Semantic version of the plugin.
    public var version: String
    /// One line saying what it is.
    public var description: String
    /// What it can do; the host refuses config that needs more.
    public var capabilities: Capabilities
    /// The plugin overrides ``TransportInstance/publish(_:settling:_:)`` to store and settle as
    /// one unit: only then does its descriptor offer `publish_and_settle` (otherwise the host
    /// publishes, then settles, knowing the two are separate).
    public var atomicPublishAndSettle: Bool
    /// The plugin overrides ``TransportInstance/extend(_:)`` and ``TransportInstance/leaseNanos``:
    /// only then does its descriptor offer `extend` (ABI 1.6), and the host keeps the leases of
    /// deliveries it holds from running out.
    public var extendsLeases: Bool
    /// The plugin overrides ``TransportInstance/publish(_:done:)`` to return without waiting for
    /// storage: only then does its descriptor offer `publish_async` (ABI 1.7), and a host calls
    /// it from threads that must not block (a Swift task's) instead of from threads of its own.
    /// Leave it false for a plugin whose publish returns at once anyway (in memory).
    public var publishesAsynchronously: Bool

    /// A plugin identity; `name` must follow ``PluginName``'s rules and `version` be semantic.
    /// The flags say whether the plugin stores and settles as one unit, whether it extends
    /// leases, and whether it publishes without blocking (each false unless given: name only
    /// those it offers).
    public init(
        name: String, version: String, description: String, capabilities: Capabilities,
        atomicPublishAndSettle: Bool = false, extendsLeases: Bool = false, publishesAsynchronously: Bool = false
    ) {
        self.name = name
        self.version = version
        self.description = description
        self.capabilities = capabilities
        self.atomicPublishAndSettle = atomicPublishAndSettle
        self.extendsLeases = extendsLeases
        self.publishesAsynchronously = publishesAsynchronously
    }
}
