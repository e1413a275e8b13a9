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
        return try PostgresStore(
            config: postgres, fanOut: fanOut, retainedPerChannel: config.retain ?? 10_000, deadLetterSuffix: deadLetterSuffix, host: context.host)
    }
}
