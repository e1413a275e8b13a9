import Distributed
import Foundation
import Instrumentation
import Logging
import ServiceContextModule
import SwitchyardABI
import SwitchyardConfig
import SwitchyardHost
import SwitchyardWire
import Tracing

extension SwitchyardActorSystem {
    /// Creates an actor with a well-known id and serves it: for every route of `interfaces` that
    /// uses a transport, the actor's channel (its name) is subscribed, and calls arriving there
    /// run on it.
    ///
    /// ```swift
    /// let orders = try system.host("orders", as: $Orders.self) { OrdersService(actorSystem: $0) }
    /// try system.host(SwitchyardActorID("order-events", group: "email"), as: $OrderEvents.self) {
    ///     EmailNotifier(actorSystem: $0)
    /// }
    /// ```
    ///
    /// - Parameters:
    ///   - id: the name callers resolve (and, for topic routes, the subscriber group).
    ///   - interfaces: the `@Resolvable` stubs (`$Orders.self`) of the protocols the actor serves.
    ///     Calls through any other protocol are refused and dead-lettered.
    ///   - make: creates the actor with the system it is given.
    @discardableResult
    public func host<Act: DistributedActor>(
        _ id: ActorID, as interfaces: any DistributedActor.Type..., make: (SwitchyardActorSystem) throws -> Act
    ) throws -> Act where Act.ActorSystem == SwitchyardActorSystem {
        try refuseUnlessRunning("\(id)")
        let actor = try Self.$assigning.withValue(id) { try make(self) }
        guard actor.id == id else {
            throw SwitchyardError.routing(target: "\(id)", reason: "the actor was created with id '\(actor.id)': create it with the system passed to make")
        }
        var hosted = Server.Hosted(
            id: id, actor: actor, typeName: String(reflecting: Act.self),
            interfaces: Dictionary(interfaces.map { (String(reflecting: $0), [$0 as Any.Type]) }, uniquingKeysWith: { first, _ in first }))
        let interfaceNames = [Self.interfaceName(of: Act.self)] + interfaces.map { Self.interfaceName(of: $0) }
        if interfaceNames.contains(where: { routes.routes(forInterface: $0).contains { $0.entry.readableTargets != nil } }) {
            // Built here, from what is compiled into this process, never from the wire.
            hosted.readable = AccessibleFunctions.readableTable(for: Set(hosted.interfaces.keys))
        }
        try host(hosted, interfaceNames: interfaceNames, type: "\(Act.self)")
        return actor
    }

    /// Registers `hosted` and subscribes its channel on every transport some route of
    /// `interfaceNames` uses (one subscription each).
    /// Refuses to host once the system drains or stopped: `.shuttingDown`, naming `target`.
    func refuseUnlessRunning(_ target: String) throws {
        guard SystemState(rawValue: state.load(ordering: .acquiring)) == .running else { throw SwitchyardError.shuttingDown(target: target) }
    }

    func host(_ hosted: Server.Hosted, interfaceNames: [String], type: String) throws {
        try server.add(hosted)
        // One subscription per transport: the most concurrency, prefetch and lease renewal its routes ask for.
        var byTransport: [String: (transport: Transport, concurrency: Int, prefetch: Int, leaseRenewal: Int64)] = [:]
        for name in Set(interfaceNames) {
            for route in routes.routes(forInterface: name) {
                guard let transport = route.transport else { continue }
                let known = byTransport[transport.name]
                byTransport[transport.name] = (
                    transport, max(known?.concurrency ?? 0, route.entry.concurrency), max(known?.prefetch ?? 0, route.entry.effectivePrefetch),
                    max(known?.leaseRenewal ?? 0, route.entry.leaseRenewalNanos)
                )
            }
        }
        for (_, subscription) in byTransport.sorted(by: { $0.key < $1.key }) {
            try serve(
                hosted, on: subscription.transport, concurrency: subscription.concurrency, prefetch: subscription.prefetch,
                leaseRenewalNanos: subscription.leaseRenewal)
        }
        logger.info(
            "hosting",
            metadata: [
                "id": "\(hosted.id)", "type": "\(type)", "transports": "\(byTransport.keys.sorted().joined(separator: ", "))",
            ])
        let interfaces = Array(Set(interfaceNames)).sorted()
        if interfaces.allSatisfy({ routes.routes(forInterface: $0).isEmpty }) {
            // Said now, at start-up: otherwise the first sign is a call failing (or, fire-and-forget,
            // dead-lettered) with "no route matches".
            logger.warning(
                "hosting an actor that no route reaches: calls to it fail with 'no route matches' until the config routes its interface",
                metadata: [
                    "id": "\(hosted.id)", "type": "\(type)",
                    "fix": "add '\(interfaces.first ?? type).*: { transport: NAME }' (or '*') under routes:",
                ])
        }
    }

    /// Subscribes the actor's channel on `transport` and starts its workers.
    private func serve(_ hosted: Server.Hosted, on transport: Transport, concurrency: Int, prefetch: Int, leaseRenewalNanos: Int64) throws {
        let queue = DeliveryQueue()
        let server = self.server
        let client = transport.client
        let ownSource = Envelope.defaultSource
        let limits = config.limits
        let options = SubscribeOptions(channel: hosted.id.name, group: hosted.id.group, maxInFlight: UInt32(prefetch))
        let cost = CallCost.of(transport)
        let strings = EnvelopeStrings()
        // On a fan-out transport, a dead letter replayed for one group reaches every group.
        let fanOut = transport.chainCapabilities.contains(.fanOut)
        // Deliveries held here (queued or running) keep their leases, where the transport can.
        let leases = LeaseKeeper.start(for: transport, channel: hosted.id.name, renewalNanos: leaseRenewalNanos, logger: server.logger)
        /// What becomes of one delivered message: queued for the workers, refused unread (and so
        /// settled here), or handed back to the transport (draining: for other hosts).
        enum Intake {
            case queue(Inbound)
            case settled
            case handBack
        }
        @Sendable func intake(_ delivery: DeliveryID, _ message: MessageView, system: SwitchyardActorSystem?) -> Intake {
            // Refused unread: logged, the waiting caller told why, kept with the reason for a person.
            func refuse(_ what: Logger.Message, reason: String, deadLetter: String, _ error: (String) -> SwitchyardError) -> Intake {
                server.logger.warning(what, metadata: ["channel": "\(hosted.id.name)", "reason": "\(reason)"])
                system?.replyToUnreadCall(message, on: transport, channel: hosted.id.name, error: error)
                let id = CallSummary(message).id ?? ""
                system?.answeredDeadLetters.begin(id, group: hosted.id.group)
                try? client.settle(delivery, .deadLetter(reason: deadLetter))
                system?.answeredDeadLetters.end(id, group: hosted.id.group)
                return .settled
            }
            if fanOut, message.headerCount > 0, let group = message.header(DeadLetterHeader.replayGroup), group != hosted.id.group {
                // Replayed from another group's dead letters: this group had its own copy already.
                server.logger.debug(
                    "dropping a message replayed for another subscriber group",
                    metadata: ["channel": "\(hosted.id.name)", "group": "\(hosted.id.group)", "for_group": "\(group)"])
                try? client.settle(delivery, .ack)
                return .settled
            }
            if let violation = limits.violation(of: message, keyPrefix: "limits.") {
                return refuse("dead-lettering a call over the limits", reason: violation, deadLetter: "over the receiver's limits: \(violation)") {
                    .limitExceeded(target: $0, reason: "the call, at the receiver: \(violation)")
                }
            }
            let envelope: Envelope
            switch Result(catching: { () throws(EnvelopeError) in try Envelope(message, reusing: strings) }) {
            case .success(let read): envelope = read
            case .failure(let error):
                return refuse("dead-lettering an unreadable call", reason: "\(error)", deadLetter: "unreadable envelope: \(error)") {
                    .rejected(target: $0, reason: "unreadable envelope: \(error)")
                }
            }
            // While draining, only calls from this process (made by calls still running here)
            // are taken; everything else goes back to the transport for other hosts. Counted from
            // here until settled, so the drain waits for a call queued but not yet started; once
            // the drain has closed the count, nothing more is taken.
            if !server.accepting.load(ordering: .acquiring) && envelope.source != ownSource { return .handBack }
            guard server.inFlight.enterUnlessClosed() else { return .handBack }
            return .queue(
                Inbound(
                    delivery: delivery, transport: transport, envelope: envelope, form: Envelope.Form(of: message), attempt: message.attempt,
                    group: hosted.id.group, cost: cost, leases: leases))
        }
        let subscription: SubscriptionID
        do throws(TransportError) {
            subscription = try client.subscribe(
                options,
                handler: { [weak self] delivery, message in
                    switch intake(delivery, message, system: self) {
                    case .queue(let inbound):
                        leases?.hold(inbound)
                        if queue.push(inbound) { return .ok }
                        leases?.letGo(inbound)
                        server.inFlight.leave()
                        return .closed
                    case .settled: return .ok
                    case .handBack: return .closed
                    }
                },
                // Batches (deliver_batch): every envelope read, then all queued under one lock.
                // Taken is everything up to the first one handed back (the transport offers the
                // rest again); queued ones the closed queue refuses are released here.
                batchHandler: { [weak self] deliveries, messages in
                    var queued: [Inbound] = []
                    queued.reserveCapacity(messages.count)
                    var taken = 0
                    for (delivery, message) in zip(deliveries, messages) {
                        let outcome = intake(delivery, message, system: self)
                        if case .handBack = outcome { break }
                        if case .queue(let inbound) = outcome { queued.append(inbound) }
                        taken += 1
                    }
                    leases?.hold(queued)
                    if !queue.push(contentsOf: queued) {
                        for inbound in queued {
                            leases?.letGo(inbound)
                            try? client.settle(inbound.delivery, .release)
                            server.inFlight.leave()
                        }
                    }
                    return taken
                })
        } catch {
            leases?.stop()
            throw SwitchyardError.transport(target: "\(hosted.id)", transport: transport.name, reason: "cannot subscribe '\(hosted.id.name)': \(error.message)")
        }
        let workers = (0..<concurrency).map { _ in
            Task { [weak self] in
                // Read once: a worker's own task-locals are only ever what it inherited (an actor
                // hosted from inside a handler inherits the handler's transaction scope) or what
                // `handle` sets for one call and ends; two task-local reads per call otherwise.
                let scopeInherited = Switchyard.inboxEffects != nil || Switchyard.outboxCapture != nil
                while let item = await queue.next() {
                    guard let self else { return }
                    await self.handle(item, hosted, scopeInherited: scopeInherited)
                }
            }
        }
        server.add(Server.Subscription(transport: transport, channel: options.channel, id: subscription, queue: queue, workers: workers, leases: leases))
    }

    /// Runs one delivered call and settles it: ack after the reply is sent; retry or dead-letter
    /// per the route; dead-letter with the reason when the call is refused.
    /// Counted in `server.inFlight` since its intake; uncounted here once settled.
    /// `scopeInherited`: the worker's task inherited a transaction scope (see `serve`).
    /// Where a call dead-lettered now can be found (`switchyard dlq show`): its id, transport,
    /// channel and dead-letter channel, for the log line that says so.
    private func deadLetterLocation(_ item: Inbound, _ hosted: Server.Hosted) -> Logger.Metadata {
        [
            "id": "\(item.envelope.id)", "transport": "\(item.transport.name)", "channel": "\(hosted.id.name)",
            "dead_letter_channel": "\(hosted.id.name)\(config.deadLetterSuffix(ofTransport: item.transport.name))",
        ]
    }

    nonisolated(nonsending) func handle(_ delivered: Inbound, _ hosted: Server.Hosted, scopeInherited: Bool) async {
        // Held (its lease extended) until settled: here, or where a settlement handed to the
        // storage pool ends (``complete``).
        var settledLater = false
        defer {
            if !settledLater { delivered.leases?.letGo(delivered) }
            server.inFlight.leave()
        }
        var item = delivered
        if item.envelope.target.identifier.isEmpty {
            // A call by readable name: mapped to the hosted protocol's own method, or refused.
            switch readableIdentifier(item.envelope, on: hosted) {
            case .success(let identifier):
                var envelope = item.envelope
                envelope.target.identifier = identifier
                item = Inbound(
                    delivery: item.delivery, transport: item.transport, envelope: envelope, form: item.form, attempt: item.attempt,
                    group: item.group, cost: item.cost, leases: item.leases)
            case .failure(let refusal):
                logger.warning(
                    "refusing a call by readable name", metadata: ["target": "\(item.envelope.target.name)", "actor": "\(hosted.id)", "reason": "\(refusal.reason)"])
                deadLetter(item, reason: "rejected: \(refusal.reason)")
                sendReply(item, .error(SwitchyardError.rejected(target: item.envelope.target.name, reason: refusal.reason)), encoding: .json)
                return
            }
        }
        let envelope = item.envelope
        let client = item.transport.client
        let readable = envelope.target.name
        func reject(_ reason: String, route: Route?) {
            logger.warning("refusing a call", metadata: ["target": "\(readable)", "actor": "\(hosted.id)", "reason": "\(reason)"])
            route?.metrics.deadLettered.increment()
            // Stored first, then answered: a caller told its call was dead-lettered finds it there.
            deadLetter(item, reason: "rejected: \(reason)")
            // In the call's own encoding, as every reply (envelope.md), whatever the route says.
            sendReply(item, .error(SwitchyardError.rejected(target: readable, reason: reason)), encoding: envelope.contentType)
        }
        guard let resolved = resolved(envelope.target.identifier) else {
            return reject(
                "unknown target '\(readable)' (\(envelope.target.identifier)): this build of the actor has no such method; caller and receiver run different versions of the interface. Deploy the same one to both, then replay the dead letter (switchyard dlq replay)",
                route: nil)
        }
        let call = resolved.call
        let route = resolved.route
        guard !call.isGeneric else {
            return reject("generic distributed methods cannot be called through a transport (\(call.name))", route: route)
        }
        let substitutions: [Any.Type]
        do {
            substitutions = try server.substitutions(for: call, on: hosted)
        } catch {
            return reject("\(error)", route: route)
        }
        if envelope.deadlineNanos > 0, WallClock.nowNanos() > envelope.deadlineNanos {
            route?.metrics.deadLettered.increment()
            logger.notice(
                "dead-lettering an expired call: its caller's deadline passed before it ran",
                metadata: [
                    "route": "\(route?.pattern ?? "none")", "target": "\(readable)", "attempt": "\(item.attempt)",
                    "deadline": "\(RFC3339.format(nanos: envelope.deadlineNanos))",
                ])
            deadLetter(item, reason: "expired: the caller's deadline passed before the call ran")
            return
        }
        // Per subscriber group: on a topic every group handles the same envelope once. A key the
        // caller chose (CallOptions.idempotencyKey) names a call to this target only.
        let callKey = envelope.idempotencyKey.map { "\(envelope.target.identifier) \($0)" } ?? envelope.id
        let key = hosted.id.group.isEmpty ? callKey : "\(hosted.id.group)/\(callKey)"
        var claimed = false
        if let inbox = route?.inbox {
            while !claimed {
                do throws(TransportError) {
                    switch try inbox.claim(key) {
                    case .handled(let handled):
                        route?.metrics.duplicates.increment()
                        logger.debug(
                            "a call the inbox already handled, delivered again: answered from the inbox, not run",
                            metadata: ["target": "\(readable)", "attempt": "\(item.attempt)", "outcome": "\(handled.outcome)"])
                        if let replyTo = envelope.replyTo {
                            publishReply(item, to: replyTo, outcome: handled.outcome, body: handled.reply, encoding: envelope.contentType)
                        }
                        try? client.settle(item.delivery, .ack)
                        return
                    case .claimed:
                        claimed = true
                    case .running:
                        // Another delivery of this call runs here now: wait for its outcome.
                        await inbox.waitWhileRunning(key)
                    }
                } catch {
                    logger.error("inbox lookup failed; the call is retried later", metadata: ["target": "\(readable)", "error": "\(error.message)"])
                    try? client.settle(item.delivery, .retry(afterNanos: 1_000_000_000, reason: "inbox unavailable: \(error.message)"))
                    return
                }
            }
        }
        var finished = false
        defer {
            // Any way out but success: release the claim so a redelivery runs the call.
            if claimed && !finished { route?.inbox?.release(key) }
        }
        // Delivered more often than the route's `max_deliveries`: the earlier deliveries ended
        // without an outcome — the host crashed or was killed while running it (a handler or a
        // native function that crashes takes the host with it), or it ran past the transport's
        // visibility timeout on a transport that cannot extend leases. Run again, it would most likely take this host down too: it is
        // dead-lettered unrun (a poison message), as SQS's receive count or a RabbitMQ quorum
        // queue's delivery limit do. After the inbox: a call already handled is answered above.
        if let limit = route?.entry.maxDeliveries, Int(item.attempt) > limit {
            route?.metrics.deadLettered.increment()
            let reason =
                "delivered \(item.attempt) times, more than the route's max_deliveries (\(limit)): the earlier deliveries ended without an outcome (the host crashed or was killed, or the call's lease ran out while it waited in the host or ran — past the route's lease_renewal or the call's deadline, or on a transport that cannot extend leases: raise lease_renewal, or there the visibility timeout above the slowest handler plus its wait in the host, or lower the route's prefetch)"
            logger.error(
                "dead-lettering a call delivered more often than its route allows, unrun",
                metadata: deadLetterLocation(item, hosted).merging([
                    "route": "\(route?.pattern ?? "")", "target": "\(readable)", "attempt": "\(item.attempt)",
                ]) { _, given in given })
            deadLetter(item, reason: reason)  // stored, then answered
            sendReply(
                item, .error(SwitchyardError.deadLettered(target: readable, attempts: Int(item.attempt), reason: reason)), encoding: envelope.contentType)
            return
        }

        if let module = hosted.native {
            switch runNative(item, call, module) {
            case .failure(let error):
                return reject(error.description, route: route)
            case .success(let value):
                finished = true
                // Every native value encodes (JSON carries NaN and infinities as strings).
                let body = (try? NativeCodec.encode([value], envelope.contentType)) ?? []
                if claimed, let gate = route?.inbox?.writeGate {
                    settledLater = await complete(
                        item, held: delivered, route: route, key: key, outcome: "return", body: body, effects: [], outbox: [], gate: gate)
                } else {
                    settledLater = complete(item, held: delivered, route: route, key: claimed ? key : nil, outcome: "return", body: body, effects: [], outbox: [])
                }
                return
            }
        }

        let handler = SwitchyardResultHandler()
        var failure: (any Error)?
        route?.metrics.inFlight.increment()
        defer { route?.metrics.inFlight.decrement() }
        let effects = claimed ? InboxEffects(kind: route?.inbox?.database?.kind) : nil
        // With `outbox: true`, the handler's fire-and-forget calls wait for its inbox record.
        let capture = claimed && route?.outbox != nil ? OutboxCapture() : nil
        let current = CallContext(
            id: envelope.id, target: readable, attempt: Int(item.attempt), headers: envelope.headers,
            idempotencyKey: envelope.idempotencyKey,
            deadlineNanos: envelope.deadlineNanos > 0 ? envelope.deadlineNanos : nil, source: envelope.source)
        // Each task-local scope costs the call a push and a pop: the inbox's two only where the
        // route has an inbox (or an enclosing scope set them), the span's only when tracing. And
        // each scope is a closure and an async frame more: without them the call runs straight
        // from the call's own scope.
        await Switchyard.$currentCall.withValue(current) {
            guard effects != nil || capture != nil || scopeInherited || CallTracing.isActive else {
                failure = await execute(call, envelope, on: hosted, substitutions: substitutions, handler: handler, span: nil)
                return
            }
            await Self.withTransactionScope(effects: effects, capture: capture, inherited: scopeInherited) {
                await Self.withServerSpan(call.name, envelope: envelope) { span in
                    failure = await execute(call, envelope, on: hosted, substitutions: substitutions, handler: handler, span: span)
                }
            }
        }
        // The handler has returned: however the call ends, its transaction is over. Sealed now,
        // before any settlement or dead letter: a call made later (from a task the handler
        // started) goes out at once, and an effect is refused, instead of joining a transaction
        // that a failure is about to drop.
        let followUps = capture?.seal() ?? []
        let added = effects?.seal() ?? []
        if let failure {
            // The call could not run at all (bad arguments, wrong arity): refuse it.
            return reject("cannot run \(call.name): \(failure)", route: route)
        }
        guard let outcome = handler.outcome else { return reject("\(call.name) produced no outcome", route: route) }
        // One look at the outcome on the way of a call that returned: each pattern match copies
        // the enum of existentials through value witnesses.
        var threw = false
        if case .error(let error) = outcome {
            threw = true
            if let error = error as? EnvelopeError {
                // The arguments could not be decoded (the runtime reports it as a throw).
                return reject("cannot run \(call.name): \(error)", route: route)
            }
            if Task.isCancelled, !server.accepting.load(ordering: .acquiring) {
                // Cancelled by a drain past its deadline: the call did not fail, it was stopped. It
                // goes back to the transport as it came (no attempt counted, nobody answered), for
                // another host or the next start; never retried, dead-lettered or answered as failed.
                logger.notice(
                    "releasing a call stopped by shutdown (it ran past the drain's deadline: a longer --drain or shutdown(deadline:) lets such calls finish)",
                    metadata: ["target": "\(readable)", "attempt": "\(item.attempt)", "error": "\(error)"])
                try? client.settle(item.delivery, .release)
                return
            }
            let reason = "\(call.name) threw \(String(reflecting: type(of: error))): \(error)"
            if let refusal = effects?.refusal.withLock({ $0 }) {
                // inboxTransaction on an in-memory inbox: a mistake no retry can fix, as a closure
                // for the other kind of database is.
                return giveBack(item, route: route, inboxError: TransportError(.config, refusal))
            }
            // An error the policy lists as not retryable is an answer, not a failure to retry:
            // a waiting caller gets it as it was thrown, as on a route without a policy.
            if let policy = route?.retry, policy.isRetryable(reason) || envelope.replyTo == nil {
                if policy.isRetryable(reason) && Int(item.attempt) < policy.maxAttempts {
                    route?.metrics.retried.increment()
                    let after = policy.backoff(afterAttempt: item.attempt)
                    logger.debug(
                        "retrying a failed call",
                        metadata: [
                            "route": "\(route?.pattern ?? "")", "target": "\(readable)", "attempt": "\(item.attempt)",
                            "retry_in_ms": "\(after / 1_000_000)", "reason": "\(reason)",
                        ])
                    try? client.settle(item.delivery, .retry(afterNanos: after, reason: reason))
                } else {
                    route?.metrics.deadLettered.increment()
                    let attempts = Int(item.attempt)
                    let why = policy.isRetryable(reason) ? "gave up after \(attempts) attempt\(attempts == 1 ? "" : "s"): \(reason)" : "not retryable: \(reason)"
                    logger.notice(
                        "dead-lettering a call",
                        metadata: deadLetterLocation(item, hosted).merging([
                            "route": "\(route?.pattern ?? "")", "target": "\(readable)", "attempt": "\(attempts)", "reason": "\(why)",
                        ]) { _, given in given })
                    // Stored first, then answered: a caller that runs `switchyard dlq list` on the
                    // error it got must find the call (CI once listed before the store committed).
                    deadLetter(item, reason: why)
                    sendReply(item, .error(SwitchyardError.deadLettered(target: readable, attempts: attempts, reason: reason)), encoding: envelope.contentType)
                }
                return
            }
            if route?.transportRetries == true {
                // A retry decorator owns the policy (a route over one has none of its own: the
                // config refuses both): it redelivers or dead-letters (and then reports it,
                // which answers the caller: see deadLettered(_:reason:on:)).
                route?.metrics.retried.increment()
                logger.debug(
                    "handing a failed call back to the transport's retry policy",
                    metadata: [
                        "route": "\(route?.pattern ?? "")", "target": "\(readable)", "attempt": "\(item.attempt)", "reason": "\(reason)",
                    ])
                try? client.settle(item.delivery, .retry(afterNanos: 0, reason: reason))
                return
            }
            if envelope.replyTo == nil {
                // Fire-and-forget with nobody to tell: keep the call, with the reason.
                route?.metrics.deadLettered.increment()
                logger.notice(
                    "dead-lettering a failed fire-and-forget call",
                    metadata: [
                        "route": "\(route?.pattern ?? "")", "target": "\(readable)", "attempt": "\(item.attempt)", "reason": "\(reason)",
                    ])
                deadLetter(item, reason: reason)
                return
            }
        }
        // A result (or an error that is the call's result). A handler that threw rolls back: the
        // inbox remembers its error, but its effects and follow-up calls are dropped.
        finished = true
        let (outcomeName, body) = encodeReply(outcome, encoding: envelope.contentType)
        let committed = !threw
        if claimed, let gate = route?.inbox?.writeGate {
            settledLater = await complete(
                item, held: delivered, route: route, key: key, outcome: outcomeName, body: body,
                effects: committed ? added : [], outbox: committed ? followUps : [], gate: gate)
        } else {
            settledLater = complete(
                item, held: delivered, route: route, key: claimed ? key : nil, outcome: outcomeName, body: body,
                effects: committed ? added : [], outbox: committed ? followUps : [])
        }
    }

    /// Runs `body` with the handler's inbox effects and outbox capture as task-locals — scopes
    /// set only where the route has an inbox, or where the worker inherited the values from an
    /// enclosing scope (a handler that hosts an actor): values it must not see.
    nonisolated(nonsending) private static func withTransactionScope(effects: InboxEffects?, capture: OutboxCapture?, inherited: Bool, _ body: () async -> Void) async {
        guard effects != nil || capture != nil || inherited else { return await body() }
        await Switchyard.$inboxEffects.withValue(effects) {
            await Switchyard.$outboxCapture.withValue(capture) { await body() }
        }
    }

    /// Decodes the call's arguments and runs it on the hosted actor; its outcome lands in
    /// `handler`. Returns why it could not run at all (bad arguments, wrong arity), or nil.
    nonisolated(nonsending) private func execute(
        _ call: CallTarget, _ envelope: Envelope, on hosted: Server.Hosted, substitutions: [Any.Type], handler: SwitchyardResultHandler,
        span: (any Span)?
    ) async -> (any Error)? {
        do {
            var decoder = try SwitchyardInvocationDecoder(encoded: envelope.arguments, encoding: envelope.contentType, substitutions: substitutions)
            guard let actor = hosted.actor else { throw EnvelopeError("no actor hosted as \(hosted.id)") }
            try await TargetExecutor.execute(call, on: actor, substitutions: substitutions, decoder: &decoder, handler: handler, system: self)
            if case .error(let error)? = handler.outcome { span?.recordError(error) }
            return nil
        } catch {
            return error
        }
    }

    /// Runs `body` inside a server span continuing the caller's trace, or with no span while
    /// nothing is bootstrapped (``CallTracing``).
    nonisolated(nonsending) private static func withServerSpan(_ name: String, envelope: Envelope, _ body: ((any Span)?) async -> Void) async {
        guard CallTracing.isActive else { return await body(nil) }
        var context = ServiceContext.topLevel
        InstrumentationSystem.instrument.extract(
            TraceCarrier(traceparent: envelope.traceparent, tracestate: envelope.tracestate, encodedOther: envelope.traceContext),
            into: &context, using: TraceCarrier.Extractor())
        await withSpan(name, context: context, ofKind: .consumer) { span in await body(span) }
    }

    /// Ends a handled call: remembers it in the inbox under `key` (committing the handler's
    /// effects and its follow-up calls in the outbox), replies, acknowledges. Remembering comes
    /// first: if it fails nothing was committed and the call runs again later; if another process
    /// remembered it first, its reply is the answer (and this run's follow-ups are dropped).
    /// Returns whether the settlement was handed to the storage pool: it then lets `held` (the
    /// delivery as taken, whose lease the keeper extends) go once done.
    private func complete(
        _ item: Inbound, held: Inbound, route: Route?, key: String?, outcome: String, body: [UInt8], effects: [InboxEffect], outbox: [OutboxMessage]
    ) -> Bool {
        conclude(remember(item, route: route, key: key, outcome: outcome, body: body, effects: effects, outbox: outbox), item, held: held, route: route)
    }

    /// ``complete(_:held:route:key:outcome:body:effects:outbox:)`` for a route whose inbox is a
    /// SQLite file: the inbox's commit waits its turn at the file's write gate (asynchronously),
    /// never on SQLite's lock on a thread of the cooperative pool, where a transaction of this
    /// process that holds the lock across an `await` (`transaction(on:)` on the same file) could
    /// not resume. The gate is held for the commit alone.
    private func complete(
        _ item: Inbound, held: Inbound, route: Route?, key: String?, outcome: String, body: [UInt8], effects: [InboxEffect], outbox: [OutboxMessage],
        gate: AsyncGate
    ) async -> Bool {
        await gate.enter()
        let remembered = remember(item, route: route, key: key, outcome: outcome, body: body, effects: effects, outbox: outbox)
        gate.leave()
        return conclude(remembered, item, held: held, route: route)
    }

    /// Settles a remembered call, or hands back one whose inbox transaction failed; whether the
    /// settlement was handed to the storage pool.
    private func conclude(_ remembered: Remembered, _ item: Inbound, held: Inbound, route: Route?) -> Bool {
        switch remembered {
        case .answer(let outcome, let body): return settle(item, held: held, route: route, outcome: outcome, body: body)
        case .failed(let error):
            giveBack(item, route: route, inboxError: error)
            return false
        }
    }

    /// What remembering a call in its inbox came to.
    private enum Remembered {
        /// The outcome to answer with: this run's, or another process's that remembered it first.
        case answer(outcome: String, body: [UInt8])
        /// The inbox's transaction failed: nothing was committed.
        case failed(TransportError)
    }

    /// Remembers the call in its route's inbox under `key` (none: nothing to do).
    private func remember(
        _ item: Inbound, route: Route?, key: String?, outcome: String, body: [UInt8], effects: [InboxEffect], outbox: [OutboxMessage]
    ) -> Remembered {
        guard let key, let inbox = route?.inbox else { return .answer(outcome: outcome, body: body) }
        do throws(TransportError) {
            if let first = try inbox.finish(key, Inbox.Handled(outcome: outcome, reply: body), effects: effects, outbox: outbox) {
                route?.metrics.duplicates.increment()
                return .answer(outcome: first.outcome, body: first.reply)
            }
            if let relay = route?.outbox, !outbox.isEmpty {
                (relay.storage as? MemoryOutboxStorage)?.add(outbox)
                relay.wake()
            }
            return .answer(outcome: outcome, body: body)
        } catch {
            return .failed(error)
        }
    }

    /// A call whose inbox transaction failed (nothing was committed): retried like a failed
    /// handler — with the route's policy, dead-lettered once it gives up (an effect that always
    /// fails, a constraint the handler's SQL breaks, must not run forever); without one, again in
    /// a second. A mistake no retry can fix (a closure for the other kind of database: `.config`)
    /// is dead-lettered at once, and a waiting caller told why, instead of timing out.
    private func giveBack(_ item: Inbound, route: Route?, inboxError error: TransportError) {
        let reason = "the inbox transaction failed: \(error.message)"
        let target = item.envelope.target.name
        // Stored with `stored` (the reason and why it was given up), then answered with `reason`.
        func deadLetterIt(_ what: Logger.Message, stored: String) {
            route?.metrics.deadLettered.increment()
            logger.error(what, metadata: ["target": "\(target)", "attempt": "\(item.attempt)", "error": "\(error.message)"])
            deadLetter(item, reason: stored)
            sendReply(item, .error(SwitchyardError.deadLettered(target: target, attempts: Int(item.attempt), reason: reason)), encoding: item.envelope.contentType)
        }
        if error.code == .config {
            return deadLetterIt("dead-lettering a call whose inbox transaction cannot succeed", stored: reason)
        }
        if let limit = route?.entry.maxDeliveries, Int(item.attempt) >= limit {
            // Delivered again, it would be dead-lettered unrun as a poison message, with a reason
            // (a crashed host) that is not this one.
            return deadLetterIt(
                "dead-lettering a call whose inbox transaction keeps failing",
                stored: "gave up after \(item.attempt) deliver\(item.attempt == 1 ? "y" : "ies") (the route's max_deliveries): \(reason)")
        }
        if let policy = route?.retry, Int(item.attempt) >= policy.maxAttempts {
            return deadLetterIt(
                "dead-lettering a call whose inbox transaction keeps failing", stored: "gave up after \(item.attempt) attempt\(item.attempt == 1 ? "" : "s"): \(reason)")
        }
        let after = route?.retry?.backoff(afterAttempt: item.attempt) ?? 1_000_000_000
        logger.error("inbox transaction failed; the call runs again later", metadata: ["target": "\(target)", "attempt": "\(item.attempt)", "error": "\(error.message)"])
        route?.metrics.retried.increment()
        try? item.transport.client.settle(item.delivery, .retry(afterNanos: after, reason: reason))
    }

    /// Settles a remembered call (see ``complete(_:held:route:key:outcome:body:effects:outbox:)``).
    private func settle(_ item: Inbound, held: Inbound, route: Route?, outcome: String, body: [UInt8]) -> Bool {
        route?.metrics.handled.increment()
        guard let cost = item.cost else {
            settleHandled(item, outcome: outcome, body: body)
            return false
        }
        guard cost.runsOnPool else {
            cost.measure { settleHandled(item, outcome: outcome, body: body) }
            return false
        }
        // A durable transport commits the reply and the acknowledgement before returning: once
        // that is slow (CallCost), off the worker's thread, so the worker takes the next call and
        // many commits share one fsync — unless it is the only call this host holds: then on
        // this thread, a wake-up sooner (``CallCost/measureIfAlone(_:)``). Counted in flight
        // until done, so a drain waits for it.
        if server.inFlight.value == 1, cost.measureIfAlone({ settleHandled(item, outcome: outcome, body: body) }) != nil { return false }
        server.inFlight.enter()
        cost.perform { [self, outcome, body] in
            settleHandled(item, outcome: outcome, body: body)
            held.leases?.letGo(held)
            server.inFlight.leave()
        }
        return true
    }

    /// Settles a call that ran: acknowledges it, or for a request-reply call publishes the reply
    /// and acknowledges the call as one unit (publish_and_settle: one commit on a durable
    /// transport, never a reply without its ack or the other way round). A method, not a closure
    /// made for each call: only the calls settled off the worker's thread need one.
    private func settleHandled(_ item: Inbound, outcome: String, body: [UInt8]) {
        guard let replyTo = item.envelope.replyTo else {
            do throws(TransportError) {
                try item.transport.client.settle(item.delivery, .ack)
            } catch  where error.code == .notFound {
                deliveryGone(item, error)
            } catch {}  // the transport keeps the delivery: it comes again
            return
        }
        let envelope = item.envelope
        let reply = replyMessage(
            to: replyTo, correlationID: envelope.id, target: envelope.target.name, outcome: outcome, body: body,
            encoding: envelope.contentType, deadlineNanos: envelope.deadlineNanos, form: item.form)
        do throws(TransportError) {
            try item.transport.client.publish(reply, settling: item.delivery, .ack)
        } catch  where error.code == .notFound {
            deliveryGone(item, error)
        } catch {
            logger.error(
                "cannot send a reply; the call will be delivered again",
                metadata: [
                    "target": "\(envelope.target.name)", "reply_to": "\(replyTo)", "error": "\(error.message)",
                ])
        }
    }

    /// A call that ran, whose delivery the transport no longer holds when it is settled: most
    /// often its lease ran out while the handler ran (a handler slower than the transport's
    /// visibility timeout), and the call has been delivered again already; or its subscription
    /// or connection ended. That delivery answers it.
    private func deliveryGone(_ item: Inbound, _ error: TransportError) {
        logger.warning(
            "a call finished after its delivery was gone: it is delivered again (its lease ran out — the handler ran past the route's lease_renewal or the call's deadline, its lease could not be extended, or the transport cannot extend leases and the handler took longer than its visibility timeout — or the subscription or connection ended)",
            metadata: [
                "target": "\(item.envelope.target.name)", "transport": "\(item.transport.name)", "attempt": "\(item.attempt)",
                "error": "\(error.message)",
                "fix":
                    "if handlers run this long, raise the route's lease_renewal (5m by default; 0s extends nothing) or deadline; on a transport that cannot extend leases, raise its visibility timeout (visibility_timeout; ack_wait on nats and rabbitmq)",
            ])
    }

    /// Tells the caller of a call refused unread (over the limits, or not an envelope this runtime
    /// reads) why, if it waits for a reply, instead of letting it time out: its reply channel and
    /// id are read leniently (``CallSummary``). `error` gets the call's readable target.
    private func replyToUnreadCall(
        _ message: MessageView, on transport: Transport, channel: String,
        error: (String) -> SwitchyardError
    ) {
        let call = CallSummary(message)
        guard let replyTo = call.replyTo, !replyTo.isEmpty, let id = call.id, !id.isEmpty else { return }
        let target = call.type ?? channel  // the readable Interface.method(labels:)
        // Unsaid: compact for a compact call (only Switchyard writes those); JSON for a CloudEvents
        // one, the encoding a producer of another system can read.
        let encoding = call.contentType ?? (call.form == .cloudEvents ? .json : .compact)
        let (outcome, body) = encodeReply(.error(error(target)), encoding: encoding)
        publishReply(
            on: transport, to: replyTo, correlationID: id, target: target, outcome: outcome, body: body, encoding: encoding,
            deadlineNanos: call.deadlineNanos, form: call.form)
    }

    /// Why a call by readable name is refused.
    struct ReadableRefusal: Error {
        let reason: String
    }

    /// The identifier a call by readable name (`ce-type` only, no `ce-sytarget`) maps to on
    /// `hosted`: one of its protocols' own methods, on a route with `readable_targets` that
    /// accepts the call's `source`, with JSON arguments; or why not.
    func readableIdentifier(_ envelope: Envelope, on hosted: Server.Hosted) -> Result<String, ReadableRefusal> {
        let name = envelope.target.name
        guard !hosted.readable.isEmpty else {
            return .failure(
                ReadableRefusal(
                    reason: "'\(hosted.id)' takes no calls by readable name (\(name)): a route of its interface must set readable_targets: true and encoding: json"))
        }
        guard let identifier = hosted.readable[name] else {
            let known = hosted.readable.keys.filter { $0.contains("(") }.sorted().joined(separator: ", ")
            return .failure(ReadableRefusal(reason: "'\(hosted.id)' has no method '\(name)' (it serves: \(known))"))
        }
        guard let route = resolved(identifier)?.route, let readable = route.entry.readableTargets else {
            return .failure(ReadableRefusal(reason: "the route of \(name) takes no calls by readable name: set readable_targets: true (and encoding: json) on it"))
        }
        if let sources = readable.sources, !sources.contains(envelope.source) {
            return .failure(
                ReadableRefusal(reason: "source '\(envelope.source)' may not call \(name) by readable name (routes.\(route.pattern).readable_targets.sources)"))
        }
        guard envelope.contentType == .json else {
            return .failure(
                ReadableRefusal(reason: "a call by readable name carries its arguments as a JSON array (datacontenttype application/json), not \(envelope.contentType.rawValue)"))
        }
        return .success(identifier)
    }

    /// The reply's outcome name and body for an outcome.
    func encodeReply(_ outcome: SwitchyardResultHandler.Outcome, encoding: ArgumentEncoding) -> (String, [UInt8]) {
        var body: [UInt8] = []
        switch outcome {
        case .void:
            return ("return", [])
        case .value(let value):
            body.reserveCapacity(32)  // one allocation, not one per growth
            do {
                try encoding.encode(value, appendingTo: &body)
                return ("return", body)
            } catch {
                return encodeReply(.error(SwitchyardError.rejected(target: "", reason: "cannot encode the result: \(error)")), encoding: encoding)
            }
        case .error(let error):
            try? encoding.encode(errors.payload(for: error), appendingTo: &body)
            return ("throw", body)
        }
    }

    private func sendReply(_ item: Inbound, _ outcome: SwitchyardResultHandler.Outcome, encoding: ArgumentEncoding) {
        guard let replyTo = item.envelope.replyTo else { return }
        let (name, body) = encodeReply(outcome, encoding: encoding)
        publishReply(item, to: replyTo, outcome: name, body: body, encoding: encoding)
    }

    /// Publishes a reply on the transport the call came from.
    private func publishReply(_ item: Inbound, to channel: String, outcome: String, body: [UInt8], encoding: ArgumentEncoding) {
        publishReply(
            on: item.transport, to: channel, correlationID: item.envelope.id, target: item.envelope.target.name,
            outcome: outcome, body: body, encoding: encoding, deadlineNanos: item.envelope.deadlineNanos, form: item.form)
    }

    /// Publishes a reply to the call `correlationID` (for `target`) on `channel` of `transport`, in
    /// `form`, the call's. With the caller's `deadlineNanos` the reply expires then and is dropped,
    /// not dead-lettered: nobody waits for it any more.
    func publishReply(
        on transport: Transport, to channel: String, correlationID: String, target: String,
        outcome: String, body: [UInt8], encoding: ArgumentEncoding, deadlineNanos: Int64, form: Envelope.Form
    ) {
        let reply = replyMessage(
            to: channel, correlationID: correlationID, target: target, outcome: outcome, body: body,
            encoding: encoding, deadlineNanos: deadlineNanos, form: form)
        do throws(TransportError) {
            try transport.client.publish(reply)
        } catch {
            logger.error(
                "cannot send a reply; the caller will time out",
                metadata: [
                    "target": "\(target)", "reply_to": "\(channel)", "error": "\(error.message)",
                ])
        }
    }

    /// The reply to the call `correlationID` (for `target`) as a message on `channel`, in `form`
    /// (the call's; ``Reply`` writes it). One over the limits becomes an error reply saying so.
    func replyMessage(
        to channel: String, correlationID: String, target: String, outcome: String, body: [UInt8],
        encoding: ArgumentEncoding, deadlineNanos: Int64, form: Envelope.Form
    ) -> Message {
        let id = EnvelopeID.make()
        func message(_ outcome: String, _ body: [UInt8]) -> Message {
            Reply(correlationID: correlationID, outcome: outcome, body: body, encoding: encoding)
                .message(id: id, channel: channel, deadlineNanos: deadlineNanos, form: form)
        }
        var reply = message(outcome, body)
        if let violation = config.limits.violation(of: reply, keyPrefix: "limits.") {
            // Too large to send: the caller gets the reason instead of a timeout.
            let error = SwitchyardError.limitExceeded(target: target, reason: "the reply: \(violation)")
            let (errorOutcome, errorBody) = encodeReply(.error(error), encoding: encoding)
            reply = message(errorOutcome, errorBody)
        }
        return reply
    }
}
