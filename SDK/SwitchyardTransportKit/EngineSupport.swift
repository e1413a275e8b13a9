// What plugins for external engines (NATS, RabbitMQ, …) share: their TLS config, their
// counters, and restoring a publisher's header order from a wire format that groups headers by key.

import SwitchyardABI
import SwitchyardPluginKit
import Synchronization

/// The `tls` object of an engine plugin's config: `{ "ca": file, "cert": file, "key": file, "verify": true }`.
public struct TLSConfig: Decodable, Sendable {
    /// CA certificates (PEM file) to trust.
    public var ca: String?
    /// Client certificate (PEM file), with `key`.
    public var cert: String?
    /// Client private key (PEM file).
    public var key: String?
    /// Verify the server's certificate and host name (default true).
    public var verify: Bool?

    /// TLS with the system's trust store and verification on.
    public init() {}

    private enum CodingKeys: String, CodingKey { case ca, cert, key, verify }

    /// Decodes the object, refusing a key it does not know (a misspelled `verify` must not leave
    /// verification on silently, nor a misspelled `cert` leave the client unauthenticated).
    public init(from decoder: any Decoder) throws {
        try decoder.refuseUnknownKeys(allowed: ["ca", "cert", "key", "verify"])
        let values = try decoder.container(keyedBy: CodingKeys.self)
        ca = try values.decodeIfPresent(String.self, forKey: .ca)
        cert = try values.decodeIfPresent(String.self, forKey: .cert)
        key = try values.decodeIfPresent(String.self, forKey: .key)
        verify = try values.decodeIfPresent(Bool.self, forKey: .verify)
    }
}

/// A transport's counters, lock-free: publishers and consumers on many threads bump them at once.
/// `stats(inFlight:)` reads them as ``TransportStats``.
public final class TransportCounters: Sendable {
    /// Messages accepted by publish.
    public let published = Atomic<UInt64>(0)
    /// Deliveries handed to subscribers.
    public let delivered = Atomic<UInt64>(0)
    /// Deliveries acknowledged.
    public let acked = Atomic<UInt64>(0)
    /// Deliveries settled with retry.
    public let retried = Atomic<UInt64>(0)
    /// Messages moved to a dead-letter channel.
    public let deadLettered = Atomic<UInt64>(0)
    /// Deliveries given back without counting an attempt.
    public let released = Atomic<UInt64>(0)

    /// Counters at zero.
    public init() {}

    /// The counters now, with the plugin's own gauges.
    public func stats(inFlight: UInt64, depth: UInt64 = 0) -> TransportStats {
        var stats = TransportStats()
        stats.published = published.load(ordering: .relaxed)
        stats.delivered = delivered.load(ordering: .relaxed)
        stats.acked = acked.load(ordering: .relaxed)
        stats.retried = retried.load(ordering: .relaxed)
        stats.deadLettered = deadLettered.load(ordering: .relaxed)
        stats.released = released.load(ordering: .relaxed)
        stats.inFlight = inFlight
        stats.depth = depth
        return stats
    }
}

/// Headers read from a wire format that keeps one entry per key (NATS headers, AMQP tables).
public enum HeaderOrder {
    /// The headers in the publisher's order (`publisherOrder`: keys as published, repeated keys
    /// repeated), each key's values in order; then, in `keyOrder`, anything the publisher's order
    /// does not account for (headers another client added).
    public static func restore(_ byKey: [String: [String]], keyOrder: [String], publisherOrder: [String]?) -> [Header] {
        var headers: [Header] = []
        var used: [String: Int] = [:]
        for key in publisherOrder ?? [] {
            guard let values = byKey[key], used[key, default: 0] < values.count else { continue }
            headers.append(Header(key, values[used[key, default: 0]]))
            used[key, default: 0] += 1
        }
        for key in keyOrder {
            guard let values = byKey[key] else { continue }
            for value in values.dropFirst(used[key, default: 0]) { headers.append(Header(key, value)) }
        }
        return headers
    }
}
