import CSwitchyard
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Identifies one delivery within a transport instance (`sy_delivery_id`); never 0.
public typealias DeliveryID = UInt64
/// Identifies one subscription within a transport instance (`sy_subscription_id`); never 0.
public typealias SubscriptionID = UInt64

/// Receives deliveries from a transport: called with the delivery's id and a view of its message,
/// valid only during the call (``MessageView/copy()`` keeps it). Return `.ok` to take the delivery
/// (and settle it exactly once, later or right away), anything else to refuse it (the transport
/// then releases it). Called on the transport's threads.
public typealias DeliveryHandler = @Sendable (DeliveryID, MessageView) -> StatusCode

/// Receives a batch of deliveries (ABI 1.3 `deliver_batch`): the deliveries and views of their
/// messages, valid only during the call. Returns how many, from the first, it took (and will
/// settle); the transport releases the rest and offers them again in order.
public typealias BatchDeliveryHandler = @Sendable (_ deliveries: UnsafeBufferPointer<DeliveryID>, _ messages: [MessageView]) -> Int

/// Calls one transport instance through its plugin's C function table.
///
/// The host uses it to drive the transports it created; a decorator plugin uses it to drive its
/// inner transport. It does not own the instance: whoever created the instance destroys it (see
/// ``destroy()``). It keeps the subscriber contexts it hands out alive until their subscription
/// ends, as the ABI requires.
public final class TransportClient: @unchecked Sendable {
    // @unchecked: the stored pointers are immutable and the plugin functions are thread-safe by
    // the ABI's contract; the only mutable state is behind a Mutex.

    /// The plugin's validated descriptor: static for the life of the process, except for a
    /// client of a decorator's inner transport made from an older host's shorter descriptor,
    /// whose zeroed full-size copy lives as long as this client (keep the client, not the pointer).
    public let descriptor: UnsafePointer<sy_plugin_descriptor>
    /// The plugin's opaque instance pointer.
    public let instance: UnsafeMutableRawPointer
    private let subscribers = Guarded<[SubscriptionID: Unmanaged<SubscriberBox>]>([:])
    /// False once ``destroy()`` began: later calls fail with `.closed` instead of touching freed
    /// memory.
    private let alive = Atomic<Bool>(true)
    /// Calls into the plugin that have passed the `alive` check and not returned: ``destroy()``
    /// waits for them, so that no call can run on a destroyed instance (the ABI: the host calls
    /// `destroy` after every other call has returned). A check of `alive` alone left a window
    /// between the check and the call.
    private let inFlight = Atomic<Int>(0)
    /// Whether the plugin's `destroy` has run (at most once).
    private let destroyed = Guarded<Bool>(false)

    /// Counts a call in; false, counting nothing, once the instance is being destroyed. Both
    /// sides are sequentially consistent (a store-load pair, as in Dekker's algorithm): either
    /// ``destroy()`` sees this call counted, or this call sees `alive` false.
    @inline(__always)
    private func enterIfAlive() -> Bool {
        inFlight.wrappingAdd(1, ordering: .sequentiallyConsistent)
        if alive.load(ordering: .sequentiallyConsistent) { return true }
        leave()
        return false
    }

    /// ``enterIfAlive()`` for a call that fails with `.closed` on a destroyed instance. Pair each
    /// with ``leave()`` (`defer`).
    @inline(__always)
    private func enter() throws(TransportError) {
        if !enterIfAlive() { throw TransportError(.closed, "the transport instance was destroyed") }
    }

    @inline(__always)
    private func leave() { inFlight.wrappingSubtract(1, ordering: .releasing) }

    /// Who hears of calls into the plugin that should return promptly and did not.
    private let watch: SlowCallWatch?

    /// Wraps an instance created by `descriptor`'s `create`. The descriptor must have passed the
    /// loader's validation: every required function is present. With `watch`, every call that
    /// must return promptly (all but `drain`) is timed, and one slower than its threshold reported.
    /// For a decorator, `inner` is its inner transport's client: the decorator's `publish_async`
    /// is used only where the inner one publishes without blocking too (see
    /// ``publishesAsynchronously``).
    public init(
        descriptor: UnsafePointer<sy_plugin_descriptor>, instance: UnsafeMutableRawPointer, watch: SlowCallWatch? = nil,
        inner: TransportClient? = nil
    ) {
        self.descriptor = descriptor
        self.instance = instance
        self.watch = watch
        publishesAsynchronously = descriptor.pointee.publish_async != nil && (inner?.publishesAsynchronously ?? true)
        let declared = Capabilities(rawValue: descriptor.pointee.capabilities)
        instanceCapabilities = descriptor.pointee.instance_capabilities.map { declared.intersection(Capabilities(rawValue: $0(instance))) } ?? declared
    }

    /// What this instance keeps as configured (ABI 1.8 `instance_capabilities`, asked once, here):
    /// its plugin's capabilities less those its config turned off — the bundled `queue` without a
    /// `path` is not `durable`. All the plugin's capabilities where the plugin does not say (before
    /// 1.8); never more.
    public let instanceCapabilities: Capabilities

    /// Runs one call into the plugin, timed when a watch is set.
    @inline(__always)
    private func call(_ function: StaticString, _ body: (UnsafeMutablePointer<sy_error>) -> sy_status) throws(TransportError) {
        guard let watch else { return try TransportError.check(body) }
        let started = watch.now()
        defer {
            let took = watch.now() - started
            if took >= watch.thresholdNanos { watch.report("\(function)", took) }
        }
        try TransportError.check(body)
    }

    /// A client for the inner transport a decorator received at creation. The descriptor is the
    /// host's copy of the inner plugin's, at the host's ABI minor: from an older host it is
    /// shorter than this build's, and the fields past its `struct_size` (a later minor's
    /// functions) are read as NULL from a zeroed copy, never read past its end. Nil without a
    /// plugin or instance, or when the descriptor is smaller than ABI 1.0's.
    public convenience init?(_ ref: sy_transport_ref) {
        guard let plugin = ref.plugin, let instance = ref.instance else { return nil }
        let size = Int(UnsafeRawPointer(plugin).load(as: UInt32.self))
        guard size >= SizedStruct.descriptorV1_0 else { return nil }
        guard size < MemoryLayout<sy_plugin_descriptor>.size else {
            self.init(descriptor: plugin, instance: instance)
            return
        }
        let copy = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<sy_plugin_descriptor>.size, alignment: MemoryLayout<sy_plugin_descriptor>.alignment)
        copy.initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<sy_plugin_descriptor>.size)
        copy.copyMemory(from: plugin, byteCount: size)
        self.init(descriptor: UnsafePointer(copy.assumingMemoryBound(to: sy_plugin_descriptor.self)), instance: instance)
        ownedDescriptor = copy
    }

    /// The zeroed, full-size copy of a shorter descriptor this client made, freed with it.
    private var ownedDescriptor: UnsafeMutableRawPointer?

    deinit { ownedDescriptor?.deallocate() }

    /// Publishes one message; returns once the transport has accepted it.
    public func publish(_ message: Message) throws(TransportError) {
        try message.withCMessage { (cMessage) throws(TransportError) in
            try publish(cMessage)
        }
    }

    /// Publishes a message already in C form (borrowed for the call).
    public func publish(_ message: UnsafePointer<sy_message>) throws(TransportError) {
        try enter()
        defer { leave() }
        let publish = descriptor.pointee.publish!
        try call("publish") { publish(instance, message, $0) }
    }

    /// The plugin's ABI minor, from its descriptor.
    public var abiMinor: UInt16 { descriptor.pointee.abi_minor }

    /// The `sy_message` size the plugin reads in arrays: before ABI 1.3 a plugin walks a
    /// `publish_batch` array by its own `sizeof(sy_message)`, the 1.0 size.
    public var messageArrayStride: Int { abiMinor >= 3 ? MemoryLayout<sy_message>.size : SizedStruct.messageV1_0 }

    /// Publishes messages all or nothing: one call (and, durably, one commit) when the plugin has
    /// `publish_batch` (ABI 1.1); one publish each otherwise, stopping at the first failure (the
    /// messages before it stay published).
    public func publish(batch: [Message]) throws(TransportError) {
        try enter()
        defer { leave() }
        guard let publishBatch = descriptor.pointee.publish_batch else {
            for message in batch { try publish(message) }
            return
        }
        try batch.withCMessages(structSize: messageArrayStride) { (messages, count) throws(TransportError) in
            try call("publish_batch") { publishBatch(instance, messages, count, $0) }
        }
    }

    /// Publishes a batch already in C form, as ``publish(batch:)`` does: `count` messages from
    /// `first`, strided by their `struct_size` (borrowed for the call). A batch laid out larger
    /// than an older plugin reads is laid out again at its size.
    public func publish(batch first: UnsafePointer<sy_message>, count: Int) throws(TransportError) {
        try enter()
        defer { leave() }
        guard count > 0 else { return }
        guard let publishBatch = descriptor.pointee.publish_batch else {
            for index in 0..<count { try publish(SizedStruct.element(first, index)) }
            return
        }
        if Int(first.pointee.struct_size) != messageArrayStride && abiMinor < 3 {
            var copies: [Message] = []
            for index in 0..<count { copies.append(try MessageView(validating: SizedStruct.element(first, index)).copy()) }
            return try publish(batch: copies)
        }
        try call("publish_batch") { publishBatch(instance, first, count, $0) }
    }

    /// Whether the instance publishes without blocking the caller (ABI 1.7 `publish_async`): its
    /// plugin offers `publish_async` and, for a decorator created with its inner client, so does
    /// every transport under it (a decorator passes the publish on; over an inner transport
    /// without one it would have to run the inner's blocking publish on threads of its own, and
    /// publishing through `publish_batch` here costs less).
    public let publishesAsynchronously: Bool

    /// Publishes messages all or nothing without waiting for them to be stored: `done` is called
    /// exactly once with nil once they are, or with the error that stored none — on any thread,
    /// possibly before this returns; it must return promptly. Through `publish_async` (ABI 1.7)
    /// where ``publishesAsynchronously``; otherwise through ``publish(batch:)`` (one message:
    /// ``publish(_:)-(Message)``) on this thread, then `done` (check ``publishesAsynchronously``
    /// before calling it from a thread that must not block).
    public func publish(_ messages: [Message], done: @escaping @Sendable (TransportError?) -> Void) {
        publish(messages.count == 1 ? .one(messages[0]) : .many(messages), PublishCompletion(done))
    }

    /// Publishes one message (a call's) as the batch form above does, lent from the stack without
    /// an array made for it.
    public func publish(_ message: Message, done: @escaping @Sendable (TransportError?) -> Void) {
        publish(.one(message), PublishCompletion(done))
    }

    /// What one publish sends: one message — a call's, the usual one, lent from the stack with no
    /// array made for it — or several.
    private enum Outgoing {
        case one(Message)
        case many([Message])
    }

    private func publish(_ outgoing: Outgoing, _ completion: PublishCompletion) {
        let empty = if case .many(let messages) = outgoing { messages.isEmpty } else { false }
        guard !empty, publishesAsynchronously, let publishAsync = descriptor.pointee.publish_async, enterIfAlive() else {
            do throws(TransportError) {
                switch outgoing {
                case .one(let message): try publish(message)
                case .many(let messages): try publish(batch: messages)
                }
                completion.tell(nil)
            } catch {
                completion.tell(error)
            }
            return
        }
        defer { leave() }
        let context = Unmanaged.passRetained(completion).toOpaque()
        // Timed like every call that must return promptly: a plugin that waits in it is reported.
        let started = watch?.now()
        switch outgoing {
        case .one(let message):
            message.withCMessage(structSize: messageArrayStride) { publishAsync(instance, $0, 1, PublishCompletion.tell, context) }
        case .many(let messages):
            messages.withCMessages(structSize: messageArrayStride) { messages, count in
                publishAsync(instance, messages, count, PublishCompletion.tell, context)
            }
        }
        if let watch, let started, watch.now() - started >= watch.thresholdNanos { watch.report("publish_async", watch.now() - started) }
    }

    /// ``publish(_:done:)`` for a caller that awaits the outcome: suspends the task, not its
    /// thread, until the message is stored.
    public func publishAsync(_ message: Message) async throws(TransportError) {
        // The continuation is the completion's own: no closure allocated to resume it.
        let outcome: TransportError? = await withUnsafeContinuation { continuation in
            publish(.one(message), PublishCompletion(continuation))
        }
        if let outcome { throw outcome }
    }

    /// Subscribes `handler` to a channel. The handler runs on the transport's threads. The
    /// subscriber offers `deliver_batch` (ABI 1.3): a plugin that uses it hands several messages
    /// across in one call, which go to `batchHandler` when given, else to `handler` one by one.
    public func subscribe(
        _ options: SubscribeOptions, handler: @escaping DeliveryHandler,
        batchHandler: BatchDeliveryHandler? = nil
    ) throws(TransportError) -> SubscriptionID {
        try enter()
        defer { leave() }
        let box = Unmanaged.passRetained(SubscriberBox(client: self, handler: handler, batchHandler: batchHandler))
        var subscriber = sy_subscriber(
            struct_size: UInt32(MemoryLayout<sy_subscriber>.size), context: box.toOpaque(),
            deliver: SubscriberBox.deliver, deliver_batch: SubscriberBox.deliverBatch)
        var id: SubscriptionID = 0
        do {
            try options.withCOptions { (cOptions) throws(TransportError) in
                let subscribe = descriptor.pointee.subscribe!
                try call("subscribe") { subscribe(instance, cOptions, &subscriber, &id, $0) }
            }
        } catch {
            box.release()
            throw error
        }
        subscribers.withLock { $0[id] = box }
        return id
    }

    /// Subscribes a subscriber that already exists in C form (a decorator handing its caller's
    /// subscription on to its inner transport). The caller keeps `subscriber.context` alive until
    /// the subscription ends.
    public func subscribe(_ options: SubscribeOptions, passing subscriber: sy_subscriber) throws(TransportError) -> SubscriptionID {
        try enter()
        defer { leave() }
        var subscriber = subscriber
        var id: SubscriptionID = 0
        try options.withCOptions { (cOptions) throws(TransportError) in
            let subscribe = descriptor.pointee.subscribe!
            try call("subscribe") { subscribe(instance, cOptions, &subscriber, &id, $0) }
        }
        return id
    }

    /// Ends a subscription. Once it returns no delivery for it is running; its unsettled
    /// deliveries are released to the other members of the group.
    public func unsubscribe(_ id: SubscriptionID) throws(TransportError) {
        try enter()
        defer { leave() }
        let unsubscribe = descriptor.pointee.unsubscribe!
        try call("unsubscribe") { unsubscribe(instance, id, $0) }
        subscribers.withLock { $0.removeValue(forKey: id) }?.release()
    }

    /// Settles one delivery, exactly once.
    public func settle(_ delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {
        try enter()
        defer { leave() }
        let settle = descriptor.pointee.settle!
        try settlement.withCSettlement { (cSettlement) throws(TransportError) in
            try call("settle") { settle(instance, delivery, cSettlement, $0) }
        }
    }

    /// Settles several deliveries: one call when the plugin has `settle_batch` (ABI 1.3), one
    /// `settle` each otherwise. Each is settled independently; returns each one's outcome, in
    /// order (`nil`: settled). To settle a whole batch the same way (acknowledge it), the other
    /// ``settle(batch:_:)`` costs less.
    @discardableResult
    public func settle(batch: [(DeliveryID, Settlement)]) throws(TransportError) -> [TransportError?] {
        try enter()
        defer { leave() }
        guard !batch.isEmpty else { return [] }
        guard let settleBatch = descriptor.pointee.settle_batch, batch.count > 1 else {
            return batch.map { delivery, settlement in
                do throws(TransportError) { try settle(delivery, settlement); return nil } catch { return error }
            }
        }
        return withUnsafeTemporaryAllocation(of: DeliveryID.self, capacity: batch.count) { deliveries in
            for index in batch.indices { deliveries.initializeElement(at: index, to: batch[index].0) }
            return Settlement.withCSettlements(batch.lazy.map(\.1)) { settlements in
                settle(batch.count, deliveries.baseAddress!, settlements, through: settleBatch)
            }
        }
    }

    /// Settles every delivery in `deliveries` the same way — a whole batch acknowledged, usually:
    /// one `settle_batch` call when the plugin has it (ABI 1.3), one `settle` each otherwise. Each
    /// is settled independently; returns each one's outcome, in order (`nil`: settled).
    @discardableResult
    public func settle(batch deliveries: some Collection<DeliveryID>, _ settlement: Settlement) throws(TransportError) -> [TransportError?] {
        try enter()
        defer { leave() }
        guard !deliveries.isEmpty else { return [] }
        guard let settleBatch = descriptor.pointee.settle_batch, deliveries.count > 1 else {
            return deliveries.map { delivery in
                do throws(TransportError) { try settle(delivery, settlement); return nil } catch { return error }
            }
        }
        let count = deliveries.count
        return settlement.withCSettlement { one in
            withUnsafeTemporaryAllocation(of: sy_settlement.self, capacity: count) { settlements in
                settlements.initialize(repeating: one.pointee)  // the reason's bytes are shared, not copied
                let settled = deliveries.withContiguousStorageIfAvailable { ids in
                    settle(count, ids.baseAddress!, settlements.baseAddress!, through: settleBatch)
                }
                return settled
                    ?? Array(deliveries).withUnsafeBufferPointer { ids in
                        settle(count, ids.baseAddress!, settlements.baseAddress!, through: settleBatch)
                    }
            }
        }
    }

    /// One `settle_batch` call for `count` deliveries; each one's outcome, in order.
    private func settle(
        _ count: Int, _ deliveries: UnsafePointer<DeliveryID>, _ settlements: UnsafePointer<sy_settlement>,
        through settleBatch:
            @convention(c) (
                UnsafeMutableRawPointer?, UnsafePointer<sy_delivery_id>?, UnsafePointer<sy_settlement>?, Int, UnsafeMutablePointer<sy_status>?,
                UnsafeMutablePointer<sy_error>?
            ) -> sy_status
    ) -> [TransportError?] {
        perDelivery(count, "settle_batch") { statuses, err in settleBatch(instance, deliveries, settlements, count, statuses, err) }
    }

    /// Makes a call that reports a status per delivery (`settle_batch`, `extend`) and returns each
    /// one's outcome, in order (`nil`: succeeded).
    private func perDelivery(
        _ count: Int, _ function: StaticString, _ body: (UnsafeMutablePointer<sy_status>, UnsafeMutablePointer<sy_error>) -> sy_status
    ) -> [TransportError?] {
        withUnsafeTemporaryAllocation(of: sy_status.self, capacity: count) { statuses in
            statuses.initialize(repeating: SY_OK)
            var firstError: TransportError?
            do throws(TransportError) {
                try call(function) { err in body(statuses.baseAddress!, err) }
            } catch {
                firstError = error
            }
            let anyFailed = statuses.contains(where: { $0 != SY_OK })
            if let firstError, !anyFailed {
                // Failed without a status for any delivery (a NULL argument, a plugin that failed
                // as a whole): nothing says which succeeded, so none is reported so.
                return Array(repeating: firstError, count: count)
            }
            var results = [TransportError?].noErrors(count: count)
            // All succeeded, the usual case: nothing more to read.
            guard anyFailed else { return results }
            for index in 0..<count where statuses[index] != SY_OK {
                let code = StatusCode(rawValue: statuses[index])
                results[index] = firstError?.code == code ? firstError : TransportError(code, "\(function): \(code)")
            }
            return results
        }
    }

    /// Whether the plugin can extend leases (ABI 1.6 `extend`).
    public var extendsLeases: Bool { descriptor.pointee.extend != nil }

    /// How long a delivery's lease lasts, in ns, for a subscription without a visibility timeout
    /// of its own (0: deliveries have no time limit); nil when the plugin cannot extend leases.
    public func leaseNanos() throws(TransportError) -> Int64? {
        try enter()
        defer { leave() }
        guard let extend = descriptor.pointee.extend else { return nil }
        var lease: Int64 = 0
        try call("extend") { extend(instance, nil, 0, nil, &lease, $0) }
        return lease
    }

    /// Extends the leases of `deliveries` (ABI 1.6 `extend`): each starts again now, as long as
    /// it was handed out with. Returns each one's outcome, in order (`nil`: extended;
    /// `.notFound`: unknown, settled or released). `.unsupported` for each when the plugin
    /// cannot extend leases.
    public func extend(_ deliveries: [DeliveryID]) throws(TransportError) -> [TransportError?] {
        try enter()
        defer { leave() }
        guard !deliveries.isEmpty else { return [] }
        guard let extend = descriptor.pointee.extend else {
            return deliveries.map { _ in TransportError(.unsupported, "extend: the plugin cannot extend leases (ABI 1.6)") }
        }
        return deliveries.withUnsafeBufferPointer { ids in
            perDelivery(ids.count, "extend") { statuses, err in extend(instance, ids.baseAddress, ids.count, statuses, nil, err) }
        }
    }

    /// Publishes `messages` and settles `delivery` as one unit: one `publish_and_settle` call
    /// (ABI 1.3; one commit on a durable transport, both or neither) when the plugin has it;
    /// otherwise `publish(batch:)`, then `settle` (the messages may then be stored and the
    /// settlement fail).
    public func publish(_ messages: [Message], settling delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {
        try enter()
        defer { leave() }
        guard let publishAndSettle = descriptor.pointee.publish_and_settle else {
            if !messages.isEmpty { try publish(batch: messages) }
            return try settle(delivery, settlement)
        }
        try messages.withCMessages { (first, count) throws(TransportError) in
            try settlement.withCSettlement { (cSettlement) throws(TransportError) in
                try call("publish_and_settle") { publishAndSettle(instance, first, count, delivery, cSettlement, $0) }
            }
        }
    }

    /// ``publish(_:settling:_:)`` for one message, laid out for C without an array.
    public func publish(_ message: Message, settling delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {
        try enter()
        defer { leave() }
        guard let publishAndSettle = descriptor.pointee.publish_and_settle else {
            try publish(message)
            return try settle(delivery, settlement)
        }
        try message.withCMessage { (first) throws(TransportError) in
            try settlement.withCSettlement { (cSettlement) throws(TransportError) in
                try call("publish_and_settle") { publishAndSettle(instance, first, 1, delivery, cSettlement, $0) }
            }
        }
    }

    /// Drains: no new deliveries or publishes; waits (blocking this thread) for settlements until
    /// the monotonic clock passes `deadlineNanos`, then releases the rest. A no-op for plugins
    /// without `drain`.
    public func drain(deadlineNanos: Int64) throws(TransportError) {
        try enter()
        defer { leave() }
        guard let drain = descriptor.pointee.drain else { return }
        try TransportError.check { drain(instance, deadlineNanos, $0) }
    }

    /// The instance's counters, or nil when the plugin reports none.
    public func stats() throws(TransportError) -> TransportStats? {
        try enter()
        defer { leave() }
        guard let stats = descriptor.pointee.stats else { return nil }
        var out = sy_stats()
        out.struct_size = UInt32(MemoryLayout<sy_stats>.size)
        try call("stats") { stats(instance, &out, $0) }
        return TransportStats(copying: out)
    }

    /// What the instance holds per channel and subscriber group (ABI 1.9 `channel_stats`), sorted
    /// by channel, then group; nil when the plugin does not report channels (no `channel_stats`, or
    /// it answers `unsupported`: a decorator over a transport that reports none).
    public func channelStats() throws(TransportError) -> [ChannelStats]? {
        try enter()
        defer { leave() }
        guard let channelStats = descriptor.pointee.channel_stats else { return nil }
        final class Collected {
            var stats: [ChannelStats] = []
            var malformed = 0
            /// What the first malformed report said its size was (nil: a NULL pointer).
            var firstMalformedSize: UInt32?
        }
        let collected = Collected()
        do throws(TransportError) {
            // Not through `call`: a count of a large store may take seconds, and is no slow plugin.
            try withExtendedLifetime(collected) { () throws(TransportError) in
                try TransportError.check { err in
                    channelStats(
                        instance,
                        { context, stats in
                            let collected = Unmanaged<Collected>.fromOpaque(context!).takeUnretainedValue()
                            if let stats, let one = ChannelStats(reading: stats) {
                                collected.stats.append(one)
                            } else {
                                if collected.malformed == 0 { collected.firstMalformedSize = stats?.pointee.struct_size }
                                collected.malformed += 1
                            }
                        }, Unmanaged.passUnretained(collected).toOpaque(), err)
                }
            }
        } catch  where error.code == .unsupported {
            return nil
        }
        if collected.malformed > 0 {
            throw TransportError(
                .invalidArgument,
                "channel_stats reported \(collected.malformed) channel\(collected.malformed == 1 ? "" : "s") with "
                    + (collected.firstMalformedSize.map { "struct_size \($0)" } ?? "a NULL sy_channel_stats")
                    + ", where it must be at least \(SizedStruct.channelStatsV1_9) (ABI 1.9's sizeof(sy_channel_stats)): fix the plugin"
            )
        }
        return ChannelStats.merged(collected.stats)
    }

    /// Destroys the instance and frees the subscriber contexts. Only the instance's creator calls
    /// this. Calls that start once it has begun fail with `.closed`; calls already running are
    /// waited for, up to `waitNanos` (a `drain` runs until its deadline; a blocked plugin call may
    /// never return). Returns false when some were still running then: the instance is left
    /// undestroyed (its memory and resources are kept, never freed under a running call), and the
    /// caller should report it; calling it again waits again. Once it has returned true, calling
    /// it again does nothing (and returns true).
    @discardableResult
    public func destroy(waitNanos: Int64 = 10_000_000_000) -> Bool {
        alive.store(false, ordering: .sequentiallyConsistent)
        // One destroy at a time; a later one after a wait that ran out waits again.
        return destroyed.withLock { destroyed in
            if destroyed { return true }
            if inFlight.load(ordering: .sequentiallyConsistent) != 0 {
                let (sum, overflow) = monotonicNanoseconds().addingReportingOverflow(max(0, waitNanos))
                let deadline = overflow ? Int64.max : sum
                var pause: UInt32 = 50
                while inFlight.load(ordering: .sequentiallyConsistent) != 0 {
                    if monotonicNanoseconds() >= deadline { return false }
                    usleep(pause)
                    pause = min(pause * 2, 10_000)
                }
            }
            descriptor.pointee.destroy!(instance)
            destroyed = true
            let boxes = subscribers.withLock { all in
                defer { all.removeAll() }
                return Array(all.values)
            }
            for box in boxes { box.release() }
            return true
        }
    }
}

/// Reports calls into a plugin that took longer than they should: every ABI function but `drain`
/// must return promptly, and one that blocks (a plugin waiting on a network inside `publish`)
/// holds up the host's threads. The host sets one per transport; ``report`` gets the ABI
/// function's name and how long the call took.
public struct SlowCallWatch: Sendable {
    /// Calls that take at least this long are reported.
    public let thresholdNanos: Int64
    /// Called on the calling thread, after the call returned.
    public let report: @Sendable (_ function: String, _ tookNanos: Int64) -> Void

    /// Whether calls are timed on the coarse clock (see ``now()``).
    public let coarse: Bool

    /// A watch reporting calls of `thresholdNanos` or longer to `report`.
    public init(thresholdNanos: Int64, report: @escaping @Sendable (_ function: String, _ tookNanos: Int64) -> Void) {
        self.thresholdNanos = thresholdNanos
        self.report = report
        // Every publish and settlement is timed: two clock reads, 25 ns each on the precise clock
        // here and 6 ns on the coarse one, four per typed call. The coarse clock is exact enough
        // where the threshold is at least ten of its ticks (the default is a second).
        coarse = coarseResolutionNanos > 0 && thresholdNanos >= 10 * coarseResolutionNanos
    }

    /// Now, on the clock the watch times calls with: the coarse monotonic clock when its ticks
    /// are a tenth of the threshold or less, the precise one otherwise.
    @inline(__always)
    public func now() -> Int64 { coarse ? coarseMonotonicNanoseconds() : monotonicNanoseconds() }
}

/// The context behind one `sy_subscriber`: turns C deliveries into handler calls.
final class SubscriberBox: Sendable {
    // Strong on purpose: the client keeps its boxes until the subscription ends, and a box must
    // never outlive its client. The cycle is broken by unsubscribe() and destroy().
    let client: TransportClient
    let handler: DeliveryHandler
    let batchHandler: BatchDeliveryHandler?

    init(client: TransportClient, handler: @escaping DeliveryHandler, batchHandler: BatchDeliveryHandler?) {
        self.client = client
        self.handler = handler
        self.batchHandler = batchHandler
    }

    /// The `sy_subscriber.deliver_batch` function (ABI 1.3) of every subscription: to the batch
    /// handler, or to the handler one message at a time until one is refused.
    /// The handler gets the messages before the first malformed one; when it takes them all, the
    /// malformed one is dead-lettered (as ``deliver`` does) and counts as taken, and the rest are
    /// left to the plugin to offer again (the prefix rule keeps this simple and in order).
    static let deliverBatch: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<sy_delivery_id>?, UnsafePointer<sy_message>?, Int) -> Int = {
        context, deliveries, messages, count in
        guard let context, let deliveries, let messages, count > 0 else { return 0 }
        let box = Unmanaged<SubscriberBox>.fromOpaque(context).takeUnretainedValue()
        var views: [MessageView] = []
        views.reserveCapacity(count)
        var malformed: TransportError?
        do throws(TransportError) {
            // A plugin that breaks the stride rule: its first message is dead-lettered with why.
            try SizedStruct.checkStride(messages, count: count, minimum: SizedStruct.messageV1_0, "deliver_batch")
            for index in 0..<count { views.append(try MessageView(validating: SizedStruct.element(messages, index))) }
        } catch {
            malformed = error
        }
        let accepted: Int
        if let batchHandler = box.batchHandler {
            accepted = views.isEmpty ? 0 : batchHandler(UnsafeBufferPointer(start: deliveries, count: views.count), views)
        } else {
            accepted = views.indices.first { box.handler(deliveries[$0], views[$0]) != .ok } ?? views.count
        }
        guard accepted == views.count, let malformed else { return accepted }
        try? box.client.settle(deliveries[accepted], .deadLetter(reason: "malformed message from transport: \(malformed.message)"))
        return accepted + 1
    }

    /// The `sy_subscriber.deliver` function for every subscription made through a TransportClient.
    static let deliver: @convention(c) (UnsafeMutableRawPointer?, sy_delivery_id, UnsafePointer<sy_message>?) -> Int32 = {
        context, delivery, cMessage in
        guard let context else { return SY_ERR_INVALID_ARGUMENT }
        let box = Unmanaged<SubscriberBox>.fromOpaque(context).takeUnretainedValue()
        guard let cMessage else { return SY_ERR_INVALID_ARGUMENT }
        do throws(TransportError) {
            let message = try MessageView(validating: cMessage)
            return box.handler(delivery, message).rawValue
        } catch {
            // A malformed message must not come round again and again: dead-letter it with the
            // reason rather than refuse it (which would release it for immediate redelivery).
            try? box.client.settle(delivery, .deadLetter(reason: "malformed message from transport: \(error.message)"))
            return SY_OK
        }
    }
}

/// The `done` of one `publish_async`, kept alive (retained once) until the plugin calls it.
private final class PublishCompletion: Sendable {
    /// Who is told: a callback, or an awaiting task (resumed directly, without a closure).
    private enum Told: Sendable {
        case callback(@Sendable (TransportError?) -> Void)
        case task(UnsafeContinuation<TransportError?, Never>)
    }
    private let told: Told
    init(_ done: @escaping @Sendable (TransportError?) -> Void) { told = .callback(done) }
    init(_ continuation: UnsafeContinuation<TransportError?, Never>) { told = .task(continuation) }

    /// Tells the outcome; exactly once.
    func tell(_ outcome: TransportError?) {
        switch told {
        case .callback(let done): done(outcome)
        case .task(let continuation): continuation.resume(returning: outcome)
        }
    }

    /// The `sy_publish_done_fn` handed to the plugin, with the retained completion as its context.
    static let tell: @convention(c) (UnsafeMutableRawPointer?, sy_status, UnsafePointer<sy_error>?) -> Void = { context, status, err in
        guard let context else { return }
        let completion = Unmanaged<PublishCompletion>.fromOpaque(context).takeRetainedValue()
        guard status != SY_OK else { return completion.tell(nil) }
        completion.tell(err.map { TransportError(status: status, error: $0.pointee) } ?? TransportError(StatusCode(rawValue: status), "publish_async failed"))
    }
}
