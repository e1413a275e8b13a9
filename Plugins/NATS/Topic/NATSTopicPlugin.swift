// nats-topic — publish/subscribe on NATS JetStream: each channel a subject of one interest stream,
// each subscriber group its own durable pull consumer (every group gets every message; members of
// a group compete). Semantics: docs/transports.md.

import NATSTransport
import SwitchyardPluginKit

@c(switchyard_plugin_entry)
public func switchyardPluginEntry(_ hostABIMajor: UInt32) -> UnsafePointer<sy_plugin_descriptor>? {
    PluginExport.descriptor(for: NATSTopicTransport.self, hostABIMajor: hostABIMajor)
}

final class NATSTopicTransport: NATSTransport, @unchecked Sendable {
    override class var info: PluginInfo {
        PluginInfo(
            name: "nats-topic", version: "1.0.0",
            description: "Topic on NATS JetStream: a durable consumer per subscriber group, CloudEvents on the wire",
            capabilities: [.fanOut, .queue, .retry, .deadLetter, .durable],
            atomicPublishAndSettle: false, extendsLeases: true)
    }
    override class var fanOut: Bool { true }
}
