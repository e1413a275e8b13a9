// postgres — a durable queue in PostgreSQL: competing consumers across processes (FOR UPDATE
// SKIP LOCKED), wake-ups by LISTEN/NOTIFY. Semantics: docs/transports.md.

import PostgresTransport
import SwitchyardPluginKit

@c(switchyard_plugin_entry)
public func switchyardPluginEntry(_ hostABIMajor: UInt32) -> UnsafePointer<sy_plugin_descriptor>? {
    PluginExport.descriptor(for: PostgresQueueTransport.self, hostABIMajor: hostABIMajor)
}

final class PostgresQueueTransport: PostgresBrokerTransport, @unchecked Sendable {
    override class var info: PluginInfo {
        PluginInfo(
            name: "postgres", version: "1.0.0",
            description: "Queue in PostgreSQL: durable, competing consumers across processes, LISTEN/NOTIFY wake-ups",
            capabilities: [.queue, .retry, .deadLetter, .ordered, .durable, .expiry],
            atomicPublishAndSettle: true, extendsLeases: true)
    }
}
