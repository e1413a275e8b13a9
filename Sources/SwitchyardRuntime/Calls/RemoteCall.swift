import Distributed
import Foundation
import Instrumentation
import ServiceContextModule
import SwitchyardABI
import SwitchyardConfig
import SwitchyardHost
import SwitchyardWire
import Tracing

// The call path's async functions are `nonisolated(nonsending)`: they run on the executor of
// whoever awaits them, where a plain nonisolated async function hops onto the global executor as
// it starts and its caller hops back as it returns: nine executor switches a typed
// fire-and-forget call (docs/benchmark-history.md, forty-sixth round). Its entry points are
// `@concurrent`: a call never runs on its caller's actor (a `@MainActor` caller's publish, even
// a lone durable call's commit, is never the main actor's work), whatever the compiler's thunk
// is (1.6 of the nine switches back, by callgrind).
extension SwitchyardActorSystem {
    /// Called by a stub for a method with a result: routes the call, and on a request-reply route
    /// waits for the reply.
    @concurrent public func remoteCall<Act, Err, Res>(
        on actor: Act, target: RemoteCallTarget, invocation: inout InvocationEncoder, throwing: Err.Type, returning: Res.Type
    ) async throws -> Res where Act: DistributedActor, Act.ID == ActorID, Err: Error, Res: Codable {
        let (call, route) = try prepare(target)
        try refuseGeneric(call, invocation)
        if route.isDirect {
            try refuseSeveralGroups(actor.id, call)
            guard case .value(let value)? = try await callDirect(actor.id, call, invocation, route: route) else {
                throw SwitchyardError.rejected(target: call.name, reason: "the method returned no value")
            }
            return value as! Res
        }
        guard route.entry.mode == .requestReply else {
            throw SwitchyardError.routing(
                target: call.name, reason: "route '\(route.pattern)' is fire-and-forget, but \(call.name) returns \(Res.self); only Void methods can be fire-and-forget")
        }
        let reply = try await request(actor.id, call, invocation, route: route)
        do {
            return try reply.encoding.decode(Res.self, from: reply.body)
        } catch {
            throw SwitchyardError.rejected(target: call.name, reason: "the reply is not a valid \(Res.self): \(error)")
        }
    }

    /// Called by a stub for a `Void` method: fire-and-forget routes return once the transport has
    /// accepted the call; request-reply routes wait for completion (and its error, if any).
    @concurrent public func remoteCallVoid<Act, Err>(
        on actor: Act, target: RemoteCallTarget, invocation: inout InvocationEncoder, throwing: Err.Type
    ) async throws where Act: DistributedActor, Act.ID == ActorID, Err: Error {
        let (call, route) = try prepare(target)
        try refuseGeneric(call, invocation)
        if !route.isDirect && route.entry.mode == .fireAndForget {
            try await send(actor.id, call, invocation, route: route)
            return
        }
        if route.isDirect {
            // In process, in this task: its own fire-and-forget calls join the transaction.
            _ = try await callDirect(actor.id, call, invocation, route: route)
            return
        }
        if Switchyard.outboxCapture != nil { warnOutsideTransaction(call, route) }
        _ = try await request(actor.id, call, invocation, route: route)
    }

    /// A `Void` call made inside a transaction (a handler on an `outbox: true` route, or
    /// `transaction(on:)`) on a request-reply transport route: it runs now, whatever becomes of
    /// the transaction. Said once per call target, at warning level: a follow-up meant to commit
    /// with the handler's work needs a fire-and-forget route.
    private func warnOutsideTransaction(_ call: CallTarget, _ route: Route) {
        guard outsideTransactionWarned.withLock({ $0.insert(call.name).inserted }) else { return }
        logger.warning(
            "a call made inside a transaction is not part of it: its route is request-reply, so it runs now, even if the transaction then rolls back",
            metadata: [
                "target": "\(call.name)", "route": "\(route.pattern)",
                "fix": "route it with mode: fire-and-forget (a transport route) to have it sent only when the transaction commits (docs/transactions.md)",
            ])
    }

    /// Refuses a call once the system stopped: `.shuttingDown`, naming `target`. Every kind of
    /// call (by stub, by readable name, native) checks it before anything else: a call by name
    /// after shutdown reached the closed transport and failed as a transport error, and a native
    /// call on a direct route still ran its function.
    func refuseIfStopped(_ target: @autoclosure () -> String) throws {
        guard SystemState(rawValue: state.load(ordering: .acquiring)) != .stopped else { throw SwitchyardError.shuttingDown(target: target()) }
    }

    /// The call's target and route, or a routing error.
    private func prepare(_ target: RemoteCallTarget) throws -> (CallTarget, Route) {
        // Named as every other error names its call (`Inventory.reserve(sku:qty:)`), not by the
        // stub's type (`App.$Inventory.reserve…`).
        try refuseIfStopped(resolved(target.identifier)?.call.name ?? target.description)
        guard let resolved = resolved(target.identifier) else {
            throw SwitchyardError.routing(target: target.description, reason: "cannot read the call target '\(target.identifier)'")
        }
        let call = resolved.call
        guard let route = resolved.route else {
            throw SwitchyardError.routing(
                target: call.name, reason: "no route matches \(call.interface).\(call.method) (add '\(call.interface).\(call.method)', '\(call.interface).*' or '*' under routes:)")
        }
        route.metrics.calls.increment()
        return (call, route)
    }

    /// Generic distributed methods are refused before anything is sent: through a `@Resolvable`
    /// stub this toolchain binds their substitutions off by one on the receiver, which crashes it.
    private func refuseGeneric(_ call: CallTarget, _ invocation: InvocationEncoder) throws {
        guard call.isGeneric || invocation.substitutionCount > 1 else { return }
        throw SwitchyardError.routing(
            target: call.name,
            reason: "generic distributed methods cannot be routed (Swift 6.3 crashes the receiver of a generic call made through a @Resolvable stub); make \(call.name) non-generic"
        )
    }

    /// Publishes a fire-and-forget call; returns once the transport has accepted it.
    nonisolated(nonsending) func send(_ id: ActorID, _ call: CallTarget, _ invocation: some OutgoingArguments, route: Route) async throws {
        let span = CallTracing.startSpan(call.name, ofKind: .producer)
        defer { span?.end() }
        do {
            let options = Switchyard.callOptions
            let now = WallClock.nowNanos()
            let deadlineNanos = options.deadline.map { now + $0.nanoseconds } ?? 0
            let (_, message) = try message(
                id, call, invocation, route: route, options: options, replyTo: nil, now: now, deadlineNanos: deadlineNanos, span: span)
            if let capture = Switchyard.outboxCapture {
                // Inside a transaction: written to its outbox when it commits, relayed after. (A
                // task the handler started may call after the transaction ended: then the call is
                // no part of it, and goes out now.)
                try checkLimits(message, call)
                if capture.add(OutboxMessage(transport: route.entry.transport, message: message)) { return }
            }
            if route.publishesAsynchronously, let cost = route.cost, cost.runsOnPool {
                // Slow (waits for storage), and the plugin can tell when it is done: the task
                // waits for the commit, not a thread of the process.
                try checkLimits(message, call)
                let failure = await withUnsafeContinuation { told in
                    publishWithoutBlocking(message, call, route, cost) { told.resume(returning: $0) }
                }
                if let failure { throw failure }
            } else if let cost = route.cost {
                // The closure and the await only where the publish leaves the task's thread.
                if cost.awaitsOnPool {
                    try await cost.run { [self] in try publish(message, call, route) }
                } else {
                    try cost.measure { try publish(message, call, route) }
                }
            } else {
                try publish(message, call, route)
            }
        } catch {
            route.metrics.failures.increment()
            span?.recordError(error)
            throw error
        }
    }

    /// Publishes a request-reply call and waits for its reply until the route's deadline.
    nonisolated(nonsending) func request(_ id: ActorID, _ call: CallTarget, _ invocation: some OutgoingArguments, route: Route) async throws -> Reply {
        if let gate = route.inbox?.writeGate, let capture = Switchyard.outboxCapture, capture.writeGate === gate, !capture.isSealed {
            // The handler commits to the file this transaction holds only after it ends.
            throw SwitchyardError.routing(
                target: call.name,
                reason:
                    "a request-reply call inside a transaction on the SQLite file that is this route's inbox would wait for its own transaction (the handler commits to that file after it ends): make the call after the transaction, or make it fire-and-forget (sent once the transaction commits)"
            )
        }
        let span = CallTracing.startSpan(call.name, ofKind: .client)
        defer { span?.end() }
        let started = ContinuousClock.now
        do {
            let transport = route.transport!
            let replyTo: String
            do {
                replyTo = try replyChannel(on: transport)
            } catch {
                throw SwitchyardError.transport(target: call.name, transport: transport.name, reason: "cannot subscribe the reply channel: \(error.message)")
            }
            let options = Switchyard.callOptions
            let deadline = options.deadline ?? .nanoseconds(route.entry.deadlineNanos)
            let now = WallClock.nowNanos()
            let (callID, message) = try message(
                id, call, invocation, route: route, options: options, replyTo: replyTo,
                now: now, deadlineNanos: now + deadline.nanoseconds, span: span)
            let metrics = route.metrics
            let reply = try await pending.wait(
                id: callID, deadline: started + deadline,
                timeout: { [name = call.name] in
                    metrics.timeouts.increment()
                    return SwitchyardError.timeout(target: name, deadline: deadline)
                },
                send: {
                    // A publish that waits for a commit runs off the task's thread (CallCost):
                    // through publish_async where the plugin offers it, else on a storage thread.
                    guard let cost = route.cost else { return try publish(message, call, route) }
                    guard cost.runsOnPool else { return try cost.measure { try publish(message, call, route) } }
                    // The only call of this process waiting for a reply: committed on this
                    // thread, a wake-up sooner (CallCost.measureIfAlone).
                    if pending.count == 1, try cost.measureIfAlone({ try publish(message, call, route) }) != nil { return }
                    if route.publishesAsynchronously {
                        try checkLimits(message, call)
                        return publishWithoutBlocking(message, call, route, cost) { [pending] failure in
                            if let failure { pending.fail(callID, with: failure) }
                        }
                    }
                    cost.perform { [self] in
                        do { try publish(message, call, route) } catch { pending.fail(callID, with: error) }
                    }
                })
            route.metrics.latency.recordNanoseconds((ContinuousClock.now - started).nanoseconds)
            guard reply.outcome == "throw" else { return reply }
            let payload =
                (try? reply.encoding.decode(ErrorPayload.self, from: reply.body)) ?? ErrorPayload(type: "unknown", message: "an unreadable error reply")
            throw errors.error(from: payload)
        } catch {
            route.metrics.failures.increment()
            span?.recordError(error)
            throw error
        }
    }

    private func checkLimits(_ message: Message, _ call: CallTarget) throws {
        if let violation = config.limits.violation(of: message, keyPrefix: "limits.") {
            throw SwitchyardError.limitExceeded(target: call.name, reason: violation)
        }
    }

    /// Publishes through the transport's `publish_async` (ABI 1.7; the limits already checked):
    /// `done` gets nil once the transport stored the call, or the error, as ``publish(_:_:_:)``
    /// would throw it. The route's meter counts the time to the answer.
    private func publishWithoutBlocking(
        _ message: Message, _ call: CallTarget, _ route: Route, _ cost: CallCost, done: @escaping @Sendable (SwitchyardError?) -> Void
    ) {
        let transportName = route.entry.transport
        let start = monotonicNanoseconds()
        cost.handedOffCallBegan()
        route.transport!.client.publish(message) { error in
            cost.handedOffCallEnded()
            guard let error else {
                cost.record(since: start)
                return done(nil)
            }
            done(SwitchyardError.transport(target: call.name, transport: transportName, reason: error.message))
        }
    }

    private func publish(_ message: Message, _ call: CallTarget, _ route: Route) throws {
        try checkLimits(message, call)
        do {
            try route.transport!.client.publish(message)
        } catch {
            throw SwitchyardError.transport(target: call.name, transport: route.entry.transport, reason: error.message)
        }
    }

    /// The call as an envelope on the route's channel: arguments encoded, ordering key and delay
    /// applied, trace context injected; and the envelope's id (the message is packed: reading its
    /// id back would make another string).
    private func message(
        _ id: ActorID, _ call: CallTarget, _ invocation: some OutgoingArguments, route: Route, options: CallOptions, replyTo: String?,
        now: Int64, deadlineNanos: Int64, span: (any Span)?
    ) throws -> (id: String, message: Message) {
        if let problem = options.problem { throw SwitchyardError.routing(target: call.name, reason: problem) }
        var orderingKey: String?
        if let name = route.entry.orderingArgument {
            guard let value = invocation.orderingValue(named: name) else {
                throw SwitchyardError.routing(target: call.name, reason: "route '\(route.pattern)' orders by '\(name)', but \(call.name) has no parameter named '\(name)'")
            }
            orderingKey = value
        }
        var deliverAt: Int64 = 0
        let delay = options.delay?.nanoseconds ?? route.entry.delayNanos
        if delay > 0 {
            guard route.capabilities.contains(.delay) else {
                throw SwitchyardError.routing(
                    target: call.name, reason: "the call asks for a delay, but transport '\(route.entry.transport)' cannot delay (add a delay transport to its chain)")
            }
            deliverAt = now + delay
        }
        var carrier = TraceCarrier()
        if let span { InstrumentationSystem.instrument.inject(span.context, into: &carrier, using: TraceCarrier.Injector()) }
        let arguments: [UInt8]
        do {
            arguments = try invocation.encoded(route.encoding)
        } catch {
            throw SwitchyardError.routing(target: call.name, reason: "cannot encode the arguments: \(error)")
        }
        // One reading of the clock for the id, the creation time and the deadline (each is 25 ns).
        // Packed at once, never handed along: no envelope is made (its box is an allocation).
        let envelopeID = EnvelopeID.make(nowNanos: now)
        let message = Envelope.message(
            id: envelopeID, target: Envelope.Target(name: call.name, identifier: call.identifier), arguments: arguments,
            contentType: route.encoding,
            replyTo: replyTo, traceparent: carrier.traceparent, tracestate: carrier.tracestate, traceContext: carrier.encodedOther,
            idempotencyKey: options.idempotencyKey, deadlineNanos: deadlineNanos, createdAtNanos: now, headers: options.headers,
            channel: id.name, orderingKey: orderingKey, deliverAtNanos: deliverAt, form: route.envelopeForm)
        return (envelopeID, message)
    }

    /// A direct route reached through a stub: the call runs in process, with what the route asks
    /// of any transport — its retry policy (the same backoff, then `.deadLettered`) and the
    /// deadline it sets (`.timeout`; the call itself may still finish) — so that development in
    /// memory behaves as production does, and the caller's ``CallOptions``. Without a deadline
    /// (the route's `deadline:` or the call's) the call runs in the caller's task as long as it
    /// takes, as a local call would: enforcing one costs a task of its own per call (about 2.3 µs
    /// here).
    nonisolated(nonsending) private func callDirect(
        _ id: ActorID, _ call: CallTarget, _ invocation: InvocationEncoder, route: Route
    ) async throws -> SwitchyardResultHandler.Outcome? {
        let options = Switchyard.callOptions
        if let problem = options.problem { throw SwitchyardError.routing(target: call.name, reason: problem) }
        let routeDeadline = route.entry.sets(.deadline) ? Duration.nanoseconds(route.entry.deadlineNanos) : nil
        var context = CallContext(
            id: EnvelopeID.make(), target: call.name, attempt: 1, headers: options.headers, idempotencyKey: options.idempotencyKey,
            deadlineNanos: nil, source: Envelope.defaultSource)
        let callerHasOptions = !options.isEmpty
        guard let deadline = options.deadline ?? routeDeadline else {
            return try await callWithRetries(id, call, invocation, route: route, context: context, callerHasOptions: callerHasOptions)
        }
        context.deadlineNanos = WallClock.nowNanos() + deadline.nanoseconds
        let metrics = route.metrics
        let box = UncheckedSendable((invocation, self, context))
        let outcome = try await DirectDeadline.run(
            deadline,
            timeout: { [name = call.name] in
                metrics.timeouts.increment()
                return SwitchyardError.timeout(target: name, deadline: deadline)
            },
            {
                let (invocation, system, context) = box.value
                return UncheckedSendable(try await system.callWithRetries(id, call, invocation, route: route, context: context, callerHasOptions: callerHasOptions))
            })
        return outcome.value
    }

    /// Runs the call in process on the local actor(s) named `id`, without encoding, each again
    /// after its failures while the route's retry policy allows; returns its outcome. A name
    /// hosted in several groups gets the call in each (only for `Void` methods, which have no
    /// single result), one after another, each with retries of its own as on a topic (a group
    /// that succeeded is not called again when a later one fails); the first to fail for good
    /// ends the call.
    nonisolated(nonsending) private func callWithRetries(
        _ id: ActorID, _ call: CallTarget, _ invocation: InvocationEncoder, route: Route, context: CallContext, callerHasOptions: Bool
    ) async throws -> SwitchyardResultHandler.Outcome? {
        // The usual case first: an actor hosted under this exact id, found with its interfaces
        // in one look (the look by id and the check by its hosting took two, and a cast).
        if let hosted = server.hosted(id), let actor = hosted.actor {
            let substitutions: [Any.Type]
            do {
                substitutions = try server.substitutions(for: call, on: hosted)
            } catch {
                throw SwitchyardError.rejected(target: call.name, reason: "\(error)")
            }
            return try await callWithRetries(
                call, on: actor, substitutions: substitutions, invocation, route: route, context: context, callerHasOptions: callerHasOptions)
        }
        // Else the actor with this exact id, or every actor hosted under the name (in any group).
        let actors = localActor(id).map { [$0] } ?? localActors(named: id.name)
        guard !actors.isEmpty else {
            throw SwitchyardError.routing(target: call.name, reason: "route '\(route.pattern)' is direct, but no actor named '\(id.name)' is hosted in this process")
        }
        var last: SwitchyardResultHandler.Outcome?
        for actor in actors {
            let substitutions: [Any.Type]
            do {
                substitutions = try server.substitutions(for: call, on: actor)
            } catch {
                throw SwitchyardError.rejected(target: call.name, reason: "\(error)")
            }
            last = try await callWithRetries(
                call, on: actor, substitutions: substitutions, invocation, route: route, context: context, callerHasOptions: callerHasOptions)
        }
        return last
    }

    /// Runs the call on one local actor, again after each failure while the route's retry policy
    /// allows; throws the error it ends with.
    nonisolated(nonsending) private func callWithRetries(
        _ call: CallTarget, on actor: any DistributedActor, substitutions: [Any.Type], _ invocation: InvocationEncoder, route: Route,
        context: CallContext, callerHasOptions: Bool
    ) async throws -> SwitchyardResultHandler.Outcome? {
        var attempt: UInt32 = 1
        var context = context
        while true {
            context.attempt = Int(attempt)
            // The handler sees its call, and makes its own calls with options of its own, as it
            // would behind a transport (the caller's options are not inherited).
            let outcome = try await Switchyard.$currentCall.withValue(context) {
                guard callerHasOptions else { return try await callInProcess(call, on: actor, substitutions: substitutions, invocation) }
                return try await Switchyard.$callOptions.withValue(CallOptions()) {
                    try await callInProcess(call, on: actor, substitutions: substitutions, invocation)
                }
            }
            guard case .error(let error)? = outcome else { return outcome }
            if errors.crossesAsRemoteForTheFirstTime(error) {
                // Here it comes back as itself; through a transport it would not: say so while
                // the application still runs on direct routes.
                logger.warning(
                    "a direct call threw an error type that is not registered: it reaches this caller as itself, but through a transport route it would arrive as SwitchyardError.remote; call system.registerError(_:) for it on both sides (it must be Codable)",
                    metadata: ["route": "\(route.pattern)", "target": "\(call.name)", "error_type": "\(String(reflecting: type(of: error)))"])
            }
            guard let policy = route.retry else { throw error }
            let reason = "\(call.name) threw \(String(reflecting: type(of: error))): \(error)"
            // Not retryable: the error is the call's answer, as on a route without a policy.
            guard policy.isRetryable(reason) else { throw error }
            if Int(attempt) < policy.maxAttempts {
                route.metrics.retried.increment()
                let after = policy.backoff(afterAttempt: attempt)
                logger.debug(
                    "retrying a failed call",
                    metadata: [
                        "route": "\(route.pattern)", "target": "\(call.name)", "attempt": "\(attempt)",
                        "retry_in_ms": "\(after / 1_000_000)", "reason": "\(reason)",
                    ])
                try await Task.sleep(for: .nanoseconds(after))
                attempt += 1
                continue
            }
            route.metrics.deadLettered.increment()
            let why = "gave up after \(attempt) attempt\(attempt == 1 ? "" : "s"): \(reason)"
            logger.notice(
                "giving up on a direct call (a transport would dead-letter it)",
                metadata: [
                    "route": "\(route.pattern)", "target": "\(call.name)", "attempt": "\(attempt)", "reason": "\(why)",
                ])
            throw SwitchyardError.deadLettered(target: call.name, attempts: Int(attempt), reason: reason)
        }
    }

    /// A direct call that returns a value runs on one actor. A name hosted here in several
    /// groups (and not under exactly this id) is refused: each group ran it, and the caller got
    /// whichever result came last.
    private func refuseSeveralGroups(_ id: ActorID, _ call: CallTarget) throws {
        guard server.hosted(id) == nil, localActor(id) == nil else { return }
        let groups = localGroups(named: id.name)
        guard groups.count > 1 else { return }
        throw SwitchyardError.routing(
            target: call.name,
            reason:
                "'\(id.name)' is hosted here in \(groups.count) groups (\(groups.joined(separator: ", "))), and a direct call that returns a value runs on one actor: resolve one, e.g. SwitchyardActorID(\"\(id.name)\", group: \"\(groups[0])\")"
        )
    }

    /// Runs the call on one local actor with the recorded arguments as they are.
    nonisolated(nonsending) private func callInProcess(
        _ call: CallTarget, on actor: any DistributedActor, substitutions: [Any.Type], _ invocation: InvocationEncoder
    ) async throws -> SwitchyardResultHandler.Outcome? {
        var decoder = SwitchyardInvocationDecoder(.recorded(invocation.arguments), substitutions: substitutions)
        let handler = SwitchyardResultHandler()
        try await TargetExecutor.execute(call, on: actor, substitutions: substitutions, decoder: &decoder, handler: handler, system: self)
        return handler.outcome
    }
}

/// A call's arguments on their way out: encoded once the route's encoding is known.
protocol OutgoingArguments {
    /// The arguments in `encoding`.
    func encoded(_ encoding: ArgumentEncoding) throws -> [UInt8]
    /// The ordering key from the argument called `name`, or nil when there is none.
    func orderingValue(named name: String) -> String?
}

extension SwitchyardInvocationEncoder: OutgoingArguments {
    func encoded(_ encoding: ArgumentEncoding) throws -> [UInt8] { try encodedArguments(encoding) }
    func orderingValue(named name: String) -> String? {
        arguments.first { $0.name == name }.map { String(describing: $0.value) }
    }
}

/// Whether calls are traced, asked once per call on each side.
///
/// With nothing bootstrapped every span is a no-op, yet making one still cost an in-memory call
/// about a tenth of its instructions: `InstrumentationSystem.tracer` looks the tracer up by a
/// protocol conformance on every read, and the receiver's span scope is a task-local of its own.
/// So a call asks `InstrumentationSystem.instrument` — the instrument bound around the task (a
/// `withTracer` scope) or bootstrapped — and makes no span, and carries no trace context, while
/// that is the no-op. Asked per call, not cached, so that bootstrapping after the system started
/// and `withTracer` scopes in tests still work.
enum CallTracing {
    /// Whether an instrument (a tracer, or propagation alone) is bound or bootstrapped.
    /// (Compared by type, not with `is`: a dynamic cast of the existential cost each side of a
    /// call a few hundred instructions more.)
    static var isActive: Bool { ObjectIdentifier(type(of: InstrumentationSystem.instrument)) != ObjectIdentifier(NoOpInstrument.self) }

    /// A span for a call made in the current task, continuing its context; nil when nothing is
    /// bootstrapped.
    static func startSpan(_ name: String, ofKind kind: SpanKind) -> (any Span)? {
        guard isActive else { return nil }
        return InstrumentationSystem.tracer.startSpan(name, context: ServiceContext.current ?? .topLevel, ofKind: kind)
    }
}

/// Trace context as the bootstrapped instrument injects and extracts it — any tracer, any keys:
/// W3C `traceparent`/`tracestate` travel as the CloudEvents Distributed Tracing extension, every
/// other key (another format's ids, baggage) in the envelope's `sytracecontext` extension.
struct TraceCarrier {
    var traceparent: String?
    var tracestate: String?
    /// Keys other than the W3C ones, in injection order.
    var other: [(key: String, value: String)] = []

    init(traceparent: String? = nil, tracestate: String? = nil, encodedOther: String? = nil) {
        self.traceparent = traceparent
        self.tracestate = tracestate
        if let encodedOther { other = Self.decode(encodedOther) }
    }

    /// `other` as the `sytracecontext` value; nil when empty.
    var encodedOther: String? {
        other.isEmpty ? nil : other.map { Self.escape($0.key) + "=" + Self.escape($0.value) }.joined(separator: ",")
    }

    private static let plain = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")
    private static func escape(_ text: String) -> String { text.addingPercentEncoding(withAllowedCharacters: plain) ?? "" }

    private static func decode(_ text: String) -> [(key: String, value: String)] {
        text.split(separator: ",").compactMap { pair in
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, let key = String(parts[0]).removingPercentEncoding,
                let value = String(parts[1]).removingPercentEncoding, !key.isEmpty
            else { return nil }
            return (key, value)
        }
    }

    struct Injector: Instrumentation.Injector {
        func inject(_ value: String, forKey key: String, into carrier: inout TraceCarrier) {
            switch key.lowercased() {
            case "traceparent": carrier.traceparent = value
            case "tracestate": carrier.tracestate = value
            default:
                carrier.other.removeAll { $0.key == key }
                carrier.other.append((key, value))
            }
        }
    }

    struct Extractor: Instrumentation.Extractor {
        func extract(key: String, from carrier: TraceCarrier) -> String? {
            switch key.lowercased() {
            case "traceparent": carrier.traceparent
            case "tracestate": carrier.tracestate
            default: carrier.other.first { $0.key == key || $0.key.lowercased() == key.lowercased() }?.value
            }
        }
    }
}

/// A value that crosses a task boundary where the compiler cannot see that it is safe: the
/// direct path hands its invocation to the task that runs it and the outcome back, each read by
/// one task at a time.
struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// A direct call's deadline: the call runs in a task of its own (task-locals carried over), and
/// the caller resumes with its result or, once `deadline` passes, with the timeout error — the
/// call then finishes on its own, as one sent through a transport would. Deadlines are kept by
/// one sweeper thread for the process (precise to about 10 ms), not a timer task per call.
enum DirectDeadline {
    static func run<T: Sendable>(
        _ deadline: Duration, timeout: @escaping @Sendable () -> any Error, _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        let race = Race<T>()
        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<T, any Error>) in
                race.arm(continuation)
                let work = Task {
                    do { race.finish(.success(try await body())) } catch { race.finish(.failure(error)) }
                }
                let timer = DeadlineSweeper.shared.arm(at: .now + deadline) { race.finish(.failure(timeout())) }
                race.onFinish {
                    DeadlineSweeper.shared.disarm(timer); _ = work
                }
            }
        } onCancel: {
            race.finish(.failure(CancellationError()))
        }
    }

    /// Resumes the continuation once, with whichever result comes first.
    private final class Race<T: Sendable>: Sendable {
        private struct State {
            var continuation: UnsafeContinuation<T, any Error>?
            var early: Result<T, any Error>?
            var done = false
            var cleanup: (@Sendable () -> Void)?
        }
        private let state = Guarded<State>(State())

        func arm(_ continuation: UnsafeContinuation<T, any Error>) {
            let early = state.withLock { state -> Result<T, any Error>? in
                if let early = state.early { return early }
                state.continuation = continuation
                return nil
            }
            if let early { continuation.resume(with: early) }
        }

        func onFinish(_ cleanup: @escaping @Sendable () -> Void) {
            let runNow = state.withLock { state -> Bool in
                if state.done { return true }
                state.cleanup = cleanup
                return false
            }
            if runNow { cleanup() }
        }

        func finish(_ result: Result<T, any Error>) {
            let (continuation, cleanup) = state.withLock { state -> (UnsafeContinuation<T, any Error>?, (@Sendable () -> Void)?) in
                guard !state.done else { return (nil, nil) }
                state.done = true
                defer { state.continuation = nil; state.cleanup = nil }
                if state.continuation == nil { state.early = result }
                return (state.continuation, state.cleanup)
            }
            continuation?.resume(with: result)
            cleanup?()
        }
    }
}
