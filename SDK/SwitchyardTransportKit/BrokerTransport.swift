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

    /// The keys every broker transport accepts, whatever its store; fan-out transports add
    /// `retain`, and each transport adds its store's keys (``BrokerTransport/storeKeys``: `path`
    /// for the bundled ones).
    public static let keys: Set<String> = [
        "capacity", "full_wait", "max_in_flight", "visibility_timeout", "max_message_bytes", "max_headers",
        "max_header_bytes", "dead_letter_suffix", "expiry_sweep",
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
            guard visibility_timeout.nanoseconds > 0 else { throw TransportError(.config, "config key 'visibility_timeout': must be more than 0") }
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
            guard expiry_sweep.nanoseconds > 0 else { throw TransportError(.config, "config key 'expiry_sweep': must be more than 0") }
            options.expirySweepNanos = expiry_sweep.nanoseconds
        }
        if let retain, retain < 0 { throw TransportError(.config, "config key 'retain': must be 0 or more") }
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

    /// The broker behind every ABI function.
    public let broker: Broker

    /// Reads the config, makes the store (``makeStore(context:config:fanOut:deadLetterSuffix:)``)
    /// and starts the broker.
    public required init(context: TransportContext) throws(TransportError) {
        let fanOut = Self.fanOut
        let allowed = BrokerConfig.keys.union(Self.storeKeys).union(fanOut ? ["retain"] : [])
        let config = try context.decodeConfig(BrokerConfig.self, allowedKeys: allowed)
        let options = try config.options()
        let store = try Self.makeStore(context: context, config: config, fanOut: fanOut, deadLetterSuffix: options.deadLetterSuffix)
        broker = Broker(store: store, fanOut: fanOut, options: options, host: context.host, name: context.instanceName)
    }

    public func publish(_ message: MessageView) throws(TransportError) { try broker.publish(message) }
    public func publish(batch: [MessageView]) throws(TransportError) { try broker.publish(batch.map { $0.copy() }) }
    public func subscribe(_ options: SubscribeOptions, _ subscriber: Subscriber) throws(TransportError) -> SubscriptionID {
        try broker.subscribe(options, subscriber)
    }
    public func unsubscribe(_ id: SubscriptionID) throws(TransportError) { try broker.unsubscribe(id) }
    public func settle(_ delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) { try broker.settle(delivery, settlement) }
    public func settle(batch: [(DeliveryID, Settlement)]) -> [TransportError?] { broker.settle(batch: batch) }
    public func settle(batch deliveries: UnsafeBufferPointer<DeliveryID>, _ settlement: Settlement) -> [TransportError?] {
        broker.settle(batch: deliveries, settlement)
    }
    public func publish(_ batch: [MessageView], settling delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {
        try broker.publish(batch.map { $0.copy() }, settling: delivery, settlement)
    }
    open func drain(deadlineNanos: Int64) throws(TransportError) { try broker.drain(deadlineNanos: deadlineNanos) }
    public func stats() -> TransportStats { broker.currentStats() }
    open func shutdown() { broker.shutdown() }
}
