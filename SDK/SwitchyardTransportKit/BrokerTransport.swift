import SwitchyardABI
import SwitchyardPluginKit

/// Config shared by the broker-based transports (`queue`, `topic`). Durations are strings with a
/// unit (`"30s"`); every key is optional.
public struct BrokerConfig: Decodable, Sendable {
    /// A SQLite database file: durable mode. Absent: in memory.
    public var path: String?
    /// Most messages stored (ready + in flight); 0: unbounded.
    public var capacity: Int?
    /// How long a publish to a full transport waits for room before failing; "0": fail at once.
    public var full_wait: ConfigDuration?
    /// Default prefetch per subscriber.
    public var max_in_flight: Int?
    /// Default visibility timeout: an unsettled delivery is redelivered after it.
    public var visibility_timeout: ConfigDuration?
    /// Largest message accepted, in bytes.
    public var max_message_bytes: Int?
    /// Most headers on one message.
    public var max_headers: Int?
    /// Largest total of header keys and values on one message, in bytes.
    public var max_header_bytes: Int?
    /// Dead-letter channel suffix (`.dlq`).
    public var dead_letter_suffix: String?
    /// Fan-out only: recent messages kept per channel for groups that start at the earliest.
    public var retain: Int?
    /// How often expired messages nobody leases are dropped or dead-lettered ("5s").
    public var expiry_sweep: ConfigDuration?
    /// In memory only: how many brokers (each with its own lock and dispatcher thread) share the
    /// transport's channels. Default: one per two cores the process may use, at most 8.
    public var shards: Int?

    /// The keys every broker transport accepts, whatever its store; fan-out transports add
    /// `retain`, and each transport adds its store's keys (``BrokerTransport/storeKeys``: `path`
    /// for the bundled ones).
    public static let keys: Set<String> = [
        "capacity", "full_wait", "max_in_flight", "visibility_timeout", "max_message_bytes", "max_headers",
        "max_header_bytes", "dead_letter_suffix", "expiry_sweep", "shards",
    ]

    /// Checks ranges and builds broker options; errors name the key.
    public func options() throws(TransportError) -> BrokerOptions {
        var options = BrokerOptions()
        if let capacity {
            guard capacity >= 0 else { throw TransportError(.config, "config key 'capacity': must be 0 (unbounded) or more") }
            options.capacity = capacity
        }
        if let full_wait { options.fullWaitNanos = full_wait.nanoseconds }
        if let max_in_flight {
            guard (1...1_000_000).contains(max_in_flight) else {
                throw TransportError(.config, "config key 'max_in_flight': must be between 1 and 1000000")
            }
            options.defaultMaxInFlight = UInt32(max_in_flight)
        }
        if let visibility_timeout {
            // Below a millisecond a delivery would come back before any handler could settle it.
            guard visibility_timeout.nanoseconds >= 1_000_000 else { throw TransportError(.config, "config key 'visibility_timeout': must be 1ms or more") }
            options.visibilityTimeoutNanos = visibility_timeout.nanoseconds
        }
        if let max_message_bytes {
            guard max_message_bytes > 0 else { throw TransportError(.config, "config key 'max_message_bytes': must be more than 0") }
            options.limits.maxMessageBytes = max_message_bytes
        }
        if let max_headers {
            guard max_headers >= 0 else { throw TransportError(.config, "config key 'max_headers': must be 0 or more") }
            options.limits.maxHeaders = max_headers
        }
        if let max_header_bytes {
            guard max_header_bytes >= 0 else { throw TransportError(.config, "config key 'max_header_bytes': must be 0 or more") }
            options.limits.maxHeaderBytes = max_header_bytes
        }
        if let dead_letter_suffix {
            guard !dead_letter_suffix.isEmpty else { throw TransportError(.config, "config key 'dead_letter_suffix': must not be empty") }
            options.deadLetterSuffix = dead_letter_suffix
        }
        if let expiry_sweep {
            // Below a millisecond the sweep would keep a core busy for nothing.
            guard expiry_sweep.nanoseconds >= 1_000_000 else { throw TransportError(.config, "config key 'expiry_sweep': must be 1ms or more") }
            options.expirySweepNanos = expiry_sweep.nanoseconds
        }
        if let retain, retain < 0 { throw TransportError(.config, "config key 'retain': must be 0 or more") }
        if let shards, !(1...256).contains(shards) { throw TransportError(.config, "config key 'shards': must be between 1 and 256") }
        return options
    }
}

/// A complete transport plugin over a ``Broker``: subclasses name themselves and say whether
/// they fan out; config, storage (memory or SQLite) and every ABI function come from here.
open class BrokerTransport: TransportPlugin, @unchecked Sendable {
    // @unchecked: immutable after init; the broker is thread-safe.

    /// Subclasses override: the plugin's identity.
    open class var info: PluginInfo { fatalError("BrokerTransport subclasses must override info") }
    /// Subclasses override: true for a topic (each group gets a copy).
    open class var fanOut: Bool { false }
    /// The config keys the store reads, besides ``BrokerConfig/keys``. The default store takes
    /// `path` (SQLite when set, memory otherwise); a transport over another store overrides this
    /// with that store's keys and ``makeStore(context:config:fanOut:deadLetterSuffix:)``.
    open class var storeKeys: Set<String> { ["path"] }

    /// The store behind the broker. The default: SQLite at `path` when set, memory otherwise.
    /// Override (with ``storeKeys``) to keep messages elsewhere; read your own keys with
    /// `context.decodeConfig(YourConfig.self, allowedKeys: ...)` and name them in every error.
    open class func makeStore(context: TransportContext, config: BrokerConfig, fanOut: Bool, deadLetterSuffix: String) throws(TransportError) -> MessageStore {
        if let path = config.path {
            return try SQLiteStore(
                path: path, fanOut: fanOut, retainedPerChannel: config.retain ?? 10_000, deadLetterSuffix: deadLetterSuffix, host: context.host)
        }
        return MemoryStore(fanOut: fanOut, retainedPerChannel: config.retain ?? 0, deadLetterSuffix: deadLetterSuffix)
    }

    /// The broker behind every ABI function, or, in memory with more than one shard, the first
    /// of ``shards``.
    public let broker: Broker
    /// In memory with more than one shard (`shards`): the brokers that share the channels, each
    /// with its own store, lock and dispatcher thread; nil with one (a store that is not in memory
    /// is one), whose calls go straight to ``broker``.
    public let shards: ShardedBroker?
    /// Whether the store keeps messages beyond this process (``MessageStore/isDurable``).
    private let durable: Bool
    /// The host's clock, for what is in flight now (``channelStats()``).
    private let host: HostServices

    /// The plugin's capabilities, less `.durable` over a store in memory (no `path`).
    open var configuredCapabilities: Capabilities? { durable ? nil : Self.info.capabilities.subtracting(.durable) }

    /// Reads the config, makes the store (``makeStore(context:config:fanOut:deadLetterSuffix:)``)
    /// and starts the broker. A store in memory is made once per shard (`shards`, default
    /// ``ShardedBroker/defaultCount``); any other store is one shard.
    public required init(context: TransportContext) throws(TransportError) {
        let fanOut = Self.fanOut
        let allowed = BrokerConfig.keys.union(Self.storeKeys).union(fanOut ? ["retain"] : [])
        let config = try context.decodeConfig(BrokerConfig.self, allowedKeys: allowed)
        let options = try config.options()
        if let shards = config.shards, shards > 1, config.path != nil {
            // Refused before the store is made: a SQLite store creates its files when opened.
            throw TransportError(.config, Self.notSharded)
        }
        var stores = [try Self.makeStore(context: context, config: config, fanOut: fanOut, deadLetterSuffix: options.deadLetterSuffix)]
        durable = stores[0].isDurable
        host = context.host
        if stores[0] is MemoryStore {
            for _ in 1..<(config.shards ?? ShardedBroker.defaultCount) {
                stores.append(try Self.makeStore(context: context, config: config, fanOut: fanOut, deadLetterSuffix: options.deadLetterSuffix))
            }
        } else if let shards = config.shards, shards > 1 {
            throw TransportError(.config, Self.notSharded)
        }
        guard stores.count > 1 else {
            broker = Broker(store: stores[0], fanOut: fanOut, options: options, host: context.host, name: context.instanceName)
            shards = nil
            return
        }
        context.host.log(
            .info,
            "in memory, in \(stores.count) shards (\(config.shards == nil ? "the default: one per two of the \(UsableCores.count) cores this process may use, at most 8" : "config key 'shards'"))"
        )
        let gauges = GaugeSum(parts: stores.count)
        let capacity = SharedCapacity(stores: stores)
        let sharded = ShardedBroker(count: stores.count, deadLetterSuffix: options.deadLetterSuffix) { shard in
            Broker(
                store: stores[shard.index], fanOut: fanOut, options: options, host: context.host, name: context.instanceName,
                shard: shard, gauges: gauges, capacityShared: capacity)
        }
        broker = sharded.brokers[0]
        shards = sharded
    }

    /// The refusal of `shards` above 1 on a transport whose store is not in memory: for a
    /// ``makeStore(context:config:fanOut:deadLetterSuffix:)`` override to throw before it
    /// connects or creates anything.
    public static let notSharded =
        "config key 'shards': only a transport in memory is sharded (this one keeps its messages in one store); leave the key out"

    // Each function goes straight to the one broker, or through the shards: one optional check,
    // where a router in between cost a third of a one-message publish's time (timed natively).
    public func publish(_ message: MessageView) throws(TransportError) {
        guard let shards else { return try broker.publish(message) }
        try shards.publish(message)
    }
    public func publish(batch: [MessageView]) throws(TransportError) {
        guard let shards else { return try broker.publish(batch.map { $0.copy() }) }
        try shards.publish(batch.map { $0.copy() })
    }
    public func publish(_ batch: [MessageView], done: @escaping @Sendable (TransportError?) -> Void) {
        guard let shards else { return broker.publish(batch.map { $0.copy() }, done: done) }
        shards.publish(batch.map { $0.copy() }, done: done)
    }
    public func subscribe(_ options: SubscribeOptions, _ subscriber: Subscriber) throws(TransportError) -> SubscriptionID {
        guard let shards else { return try broker.subscribe(options, subscriber) }
        return try shards.subscribe(options, subscriber)
    }
    public func unsubscribe(_ id: SubscriptionID) throws(TransportError) {
        guard let shards else { return try broker.unsubscribe(id) }
        try shards.unsubscribe(id)
    }
    public func settle(_ delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {
        guard let shards else { return try broker.settle(delivery, settlement) }
        try shards.settle(delivery, settlement)
    }
    public func settle(batch: [(DeliveryID, Settlement)]) -> [TransportError?] {
        guard let shards else { return broker.settle(batch: batch) }
        return shards.settle(batch: batch)
    }
    public func settle(batch deliveries: UnsafeBufferPointer<DeliveryID>, _ settlement: Settlement) -> [TransportError?] {
        guard let shards else { return broker.settle(batch: deliveries, settlement) }
        return shards.settle(batch: deliveries, settlement)
    }
    public func publish(_ batch: [MessageView], settling delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {
        guard let shards else { return try broker.publish(batch.map { $0.copy() }, settling: delivery, settlement) }
        try shards.publish(batch.map { $0.copy() }, settling: delivery, settlement)
    }
    /// The visibility timeout a subscription without its own gets (`visibility_timeout`).
    public var leaseNanos: Int64 { broker.options.visibilityTimeoutNanos }
    public func extend(_ deliveries: UnsafeBufferPointer<DeliveryID>) -> [TransportError?] {
        guard let shards else { return broker.extend(deliveries) }
        return shards.extend(deliveries)
    }
    open func drain(deadlineNanos: Int64) throws(TransportError) {
        guard let shards else { return try broker.drain(deadlineNanos: deadlineNanos) }
        try shards.drain(deadlineNanos: deadlineNanos)
    }
    public func stats() -> TransportStats { shards?.currentStats() ?? broker.currentStats() }
    /// Each store's channels (every shard's, added up); nil over a store that reports none.
    public func channelStats() throws(TransportError) -> [ChannelStats]? {
        let now = host.nowNanos()
        var all: [ChannelStats] = []
        for store in shards?.brokers.map(\.store) ?? [broker.store] {
            guard let counted = try store.channelCounts(now: now) else { return nil }
            all += counted
        }
        return ChannelStats.merged(all)
    }
    open func shutdown() {
        guard let shards else { return broker.shutdown() }
        shards.shutdown()
    }
}
