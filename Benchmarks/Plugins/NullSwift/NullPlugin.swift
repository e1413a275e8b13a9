// bench-null-swift — a transport that accepts and discards every message, for
// `switchyard bench abi`. Its publish does what bench-null-c's does (the SDK validates the
// message, the plugin counts it), so the two measure the same work in each language.

import SwitchyardPluginKit
import Synchronization

@c(switchyard_plugin_entry)
public func switchyardPluginEntry(_ hostABIMajor: UInt32) -> UnsafePointer<sy_plugin_descriptor>? {
    PluginExport.descriptor(for: NullTransport.self, hostABIMajor: hostABIMajor)
}

final class NullTransport: TransportPlugin {
    static let info = PluginInfo(
        name: "bench-null-swift", version: "1.0.0",
        description: "Discards every message (Swift); used by switchyard bench", capabilities: [])

    private let published = Atomic<UInt64>(0)

    init(context: TransportContext) throws(TransportError) {}

    func publish(_ message: MessageView) throws(TransportError) {
        published.add(1, ordering: .relaxed)
    }

    func subscribe(_ options: SubscribeOptions, _ subscriber: Subscriber) throws(TransportError) -> SubscriptionID {
        throw TransportError(.unsupported, "bench-null-swift delivers nothing")
    }

    func unsubscribe(_ id: SubscriptionID) throws(TransportError) {
        throw TransportError(.notFound, "no subscriptions")
    }

    func settle(_ delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {
        throw TransportError(.notFound, "no deliveries")
    }

    func stats() -> TransportStats {
        var stats = TransportStats()
        stats.published = published.load(ordering: .relaxed)
        return stats
    }
}
