import Foundation
import SwitchyardPluginKit

/// A retry policy: exponential backoff with optional full jitter, a cap on attempts, and reasons
/// that are not worth retrying. Read from config (the `retry` plugin's config, a route's `retry:`),
/// so the `retry` plugin and the typed-call runtime apply one and the same policy.
public struct RetryPolicy: PluginConfig, Sendable {
    /// The default policy.
    public init() {}

    /// The config keys a policy accepts.
    public static let allowedKeys: Set<String> = ["max_attempts", "initial_delay", "max_delay", "multiplier", "jitter", "non_retryable"]
    /// Most deliveries, the first included (default 5).
    public var max_attempts: Int?
    /// Backoff before the second attempt (default 100ms).
    public var initial_delay: ConfigDuration?
    /// Longest backoff (default 30s, or `initial_delay` when that is longer).
    public var max_delay: ConfigDuration?
    /// Growth of the backoff per attempt (default 2).
    public var multiplier: Double?
    /// `"full"` (default) or `"none"`.
    public var jitter: String?
    /// Failures not worth retrying: reasons starting with one of these, or naming a thrown error of
    /// that type (``isRetryable(_:)``). The retry plugin dead-letters them at once; on a route the
    /// runtime answers a waiting caller with the error itself (a fire-and-forget call is
    /// dead-lettered at once).
    public var non_retryable: [String]?

    /// `max_attempts` or its default.
    public var maxAttempts: Int { max_attempts ?? 5 }
    /// `initial_delay` in nanoseconds, or its default.
    public var initial: Int64 { initial_delay?.nanoseconds ?? 100_000_000 }
    /// `max_delay` in nanoseconds, or its default: 30 s, or `initial_delay` when that is longer
    /// (`initial_delay: 1m` alone means a steady minute, not a refusal of a key never written).
    public var maximum: Int64 { max_delay?.nanoseconds ?? max(30_000_000_000, initial) }
    /// `multiplier` or its default.
    public var factor: Double { multiplier ?? 2 }

    /// Refuses out-of-range values, naming the key.
    public func validate() throws(TransportError) {
        if maxAttempts < 1 { throw TransportError(.config, "config key 'max_attempts': must be at least 1") }
        if factor < 1 { throw TransportError(.config, "config key 'multiplier': must be at least 1") }
        if maximum < initial {
            throw TransportError(
                .config,
                "config key 'max_delay': \(maximum / 1_000_000) ms must not be less than initial_delay (\(initial / 1_000_000) ms): raise max_delay, or lower initial_delay")
        }
        if let jitter, jitter != "full", jitter != "none" { throw TransportError(.config, "config key 'jitter': must be \"full\" or \"none\"") }
        // Every reason starts with "": one empty entry (an unset ${VAR:-}) made every failure
        // non-retryable, dead-lettered at once.
        if non_retryable?.contains(where: { $0.trimmingCharacters(in: .whitespaces).isEmpty }) == true {
            throw TransportError(.config, "config key 'non_retryable': an entry is empty, which would match every failure; remove it")
        }
    }

    /// The delay before attempt `attempt + 1`: initial × multiplier^(attempt-1), capped, and with
    /// full jitter a uniform draw below that (AWS's "full jitter", which spreads retry storms).
    public func backoff(afterAttempt attempt: UInt32) -> Int64 {
        let exponential = Double(initial) * pow(factor, Double(max(0, Int(attempt) - 1)))
        let capped = Int64(min(Double(maximum), exponential))
        return (jitter ?? "full") == "full" ? Int64.random(in: 0...max(0, capped)) : capped
    }

    /// Whether a failure's reason marks it as not worth retrying: it starts with a listed entry,
    /// or names a thrown error whose type a listed entry names — as the runtime writes a handler's
    /// failure (`Inventory.reserve(sku:qty:) threw App.OutOfStock: …`), `OutOfStock` and
    /// `App.OutOfStock` both match.
    public func isRetryable(_ reason: String) -> Bool {
        guard let listed = non_retryable, !listed.isEmpty else { return true }
        let thrown = Self.thrownType(in: reason)
        return !listed.contains { entry in
            reason.hasPrefix(entry) || thrown.map { $0 == entry || $0.hasSuffix("." + entry) } == true
        }
    }

    /// The error type a handler's failure names (`… threw TYPE: …`), if the reason has that form.
    static func thrownType(in reason: String) -> Substring? {
        guard let threw = reason.range(of: " threw ") else { return nil }
        let rest = reason[threw.upperBound...]
        guard let end = rest.range(of: ": ") else { return nil }
        return rest[..<end.lowerBound]
    }
}
