import SwitchyardABI
import SwitchyardConfig
import SwitchyardHost
import SwitchyardPluginKit
import SwitchyardTransportKit
import SwitchyardWire

/// A route ready to carry calls: its config entry, checked against the transport it names.
final class Route: Sendable {
    /// The config entry.
    let entry: SwitchyardConfig.RouteEntry
    /// The transport, or nil for a direct route.
    let transport: Transport?
    /// The capabilities of the transport's whole chain (decorators add to what they wrap).
    let capabilities: Capabilities
    /// The runtime's retry policy, or nil.
    let retry: RetryPolicy?
    /// How arguments and results are encoded.
    let encoding: ArgumentEncoding
    /// How calls travel: in the envelope's compact form where only Switchyard hosts read the
    /// transport's messages (the chain's innermost plugin declares `private-wire`), as
    /// CloudEvents everywhere else.
    let envelopeForm: Envelope.Form
    /// The idempotent inbox, or nil.
    let inbox: Inbox?
    /// The relay of the outbox in the inbox's database (`outbox: true`), or nil.
    let outbox: OutboxRelay?
    /// Counters and timers.
    let metrics: RouteMetrics
    /// Where calls into the transport run (inline, or off the task's thread once they wait for
    /// storage); nil for chains that never do, and for direct routes.
    let cost: CallCost?
    /// The transport offers `publish_async` (ABI 1.7): calls whose publishes wait for storage
    /// (``cost``) go through it, and the caller's task is suspended, not a thread, until the
    /// transport has stored the call. Not under ThreadSanitizer, which reports a task resumed from the plugin's thread as a race
    /// on the task's own frame (see ``CallCost/awaitsOnPool``).
    let publishesAsynchronously: Bool

    var isDirect: Bool { transport == nil }
    var pattern: String { entry.pattern }
    var isFanOut: Bool { capabilities.contains(.fanOut) }

    /// The chain retries on its own (a `retry` decorator): failures are settled with `retry`
    /// and the decorator decides when to give up.
    var transportRetries: Bool { transport.flatMap(Self.retryDecorator) != nil }

    /// The link of `transport`'s chain that retries with a policy of its own (a `retry` decorator).
    static func retryDecorator(in transport: Transport) -> Transport? {
        transport.chain.first { $0.capabilities.isSuperset(of: [.wrapsInner, .retry]) }
    }

    /// Checks the entry against its transport; every problem names the key and line.
    ///
    /// `transportConfig` gives a transport's config (JSON) by name: a `retry` transport's
    /// `max_attempts` bounds the route's `max_deliveries` as the route's own policy would.
    init(
        _ entry: SwitchyardConfig.RouteEntry, transports: TransportSet?, relays: OutboxRelays, transportConfig: (String) -> String?
    ) throws(ConfigError) {
        self.entry = entry
        typealias Key = SwitchyardConfig.RouteEntry.Key
        func fail(_ key: Key, under subkey: String? = nil, _ message: String) -> ConfigError {
            ConfigError(key: entry.key(key, subkey), line: entry.line(key), message: message)
        }
        // The transport counts every delivery, retries included: a call would be taken for a
        // crash (dead-lettered unrun) before the policy's own last attempt.
        func checkMaxDeliveries(against maxAttempts: Int, _ described: (Int) -> String) throws(ConfigError) {
            guard let maxDeliveries = entry.maxDeliveries, maxDeliveries < maxAttempts else { return }
            throw fail(
                .maxDeliveries,
                "(\(maxDeliveries)) is under \(described(maxAttempts)): the transport counts every delivery, retries included, so a failing call would be dead-lettered as a crash before its last retry; set it to at least max_attempts, better with room for crashed hosts' deliveries, e.g. \(maxAttempts + 5)"
            )
        }
        if entry.transport == SwitchyardConfig.RouteEntry.direct {
            transport = nil
            capabilities = []
            envelopeForm = .cloudEvents
            for key in [Key.delay, .inbox, .outbox, .ordering, .encoding, .mode, .readableTargets, .maxDeliveries, .prefetch, .leaseRenewal, .concurrency]
            where entry.sets(key) {
                throw fail(key, "a direct route calls the local actor in the caller's task; '\(key.rawValue)' needs a transport")
            }
        } else {
            guard let transport = transports?[entry.transport] else { throw fail(.transport, "no transport named '\(entry.transport)'") }
            if entry.mode == .fireAndForget && entry.sets(.deadline) {
                throw fail(
                    .deadline,
                    "a fire-and-forget call has no caller waiting, so a route's deadline never applies to it; for calls that must run by a time, "
                        + "set the call's own deadline (CallOptions(deadline:), docs/services.md): a call still queued then is dead-lettered as expired")
            }
            self.transport = transport
            let capabilities = transport.chainCapabilities
            self.capabilities = capabilities
            envelopeForm = transport.chain.last?.capabilities.contains(.privateWire) == true ? .compact : .cloudEvents
            func require(_ capability: Capabilities, for key: Key, _ what: String) throws(ConfigError) {
                guard capabilities.contains(capability) else {
                    // Only `delay` can add its capability in front of any transport: the `retry`
                    // plugin needs an inner transport that redelivers after a delay already.
                    let remedy =
                        capability == .delay
                        ? "put a transport of plugin 'delay' with inner: \(entry.transport) in front, and route to it"
                        : capability == .retry
                            ? "route through a transport that redelivers a failed call after a delay: the bundled queue, topic, nats, postgres and rabbitmq plugins do, in memory or durable; a plugin of your own gets it by honouring a retry settlement's delay and declaring the retry capability (Swift: .retry; C: SY_SETTLE_RETRY's retry_after_ns, SY_CAP_RETRY), docs/writing-a-plugin.md"
                            : "route through a transport whose plugin has it"
                    throw fail(
                        key, "\(what), but transport '\(entry.transport)' (\(transport.chainDescription)) cannot: it lacks the \(capability) capability (\(remedy))")
                }
            }
            if entry.delayNanos > 0 { try require(.delay, for: .delay, "the route delays calls") }
            if entry.retryJSON != nil {
                try require(.retry, for: .retry, "the route retries failed calls")
                // Two policies would both apply (the plugin's max_attempts, backoff and
                // non_retryable over the route's): one way to retry a route's calls.
                if let decorator = Self.retryDecorator(in: transport) {
                    throw fail(
                        .retry,
                        "transport '\(entry.transport)' (\(transport.chainDescription)) retries failed calls with its own policy (transport '\(decorator.name)', plugin \(decorator.plugin.name)): keep one, either drop this route's retry: or route it to a transport without the retry plugin (its inner one)"
                    )
                }
            }
            // The bundled `retry` plugin reads its config as a route's retry policy; another
            // plugin's config is its own business, and unchecked.
            if let decorator = Self.retryDecorator(in: transport), decorator.plugin.name == "retry", let json = transportConfig(decorator.name),
                let policy = try? ConfigJSON.decode(RetryPolicy.self, from: json, allowedKeys: RetryPolicy.allowedKeys)
            {
                try checkMaxDeliveries(against: policy.maxAttempts) {
                    "max_attempts (\($0)) of transport '\(decorator.name)' (plugin retry), which retries this route's calls"
                }
            }
            if entry.orderingArgument != nil { try require(.ordered, for: .ordering, "the route orders calls by key") }
            if capabilities.contains(.fanOut) && entry.mode == .requestReply {
                throw fail(
                    entry.sets(.mode) ? .mode : .transport,
                    "transport '\(entry.transport)' fans out to every subscriber group, so there is no single reply: set mode: fire-and-forget")
            }
        }
        if let json = entry.retryJSON {
            let policy: RetryPolicy
            do {
                policy = try ConfigJSON.decode(RetryPolicy.self, from: json, allowedKeys: RetryPolicy.allowedKeys)
            } catch {
                throw fail(.retry, under: error.key, error.message)
            }
            do {
                try policy.validate()
            } catch {
                // Named as an unknown key is (`routes.X.retry.max_attempts`), not "key '…'" inside.
                guard let key = error.configKey, let range = error.message.range(of: "config key '\(key)': ") else {
                    throw fail(.retry, error.message)
                }
                throw fail(.retry, under: key, String(error.message[range.upperBound...]))
            }
            try checkMaxDeliveries(against: policy.maxAttempts) { "retry.max_attempts (\($0))" }
            retry = policy
        } else {
            retry = nil
        }
        encoding = entry.encoding == "json" ? .json : .compact
        if let inbox = entry.inbox {
            let database: (any InboxDatabase)?
            let subkey = inbox.postgres != nil ? "postgres" : "path"
            do throws(TransportError) {
                if let path = inbox.path {
                    database = try SQLiteInboxDatabase(path: path)
                } else if let postgres = inbox.postgres {
                    database = try PostgresInboxDatabase(conninfo: postgres.conninfo, schema: postgres.schema)
                } else {
                    database = nil
                }
                try database?.declareWindow(inbox.windowNanos)
            } catch {
                throw fail(.inbox, under: subkey, error.message)
            }
            self.inbox = Inbox(windowNanos: inbox.windowNanos, database: database, writeGate: inbox.path.map { relays.writeGates.gate(for: $0) })
            if entry.outbox {
                do throws(TransportError) {
                    if let database {
                        outbox = try relays.relay(identity: database.identity, name: "\(entry.pattern) inbox") { () throws(TransportError) in
                            try database.makeOutboxStorage()
                        }
                    } else {
                        outbox = try relays.relay(identity: "memory", name: "memory") { MemoryOutboxStorage() }
                    }
                } catch {
                    throw fail(.inbox, under: subkey, "the outbox: \(error.message)")
                }
            } else {
                outbox = nil
            }
        } else {
            inbox = nil
            outbox = nil
        }
        metrics = RouteMetrics(route: entry.pattern)
        cost = transport.flatMap(CallCost.of)
        publishesAsynchronously = (transport?.client.publishesAsynchronously ?? false) && !ThreadSanitizer.isActive
    }

}

/// Routes by pattern; the most specific match wins: `Interface.method`, then `Interface.*`,
/// then `*`.
struct RouteTable: Sendable {
    let routes: [Route]
    private let exact: [String: Route]
    private let interfaces: [String: Route]
    private let fallback: Route?

    init(_ routes: [Route]) {
        self.routes = routes
        var exact: [String: Route] = [:]
        var interfaces: [String: Route] = [:]
        var fallback: Route?
        for route in routes {
            if route.pattern == "*" {
                fallback = route
            } else if route.pattern.hasSuffix(".*") {
                interfaces[String(route.pattern.dropLast(2))] = route
            } else {
                exact[route.pattern] = route
            }
        }
        self.exact = exact
        self.interfaces = interfaces
        self.fallback = fallback
    }

    func route(interface: String, method: String) -> Route? {
        exact[interface + "." + method] ?? interfaces[interface] ?? fallback
    }

    /// Every route that can match some method of `interface`.
    func routes(forInterface interface: String) -> [Route] {
        routes.filter { $0.pattern == "*" || $0.pattern == interface + ".*" || $0.pattern.hasPrefix(interface + ".") }
    }
}
