import Distributed
import Logging
import SwitchyardABI
import SwitchyardHost
import SwitchyardWire
import Synchronization

/// The hosting side's bookkeeping: which actors are served, as which interfaces, on which
/// subscriptions, and how many deliveries are executing.
final class Server: Sendable {
    /// A served actor and the interfaces it may be called through.
    struct Hosted: Sendable {
        let id: SwitchyardActorID
        /// The actor; nil for a native module.
        let actor: (any DistributedActor)?
        /// `Module.OrdersService`: targets declared on the concrete type.
        let typeName: String
        /// `Module.$Orders` → the substitutions a call through it runs with (its stub type), for
        /// each protocol the actor is hosted as: made once here, not per call.
        let interfaces: [String: [Any.Type]]
        /// The native module served under this id, instead of an actor.
        var native: NativeModule? = nil
        /// Readable name (`Orders.place(_:)`, and `Orders.place` where no other method has that
        /// base name) → the identifier of the hosted protocol's own method; built at hosting when
        /// a route of its interfaces accepts calls by readable name, empty otherwise.
        var readable: [String: String] = [:]
    }

    /// One subscription feeding a hosted actor's workers.
    struct Subscription: Sendable {
        let transport: Transport
        /// The channel subscribed (the hosted actor's name).
        let channel: String
        let id: SubscriptionID
        let queue: DeliveryQueue
        let workers: [Task<Void, Never>]
        /// Keeps the leases of what it holds (nil: the transport cannot); stopped by the drain.
        let leases: LeaseKeeper?
    }

    /// A channel served here, on a transport (kept after the drain, for the overview).
    struct ServedChannel: Hashable, Sendable {
        let transport: String
        let channel: String
    }

    private struct State {
        var hosted: [SwitchyardActorID: Hosted] = [:]
        var subscriptions: [Subscription] = []
        var served: Set<ServedChannel> = []
    }
    private let state = Guarded(State())
    /// Deliveries taken and not yet settled: queued for a worker, executing, or committing their
    /// reply and settlement. Closed by the drain once idle: nothing more is taken after that.
    let inFlight = WorkCount()
    /// False while draining: new deliveries are refused (the transport gives them to others).
    let accepting = Atomic<Bool>(true)
    let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    func add(_ hosted: Hosted) throws {
        try state.withLock { state in
            guard state.hosted[hosted.id] == nil else {
                throw SwitchyardError.routing(target: "\(hosted.id)", reason: "an actor with id '\(hosted.id)' is already hosted")
            }
            state.hosted[hosted.id] = hosted
        }
    }

    func hosted(_ id: SwitchyardActorID) -> Hosted? { state.withLock { $0.hosted[id] } }

    /// Everything hosted now.
    func allHosted() -> [Hosted] { state.withLock { Array($0.hosted.values) } }

    func add(_ subscription: Subscription) {
        state.withLock {
            $0.subscriptions.append(subscription)
            $0.served.insert(ServedChannel(transport: subscription.transport.name, channel: subscription.channel))
        }
    }

    /// What the hosting side holds now, for a diagnosis: the count in flight and each
    /// subscription's queue (``DeliveryQueue/snapshot``).
    func diagnosis() -> String {
        let queues = state.withLock { $0.subscriptions }.map { "\($0.channel) on \($0.transport.name): \($0.queue.snapshot)" }
        return "in flight \(inFlight.value); " + (queues.isEmpty ? "no subscriptions" : queues.joined(separator: "; "))
    }

    /// Every (transport, channel) subscribed here since the start.
    func servedChannels() -> Set<ServedChannel> { state.withLock { $0.served } }

    /// Removes and returns every subscription.
    func takeSubscriptions() -> [Subscription] {
        state.withLock { state in
            defer { state.subscriptions.removeAll() }
            return state.subscriptions
        }
    }

    /// Checks that `call` belongs to `actor` before anything runs, and returns the generic
    /// substitutions to execute it with; throws the reason it does not.
    ///
    /// `executeDistributedTarget` itself does not check that a target belongs to the actor it
    /// runs on: a forged or stale envelope could run another type's method on this actor, or
    /// crash the process through type confusion. So the target's owning type must be the actor's
    /// own type or a protocol it was hosted as, and the substitution is always the stub type
    /// registered here, never one read off the wire. Generic methods are refused (a toolchain
    /// bug makes them crash the receiver when called through a stub).
    func substitutions(for call: CallTarget, on hosted: Hosted) throws(EnvelopeError) -> [Any.Type] {
        if call.owningType == hosted.typeName { return [] }
        // A look at each (an actor is hosted as a few protocols): cheaper than hashing the name.
        for (interface, substitutions) in hosted.interfaces where interface == call.owningType { return substitutions }
        let interfaces = hosted.interfaces.keys.sorted().joined(separator: ", ")
        throw EnvelopeError(
            "\(call.owningType).\(call.method) is not a method of actor '\(hosted.id)' (\(hosted.typeName)\(interfaces.isEmpty ? "" : ", hosted as \(interfaces)"))")
    }

    /// ``substitutions(for:on:)`` for an actor of this process found by id (direct routes).
    func substitutions(for call: CallTarget, on actor: any DistributedActor) throws(EnvelopeError) -> [Any.Type] {
        let id = actor.id as! SwitchyardActorID
        guard let hosted = hosted(id) else {
            let typeName = String(reflecting: type(of: actor))
            if call.owningType == typeName { return [] }
            throw EnvelopeError("actor '\(id)' (\(typeName)) is not hosted; host it as \(call.owningType) to call it through that protocol")
        }
        return try substitutions(for: call, on: hosted)
    }
}
