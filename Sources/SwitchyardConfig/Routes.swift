import SwitchyardABI

extension SwitchyardConfig {
    /// One route: which calls it matches and how they travel.
    ///
    /// ```yaml
    /// routes:
    ///   Orders.place:               # Interface.method, Interface.* or *
    ///     transport: orders         # a configured transport, or `direct`
    ///     mode: request-reply       # or fire-and-forget (Void methods)
    ///     deadline: 30s
    ///     retry: { max_attempts: 4, initial_delay: 50ms }
    ///     ordering: customerID      # the argument whose value is the ordering key
    ///     inbox: { window: 10m }    # execute each call at most once per window
    ///     outbox: true              # the handler's follow-up calls commit with its inbox record
    /// ```
    public struct RouteEntry: Sendable {
        /// The pattern as written: `Interface.method`, `Interface.*` or `*`.
        public var pattern: String
        /// A configured transport's name, or ``RouteEntry/direct``.
        public var transport: String
        /// Whether callers wait for a reply.
        public var mode: Mode
        /// How long a request-reply call waits for its reply, in nanoseconds.
        public var deadlineNanos: Int64
        /// Default delay before delivery, in nanoseconds (0: none).
        public var delayNanos: Int64
        /// The retry policy as JSON (the `retry` plugin's keys), or nil for none.
        public var retryJSON: String?
        /// The parameter whose value is the message ordering key.
        public var orderingArgument: String?
        /// The idempotent inbox, or nil for none.
        public var inbox: Inbox?
        /// Whether the fire-and-forget calls a handler of this route makes are written to an
        /// outbox in the inbox's database, in the transaction that records the handled call, and
        /// relayed to their transports after it commits (docs/transactions.md). Needs ``inbox``.
        public var outbox: Bool
        /// How arguments and results are encoded.
        public var encoding: String
        /// How many calls one hosted actor executes at a time for this route.
        public var concurrency: Int
        /// How many calls a host takes from the transport ahead of running them (the subscription's
        /// prefetch), or nil for the default, ``defaultPrefetch(concurrency:)``. On a transport that
        /// cannot extend leases, each taken call's lease runs while it waits: lower it there where
        /// handlers are slow against the transport's visibility timeout.
        public var prefetch: Int? = nil
        /// How long after its delivery a call this host holds (queued or running) keeps having its
        /// lease extended, in nanoseconds (a call with a deadline: until its deadline at most);
        /// 0: never extended. Default ``defaultLeaseRenewalNanos``.
        public var leaseRenewalNanos: Int64 = Self.defaultLeaseRenewalNanos

        /// Lease renewal where the route sets none: five minutes.
        public static let defaultLeaseRenewalNanos: Int64 = 300_000_000_000

        /// A host's prefetch where the route sets none: twice `concurrency`, at least 16.
        public static func defaultPrefetch(concurrency: Int) -> Int { max(concurrency * 2, 16) }

        /// The prefetch this route asks for.
        public var effectivePrefetch: Int { prefetch ?? Self.defaultPrefetch(concurrency: concurrency) }
        /// Most deliveries of one call a receiver runs; one delivered more often is dead-lettered
        /// unrun — its earlier deliveries ended without an outcome (a crash, a kill, a run past the
        /// visibility timeout), so it is likely to take the next host down too (a poison message).
        /// Nil: no limit. Counted by the transport, so every delivery counts, including ones that
        /// never ran because their host went down first: leave room above `retry.max_attempts`.
        public var maxDeliveries: Int? = nil
        /// Whether receivers accept calls that name their target readably — `Interface.method(labels:)`
        /// in the CloudEvents `type`, arguments as a JSON array, no `sytarget` — from any
        /// CloudEvents producer or `switchyard call`; nil: such calls are refused. Needs
        /// `encoding: json`.
        public var readableTargets: ReadableTargets? = nil
        /// Line of each key in the file (the pattern's own line under "").
        public var lines: [String: Int]

        /// The transport name that means "call the local actor in the caller's task".
        public static let direct = "direct"

        /// Request-reply or fire-and-forget.
        public enum Mode: String, Sendable, CaseIterable {
            /// The caller waits for the return value or the thrown error.
            case requestReply = "request-reply"
            /// A `Void` method returns once the transport has accepted the call.
            case fireAndForget = "fire-and-forget"
        }

        /// Remembers handled calls so a redelivered one is not executed again.
        public struct Inbox: Sendable, Hashable {
            /// How long a call id is remembered, in nanoseconds.
            public var windowNanos: Int64
            /// A SQLite file that keeps the inbox across restarts; nil: in memory (or PostgreSQL).
            public var path: String?
            /// A PostgreSQL database that keeps the inbox (`postgres: { conninfo, schema }`).
            public var postgres: PostgresLocation?
        }

        /// `readable_targets: true`, or `{ sources: [...] }` to accept only those CloudEvents `source`s.
        public struct ReadableTargets: Sendable, Hashable {
            /// The CloudEvents `source` values accepted; nil: any.
            public var sources: [String]?
            /// Readable calls from `sources` (nil: from anywhere).
            public init(sources: [String]? = nil) { self.sources = sources }
        }

        /// A route's keys, each named once: the parser, the runtime's checks and its errors use
        /// these.
        public enum Key: String, Sendable, CaseIterable {
            case transport, mode, deadline, delay, retry, ordering, inbox, outbox, encoding, concurrency
            case readableTargets = "readable_targets"
            case maxDeliveries = "max_deliveries"
            case prefetch
            case leaseRenewal = "lease_renewal"
        }

        /// Whether the file sets `key` on this route (rather than leaving its default).
        public func sets(_ key: Key) -> Bool { lines[key.rawValue] != nil }
        /// The key path of one of this route's keys (or of a key under it: `retry.max_attempts`), for errors.
        public func key(_ key: Key, _ subkey: String? = nil) -> String { "routes.\(pattern).\(key.rawValue)" + (subkey.map { ".\($0)" } ?? "") }
        /// The line of one of this route's keys (the pattern's line when the key is not set).
        public func line(_ key: Key) -> Int? { lines[key.rawValue] ?? lines[""] }
    }

    static func parseRoutes(_ node: ConfigNode, transports: [TransportEntry], baseDirectory: String) throws(ConfigError) -> [RouteEntry] {
        var routes: [RouteEntry] = []
        let known = Set(transports.map(\.name))
        for (pattern, value) in try node.entries() {
            if let problem = routePatternProblem(pattern) { throw ConfigError(key: value.path, line: value.line, message: problem) }
            var route = RouteEntry(
                pattern: pattern, transport: "", mode: .requestReply, deadlineNanos: 30_000_000_000, delayNanos: 0,
                retryJSON: nil, orderingArgument: nil, inbox: nil, outbox: false, encoding: "compact", concurrency: 16, lines: ["": value.line ?? 0])
            for (name, field) in try value.mapping(allowed: RouteEntry.Key.allCases.map(\.rawValue)) {
                route.lines[name] = field.line
                guard let key = RouteEntry.Key(rawValue: name) else { continue }
                switch key {
                case .transport:
                    route.transport = try field.string()
                    guard route.transport == RouteEntry.direct || known.contains(route.transport) else {
                        let names = transports.map(\.name) + [RouteEntry.direct]
                        let guess = NearestName.suggestion(for: route.transport, among: names)
                        throw field.error("no transport named '\(route.transport)'\(guess) (configured: \(names.joined(separator: ", ")))")
                    }
                case .mode:
                    let text = try field.string()
                    guard let mode = RouteEntry.Mode(rawValue: text) else {
                        let modes = RouteEntry.Mode.allCases.map(\.rawValue)
                        let guess = NearestName.suggestion(for: text, among: modes)
                        throw field.error("'\(text)' is not a mode\(guess) (expected one of: \(modes.joined(separator: ", ")))")
                    }
                    route.mode = mode
                case .deadline:
                    route.deadlineNanos = try field.duration()
                    guard route.deadlineNanos > 0 else { throw field.error("must be more than 0 (e.g. 30s; leave it out for the default)") }
                case .delay: route.delayNanos = try field.duration()
                case .retry: route.retryJSON = try field.json(expecting: "a retry policy, a mapping like { max_attempts: 4, initial_delay: 100ms }")
                case .ordering: route.orderingArgument = try field.string()
                case .encoding:
                    route.encoding = try field.string()
                    guard ["compact", "json"].contains(route.encoding) else { throw field.error("expected compact or json") }
                case .concurrency: route.concurrency = try field.int(in: 1...10_000)
                case .maxDeliveries: route.maxDeliveries = try field.int(in: 1...1_000_000)
                case .prefetch: route.prefetch = try field.int(in: 1...100_000)
                case .leaseRenewal:
                    route.leaseRenewalNanos = try field.duration()
                    guard route.leaseRenewalNanos <= 30 * 86_400_000_000_000 else { throw field.error("must be at most 30 days (720h)") }
                case .inbox:
                    var inbox = RouteEntry.Inbox(windowNanos: 600_000_000_000, path: nil)
                    for (inboxKey, inboxField) in try field.mapping(allowed: ["window", "path", "postgres"]) {
                        switch inboxKey {
                        case "window":
                            inbox.windowNanos = try inboxField.duration()
                            guard inbox.windowNanos > 0 else { throw inboxField.error("must be more than 0 (e.g. 10m; leave it out for the default)") }
                        case "path": inbox.path = resolve(path: try inboxField.string(), against: baseDirectory)
                        case "postgres": inbox.postgres = try PostgresLocation(inboxField, defaultSchema: "switchyard")
                        default: break
                        }
                    }
                    if inbox.path != nil && inbox.postgres != nil {
                        throw field.error("has both path (SQLite) and postgres: keep the inbox in one database")
                    }
                    route.inbox = inbox
                case .outbox: route.outbox = try field.bool()
                case .readableTargets:
                    if (try? field.bool()) != nil {
                        route.readableTargets = try field.bool() ? RouteEntry.ReadableTargets() : nil
                    } else {
                        var readable = RouteEntry.ReadableTargets()
                        for (subkey, subfield) in try field.mapping(allowed: ["sources"]) where subkey == "sources" {
                            readable.sources = try subfield.strings()
                            guard !(readable.sources ?? []).isEmpty else { throw subfield.error("name at least one source, or write readable_targets: true") }
                        }
                        route.readableTargets = readable
                    }
                }
            }
            guard !route.transport.isEmpty else {
                throw ConfigError(key: value.path + ".transport", line: value.line, message: "is required (a configured transport, or direct)")
            }
            if route.outbox && route.inbox == nil {
                throw ConfigError(
                    key: route.key(.outbox), line: route.line(.outbox),
                    message:
                        "needs an inbox on the same route: the follow-up calls commit with the record that the call was handled (add inbox: { path: FILE } or inbox: { postgres: {} }; an inbox without either keeps the outbox in memory)"
                )
            }
            if let prefetch = route.prefetch, prefetch < route.concurrency {
                throw ConfigError(
                    key: route.key(.prefetch), line: route.line(.prefetch),
                    message:
                        "(\(prefetch)) is under the route's concurrency (\(route.concurrency)): a host runs only the calls it has taken, so it would run \(prefetch) at a time; raise prefetch or lower concurrency"
                )
            }
            if route.readableTargets != nil && route.transport == RouteEntry.direct {
                // Before the encoding: on a direct route `encoding` is refused too, and the fix
                // the encoding's message gives would only lead there.
                throw ConfigError(
                    key: route.key(.readableTargets), line: route.line(.readableTargets),
                    message:
                        "needs a transport route: readable calls come from outside the process (a transport's messages by readable name), and a direct route has none; route the interface through a transport, with encoding: json"
                )
            }
            if route.readableTargets != nil && route.encoding != "json" {
                throw ConfigError(
                    key: route.key(.readableTargets), line: route.line(.readableTargets),
                    message: "needs encoding: json on the same route: readable calls carry their arguments as a JSON array")
            }
            routes.append(route)
        }
        return routes
    }

    /// A PostgreSQL database and schema: `postgres: { conninfo: "...", schema: NAME }`. Both keys
    /// are optional: libpq's `PG*` environment variables and defaults fill in the connection, and
    /// the schema has a default.
    public struct PostgresLocation: Sendable, Hashable {
        /// A libpq connection string or URI; empty: the `PG*` environment variables.
        public var conninfo: String
        /// The schema that holds Switchyard's tables (created when missing).
        public var schema: String

        init(_ node: ConfigNode, defaultSchema: String) throws(ConfigError) {
            conninfo = ""
            schema = defaultSchema
            for (key, field) in try node.mapping(allowed: ["conninfo", "schema"]) {
                switch key {
                case "conninfo": conninfo = try field.string(allowingEmpty: true)  // empty: libpq's PG* variables
                case "schema":
                    schema = try field.string()
                    guard !schema.isEmpty, schema.count <= 48, schema.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }) else {
                        throw field.error("'\(schema)' must be 1 to 48 letters, digits, '_' or '-'")
                    }
                default: break
                }
            }
        }
    }

    static func routePatternProblem(_ pattern: String) -> String? {
        if pattern == "*" { return nil }
        let parts = pattern.split(separator: ".", omittingEmptySubsequences: false)
        let identifier: (Substring) -> Bool = { part in
            !part.isEmpty && part.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" } && !(part.first!.isNumber)
        }
        guard parts.count == 2, identifier(parts[0]), parts[1] == "*" || identifier(parts[1]) else {
            return "route patterns are Interface.method, Interface.* or *"
        }
        return nil
    }
}

extension ConfigNode {
    /// A duration scalar (`"250ms"`, `"5s"`, `"1m"`, `"2h"`, `"0"`) in nanoseconds.
    public func duration() throws(ConfigError) -> Int64 {
        let text = try string()
        guard let parsed = ConfigDuration.parse(text) else {
            throw error(ConfigDuration.refusal(of: text))
        }
        return parsed.nanoseconds
    }
}
