// topic — publish once, every subscriber group gets its own copy; members of a group compete.
// Everything else (settle, prefetch, ordering keys, dead-letter, durability) is the queue's.
// Semantics: docs/transports.md.

import SwitchyardPluginKit
import SwitchyardTransportKit

@c(switchyard_plugin_entry)
public func switchyardPluginEntry(_ hostABIMajor: UInt32) -> UnsafePointer<sy_plugin_descriptor>? {
    PluginExport.descriptor(for: TopicTransport.self, hostABIMajor: hostABIMajor)
}

final class TopicTransport: BrokerTransport, @unchecked Sendable {
    override class var info: PluginInfo {
        PluginInfo(
            name: "topic", version: "1.0.0",
            description: "Topic: every subscriber group gets a copy, members compete; in memory or durable on SQLite",
            capabilities: [.fanOut, .queue, .retry, .deadLetter, .ordered, .durable, .expiry, .privateWire],
            atomicPublishAndSettle: true, extendsLeases: true, publishesAsynchronously: true)
    }
    override class var fanOut: Bool { true }
}
