import SwitchyardPluginKit
import SwitchyardTransportKit

/// What `postgres` and `postgres-topic` share: a ``BrokerTransport`` over a ``PostgresStore``.
/// Everything else (settle, prefetch, retries, ordering keys, dead letters, expiry) is the
/// broker's, as for `queue` and `topic`.
open class PostgresBrokerTransport: BrokerTransport, @unchecked Sendable {
    override open class var storeKeys: Set<String> { PostgresConfig.keys }

    override open class func makeStore(
        context: TransportContext, config: BrokerConfig, fanOut: Bool, deadLetterSuffix: String
    ) throws(TransportError) -> MessageStore {
        let postgres = try context.decodeConfig(PostgresConfig.self, allowedKeys: BrokerConfig.keys.union(storeKeys).union(fanOut ? ["retain"] : []))
        // Before connecting: with the server down, the error would be the connection's.
        if let shards = config.shards, shards > 1 { throw TransportError(.config, notSharded) }
        return try PostgresStore(
            config: postgres, fanOut: fanOut, retainedPerChannel: config.retain ?? 10_000, deadLetterSuffix: deadLetterSuffix, host: context.host)
    }

    /// The broker's drain, then every acknowledgement made during it written (the store writes
    /// them in batches, after they return: ``PostgresStore/ack(_:)``), by the same deadline —
    /// also when the broker's drain ran out of time.
    override open func drain(deadlineNanos: Int64) throws(TransportError) {
        var drained: TransportError?
        do throws(TransportError) { try super.drain(deadlineNanos: deadlineNanos) } catch { drained = error }
        let written = (broker.store as? PostgresStore)?.flush(deadlineNanos: deadlineNanos) ?? true
        if let drained { throw drained }
        if !written { throw TransportError(.timeout, "postgres: acknowledgements still being written at the drain's deadline (the server may be unreachable)") }
    }
}
