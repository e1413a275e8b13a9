import CSwitchyard
import Foundation

/// Everything a plugin instance receives at creation.
public struct TransportContext: Sendable {
    /// The transport's name in the host's config, for log lines.
    public let instanceName: String
    /// The plugin's own config: one JSON object, `{}` when none was given.
    public let configJSON: String
    /// The host's services: logging, clocks, metrics.
    public let host: HostServices
    /// The inner transport, for decorators (capability `wrapsInner`); nil otherwise.
    public let inner: TransportClient?

    /// A context as the SDK builds it from `sy_create_args` (tests may build their own).
    public init(instanceName: String, configJSON: String, host: HostServices, inner: TransportClient?) {
        self.instanceName = instanceName
        self.configJSON = configJSON
        self.host = host
        self.inner = inner
    }

    /// Decodes the plugin config into `C`, refusing keys `C` does not declare. Every error is a
    /// `.config` error naming the offending key, as the ABI asks.
    public func decodeConfig<C: PluginConfig>(_ type: C.Type) throws(TransportError) -> C {
        try decodeConfig(type, allowedKeys: C.allowedKeys)
    }

    /// Decodes the plugin config into `C`, refusing top-level keys outside `allowedKeys`.
    public func decodeConfig<C: Decodable>(_ type: C.Type, allowedKeys: Set<String>) throws(TransportError) -> C {
        do {
            return try ConfigJSON.decode(type, from: configJSON, allowedKeys: allowedKeys)
        } catch {
            throw TransportError(.config, error.description)
        }
    }
}

/// Decoding a JSON config object into a type, refusing unknown top-level keys; every problem
/// names its key. Plugins use it through ``TransportContext/decodeConfig(_:)``; the host uses it
/// for config it hands to the same types (a route's retry policy).
public enum ConfigJSON {
    /// What is wrong with a config, and at which key (dotted; nil for the whole object).
    public struct Problem: Error, Sendable, CustomStringConvertible {
        /// The offending key path, e.g. `initial_delay`; nil when it is the whole config.
        public let key: String?
        /// What is wrong, without the key.
        public let message: String
        /// The whole sentence, key included, as plugins report it.
        public let description: String

        init(key: String?, message: String, description: String? = nil) {
            self.key = key
            self.message = message
            self.description = description ?? (key.map { "config key '\($0)': \(message)" } ?? "config: \(message)")
        }
    }

    /// `json` (an object) decoded as `C`.
    public static func decode<C: Decodable>(_ type: C.Type, from json: String, allowedKeys: Set<String>) throws(Problem) -> C {
        let data = Data(json.utf8)
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw Problem(key: nil, message: "not valid JSON", description: "config is not valid JSON")
        }
        guard let keys = object as? [String: Any] else {
            throw Problem(key: nil, message: "must be a JSON object", description: "config must be a JSON object")
        }
        if let unknown = keys.keys.sorted().first(where: { !allowedKeys.contains($0) }) {
            let allowed = allowedKeys.sorted().joined(separator: ", ")
            let known = "(known keys: \(allowed.isEmpty ? "none" : allowed))"
            throw Problem(key: unknown, message: "unknown key \(known)", description: "unknown config key '\(unknown)' \(known)")
        }
        do {
            return try JSONDecoder().decode(C.self, from: data)
        } catch let error as DecodingError {
            if case .dataCorrupted(let context) = error, context.codingPath.isEmpty, let key = misfit(C.self, in: keys) {
                // The text parsed above, so this is no syntax error: Foundation reports a number
                // its key's type cannot hold (4.5 or 1e30 for an integer) as "not valid JSON",
                // without the key, which `misfit` finds.
                throw Problem(key: key, message: "\(keys[key].map { "\($0)" } ?? "the value") is not a value this key takes (a whole number, in range, where one is expected)")
            }
            throw describe(error)
        } catch {
            throw Problem(key: nil, message: "\(error)")
        }
    }

    /// The top-level key whose value alone keeps `object` from decoding as `C`: the object
    /// decodes, or fails at a key, once it is left out. Only on the error path.
    private static func misfit<C: Decodable>(_ type: C.Type, in object: [String: Any]) -> String? {
        object.keys.sorted().first { key in
            var without = object
            without[key] = nil
            guard let data = try? JSONSerialization.data(withJSONObject: without) else { return false }
            do {
                _ = try JSONDecoder().decode(C.self, from: data)
                return true
            } catch let DecodingError.dataCorrupted(context) where context.codingPath.isEmpty {
                return false
            } catch {
                return true
            }
        }
    }

    /// A type as a config's author knows it: "a whole number", not `Int`.
    private static func kind(_ type: Any.Type) -> String {
        switch type {
        case is Int.Type, is Int32.Type, is Int64.Type, is UInt.Type, is UInt32.Type, is UInt64.Type, is UInt16.Type, is Int16.Type:
            "a whole number"
        case is Double.Type, is Float.Type: "a number"
        case is String.Type: "a string"
        case is Bool.Type: "true or false"
        default:
            "\(type)".hasPrefix("Array") ? "a list" : "\(type)".hasPrefix("Dictionary") ? "an object" : "\(type)"
        }
    }

    private static func describe(_ error: DecodingError) -> Problem {
        func path(_ context: DecodingError.Context) -> String {
            context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
        }
        switch error {
        case .typeMismatch(let type, let context):
            // Foundation says what it found: "Expected to decode Int but found a string instead."
            let found =
                context.debugDescription.range(of: "but found ").map { " (found " + context.debugDescription[$0.upperBound...].replacingOccurrences(of: " instead.", with: ")") }
                ?? ""
            // A word YAML took for a boolean or a number (`jitter: yes`, `version: 1.10`) that
            // was meant as text: quoting it is the fix.
            let quote =
                type == String.self && !found.isEmpty && !found.contains("string")
                ? ": quote it if you meant the text (YAML reads yes, no, on, off, true and false as booleans, and digits as numbers)" : ""
            return Problem(key: path(context), message: "expected \(kind(type))\(found)\(quote)")
        case .valueNotFound(let type, let context):
            return Problem(key: path(context), message: "expected \(kind(type)), found null")
        case .keyNotFound(let key, let context):
            let parent = path(context)
            return Problem(key: parent.isEmpty ? key.stringValue : parent + "." + key.stringValue, message: "is required")
        case .dataCorrupted(let context):
            return Problem(key: path(context), message: context.debugDescription)
        @unknown default:
            return Problem(key: nil, message: "\(error)")
        }
    }
}

extension Decoder {
    /// Refuses an object with a key not in `allowed`, naming it and the known keys (`config key
    /// 'tls.verfy': unknown key (known keys: ca, cert, key, verify)`). For the nested objects of a
    /// plugin's config, from their `init(from:)`; the top level is checked by
    /// ``PluginConfig/allowedKeys``.
    public func refuseUnknownKeys(allowed: Set<String>) throws {
        let keys = try container(keyedBy: AnyConfigKey.self).allKeys.map(\.stringValue)
        guard let unknown = keys.sorted().first(where: { !allowed.contains($0) }) else { return }
        throw DecodingError.dataCorrupted(
            DecodingError.Context(
                codingPath: codingPath + [AnyConfigKey(stringValue: unknown)],
                debugDescription: "unknown key (known keys: \(allowed.sorted().joined(separator: ", ")))"))
    }
}

/// Any key of a config object.
private struct AnyConfigKey: CodingKey {
    let stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

/// A plugin's config type: decodable, and naming the keys it accepts so that a misspelled key is
/// refused instead of silently ignored.
public protocol PluginConfig: Decodable {
    /// The top-level keys this config accepts.
    static var allowedKeys: Set<String> { get }
}

/// Log levels a plugin may use, mapped to the host's logger.
public enum LogLevel: Int32, Sendable {
    case trace = 0
    case debug, info, notice, warning, error
}

/// The host's services as a plugin sees them (`sy_host_services`). Valid until the instance's
/// `shutdown` returns; every method is thread-safe and returns promptly.
public struct HostServices: @unchecked Sendable {
    // @unchecked: the table is immutable and its functions are thread-safe by the ABI contract.
    private let table: UnsafePointer<sy_host_services>

    /// Wraps the table the host passed to `create`.
    public init(_ table: UnsafePointer<sy_host_services>) { self.table = table }

    /// The host's ABI version.
    public var abi: (major: UInt16, minor: UInt16) { (table.pointee.abi_major, table.pointee.abi_minor) }

    /// Logs one line through the host's logger (which adds the transport's name).
    public func log(_ level: LogLevel, _ message: String) {
        guard let log = table.pointee.log else { return }
        message.withCString { log(table.pointee.host_context, level.rawValue, $0) }
    }

    /// Wall-clock time in nanoseconds since the Unix epoch.
    public func nowNanos() -> Int64 { table.pointee.now_ns?(table.pointee.host_context) ?? 0 }

    /// Monotonic time in nanoseconds, for deadlines and timeouts.
    public func monotonicNanos() -> Int64 { table.pointee.monotonic_ns?(table.pointee.host_context) ?? 0 }

    /// Adds `value` to the counter `name` (e.g. "published").
    public func count(_ name: StaticString, _ value: Double = 1) { metric(SY_METRIC_COUNTER, name, value) }
    /// Sets the gauge `name`.
    public func gauge(_ name: StaticString, _ value: Double) { metric(SY_METRIC_GAUGE, name, value) }
    /// Records one duration for the timer `name`.
    public func time(_ name: StaticString, nanos: Int64) { metric(SY_METRIC_TIMER_NS, name, Double(nanos)) }

    /// Tells the host that `message` (as now stored in the dead-letter channel) was just
    /// dead-lettered for `reason`, so that it can answer a caller waiting for a reply, log and
    /// count it (`sy_host_services.dead_lettered`, ABI 1.2). Call it once the message is stored,
    /// without holding a lock that `publish` or `settle` takes. Does nothing with an older host.
    public func deadLettered(_ message: Message, reason: String) {
        guard Int(table.pointee.struct_size) >= SizedStruct.hostServicesV1_2, let report = table.pointee.dead_lettered else { return }
        message.withCMessage { cMessage in
            reason.withSyStr { report(table.pointee.host_context, cMessage, $0) }
        }
    }

    private func metric(_ kind: Int32, _ name: StaticString, _ value: Double) {
        guard let metric = table.pointee.metric else { return }
        name.withUTF8Buffer { utf8 in
            // StaticString storage is NUL-terminated.
            utf8.baseAddress.map { metric(table.pointee.host_context, kind, UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self), value) }
        }
    }
}

/// The receiving side of one subscription, as handed to ``TransportPlugin/subscribe(_:_:)``.
/// Copyable and thread-safe; valid until `unsubscribe` of that subscription returns.
public struct Subscriber: @unchecked Sendable {
    // @unchecked: a copy of the caller's immutable sy_subscriber; its deliver is thread-safe.
    private let subscriber: sy_subscriber

    /// Copies the subscriber the caller passed to `subscribe` (of any ABI minor); nil when it is
    /// unusable.
    public init?(_ subscriber: UnsafePointer<sy_subscriber>) {
        guard let copy = SizedStruct.read(subscriber, minimum: SizedStruct.subscriberV1_0), copy.deliver != nil else { return nil }
        self.subscriber = copy
    }

    /// Whether the subscriber takes several messages in one call (ABI 1.3 `deliver_batch`).
    public var takesBatches: Bool { subscriber.deliver_batch != nil }

    /// The C subscriber, for handing the subscription on unchanged to an inner transport.
    public var raw: sy_subscriber { subscriber }

    /// Hands a message to the subscriber. `.ok` means it took the delivery and will settle it
    /// exactly once (possibly before this returns); anything else means treat it as released.
    /// Do not hold a lock that `settle` or `publish` takes while calling this.
    public func deliver(_ delivery: DeliveryID, _ message: Message) -> StatusCode {
        message.withCMessage { deliver(delivery, $0) }
    }

    /// Hands on a message already in C form (a decorator relaying its inner transport's delivery).
    public func deliver(_ delivery: DeliveryID, _ message: UnsafePointer<sy_message>) -> StatusCode {
        StatusCode(rawValue: subscriber.deliver(subscriber.context, delivery, message))
    }

    /// Relays a batch a decorator's inner transport delivered — the views its
    /// `BatchDeliveryHandler` got, which are one C array's elements — in one `deliver_batch` call
    /// when the subscriber offers it (no copy), else one `deliver` each until the first refusal.
    /// Returns how many, from the first, the subscriber took; the rest are refused (return the
    /// count to the inner transport as it is). Same locking rule as ``deliver(_:_:)``.
    public func deliver(batch deliveries: UnsafeBufferPointer<DeliveryID>, relaying messages: [MessageView]) -> Int {
        precondition(deliveries.count >= messages.count, "one delivery id per message")
        guard !messages.isEmpty else { return 0 }
        if let deliverBatch = subscriber.deliver_batch, messages.count > 1, Self.isOneArray(messages) {
            // A C subscriber's size_t arrives as Int: a "-1" must not read as a count.
            return max(0, min(messages.count, deliverBatch(subscriber.context, deliveries.baseAddress, messages[0].pointer, messages.count)))
        }
        for index in messages.indices where deliver(deliveries[index], messages[index].pointer) != .ok { return index }
        return messages.count
    }

    /// Whether `messages` are the elements of one C array strided by the first's `struct_size`
    /// (the ABI's rule for an array), so that the first's address hands on all of them.
    private static func isOneArray(_ messages: [MessageView]) -> Bool {
        let base = UnsafeRawPointer(messages[0].pointer)
        let stride = Int(messages[0].pointer.pointee.struct_size)
        return messages.indices.allSatisfy { UnsafeRawPointer(messages[$0].pointer) == base + $0 * stride }
    }

    /// Hands several messages over: `deliveries[i]` delivers `messages[i]`. One `deliver_batch`
    /// call when the subscriber offers it (ABI 1.3), else one `deliver` each until the first
    /// refusal. Returns how many, from the first, the subscriber took (it settles each of those
    /// exactly once); treat the rest as released and offer them again later, in order, under new
    /// delivery ids (the refused ones are dead: a settle of one gets `.notFound`), without
    /// counting an attempt. Same locking rule as ``deliver(_:_:)``.
    public func deliver(batch deliveries: [DeliveryID], _ messages: [Message]) -> Int {
        precondition(deliveries.count == messages.count, "one delivery id per message")
        guard !messages.isEmpty else { return 0 }
        // One message: the single call lends it from the stack, no batch to build.
        guard let deliverBatch = subscriber.deliver_batch, messages.count > 1 else {
            for index in messages.indices where deliver(deliveries[index], messages[index]) != .ok { return index }
            return messages.count
        }
        return messages.withCMessages { first, count in
            max(0, min(count, deliveries.withUnsafeBufferPointer { deliverBatch(subscriber.context, $0.baseAddress, first, count) }))
        }
    }
}
