// rabbitmq-topic — fan-out on RabbitMQ: each channel a fanout exchange, each subscriber group a
// durable quorum queue bound to it (its members compete), so every group gets every message.
// Semantics: docs/transports.md.

import RabbitMQTransport
import SwitchyardPluginKit

@c(switchyard_plugin_entry)
public func switchyardPluginEntry(_ hostABIMajor: UInt32) -> UnsafePointer<sy_plugin_descriptor>? {
    PluginExport.descriptor(for: RabbitMQTopicTransport.self, hostABIMajor: hostABIMajor)
}

final class RabbitMQTopicTransport: RabbitMQTransport, @unchecked Sendable {
    override class var info: PluginInfo {
        PluginInfo(
            name: "rabbitmq-topic", version: "1.0.0",
            description: "Fan-out on RabbitMQ: an exchange per channel, a quorum queue per subscriber group",
            capabilities: [.fanOut, .queue, .retry, .delay, .deadLetter, .durable, .expiry],
            atomicPublishAndSettle: false, extendsLeases: true)
    }
    override class var fanOut: Bool { true }
}
