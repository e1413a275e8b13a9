import Foundation
import SwitchyardABI
import SwitchyardConfig
import SwitchyardHost
import SwitchyardLoader

/// What an operator sees of a running system: its state, plugins, transports with their
/// counters, routes and hosted services. Read with ``SwitchyardActorSystem/overview()``; the
/// admin endpoint serves it as JSON (docs/operations.md) and `switchyard stats` prints it.
public struct SystemOverview: Codable, Sendable {
    /// This system's unique name (``SwitchyardActorSystem/instanceID``).
    public var instance: String
    /// `running`, `draining` or `stopped`.
    public var state: String
    /// Whether it takes work: `state` is `running` (host your actors before serving this, so that
    /// ready never comes with nothing hosted).
    public var ready: Bool
    /// The plugins the transports were created from.
    public var plugins: [Plugin]
    /// The configured transports this system uses, in name order.
    public var transports: [TransportInfo]
    /// The routes, in config order (the first match wins).
    public var routes: [RouteInfo]
    /// The actors (and native modules) this process hosts.
    public var services: [Service]
    /// The dead-letter channels of the channels served here (and of any other channel a
    /// transport reported a dead letter on since the start), for browsing with
    /// ``SwitchyardActorSystem/deadLetters(transport:channel:limit:)``.
    public var deadLetters: [DeadLetterChannel]

    /// One channel's dead letters.
    public struct DeadLetterChannel: Codable, Sendable {
        /// The transport to browse them on.
        public var transport: String
        /// The channel they were dead-lettered from (`payments`).
        public var channel: String
        /// Where they are (`payments.dlq`).
        public var deadLetterChannel: String
        /// Dead letters transports reported on it since this system started (earlier ones,
        /// kept by a durable transport, are not counted here: browse to see them).
        public var deadLetteredSinceStart: Int
    }

    /// One loaded plugin.
    public struct Plugin: Codable, Sendable {
        /// Its name (`queue`, `nats`, …).
        public var name: String
        /// Its version.
        public var version: String
        /// The ABI it was built against, `MAJOR.MINOR`.
        public var abi: String
        /// What it can do (`queue`, `fan-out`, `delay`, …).
        public var capabilities: [String]
        /// Its one-line description.
        public var summary: String
        /// The file it was loaded from.
        public var path: String
        /// The file's sha256, when it was computed (pins, `plugins.require_pins`).
        public var sha256: String?
    }

    /// One transport and its counters.
    public struct TransportInfo: Codable, Sendable {
        /// Its name in the config.
        public var name: String
        /// Its plugins, outermost first (`retry → queue`).
        public var chain: [String]
        /// What the chain can do together, as configured: a plugin that is durable only with a
        /// `path` is not `durable` here without one (ABI 1.8 `instance_capabilities`).
        public var capabilities: [String]
        /// Where the messages are: `memory`, `SQLite (work.db)`, `NATS JetStream`, `PostgreSQL`,
        /// `RabbitMQ`, or the innermost plugin's name for a third-party one — `memory` for one
        /// that declares `durable` and whose instance does not keep it (ABI 1.8).
        public var engine: String
        /// `process` when its plugin runs in a child process, else `in-process`.
        public var isolation: String
        /// The child process's pid under `isolation: process`, while it runs.
        public var pluginProcessID: Int32?
        /// Its counters (the ABI's `stats`), or nil when the plugin keeps none.
        public var stats: TransportStats?
        /// Why reading the counters failed, if it did.
        public var statsError: String?

        // Written snake_case (`plugin_process_id`) and read back through the same conversion,
        // which turns it into `pluginProcessId`: named so, or `stats --url --json` lost the pid.
        private enum CodingKeys: String, CodingKey {
            case name, chain, capabilities, engine, isolation, stats, statsError
            case pluginProcessID = "pluginProcessId"
        }
    }

    /// What one transport holds per channel and subscriber group, now (ABI 1.9 `channel_stats`):
    /// read with ``SwitchyardActorSystem/channels()``, served as `GET /api/channels` and printed by
    /// `switchyard stats --channels`. Not part of ``SystemOverview``: counting a store's channels
    /// reads all of it, and the overview is polled every second.
    public struct TransportChannels: Codable, Sendable {
        /// The transport's name in the config.
        public var transport: String
        /// Its channels, sorted by channel, then group; nil when they could not be read (see
        /// ``note``).
        public var channels: [ChannelStats]?
        /// Why ``channels`` is nil: the plugin does not report channels (before ABI 1.9, or a
        /// plugin that does not say), or the error reading them.
        public var note: String?

        /// What was read elsewhere (``channels`` nil, and why in `note`, when they were not).
        package init(transport: String, channels: [ChannelStats]? = nil, note: String? = nil) {
            self.transport = transport
            self.channels = channels
            self.note = note
        }

        /// `transport`'s channels, read through its plugin's `channel_stats` now.
        package init(_ transport: Transport) {
            self.transport = transport.name
            do {
                channels = try transport.client.channelStats()
                if channels == nil {
                    note = "\(transport.chainDescription) does not report its channels (ABI 1.9 channel_stats): only its totals (switchyard stats)"
                }
            } catch {
                note = error.description
            }
        }
    }

    /// One route of the config.
    public struct RouteInfo: Codable, Sendable {
        /// `Interface.method`, `Interface.*` or `*`.
        public var pattern: String
        /// The transport's name, or `direct`.
        public var transport: String
        /// `request-reply`, `fire-and-forget`, ….
        public var mode: String
        /// The call's deadline, milliseconds; nil on a `direct` route that sets none (its calls
        /// run as long as they take, as local calls do) and on a `fire-and-forget` route (no
        /// caller waits; only a call's own `CallOptions(deadline:)` sets one).
        public var deadlineMs: Double?
        /// The delay before delivery, milliseconds (0: none).
        public var delayMs: Double
        /// The runtime's retry policy as configured (JSON), or nil.
        public var retry: String?
        /// The argument whose value orders calls, or nil.
        public var ordering: String?
        /// Whether calls are de-duplicated in an inbox.
        public var inbox: Bool
        /// Whether a handler's follow-up calls commit with it (outbox).
        public var outbox: Bool
        /// How arguments are encoded (`compact`, `json`).
        public var encoding: String
        /// Handlers run at once per hosted actor.
        public var concurrency: Int
        /// Whether calls by readable name are accepted (`readable_targets`).
        public var readableTargets: Bool
        /// Most deliveries of one call before it is dead-lettered unrun (`max_deliveries`), or nil.
        public var maxDeliveries: Int? = nil
        /// Calls a host takes ahead of running them (`prefetch`, or its default); nil on a direct
        /// route, which takes nothing.
        public var prefetch: Int? = nil
        /// How long after its delivery a held call's lease is extended at most, in ms
        /// (`lease_renewal`, or its default; 0: never); nil on a direct route.
        public var leaseRenewalMs: Double? = nil
    }

    /// One hosted actor or native module.
    public struct Service: Codable, Sendable {
        /// The id callers resolve.
        public var id: String
        /// Its type (`Module.OrdersService`), or the native module's library.
        public var type: String
        /// The interfaces it is called through (`Orders`).
        public var interfaces: [String]
        /// The methods of those interfaces, by readable name (`Orders.place(_:)`); a native
        /// module's functions as `Interface.function`.
        public var methods: [String]
    }
}

extension SystemOverview.TransportInfo {
    /// `transport` (configured in `config`) and its counters, read through its plugin's `stats` now.
    package init(_ transport: Transport, config: SwitchyardConfig) {
        self.init(
            name: transport.name, chain: transport.chain.map(\.plugin.name), capabilities: transport.chainCapabilities.names,
            engine: Self.engine(of: transport, config: config),
            isolation: config.transport(named: transport.name)?.isolation == nil ? "in-process" : "process",
            pluginProcessID: transport.pluginProcessID)
        do {
            stats = try transport.client.stats()
        } catch {
            statsError = error.description
        }
    }

    /// Where `transport`'s messages are, from its innermost plugin and that one's config: `memory`
    /// wherever the innermost instance is not durable as configured (ABI 1.8), a plugin's name
    /// where only its plugin knows.
    package static func engine(of transport: Transport, config: SwitchyardConfig) -> String {
        let innermost = transport.chain.last ?? transport
        switch innermost.plugin.name {
        case "queue", "topic", "delay":
            guard innermost.capabilities.contains(.durable) else { return "memory" }
            let configJSON = config.transport(named: innermost.name)?.configJSON ?? "{}"
            let object = (try? JSONSerialization.jsonObject(with: Data(configJSON.utf8))) as? [String: Any]
            guard let path = object?["path"] as? String, !path.isEmpty else { return "memory" }
            return "SQLite (\((path as NSString).lastPathComponent))"
        case "nats", "nats-topic": return "NATS JetStream"
        case "postgres", "postgres-topic": return "PostgreSQL"
        case "rabbitmq", "rabbitmq-topic": return "RabbitMQ"
        default:
            // A plugin that can be durable and is not, as configured, keeps its messages in memory.
            let inMemory = innermost.plugin.capabilities.contains(.durable) && !innermost.capabilities.contains(.durable)
            return inMemory ? "memory" : innermost.plugin.name
        }
    }
}

/// Where a transport's messages live, as a process that opens it sees them.
package enum MessageHome: Sendable, Equatable {
    /// In the memory of the process that creates the transport: no other process reads them.
    case thisProcess
    /// Perhaps there: a link of the chain (described, e.g. `delay → example-c`) is not durable
    /// (a plugin that never declares durable, such as the C template's, may keep them in memory;
    /// it cannot say).
    case maybeThisProcess(chain: String)
    /// In a store or engine every process that opens it reaches.
    case shared

    /// Where `transport`'s messages live. Every link must keep them durably: the chain's
    /// capabilities are a union, and a `delay` with a path over a store in memory (or one in
    /// memory over a file) reads durable.
    package init(_ transport: Transport, config: SwitchyardConfig) {
        if SystemOverview.TransportInfo.engine(of: transport, config: config) == "memory" {
            self = .thisProcess
            return
        }
        let inMemoryLink = transport.chain.contains { $0.plugin.capabilities.contains(.durable) && !$0.capabilities.contains(.durable) }
        guard let innermost = transport.chain.last, innermost.capabilities.contains(.durable), !inMemoryLink else {
            self = .maybeThisProcess(chain: transport.chainDescription)
            return
        }
        self = .shared
    }
}

extension SwitchyardActorSystem {
    /// Where the messages of the transport called `name` live, or nil when none is open by it.
    package func messageHome(ofTransport name: String) -> MessageHome? {
        transports?.transports[name].map { MessageHome($0, config: config) }
    }
}

extension SwitchyardActorSystem {
    /// A snapshot for operators: state, plugins, transports with their counters (read through
    /// each plugin's `stats` now), routes and hosted services. Cheap enough to poll every second.
    public func overview() -> SystemOverview {
        let current = SystemState(rawValue: state.load(ordering: .acquiring)) ?? .stopped
        let used = (transports?.transports.values.map { $0 } ?? []).sorted { $0.name < $1.name }
        var plugins: [String: SystemOverview.Plugin] = [:]
        var transportInfos: [SystemOverview.TransportInfo] = []
        for transport in used {
            for link in transport.chain where plugins[link.plugin.path] == nil {
                let plugin = link.plugin
                plugins[plugin.path] = SystemOverview.Plugin(
                    name: plugin.name, version: "\(plugin.version)", abi: plugin.abiVersion, capabilities: plugin.capabilities.names,
                    summary: plugin.summary, path: plugin.path, sha256: plugin.sha256)
            }
            transportInfos.append(SystemOverview.TransportInfo(transport, config: config))
        }
        let routeInfos = routes.routes.map { route in
            let entry = route.entry
            return SystemOverview.RouteInfo(
                pattern: entry.pattern, transport: entry.transport, mode: entry.mode.rawValue,
                deadlineMs: (entry.transport == SwitchyardConfig.RouteEntry.direct && !entry.sets(.deadline)) || entry.mode == .fireAndForget
                    ? nil : Double(entry.deadlineNanos) / 1e6,
                delayMs: Double(entry.delayNanos) / 1e6, retry: entry.retryJSON,
                ordering: entry.orderingArgument, inbox: entry.inbox != nil, outbox: entry.outbox, encoding: entry.encoding,
                concurrency: entry.concurrency, readableTargets: entry.readableTargets != nil, maxDeliveries: entry.maxDeliveries,
                prefetch: entry.transport == SwitchyardConfig.RouteEntry.direct ? nil : entry.effectivePrefetch,
                leaseRenewalMs: entry.transport == SwitchyardConfig.RouteEntry.direct ? nil : Double(entry.leaseRenewalNanos) / 1e6)
        }
        let services = server.allHosted().map { hosted in
            let methods =
                hosted.native.map { module in module.functions.keys.map { "\(module.interface).\($0)" } }
                ?? AccessibleFunctions.readableTable(for: Set(hosted.interfaces.keys)).keys.filter { $0.contains("(") }
            return SystemOverview.Service(
                id: "\(hosted.id)", type: hosted.native.map { _ in "native module" } ?? hosted.typeName,
                interfaces: hosted.native.map { [$0.interface] } ?? hosted.interfaces.keys.map(Self.readableInterface).sorted(), methods: methods.sorted())
        }.sorted { $0.id < $1.id }
        return SystemOverview(
            instance: instanceID, state: "\(current)", ready: current == .running,
            plugins: plugins.values.sorted { ($0.name, $0.path) < ($1.name, $1.path) }, transports: transportInfos,
            routes: routeInfos, services: services, deadLetters: deadLetterChannels())
    }

    /// What each transport this system uses holds per channel and subscriber group, now (ABI 1.9
    /// `channel_stats`), in name order. Counting reads each store (a durable store's whole table;
    /// an in-memory one's entries under its lock): for operators, seconds apart, not a hot path.
    public func channels() async -> [SystemOverview.TransportChannels] {
        let used = (transports?.transports.values.map { $0 } ?? []).sorted { $0.name < $1.name }
        return await blockingOperation { used.map(SystemOverview.TransportChannels.init) }
    }

    /// The dead-letter channels of what this process serves, with the counts reported since the
    /// start; reply channels are not listed.
    func deadLetterChannels() -> [SystemOverview.DeadLetterChannel] {
        var tally = deadLetterTally.snapshot
        var channels: [SystemOverview.DeadLetterChannel] = []
        for served in server.servedChannels() {
            guard let transport = transports?[served.transport], transport.chainCapabilities.contains(.deadLetter) else { continue }
            let suffix = config.deadLetterSuffix(ofTransport: served.transport)
            let deadLetterChannel = served.channel + suffix
            guard !channels.contains(where: { $0.deadLetterChannel == deadLetterChannel }) else { continue }
            let count = tally.removeValue(forKey: deadLetterChannel)?.count ?? 0
            channels.append(.init(transport: served.transport, channel: served.channel, deadLetterChannel: deadLetterChannel, deadLetteredSinceStart: count))
        }
        for (deadLetterChannel, reported) in tally {
            let suffix = config.deadLetterSuffix(ofTransport: reported.transport)
            let channel = deadLetterChannel.hasSuffix(suffix) ? String(deadLetterChannel.dropLast(suffix.count)) : deadLetterChannel
            channels.append(.init(transport: reported.transport, channel: channel, deadLetterChannel: deadLetterChannel, deadLetteredSinceStart: reported.count))
        }
        return channels.sorted { ($0.transport, $0.channel) < ($1.transport, $1.channel) }
    }

    /// Holds the dead letters of `channel` (or its dead-letter channel) on the configured
    /// transport `transport`, up to `limit` (the `switchyard dlq` default), to list, replay or
    /// purge; close it when done (the transport keeps what was not replayed or purged). Throws
    /// `.notFound` for an unknown transport and `.unsupported` for one without dead letters.
    public func deadLetters(transport name: String, channel: String, limit: Int = DeadLetterBrowser.defaultLimit) async throws -> DeadLetterBrowser {
        let result: Result<DeadLetterBrowser, TransportError> = await blockingOperation { [self] in
            do throws(TransportError) {
                return .success(try openDeadLetters(transport: name, channel: channel, limit: limit))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// ``deadLetters(transport:channel:limit:)`` on this thread: blocks while the letters arrive.
    package func openDeadLetters(transport name: String, channel: String, limit: Int = DeadLetterBrowser.defaultLimit) throws(TransportError)
        -> DeadLetterBrowser
    {
        guard let transport = transports?[name] else {
            let known = transports?.transports.keys.sorted().joined(separator: ", ") ?? "none"
            throw TransportError(.notFound, "no transport named '\(name)' in this system (its transports: \(known))")
        }
        guard transport.chainCapabilities.contains(.deadLetter) else {
            throw TransportError(.unsupported, "transport '\(name)' (\(transport.chainDescription)) keeps no dead letters")
        }
        return try DeadLetterBrowser(client: transport.client, channel: channel, deadLetterSuffix: config.deadLetterSuffix(ofTransport: name), limit: limit)
    }

    /// `Module.$Orders` → `Orders`: the name routes and envelopes use.
    static func readableInterface(_ name: String) -> String {
        let last = name.split(separator: ".").last.map(String.init) ?? name
        return last.hasPrefix("$") ? String(last.dropFirst()) : last
    }
}
