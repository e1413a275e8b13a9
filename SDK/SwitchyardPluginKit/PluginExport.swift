import CSwitchyard
import SwitchyardABI

/// Turns a ``TransportPlugin`` type into the C descriptor the host loads.
///
/// A plugin exports it with one public entry function (it must be `public`, or `dlsym` cannot
/// find it):
///
/// ```swift
/// @c(switchyard_plugin_entry)
/// public func switchyardPluginEntry(_ hostABIMajor: UInt32) -> UnsafePointer<sy_plugin_descriptor>? {
///     PluginExport.descriptor(for: MyTransport.self, hostABIMajor: hostABIMajor)
/// }
/// ```
///
/// The SDK is linked into every plugin image separately, so each image has its own registration;
/// one image exports one plugin.
public enum PluginExport {
    /// The descriptor for `plugin`, built once and kept forever (plugins are never unloaded), or
    /// nil when the host speaks another ABI major.
    public static func descriptor<P: TransportPlugin>(for plugin: P.Type, hostABIMajor: UInt32) -> UnsafePointer<sy_plugin_descriptor>? {
        guard hostABIMajor == UInt32(SY_ABI_MAJOR) else { return nil }
        return registration.withLock { registered in
            if let registered { return registered.descriptor }
            let made = Registration(
                factory: { context throws(TransportError) in try P(context: context) },
                descriptor: makeDescriptor(P.info, create: Thunks.create))
            registered = made
            return made.descriptor
        }
    }

    /// Presents a transport object made in this process as an ABI instance: a descriptor with the
    /// same functions an exported plugin has (its `create` refuses: the object already exists) and
    /// the instance pointer for it. The host uses it for transports it implements itself, such as
    /// the proxy of a process-isolated plugin, so that everything above the ABI — decorators, the
    /// runtime, the conformance kit — drives them like any loaded plugin.
    ///
    /// The descriptor is never freed (like an exported one); the instance is released by the
    /// descriptor's `destroy`, which calls the object's `shutdown()`.
    public static func inProcess(_ transport: any TransportInstance, info: PluginInfo)
        -> (descriptor: UnsafePointer<sy_plugin_descriptor>, instance: UnsafeMutableRawPointer)
    {
        let descriptor = makeDescriptor(info, create: Thunks.refuseCreate)
        return (descriptor, Unmanaged.passRetained(InstanceBox(transport, declared: info.capabilities)).toOpaque())
    }

    struct Registration: @unchecked Sendable {
        // @unchecked: the descriptor is immutable after creation.
        let factory: @Sendable (TransportContext) throws(TransportError) -> any TransportPlugin
        let descriptor: UnsafePointer<sy_plugin_descriptor>
    }

    static let registration = Guarded<Registration?>(nil)

    private static func makeDescriptor(
        _ info: PluginInfo,
        create: @convention(c) (UnsafePointer<sy_create_args>?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?, UnsafeMutablePointer<sy_error>?) -> Int32
    ) -> UnsafePointer<sy_plugin_descriptor> {
        let descriptor = UnsafeMutablePointer<sy_plugin_descriptor>.allocate(capacity: 1)
        descriptor.initialize(
            to: sy_plugin_descriptor(
                struct_size: UInt32(MemoryLayout<sy_plugin_descriptor>.size),
                abi_major: UInt16(SY_ABI_MAJOR), abi_minor: UInt16(SY_ABI_MINOR),
                name: strdup(info.name), version: strdup(info.version), description: strdup(info.description),
                capabilities: info.capabilities.rawValue,
                create: create, destroy: Thunks.destroy, publish: Thunks.publish,
                subscribe: Thunks.subscribe, unsubscribe: Thunks.unsubscribe, settle: Thunks.settle,
                drain: Thunks.drain, stats: Thunks.stats, publish_batch: Thunks.publishBatch,
                settle_batch: Thunks.settleBatch, publish_and_settle: info.atomicPublishAndSettle ? Thunks.publishAndSettle : nil,
                extend: info.extendsLeases ? Thunks.extend : nil,
                publish_async: info.publishesAsynchronously ? Thunks.publishAsync : nil,
                instance_capabilities: Thunks.instanceCapabilities, channel_stats: Thunks.channelStats))
        return UnsafePointer(descriptor)
    }
}

/// The instance pointer handed to the host: the plugin object plus what it borrowed at creation.
private final class InstanceBox: Sendable {
    let transport: any TransportInstance
    /// What the plugin's descriptor declares: the most `instance_capabilities` may answer.
    let declared: Capabilities
    init(_ transport: any TransportInstance, declared: Capabilities) {
        self.transport = transport
        self.declared = declared
    }

    static func from(_ pointer: UnsafeMutableRawPointer?) -> InstanceBox? {
        pointer.map { Unmanaged<InstanceBox>.fromOpaque($0).takeUnretainedValue() }
    }

    /// Calls `body` with the instance's transport without a retain/release pair: the host
    /// guarantees the instance outlives every call on it, so the reference is safe to borrow.
    /// Used on the per-message paths, where the pair is a measurable share of the cost.
    @inline(__always)
    static func borrow<R>(_ pointer: UnsafeMutableRawPointer, _ body: (any TransportInstance) -> R) -> R {
        Unmanaged<InstanceBox>.fromOpaque(pointer)._withUnsafeGuaranteedRef { body($0.transport) }
    }
}

/// A `publish_async` caller's `done` and its context, called once with the outcome.
private struct PublishDone: @unchecked Sendable {
    // @unchecked: the context is the host's, handed back untouched on whatever thread tells it.
    let done: sy_publish_done_fn
    let context: UnsafeMutableRawPointer?
    init(_ done: sy_publish_done_fn, _ context: UnsafeMutableRawPointer?) {
        self.done = done
        self.context = context
    }
    func callAsFunction(_ error: TransportError?) {
        guard let error else { return done(context, SY_OK, nil) }
        var err = sy_error()
        let status = error.write(to: &err)
        done(context, status, &err)
    }
}

/// Runs `body` and turns its outcome into an ABI status, writing a thrown error into `err`.
private func reporting(to err: UnsafeMutablePointer<sy_error>?, _ body: () throws(TransportError) -> Void) -> Int32 {
    do {
        try body()
        return SY_OK
    } catch {
        return error.write(to: err)
    }
}

/// The C functions of the descriptor. Each one catches every error and reports it through
/// `sy_error`; nothing thrown in Swift crosses the boundary.
private enum Thunks {
    static let create: @convention(c) (UnsafePointer<sy_create_args>?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?, UnsafeMutablePointer<sy_error>?) -> Int32 = {
        args, out, err in
        guard let argsPointer = args, let out, let args = SizedStruct.read(argsPointer, minimum: SizedStruct.createArgsV1_0),
            let host = args.host
        else {
            return TransportError(.invalidArgument, "create: missing or too small arguments").write(to: err)
        }
        // Its 1.0 functions are read without a size check from here on.
        guard Int(host.pointee.struct_size) >= SizedStruct.hostServicesV1_0 else {
            return TransportError(.invalidArgument, "create: sy_host_services is \(host.pointee.struct_size) bytes, smaller than ABI 1.0's \(SizedStruct.hostServicesV1_0)")
                .write(to: err)
        }
        guard let registered = PluginExport.registration.withLock({ $0 }) else {
            return TransportError(.internalError, "create called before the entry point").write(to: err)
        }
        let config = String(args.config_json)
        let context = TransportContext(
            instanceName: String(args.instance_name), configJSON: config.isEmpty ? "{}" : config,
            host: HostServices(host), inner: args.inner.flatMap { TransportClient($0.pointee) })
        return reporting(to: err) { () throws(TransportError) in
            let transport = try registered.factory(context)
            let declared = Capabilities(rawValue: registered.descriptor.pointee.capabilities)
            out.pointee = Unmanaged.passRetained(InstanceBox(transport, declared: declared)).toOpaque()
        }
    }

    /// `create` of an in-process adapter's descriptor: its one instance was made by its owner.
    static let refuseCreate: @convention(c) (UnsafePointer<sy_create_args>?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?, UnsafeMutablePointer<sy_error>?) -> Int32 = {
        _, _, err in
        TransportError(.unsupported, "this transport is implemented by the host; it cannot create instances").write(to: err)
    }

    static let destroy: @convention(c) (UnsafeMutableRawPointer?) -> Void = { instance in
        guard let instance else { return }
        let box = Unmanaged<InstanceBox>.fromOpaque(instance).takeRetainedValue()
        box.transport.shutdown()
    }

    static let publish: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<sy_message>?, UnsafeMutablePointer<sy_error>?) -> Int32 = {
        instance, message, err in
        guard let instance, let message else {
            return TransportError(.invalidArgument, "publish: NULL instance or message").write(to: err)
        }
        return InstanceBox.borrow(instance) { transport in
            reporting(to: err) { () throws(TransportError) in
                try transport.publish(MessageView(validating: message, published: true))
            }
        }
    }

    static let publishBatch: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<sy_message>?, Int, UnsafeMutablePointer<sy_error>?) -> Int32 = {
        instance, messages, count, err in
        guard let instance, messages != nil || count == 0, count >= 0 else {
            return TransportError(.invalidArgument, "publish_batch: NULL instance or messages").write(to: err)
        }
        return InstanceBox.borrow(instance) { transport in
            reporting(to: err) { () throws(TransportError) in
                // Validate every message before storing any: the batch is all or nothing.
                var views: [MessageView] = []
                views.reserveCapacity(count)
                // Strided by struct_size: the host may be of another minor (the ABI's stride rule).
                if count > 1 { try SizedStruct.checkStride(messages!, count: count, minimum: SizedStruct.messageV1_0, "publish_batch") }
                for index in 0..<count { views.append(try MessageView(validating: SizedStruct.element(messages!, index), published: true)) }
                try transport.publish(batch: views)
            }
        }
    }

    static let subscribe:
        @convention(c) (
            UnsafeMutableRawPointer?, UnsafePointer<sy_subscribe_options>?, UnsafePointer<sy_subscriber>?, UnsafeMutablePointer<sy_subscription_id>?,
            UnsafeMutablePointer<sy_error>?
        ) -> Int32 = {
            instance, options, subscriber, out, err in
            guard let box = InstanceBox.from(instance), let options, let subscriber, let out else {
                return TransportError(.invalidArgument, "subscribe: NULL argument").write(to: err)
            }
            guard let handle = Subscriber(subscriber) else {
                return TransportError(.invalidArgument, "subscribe: subscriber has no deliver function or is too small").write(to: err)
            }
            return reporting(to: err) { () throws(TransportError) in
                out.pointee = try box.transport.subscribe(SubscribeOptions(copying: options), handle)
            }
        }

    static let unsubscribe: @convention(c) (UnsafeMutableRawPointer?, sy_subscription_id, UnsafeMutablePointer<sy_error>?) -> Int32 = {
        instance, id, err in
        guard let box = InstanceBox.from(instance) else {
            return TransportError(.invalidArgument, "unsubscribe: NULL instance").write(to: err)
        }
        return reporting(to: err) { () throws(TransportError) in
            try box.transport.unsubscribe(id)
        }
    }

    static let settle: @convention(c) (UnsafeMutableRawPointer?, sy_delivery_id, UnsafePointer<sy_settlement>?, UnsafeMutablePointer<sy_error>?) -> Int32 = {
        instance, delivery, settlement, err in
        guard let instance, let settlement else {
            return TransportError(.invalidArgument, "settle: NULL instance or settlement").write(to: err)
        }
        return InstanceBox.borrow(instance) { transport in
            reporting(to: err) { () throws(TransportError) in
                try transport.settle(delivery, Settlement(copying: settlement))
            }
        }
    }

    static let settleBatch:
        @convention(c) (
            UnsafeMutableRawPointer?, UnsafePointer<sy_delivery_id>?, UnsafePointer<sy_settlement>?, Int, UnsafeMutablePointer<sy_status>?, UnsafeMutablePointer<sy_error>?
        ) -> Int32 = {
            instance, deliveries, settlements, count, statuses, err in
            guard let instance, count >= 0, count == 0 || (deliveries != nil && settlements != nil) else {
                return TransportError(.invalidArgument, "settle_batch: NULL instance, deliveries or settlements").write(to: err)
            }
            guard count > 0 else { return SY_OK }
            do throws(TransportError) {
                try SizedStruct.checkStride(settlements!, count: count, minimum: SizedStruct.settlementV1_0, "settle_batch")
            } catch {
                return report(Array(repeating: error, count: count), count: count, statuses: statuses, err: err)  // none settled
            }
            // A batch of plain acknowledgements, the usual batch: no Settlement values to make.
            // Only from a caller whose elements hold an outcome (the ABI 1.0 size or more); the
            // general path below refuses the others element by element.
            if settlements!.pointee.struct_size >= SizedStruct.settlementV1_0,
                (0..<count).allSatisfy({ SizedStruct.element(settlements!, $0).pointee.outcome == SY_SETTLE_ACK })
            {
                let results = InstanceBox.borrow(instance) { $0.settle(batch: UnsafeBufferPointer(start: deliveries!, count: count), .ack) }
                return report(results, count: count, statuses: statuses, err: err)
            }
            var batch: [(DeliveryID, Settlement)] = []
            batch.reserveCapacity(count)
            var unreadable: [Int: TransportError] = [:]
            for index in 0..<count {
                do throws(TransportError) {
                    batch.append((deliveries![index], try Settlement(copying: SizedStruct.element(settlements!, index))))
                } catch {
                    unreadable[index] = error
                }
            }
            let results = InstanceBox.borrow(instance) { $0.settle(batch: batch) }
            guard !unreadable.isEmpty else { return report(results, count: count, statuses: statuses, err: err) }
            // The unreadable settlements' errors in their places, the plugin's outcomes between.
            var merged = [TransportError?].noErrors(count: count)
            var next = results.makeIterator()
            let short = Self.tooFewOutcomes(results.count, count - unreadable.count)
            for index in 0..<count { merged[index] = unreadable[index] ?? next.next() ?? short }
            return report(merged, count: count, statuses: statuses, err: err)
        }

    /// The outcome of a settlement a plugin's `settle(batch:)` returned none for (it returned
    /// `returned` for `asked`): not settled, as far as anyone can tell, and said so.
    private static func tooFewOutcomes(_ returned: Int, _ asked: Int) -> TransportError {
        TransportError(.internalError, "the plugin's settle(batch:) returned \(returned) outcomes for \(asked) settlements; those without one count as failed")
    }

    /// Writes a batch's outcomes into `statuses` (when given) and the first error into `err`.
    private static func report(
        _ results: [TransportError?], count: Int, statuses: UnsafeMutablePointer<sy_status>?, err: UnsafeMutablePointer<sy_error>?
    ) -> Int32 {
        if results.count < count {
            var padded = results
            padded.append(contentsOf: repeatElement(Optional(tooFewOutcomes(results.count, count)), count: count - results.count))
            return report(padded, count: count, statuses: statuses, err: err)
        }
        var first: Int?  // the first failure's position
        results.withUnsafeBufferPointer { results in
            for index in 0..<count {
                // Read in place: copying each outcome out cost more than the rest of the loop.
                guard results[index] != nil else {
                    statuses?[index] = SY_OK
                    continue
                }
                statuses?[index] = results[index]!.code.rawValue
                if first == nil { first = index }
            }
        }
        return first.map { results[$0]!.write(to: err) } ?? SY_OK
    }

    static let publishAndSettle:
        @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<sy_message>?, Int, sy_delivery_id, UnsafePointer<sy_settlement>?, UnsafeMutablePointer<sy_error>?) -> Int32 = {
            instance, messages, count, delivery, settlement, err in
            guard let instance, let settlement, count >= 0, messages != nil || count == 0 else {
                return TransportError(.invalidArgument, "publish_and_settle: NULL instance, messages or settlement").write(to: err)
            }
            return InstanceBox.borrow(instance) { transport in
                reporting(to: err) { () throws(TransportError) in
                    var views: [MessageView] = []
                    views.reserveCapacity(count)
                    if count > 1 { try SizedStruct.checkStride(messages!, count: count, minimum: SizedStruct.messageV1_0, "publish_and_settle") }
                    for index in 0..<count { views.append(try MessageView(validating: SizedStruct.element(messages!, index), published: true)) }
                    try transport.publish(views, settling: delivery, try Settlement(copying: settlement))
                }
            }
        }

    static let publishAsync: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<sy_message>?, Int, sy_publish_done_fn?, UnsafeMutableRawPointer?) -> Void = {
        instance, messages, count, done, context in
        guard let done else { return }  // nobody to tell: nothing is published
        let tell = PublishDone(done, context)
        guard let instance, let messages, count >= 1 else {
            return tell(TransportError(.invalidArgument, "publish_async: NULL instance or messages, or no message"))
        }
        InstanceBox.borrow(instance) { transport in
            var views: [MessageView] = []
            views.reserveCapacity(count)
            do throws(TransportError) {
                if count > 1 { try SizedStruct.checkStride(messages, count: count, minimum: SizedStruct.messageV1_0, "publish_async") }
                for index in 0..<count { views.append(try MessageView(validating: SizedStruct.element(messages, index), published: true)) }
            } catch {
                return tell(error)
            }
            transport.publish(views) { error in tell(error) }
        }
    }

    static let extend:
        @convention(c) (
            UnsafeMutableRawPointer?, UnsafePointer<sy_delivery_id>?, Int, UnsafeMutablePointer<sy_status>?, UnsafeMutablePointer<Int64>?,
            UnsafeMutablePointer<sy_error>?
        ) -> Int32 = {
            instance, deliveries, count, statuses, leaseNanos, err in
            guard let instance, count >= 0, count == 0 || deliveries != nil else {
                return TransportError(.invalidArgument, "extend: NULL instance or deliveries").write(to: err)
            }
            return InstanceBox.borrow(instance) { transport in
                if let leaseNanos {
                    do throws(TransportError) {
                        leaseNanos.pointee = try transport.leaseNanos
                    } catch {
                        return error.write(to: err)
                    }
                }
                guard count > 0 else { return SY_OK }
                return report(transport.extend(UnsafeBufferPointer(start: deliveries!, count: count)), count: count, statuses: statuses, err: err)
            }
        }

    static let drain: @convention(c) (UnsafeMutableRawPointer?, Int64, UnsafeMutablePointer<sy_error>?) -> Int32 = {
        instance, deadline, err in
        guard let box = InstanceBox.from(instance) else {
            return TransportError(.invalidArgument, "drain: NULL instance").write(to: err)
        }
        return reporting(to: err) { () throws(TransportError) in
            try box.transport.drain(deadlineNanos: deadline)
        }
    }

    static let instanceCapabilities: @convention(c) (UnsafeMutableRawPointer?) -> sy_capabilities = { instance in
        guard let box = InstanceBox.from(instance) else { return 0 }
        return (box.transport.configuredCapabilities ?? box.declared).intersection(box.declared).rawValue
    }

    static let stats: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutablePointer<sy_stats>?, UnsafeMutablePointer<sy_error>?) -> Int32 = {
        instance, out, err in
        guard let box = InstanceBox.from(instance), let out else {
            return TransportError(.invalidArgument, "stats: NULL argument").write(to: err)
        }
        box.transport.stats().write(to: out)
        return SY_OK
    }

    static let channelStats: @convention(c) (UnsafeMutableRawPointer?, sy_channel_stats_fn?, UnsafeMutableRawPointer?, UnsafeMutablePointer<sy_error>?) -> Int32 = {
        instance, each, context, err in
        guard let box = InstanceBox.from(instance), let each else {
            return TransportError(.invalidArgument, "channel_stats: NULL argument").write(to: err)
        }
        return reporting(to: err) { () throws(TransportError) in
            guard let channels = try box.transport.channelStats() else {
                throw TransportError(.unsupported, "channel_stats: this transport does not report its channels")
            }
            for one in channels { one.withCStruct { each(context, $0) } }
        }
    }
}
