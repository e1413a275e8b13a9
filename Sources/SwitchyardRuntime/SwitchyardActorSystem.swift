import Distributed
import Foundation
import Logging
import SwitchyardABI
import SwitchyardConfig
import SwitchyardHost
import SwitchyardLoader
import SwitchyardNative
import SwitchyardTransportKit
import SwitchyardWire
import Synchronization
import Tracing

/// The Switchyard actor system: typed calls on distributed actors, carried the way the
/// configuration's routes say — directly, through a queue, a topic, a delay or retries — over
/// transport plugins loaded from `.so` files.
///
/// A service is a `@Resolvable` distributed-actor protocol pinned to this system:
///
/// ```swift
/// @Resolvable
/// protocol Orders: DistributedActor where ActorSystem == SwitchyardActorSystem {
///     distributed func place(_ order: Order) async throws -> Receipt
/// }
/// ```
///
/// A process hosts implementations with ``host(_:as:make:)``; callers resolve the protocol and
/// call it: `try await $Orders.resolve(id: "orders", using: system).place(order)`, or
/// `let orders: any Orders = try system.resolve("orders", $Orders.self)`, which also takes the
/// direct fast path to a local actor. Start it with ``init(configPath:pluginDirectories:logger:)``
/// and stop it with ``shutdown(deadline:)`` (or run it as a swift-service-lifecycle `Service`,
/// which drains on SIGTERM).
public final class SwitchyardActorSystem: DistributedActorSystem, Sendable {
    /// An actor's id: its name (the channel its calls travel on) and topic subscriber group.
    public typealias ActorID = SwitchyardActorID
    /// Records a call's arguments for the `Distributed` runtime.
    public typealias InvocationEncoder = SwitchyardInvocationEncoder
    /// Hands a received call's arguments to the `Distributed` runtime.
    public typealias InvocationDecoder = SwitchyardInvocationDecoder
    /// Receives a hosted handler's return value or error.
    public typealias ResultHandler = SwitchyardResultHandler
    /// Arguments, results and registered errors are `Codable`.
    public typealias SerializationRequirement = any Codable

    /// The system's logger (label `switchyard.runtime`).
    public let logger: Logger
    /// The configuration the system was started with.
    public let config: SwitchyardConfig
    /// This system's unique name; its reply channels are named after it.
    public let instanceID: String
    /// `_switchyard.reply.<instanceID>`: the channel this system's replies arrive on (made once,
    /// not per call).
    let replyChannelName: String

    let transports: TransportSet?

    /// The configured transport named `name`, for tools that read its counters or dead letters;
    /// nil when there is none.
    package func transport(named name: String) -> Transport? { transports?[name] }
    let routes: RouteTable
    let errors = ErrorRegistry()
    let pending = PendingCalls()
    let server: Server
    /// Native modules from config, loaded where this process runs them.
    let nativeModules: NativeModules
    /// Parsed targets and their routes, by identifier (read on every call, by the caller and by
    /// the receiver: an adaptive lock, since Linux's `Mutex` enters the kernel whenever it is
    /// contended).
    let targets = Guarded(TargetCache())
    private let locals = Guarded<[ActorID: WeakActor]>([:])
    private let replySubscriptions = Guarded<[String: SubscriptionID]>([:])
    let state = Atomic<Int>(SystemState.running.rawValue)
    let answeredDeadLetters = AnsweredDeadLetters()
    /// The `Void` calls already warned about as made inside a transaction but not part of it
    /// (their routes are request-reply transport routes): each is warned about once.
    let outsideTransactionWarned = Guarded<Set<String>>([])
    let deadLetterTally = DeadLetterTally()
    /// One relay per outbox database (routes with `outbox: true`, `outboxes:`).
    let outboxRelays: OutboxRelays
    /// The application databases of `outboxes:`, by name.
    let outboxes: [String: ApplicationOutbox]

    /// Starts a system from a config file: loads the plugins, creates the transports, checks
    /// every route against its transport's capabilities. Nothing starts half-configured: any
    /// problem throws before a single transport is used, naming the config key and line.
    ///
    /// - Parameters:
    ///   - configPath: the YAML file (docs/configuration.md).
    ///   - pluginDirectories: searched before `SWITCHYARD_PLUGINS_PATH`, the config's
    ///     `plugins.directory`, `./plugins` and the executable's directory.
    public convenience init(
        configPath: String, pluginDirectories: [String] = [], logger: Logger = Logger(label: "switchyard.runtime")
    ) throws {
        let config = try SwitchyardConfig.load(path: configPath)
        try self.init(config: config, pluginDirectories: pluginDirectories, logger: logger)
    }

    /// Starts a system from a parsed configuration (see ``init(configPath:pluginDirectories:logger:)``).
    public convenience init(config: SwitchyardConfig, pluginDirectories: [String] = [], logger: Logger = Logger(label: "switchyard.runtime")) throws {
        try self.init(config: config, pluginDirectories: pluginDirectories, logger: logger, openingEveryTransport: false)
    }

    /// The same; with `openingEveryTransport`, also the configured transports no route uses
    /// (`switchyard console` shows them all); with `loadingEveryNativeModule`, every native module's
    /// library before any transport starts (`switchyard run`, which hosts them all: a library
    /// that does not load stops it before it creates a store or connects to a broker).
    package init(
        config: SwitchyardConfig, pluginDirectories: [String], logger: Logger, openingEveryTransport: Bool, loadingEveryNativeModule: Bool = false
    ) throws {
        self.config = config
        self.logger = logger
        instanceID = "\(ProcessInfo.processInfo.hostName.prefix(32))-\(getpid())-\(EnvelopeID.make().suffix(12))"
            .map { $0.isLetter || $0.isNumber || $0 == "-" ? $0 : "-" }.reduce(into: "") { $0.append($1) }
        replyChannelName = "_switchyard.reply.\(instanceID)"
        do throws(ConfigError) {
            nativeModules = try NativeModules(config.native)
            if loadingEveryNativeModule { try nativeModules.load { _ in true } }
        } catch {
            throw error.inFile(config.file)
        }
        let routed = config.routes.map(\.transport).filter { $0 != SwitchyardConfig.RouteEntry.direct }
        let needed = openingEveryTransport ? routed + config.transports.map(\.name) : routed
        do throws(ConfigError) {
            transports =
                needed.isEmpty
                ? nil
                : try TransportSet.start(
                    config, discovery: PluginDiscovery(config: config, commandLine: pluginDirectories), only: Array(Set(needed)).sorted(), logger: logger)
        } catch {
            throw error.inFile(config.file)
        }
        let created = transports
        let relays = OutboxRelays(transports: created, logger: logger)
        outboxRelays = relays
        do {
            routes = RouteTable(
                try config.routes.map { (entry) throws(ConfigError) in
                    try Route(entry, transports: created, relays: relays, transportConfig: { config.transport(named: $0)?.configJSON })
                })
            outboxes = try Self.applicationOutboxes(config, relays: relays)
        } catch {
            relays.stop()
            created?.close()
            throw error.inFile(config.file)
        }
        do {
            // A direct route calls its module in this process: loaded now, not at the first call.
            let table = routes
            try nativeModules.load { entry in
                entry.functions.contains { table.route(interface: entry.interface, method: $0.name)?.isDirect == true }
            }
        } catch {
            relays.stop()
            created?.close()
            throw error.inFile(config.file)
        }
        server = Server(logger: logger)
        observeDeadLetters()
        relays.start()
    }

    deinit {
        if SystemState(rawValue: state.load(ordering: .relaxed)) != .stopped {
            pending.failAll { _ in SwitchyardError.shuttingDown(target: "") }
            outboxRelays.stop()
            // Before the transports close: a keeper left running would call into a closed one.
            for subscription in server.takeSubscriptions() { subscription.leases?.stop() }
            transports?.close()
        }
    }

    /// Makes thrown errors of type `E` come back to callers as themselves (the type must be
    /// registered in both the calling and the hosting process). Other errors arrive as
    /// ``SwitchyardError/remote(type:message:)``.
    public func registerError<E: Error & Codable>(_ type: E.Type) {
        errors.register(type)
    }

    // MARK: Identity

    /// The id the next actor created in this task gets (see ``host(_:as:make:)``).
    @TaskLocal static var assigning: ActorID?

    /// The id from ``host(_:as:make:)`` (a task-local), or a fresh unique one.
    public func assignID<Act>(_ actorType: Act.Type) -> ActorID where Act: DistributedActor, Act.ID == ActorID {
        Self.assigning ?? ActorID("\(actorType)-\(EnvelopeID.make())")
    }

    /// Records a local actor (weakly) so direct routes and hosting can find it.
    public func actorReady<Act>(_ actor: Act) where Act: DistributedActor, Act.ID == ActorID {
        locals.withLock { $0[actor.id] = WeakActor(actor) }
    }

    /// Forgets a local actor that is going away.
    public func resignID(_ id: ActorID) {
        locals.withLock { _ = $0.removeValue(forKey: id) }
    }

    /// Local actors are never returned here: calls through a resolved stub always take the
    /// route (use ``resolve(_:_:as:)`` for the direct fast path).
    public func resolve<Act>(id: ActorID, as actorType: Act.Type) throws -> Act? where Act: DistributedActor, Act.ID == ActorID {
        nil
    }

    /// Resolves the service `id` as its protocol: the local actor itself when the actor is hosted
    /// here and a plain local call is exactly what the routes ask for — every route of the
    /// protocol is direct, one of them (`Interface.*` or `*`) covers every method, and none sets
    /// a retry policy or a deadline (a call then costs what a local actor call costs);
    /// otherwise a stub whose calls take their routes (an unrouted method then fails with
    /// ``SwitchyardError/routing(target:reason:)``, a direct route retries and times out as
    /// configured).
    ///
    /// ```swift
    /// let orders: any Orders = try system.resolve("orders", $Orders.self)
    /// ```
    public func resolve<Stub: DistributedActor, Interface>(
        _ id: ActorID, _ stub: Stub.Type, as interface: Interface.Type = Interface.self
    ) throws -> Interface where Stub.ID == ActorID, Stub.ActorSystem == SwitchyardActorSystem {
        let name = Self.interfaceName(of: stub)
        let routes = routes.routes(forInterface: name)
        if routes.contains(where: { $0.pattern == "*" || $0.pattern == name + ".*" }),
            routes.allSatisfy({ $0.isDirect && $0.retry == nil && !$0.entry.sets(.deadline) }),
            let local = localActor(id), let typed = local as? Interface
        {
            return typed
        }
        let resolved = try Stub.resolve(id: id, using: self)
        guard let typed = resolved as? Interface else {
            throw SwitchyardError.routing(target: name, reason: "\(Stub.self) is not a \(Interface.self)")
        }
        return typed
    }

    /// The local actor with `id`, if any.
    func localActor(_ id: ActorID) -> (any DistributedActor)? {
        locals.withLock { $0[id]?.actor }
    }

    /// The groups `name` is hosted under here, sorted.
    func localGroups(named name: String) -> [String] {
        locals.withLock { $0.keys.filter { $0.name == name }.map(\.group) }.sorted()
    }

    /// Local actors named `name`, in any group, in the groups' order (a dictionary's is not one).
    func localActors(named name: String) -> [any DistributedActor] {
        locals.withLock { $0.filter { $0.key.name == name }.sorted { $0.key.group < $1.key.group }.compactMap { $0.value.actor } }
    }

    /// `Orders` for `$Orders` (or for `Module.$Orders`).
    static func interfaceName(of type: Any.Type) -> String {
        let name = String(describing: type)
        let base = name.split(separator: "<").first.map(String.init) ?? name
        return base.hasPrefix("$") ? String(base.dropFirst()) : base
    }

    /// A fresh encoder for one outgoing call.
    public func makeInvocationEncoder() -> InvocationEncoder { InvocationEncoder() }

    // MARK: Targets

    /// A target and the route it takes, resolved once per identifier (a class: read on every
    /// call, and one reference is cheaper to hand out than the copy of every field).
    final class ResolvedTarget: Sendable {
        let call: CallTarget
        let route: Route?
        init(call: CallTarget, route: Route?) {
            self.call = call
            self.route = route
        }
    }

    /// Resolved targets by identifier, the last few found tried first: a process calls the same
    /// few targets over and over, with the same strings (the caller's is the compiler's literal,
    /// the receiver's the envelope reader's reused one), and comparing a string with itself
    /// costs next to nothing, where hashing a long mangled name cost more than the rest of the
    /// lookup (callgrind: about 300 instructions, twice per call).
    struct TargetCache {
        private var all: [FastStringKey: ResolvedTarget] = [:]
        private var recent = InlineArray<4, ResolvedTarget?>(repeating: nil)
        private var nextRecent = 0

        /// Every target resolved so far.
        var values: Dictionary<FastStringKey, ResolvedTarget>.Values { all.values }

        /// The target resolved for `identifier`, if any yet.
        mutating func target(_ identifier: String) -> ResolvedTarget? {
            for index in recent.indices {
                if let target = recent[index], target.call.identifier == identifier { return target }
            }
            guard let target = all[FastStringKey(identifier)] else { return nil }
            remember(target)
            return target
        }

        /// Keeps `target`, unless one for its identifier is kept already; returns the one kept.
        mutating func keep(_ target: ResolvedTarget) -> ResolvedTarget {
            if let known = self.target(target.call.identifier) { return known }
            all[FastStringKey(target.call.identifier)] = target
            remember(target)
            return target
        }

        private mutating func remember(_ target: ResolvedTarget) {
            recent[nextRecent] = target
            nextRecent = (nextRecent + 1) % recent.count
        }
    }

    /// The parsed target for `identifier` and its route, cached.
    func resolved(_ identifier: String) -> ResolvedTarget? {
        if let known = targets.withLock({ $0.target(identifier) }) { return known }
        guard let parsed = CallTarget(identifier: identifier) else { return nil }
        let resolved = ResolvedTarget(call: parsed, route: routes.route(interface: parsed.interface, method: parsed.method))
        return targets.withLock { $0.keep(resolved) }
    }

    /// Each configured route and the transport chain it uses (`direct` for none), e.g.
    /// `("Payments.charge", "work (queue)")`.
    package var routeDescriptions: [(pattern: String, transport: String)] {
        routes.routes.map { route in
            (route.pattern, route.transport.map { "\($0.name) (\($0.chainDescription))" } ?? "direct (in process)")
        }
    }

    /// Whether a configured route (exact, `Interface.*` or `*`) matches `interface.method`.
    package func routes(interface: String, method: String) -> Bool { routes.route(interface: interface, method: method) != nil }

    /// What the hosting side holds now: calls in flight and each subscription's queue (queued,
    /// workers waiting, spinning). For a test that waited in vain to say where the calls are.
    package var hostingDiagnosis: String { server.diagnosis() }

    // MARK: Reply channels

    /// The channel this system's replies arrive on over `transport`, subscribed on first use.
    func replyChannel(on transport: Transport) throws(TransportError) -> String {
        let channel = replyChannelName
        if replySubscriptions.withLock({ $0[transport.name] }) != nil { return channel }
        try replySubscriptions.withLock { (subscriptions) throws(TransportError) in
            guard subscriptions[transport.name] == nil else { return }
            let pending = self.pending
            let client = transport.client
            // What is not a reply this runtime reads is dropped (the caller it was for times out),
            // said at debug level: nothing but Switchyard writes to a reply channel.
            let logger = self.logger
            @Sendable func answer(_ message: MessageView) {
                let reply: Reply
                do throws(EnvelopeError) {
                    reply = try Reply(message)
                } catch {
                    logger.debug("dropping an unreadable reply", metadata: ["channel": "\(channel)", "reason": "\(error)"])
                    return
                }
                pending.complete(reply.correlationID, with: reply)
            }
            // A reply goes to a call waiting in this process's memory: redelivering one helps no
            // one (if the process dies, so does the call). So the replies are settled as they
            // are handed over where the transport can (one commit on a durable transport instead
            // of a lease and an acknowledgement, and no acknowledgement to wake the other side);
            // the rest are acknowledged after the callers are answered, a batch in one
            // settle_batch where the transport delivers batches.
            subscriptions[transport.name] = try client.subscribe(
                SubscribeOptions(channel: channel, group: instanceID, settleOnDelivery: true),
                handler: { delivery, message in
                    answer(message)
                    if !message.flags.contains(.settled) { try? client.settle(delivery, .ack) }
                    return .ok
                },
                batchHandler: { deliveries, messages in
                    var acks: [DeliveryID] = []
                    for (delivery, message) in zip(deliveries, messages) {
                        answer(message)
                        if !message.flags.contains(.settled) { acks.append(delivery) }
                    }
                    if !acks.isEmpty { _ = try? client.settle(batch: acks, .ack) }
                    return deliveries.count
                })
        }
        return channel
    }

    func unsubscribeReplies() {
        let subscriptions = replySubscriptions.withLock { all in
            defer { all.removeAll() }
            return all
        }
        for (name, id) in subscriptions { try? transports?[name]?.client.unsubscribe(id) }
    }
}

/// Running → draining (no new deliveries) → stopped (no calls at all).
enum SystemState: Int {
    case running, draining, stopped
}

/// A local actor, held weakly: the system must not keep actors alive.
struct WeakActor: @unchecked Sendable {
    // @unchecked: the reference is only read, and actors are Sendable.
    // Held as the existential it is read as: reading it back needs no dynamic cast.
    weak var actor: (any DistributedActor)?
    init(_ actor: any DistributedActor) { self.actor = actor }
}
