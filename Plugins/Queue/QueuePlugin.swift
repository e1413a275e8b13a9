// queue — a point-to-point work queue: competing consumers, at-least-once with settle, prefetch,
// visibility timeouts, ordering keys, bounded capacity, dead-letter channel. In memory by default;
// durable on SQLite with `path`. Semantics: docs/transports.md.

import SwitchyardPluginKit
import SwitchyardTransportKit

@c(switchyard_plugin_entry)
public func switchyardPluginEntry(_ hostABIMajor: UInt32) -> UnsafePointer<sy_plugin_descriptor>? {
    PluginExport.descriptor(for: QueueTransport.self, hostABIMajor: hostABIMajor)
}

final class QueueTransport: BrokerTransport, @unchecked Sendable {
    override class var info: PluginInfo {
        PluginInfo(
            name: "queue", version: "1.0.0",
            description: "Work queue: competing consumers, ordering keys, dead-letter; in memory or durable on SQLite",
            capabilities: [.queue, .retry, .deadLetter, .ordered, .durable, .expiry, .privateWire],
            atomicPublishAndSettle: true, extendsLeases: true, publishesAsynchronously: true)
    }
}
