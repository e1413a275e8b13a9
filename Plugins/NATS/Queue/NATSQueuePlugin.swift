// nats — a work queue on NATS JetStream: each channel a subject of one work-queue stream, every
// subscriber of a channel a member of one durable pull consumer (competing consumers), settle
// outcomes as JetStream acks. For when one machine is not enough. Semantics: docs/transports.md.

import NATSTransport
import SwitchyardPluginKit

@c(switchyard_plugin_entry)
public func switchyardPluginEntry(_ hostABIMajor: UInt32) -> UnsafePointer<sy_plugin_descriptor>? {
    PluginExport.descriptor(for: NATSQueueTransport.self, hostABIMajor: hostABIMajor)
}

final class NATSQueueTransport: NATSTransport, @unchecked Sendable {
    override class var info: PluginInfo {
        PluginInfo(
            name: "nats", version: "1.0.0",
            description: "Work queue on NATS JetStream: durable pull consumers, CloudEvents on the wire",
            capabilities: [.queue, .retry, .deadLetter, .durable],
            atomicPublishAndSettle: false, extendsLeases: true)
    }
}
