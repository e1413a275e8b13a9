// rabbitmq — a work queue on RabbitMQ: each channel a durable quorum queue, every subscriber of a
// channel a consumer of it (competing consumers), publisher confirms, manual acknowledgements,
// retries and delays through per-delay TTL queues, dead letters through a dead-letter exchange.
// Semantics: docs/transports.md.

import RabbitMQTransport
import SwitchyardPluginKit

@c(switchyard_plugin_entry)
public func switchyardPluginEntry(_ hostABIMajor: UInt32) -> UnsafePointer<sy_plugin_descriptor>? {
    PluginExport.descriptor(for: RabbitMQQueueTransport.self, hostABIMajor: hostABIMajor)
}

final class RabbitMQQueueTransport: RabbitMQTransport, @unchecked Sendable {
    override class var info: PluginInfo {
        PluginInfo(
            name: "rabbitmq", version: "1.0.0",
            description: "Work queue on RabbitMQ: quorum queues, publisher confirms, CloudEvents on the wire",
            capabilities: [.queue, .retry, .delay, .deadLetter, .durable, .expiry],
            atomicPublishAndSettle: false, extendsLeases: true)
    }
}
