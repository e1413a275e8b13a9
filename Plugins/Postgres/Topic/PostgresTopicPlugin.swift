// postgres-topic — a durable topic in PostgreSQL: every subscriber group gets its own copy,
// members of a group compete. Semantics: docs/transports.md.

import PostgresTransport
import SwitchyardPluginKit

@c(switchyard_plugin_entry)
public func switchyardPluginEntry(_ hostABIMajor: UInt32) -> UnsafePointer<sy_plugin_descriptor>? {
    PluginExport.descriptor(for: PostgresTopicTransport.self, hostABIMajor: hostABIMajor)
}

final class PostgresTopicTransport: PostgresBrokerTransport, @unchecked Sendable {
    override class var info: PluginInfo {
        PluginInfo(
            name: "postgres-topic", version: "1.0.0",
            description: "Topic in PostgreSQL: every subscriber group gets a copy, members compete; durable, LISTEN/NOTIFY wake-ups",
            capabilities: [.fanOut, .queue, .retry, .deadLetter, .ordered, .durable, .expiry],
            atomicPublishAndSettle: true, extendsLeases: true)
    }
    override class var fanOut: Bool { true }
}
