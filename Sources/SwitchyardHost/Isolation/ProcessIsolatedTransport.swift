import Foundation
import Logging
import SwitchyardABI
import SwitchyardLoader
import SwitchyardPluginKit
import SwitchyardTransportKit

/// How a transport configured with `isolation: process` runs its plugin in a child process.
public struct ProcessIsolation: Sendable, Hashable {
    /// Longest wait for the child to answer one call (drain: its deadline plus this). A child
    /// that does not answer in time is considered hung: it is killed and restarted.
    public var callTimeoutNanos: Int64
    /// First wait before restarting a child that died; doubles on every failed start.
    public var restartBackoffNanos: Int64
    /// Upper bound of the restart wait.
    public var maxRestartBackoffNanos: Int64
    /// The `switchyard` executable to run as `plugin-host`; nil: `SWITCHYARD_PLUGIN_HOST`, then
    /// `switchyard` next to this executable, next to the plugin file, then on `PATH`.
    public var hostExecutable: String?

    /// Options with the documented defaults: 30 s per call, restarts after 100 ms doubling to 10 s.
    public init(
        callTimeoutNanos: Int64 = 30_000_000_000, restartBackoffNanos: Int64 = 100_000_000,
        maxRestartBackoffNanos: Int64 = 10_000_000_000, hostExecutable: String? = nil
    ) {
        self.callTimeoutNanos = callTimeoutNanos
        self.restartBackoffNanos = restartBackoffNanos
        self.maxRestartBackoffNanos = maxRestartBackoffNanos
        self.hostExecutable = hostExecutable
    }

    /// Finds the plugin host executable for `pluginPath`, or explains where it looked.
    func resolveExecutable(pluginPath: String) throws(TransportError) -> String {
        if let hostExecutable {
            // Configured: that file or an error, never another binary in its place.
            var status = stat()
            guard access(hostExecutable, X_OK) == 0, stat(hostExecutable, &status) == 0, status.st_mode & S_IFMT == S_IFREG else {
                throw TransportError(
                    .config,
                    "isolation.host '\(hostExecutable)' is not an executable file (\(errno == 0 ? "a directory or special file" : String(cString: strerror(errno)))); point it at the 'switchyard' executable, or leave it out to search SWITCHYARD_PLUGIN_HOST, the host's directory, the plugin's and PATH"
                )
            }
            return hostExecutable
        }
        var candidates: [String] = []
        let environment = ProcessInfo.processInfo.environment
        if let fromEnvironment = environment["SWITCHYARD_PLUGIN_HOST"], !fromEnvironment.isEmpty {
            // Set: that file or an error, as isolation.host (skipped, another switchyard ran instead).
            guard access(fromEnvironment, X_OK) == 0 else {
                throw TransportError(
                    .config,
                    "SWITCHYARD_PLUGIN_HOST '\(fromEnvironment)' is not an executable file (\(String(cString: strerror(errno)))); point it at the 'switchyard' executable, or unset it to search the host's directory, the plugin's and PATH"
                )
            }
            return fromEnvironment
        }
        if let directory = SearchDirectory.currentExecutableDirectory() { candidates.append(directory + "/switchyard") }
        candidates.append((pluginPath as NSString).deletingLastPathComponent + "/switchyard")
        for directory in (environment["PATH"] ?? "").split(separator: ":") { candidates.append("\(directory)/switchyard") }
        if let found = candidates.first(where: { access($0, X_OK) == 0 }) { return found }
        throw TransportError(
            .config,
            "isolation: process needs the 'switchyard' executable to run the plugin host; none found (set isolation.host or SWITCHYARD_PLUGIN_HOST; looked at \(candidates.prefix(3).joined(separator: ", ")))"
        )
    }
}

/// A transport whose plugin runs in a child process (`switchyard plugin-host`), driven over a
/// Unix socket with the ABI's semantics: the parent is an ABI instance like any other (see
/// ``Transport/init(name:plugin:configJSON:isolation:logger:)``), so decorators and the runtime
/// use it unchanged.
///
/// When the child crashes, hangs (a call unanswered within the call timeout) or exits, every
/// call waiting on it fails with the reason, deliveries it had handed out can no longer be
/// settled (`.notFound`; a durable transport delivers them again), and a new child is started
/// with backoff and given every live subscription again. Calls made while it restarts wait for
/// it, up to the call timeout.
final class ProcessIsolatedTransport: TransportInstance, @unchecked Sendable {
    // @unchecked: mutable state lives in `state`, guarded by its condition's lock.
    private let name: String
    private let plugin: LoadedPlugin
    private let configJSON: String
    private let options: ProcessIsolation
    private let executable: String
    private let logger: Logger
    /// Told of the dead letters the child's plugin reports.
    private let onDeadLetter: DeadLetterObserver
    /// Records the metrics the child's plugin reports.
    private let onMetric: @Sendable (Int32, String, Double) -> Void

    private struct Subscription {
        var options: SubscribeOptions
        var subscriber: Subscriber
        /// The id in the current child, once subscribed there.
        var childID: SubscriptionID?
        var process: PluginProcess?
    }

    private struct State {
        var current: PluginProcess?
        var closing = false
        var incarnations = 0
        var subscriptions: [SubscriptionID: Subscription] = [:]
        var nextSubscription: SubscriptionID = 1
        /// Deliveries handed to subscribers and not settled yet: the child they came from.
        var deliveries: [DeliveryID: (process: PluginProcess, childID: DeliveryID)] = [:]
        /// What the child's instance keeps as configured, as its `create` answered.
        var instanceCapabilities: Capabilities?
        /// The child's plugin's lease length, once asked (``leaseNanos``).
        var leaseNanos: Int64?
        var nextDelivery: DeliveryID = 1
        var backoffNanos: Int64 = 0
        /// Subscriptions a reader thread is delivering to right now, with the threads (one entry
        /// per call): `unsubscribe` returns only once no other thread is (the ABI: no deliver
        /// call for the subscription runs after it returns, and the caller then frees the
        /// subscriber's context). Its own delivery it does not wait for: that would never end.
        var delivering: [SubscriptionID: [pthread_t]] = [:]
    }

    /// `plugins.slow_call_warning`, which the child applies to its calls into the plugin.
    private let slowCallWarningNanos: Int64
    private let lock = NSCondition()
    private var state = State()

    /// Starts the first child and creates the instance in it; throws what `create` reports
    /// (a config error names the key) or why the child could not start.
    init(
        name: String, plugin: LoadedPlugin, configJSON: String, options: ProcessIsolation, slowCallWarningNanos: Int64, logger: Logger,
        onDeadLetter: @escaping DeadLetterObserver,
        onMetric: @escaping @Sendable (Int32, String, Double) -> Void
    ) throws(TransportError) {
        self.name = name
        self.onDeadLetter = onDeadLetter
        self.onMetric = onMetric
        self.plugin = plugin
        self.configJSON = configJSON
        self.options = options
        self.slowCallWarningNanos = slowCallWarningNanos
        self.logger = logger
        self.executable = try options.resolveExecutable(pluginPath: plugin.path)
        state.backoffNanos = options.restartBackoffNanos
        guard install(try start()) else {
            throw TransportError(
                .unavailable,
                "transport '\(name)': the plugin process ended right after it started (what it printed on standard error, which it shares with "
                    + "this process, says why; switchyard plugins verify FILE checks the plugin, and isolation.host must be this build's switchyard)", transport: name)
        }
    }

    /// The live child's pid, if one is running.
    var currentProcessID: Int32? {
        lock.withLock { state.current.flatMap { $0.isUsable ? $0.pid : nil } }
    }

    // MARK: The ABI's operations

    func publish(_ message: MessageView) throws(TransportError) {
        var payload = WireWriter()
        payload.message(message.copy())
        _ = try call(.publish, payload.bytes, operation: "publish", ifQueued: reportQueuedFailure("publish"))
    }

    func publish(batch: [MessageView]) throws(TransportError) {
        var payload = WireWriter()
        payload.integer(UInt32(batch.count))
        for message in batch { payload.message(message.copy()) }
        _ = try call(.publishBatch, payload.bytes, operation: "publish_batch", ifQueued: reportQueuedFailure("publish_batch"))
    }

    func subscribe(_ options: SubscribeOptions, _ subscriber: Subscriber) throws(TransportError) -> SubscriptionID {
        let process = try awaitProcess()
        let id = lock.withLock {
            defer { state.nextSubscription += 1 }
            state.subscriptions[state.nextSubscription] = Subscription(options: options, subscriber: subscriber)
            return state.nextSubscription
        }
        do throws(TransportError) {
            let childID = try subscribe(id, options, in: process)
            lock.withLock {
                // A restart in between has subscribed it in the new child already.
                if state.subscriptions[id]?.process == nil || state.subscriptions[id]?.process === process {
                    state.subscriptions[id]?.childID = childID
                    state.subscriptions[id]?.process = process
                }
            }
            return id
        } catch {
            _ = lock.withLock { state.subscriptions.removeValue(forKey: id) }
            awaitDeliveries(to: id)  // the caller frees the subscriber once this throws
            throw error
        }
    }

    func unsubscribe(_ id: SubscriptionID) throws(TransportError) {
        guard let subscription = lock.withLock({ state.subscriptions.removeValue(forKey: id) }) else {
            throw TransportError(.notFound, "no subscription \(id)")
        }
        // Removed from `state`, it gets no new delivery here; one a reader thread is making now
        // is waited for, whatever the child does.
        defer { awaitDeliveries(to: id) }
        guard let process = subscription.process, let childID = subscription.childID, !process.hasEnded else { return }
        try unsubscribe(childID, in: process)
    }

    /// Ends subscription `childID` in `process`; one that died meanwhile ended it already.
    private func unsubscribe(_ childID: SubscriptionID, in process: PluginProcess) throws(TransportError) {
        var payload = WireWriter()
        payload.integer(childID)
        do {
            _ = try process.request(.unsubscribe, payload.bytes, timeoutNanos: options.callTimeoutNanos, operation: "unsubscribe")
        } catch  where error.code == .unavailable {
            // The child died meanwhile: the subscription ended with it.
        }
    }

    /// Returns once no reader thread but this one is delivering to subscription `id` (every
    /// subscription: nil).
    private func awaitDeliveries(to id: SubscriptionID?) {
        let me = pthread_self()
        lock.withLock {
            func othersDelivering() -> Bool {
                let threads = id.map { state.delivering[$0] ?? [] } ?? state.delivering.values.flatMap { $0 }
                return threads.contains { pthread_equal($0, me) == 0 }
            }
            while othersDelivering() { lock.wait() }
        }
    }

    /// The subscriber of subscription `id`, counted as being delivered to until
    /// ``delivered(to:)``; nil once it has been unsubscribed or the transport is shutting down.
    /// Called with the lock held.
    private func beginDelivery(to id: SubscriptionID) -> Subscriber? {
        guard !state.closing, let subscriber = state.subscriptions[id]?.subscriber else { return nil }
        state.delivering[id, default: []].append(pthread_self())
        return subscriber
    }

    /// Ends what ``beginDelivery(to:)`` began (with the lock held), waking an `unsubscribe`
    /// waiting for it.
    private func delivered(to id: SubscriptionID) {
        let me = pthread_self()
        guard var threads = state.delivering[id], let mine = threads.firstIndex(where: { pthread_equal($0, me) != 0 }) else { return }
        threads.remove(at: mine)
        state.delivering[id] = threads.isEmpty ? nil : threads
        lock.broadcast()
    }

    func settle(_ delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {
        guard let origin = lock.withLock({ state.deliveries.removeValue(forKey: delivery) }) else {
            throw TransportError(.notFound, "unknown or already settled delivery \(delivery)")
        }
        guard !origin.process.hasEnded else { throw Self.endedBeforeSettled(delivery) }
        var payload = WireWriter()
        payload.integer(origin.childID)
        payload.settlement(settlement)
        _ = try origin.process.request(
            .settle, payload.bytes, timeoutNanos: options.callTimeoutNanos, operation: "settle", ifQueued: reportQueuedFailure("settle"))
    }

    /// One `settleBatch` request per child the deliveries came from (one, unless the child
    /// restarted while they were out); each delivery's own outcome.
    func settle(batch: [(DeliveryID, Settlement)]) -> [TransportError?] {
        var results = [TransportError?](repeating: nil, count: batch.count)
        let origins = lock.withLock { batch.map { state.deliveries.removeValue(forKey: $0.0) } }
        let groups = Self.byChild(origins, into: &results) { index, origin in
            origin == nil
                ? TransportError(.notFound, "unknown or already settled delivery \(batch[index].0)") : Self.endedBeforeSettled(batch[index].0)
        }
        for (process, indices) in groups {
            var payload = WireWriter()
            payload.integer(UInt32(indices.count))
            for index in indices {
                payload.integer(origins[index]!.childID)
                payload.settlement(batch[index].1)
            }
            let report = reportQueuedFailure("settle_batch")
            do throws(TransportError) {
                let reply = try process.request(
                    .settleBatch, payload.bytes, timeoutNanos: options.callTimeoutNanos, operation: "settle_batch",
                    ifQueued: { result in
                        // Made inside a delivery: reported as settled; what failed is logged.
                        let outcomes = result.flatMap { reply in Result { () throws(TransportError) in try Self.outcomes(reply, count: indices.count) } }
                        switch outcomes {
                        case .failure(let error): report(.failure(error))
                        case .success(let each): for case let error? in each { report(.failure(error)) }
                        }
                    })
                guard !process.onReaderThread else { continue }
                for (index, outcome) in zip(indices, try Self.outcomes(reply, count: indices.count)) { results[index] = outcome }
            } catch {
                for index in indices { results[index] = error }
            }
        }
        return results
    }

    /// The child's plugin's lease, asked once it answers (a restarted child runs the same
    /// config); the error while the child cannot answer.
    var leaseNanos: Int64 {
        get throws(TransportError) {
            if let known = lock.withLock({ state.leaseNanos }) { return known }
            var payload = WireWriter()
            payload.integer(UInt32(0))
            var reply = try call(.extend, payload.bytes, operation: "extend")
            let lease: Int64 = try reply.integer("lease")
            lock.withLock { state.leaseNanos = lease }
            return lease
        }
    }

    /// One `extend` request per child the deliveries came from (they stay the subscriber's to
    /// settle); each delivery's own outcome.
    func extend(_ deliveries: UnsafeBufferPointer<DeliveryID>) -> [TransportError?] {
        var results = [TransportError?](repeating: nil, count: deliveries.count)
        let origins = lock.withLock { deliveries.map { state.deliveries[$0] } }
        let groups = Self.byChild(origins, into: &results) { index, _ in
            TransportError(.notFound, "extend: unknown, settled or released delivery \(deliveries[index])")
        }
        for (process, indices) in groups {
            var payload = WireWriter()
            payload.integer(UInt32(indices.count))
            for index in indices { payload.integer(origins[index]!.childID) }
            do throws(TransportError) {
                var reply = try process.request(.extend, payload.bytes, timeoutNanos: options.callTimeoutNanos, operation: "extend")
                let _: Int64 = try reply.integer("lease")
                for (index, outcome) in zip(indices, try Self.outcomes(reply, count: indices.count, operation: "extend")) { results[index] = outcome }
            } catch {
                for index in indices { results[index] = error }
            }
        }
        return results
    }

    /// The positions of `origins` grouped by the child each came from (one, unless the child
    /// restarted while they were out); a position whose delivery is unknown here (nil) or whose
    /// child has ended gets `refusal`'s error in `results` instead.
    private static func byChild(
        _ origins: [(process: PluginProcess, childID: DeliveryID)?], into results: inout [TransportError?],
        refusal: (Int, (process: PluginProcess, childID: DeliveryID)?) -> TransportError
    ) -> [(process: PluginProcess, indices: [Int])] {
        var groups: [ObjectIdentifier: (process: PluginProcess, indices: [Int])] = [:]
        for (index, origin) in origins.enumerated() {
            guard let origin, !origin.process.hasEnded else {
                results[index] = refusal(index, origin)
                continue
            }
            groups[ObjectIdentifier(origin.process), default: (origin.process, [])].indices.append(index)
        }
        return Array(groups.values)
    }

    /// Each delivery's outcome in a `settleBatch` or `extend` reply.
    private static func outcomes(_ reply: WireReader, count expected: Int, operation: String = "settle_batch") throws(TransportError) -> [TransportError?] {
        var reply = reply
        let count: UInt32 = try reply.integer("count")
        guard count == expected else {
            throw TransportError(.invalidArgument, "corrupt frame: \(operation) answered for \(count) deliveries, not \(expected)")
        }
        var outcomes = [TransportError?](repeating: nil, count: expected)
        for index in 0..<expected {
            let status = StatusCode(rawValue: try reply.integer("status"))
            let message = try reply.string("message")
            if status != .ok { outcomes[index] = TransportError(status, message) }
        }
        return outcomes
    }

    /// Logs the failure of a request made inside a delivery (the reader thread's, answered
    /// later): the caller was told it succeeded.
    private func reportQueuedFailure(_ operation: String) -> @Sendable (Result<WireReader, TransportError>) -> Void {
        { [logger, name] result in
            guard case .failure(let error) = result else { return }
            logger.error(
                "a call made inside a delivery failed in the plugin process after it returned",
                metadata: ["transport": "\(name)", "operation": "\(operation)", "reason": "\(error.message)"])
        }
    }

    /// One `publishAndSettle` request to the child the delivery came from: the plugin's own
    /// `publish_and_settle` there (this is offered only for plugins that have it), both or neither.
    func publish(_ batch: [MessageView], settling delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {
        guard let origin = lock.withLock({ state.deliveries.removeValue(forKey: delivery) }) else {
            throw TransportError(.notFound, "unknown or already settled delivery \(delivery)")
        }
        guard !origin.process.hasEnded else { throw Self.endedBeforeSettled(delivery) }
        var payload = WireWriter()
        payload.integer(UInt32(batch.count))
        for message in batch { payload.message(message.copy()) }
        payload.integer(origin.childID)
        payload.settlement(settlement)
        let report = reportQueuedFailure("publish_and_settle")
        do throws(TransportError) {
            _ = try origin.process.request(
                .publishAndSettle, payload.bytes, timeoutNanos: options.callTimeoutNanos, operation: "publish_and_settle",
                ifQueued: { [weak self] result in
                    guard case .failure(let error) = result else { return }
                    report(result)
                    self?.restore(delivery, origin, after: error)
                })
        } catch {
            restore(delivery, origin, after: error)
            throw error
        }
    }

    /// After a failed `publish_and_settle` (neither took effect): the delivery is the
    /// subscriber's to settle again, unless the child no longer knows it or has gone.
    private func restore(_ delivery: DeliveryID, _ origin: (process: PluginProcess, childID: DeliveryID), after error: TransportError) {
        guard error.code != .notFound else { return }
        lock.withLock {
            // Under the lock: `ended` drops a dead child's deliveries under it too.
            if origin.process.isUsable { state.deliveries[delivery] = origin }
        }
    }

    private static func endedBeforeSettled(_ delivery: DeliveryID) -> TransportError {
        TransportError(.notFound, "delivery \(delivery) was in flight when its plugin process ended; the transport delivers it again if it is durable")
    }

    func drain(deadlineNanos: Int64) throws(TransportError) {
        var payload = WireWriter()
        payload.integer(deadlineNanos)
        let wait = max(0, deadlineNanos - monotonicNanoseconds()) + options.callTimeoutNanos
        _ = try call(.drain, payload.bytes, operation: "drain", timeoutNanos: wait)
    }

    /// What the child's instance keeps as configured (its `create` answered; the same config in
    /// every incarnation).
    var configuredCapabilities: Capabilities? { lock.withLock { state.instanceCapabilities } }

    func stats() -> TransportStats {
        guard var reply = try? call(.stats, [], operation: "stats") else { return TransportStats() }
        return (try? reply.stats()) ?? TransportStats()
    }

    /// The child's answer (nil where its plugin reports no channels); an error when the child
    /// could not be asked (restarting, gone). A count may read a whole store: it gets a minute (or
    /// the call timeout, if longer) before the child is taken for hung and restarted.
    func channelStats() throws(TransportError) -> [ChannelStats]? {
        var reply = try call(.channelStats, [], operation: "channel_stats", timeoutNanos: max(options.callTimeoutNanos, 60_000_000_000))
        return try reply.channelStats()
    }

    /// Stops restarting the child and fails calls waiting for one (`.closed`), ahead of
    /// `shutdown`: the host calls it before it waits for the calls already running.
    func beginClosing() {
        lock.withLock {
            state.closing = true
            lock.broadcast()
        }
    }

    func shutdown() {
        let process = lock.withLock {
            state.closing = true
            lock.broadcast()
            defer { state.current = nil }
            return state.current
        }
        // The caller frees every subscriber once this returns: no delivery may still be running.
        defer { awaitDeliveries(to: nil) }
        guard let process else { return }
        // The child answers once the plugin's instance is destroyed; its reader thread reaps it
        // when it exits. Waiting for the exit here would hold the caller's thread (often one of
        // Swift's few cooperative threads) for nothing.
        do {
            _ = try process.request(.shutdown, [], timeoutNanos: options.callTimeoutNanos, operation: "shutdown")
        } catch {
            process.kill(reason: "did not shut down cleanly (\(error.message))")
        }
    }

    // MARK: Children

    /// One request to the current child, waiting for it first if it is restarting.
    private func call(
        _ kind: WireKind, _ payload: [UInt8], operation: String, timeoutNanos: Int64? = nil,
        ifQueued: (@Sendable (Result<WireReader, TransportError>) -> Void)? = nil
    ) throws(TransportError) -> WireReader {
        let process = try awaitProcess()
        return try process.request(kind, payload, timeoutNanos: timeoutNanos ?? options.callTimeoutNanos, operation: operation, ifQueued: ifQueued)
    }

    /// The live child; waits up to the call timeout while one is being started.
    private func awaitProcess() throws(TransportError) -> PluginProcess {
        let deadline = Date().addingTimeInterval(Double(options.callTimeoutNanos) / 1e9)
        lock.lock()
        defer { lock.unlock() }
        while true {
            if state.closing { throw TransportError(.closed, "transport '\(name)' is shut down") }
            if let current = state.current, current.isUsable { return current }
            if !lock.wait(until: deadline) {
                throw TransportError(
                    .unavailable,
                    "transport '\(name)': the plugin process is restarting and was not back "
                        + "within \(options.callTimeoutNanos / 1_000_000) ms (isolation.call_timeout)")
            }
        }
    }

    /// Spawns a child, creates the instance in it and subscribes every live subscription there.
    private func start() throws(TransportError) -> PluginProcess {
        let incarnation = lock.withLock {
            state.incarnations += 1; return state.incarnations
        }
        let process = try PluginProcess.spawn(executable: executable)
        process.startReading(
            onFrame: { [weak self] process, frame in self?.received(frame, from: process) },
            onEnd: { [weak self] process, reason in self?.ended(process, reason: reason) })
        do throws(TransportError) {
            var payload = WireWriter()
            payload.integer(wireVersion)
            payload.string(plugin.path)
            payload.string(plugin.name)
            payload.string(plugin.sha256 ?? "")
            payload.string(name)
            payload.string(configJSON)
            payload.integer(slowCallWarningNanos)
            var created = try process.request(.create, payload.bytes, timeoutNanos: options.callTimeoutNanos, operation: "create")
            let kept: UInt64 = try created.integer("instance capabilities")
            lock.withLock { state.instanceCapabilities = Capabilities(rawValue: kept) }
            let live = lock.withLock { state.subscriptions.map { ($0.key, $0.value.options) } }
            for (id, subscribeOptions) in live {
                let childID = try subscribe(id, subscribeOptions, in: process)
                let stillLive = lock.withLock {
                    state.subscriptions[id]?.childID = childID
                    state.subscriptions[id]?.process = process
                    return state.subscriptions[id] != nil
                }
                // Unsubscribed while the child was starting: the child would otherwise offer its
                // messages to nobody here, over and over.
                if !stillLive { try unsubscribe(childID, in: process) }
            }
        } catch {
            process.kill(reason: "failed to start")
            throw error
        }
        logger.log(
            level: incarnation == 1 ? .debug : .notice, "plugin process started",
            metadata: [
                "transport": "\(name)", "plugin": "\(plugin.name)", "pid": "\(process.pid)", "incarnation": "\(incarnation)",
            ])
        return process
    }

    private func subscribe(_ id: SubscriptionID, _ subscribeOptions: SubscribeOptions, in process: PluginProcess) throws(TransportError) -> SubscriptionID {
        var payload = WireWriter()
        payload.integer(id)
        payload.options(subscribeOptions)
        var reply = try process.request(.subscribe, payload.bytes, timeoutNanos: options.callTimeoutNanos, operation: "subscribe")
        return try reply.integer("subscription id")
    }

    /// A delivery from the child, on its reader thread: hand it to the subscriber under an id
    /// of ours; release it when the subscriber refuses it or is gone.
    private func received(_ frame: Frame, from process: PluginProcess) {
        var reader = WireReader(frame.payload)
        if frame.kind == .metric {
            guard let kind: Int32 = try? reader.integer("kind"), let name = try? reader.string("name"),
                let bits: UInt64 = try? reader.integer("value")
            else { return }
            onMetric(kind, name, Double(bitPattern: bits))
            return
        }
        if frame.kind == .deadLettered {
            guard let message = try? reader.message(), let reason = try? reader.string("reason") else { return }
            onDeadLetter(message, reason)
            return
        }
        if frame.kind == .deliverBatch {
            receivedBatch(&reader, from: process)
            return
        }
        guard frame.kind == .deliver else { return }
        guard let subscription: SubscriptionID = try? reader.integer("subscription"),
            let childDelivery: DeliveryID = try? reader.integer("delivery")
        else { return }
        let message: Message
        do throws(TransportError) {
            message = try reader.message()
        } catch {
            settleInChild([(childDelivery, .deadLetter(reason: "malformed message from the plugin process: \(error.message)"))], process)
            return
        }
        let target = lock.withLock { () -> (Subscriber, DeliveryID)? in
            guard let subscriber = beginDelivery(to: subscription) else { return nil }
            defer { state.nextDelivery += 1 }
            state.deliveries[state.nextDelivery] = (process, childDelivery)
            return (subscriber, state.nextDelivery)
        }
        guard let (subscriber, delivery) = target else {
            settleInChild([(childDelivery, .release)], process)
            return
        }
        let taken = subscriber.deliver(delivery, message) == .ok
        let refused = lock.withLock {
            delivered(to: subscription)
            return !taken && state.deliveries.removeValue(forKey: delivery) != nil
        }
        if refused { refuseInChild(subscription, [childDelivery], process) }
    }

    /// A batch from the child, on its reader thread: one batch to the subscriber; the part it
    /// did not take is released in the child, which offers it again in order.
    private func receivedBatch(_ reader: inout WireReader, from process: PluginProcess) {
        guard let subscription: SubscriptionID = try? reader.integer("subscription"), let count: UInt32 = try? reader.integer("count") else {
            return
        }
        var childDeliveries: [DeliveryID] = []
        var messages: [Message] = []
        var malformed: [(DeliveryID, Settlement)] = []
        for _ in 0..<count {
            // A truncated frame ends the batch: the deliveries it did not carry come back when
            // their leases end.
            guard let childDelivery: DeliveryID = try? reader.integer("delivery"), let bytes = try? reader.data("message") else { break }
            do throws(TransportError) {
                messages.append(try MessageCodec.decode(bytes))
                childDeliveries.append(childDelivery)
            } catch {
                malformed.append((childDelivery, .deadLetter(reason: "malformed message from the plugin process: \(error.message)")))
            }
        }
        settleInChild(malformed, process)
        let target = lock.withLock { () -> (Subscriber, [DeliveryID])? in
            guard let subscriber = beginDelivery(to: subscription) else { return nil }
            var ids: [DeliveryID] = []
            ids.reserveCapacity(childDeliveries.count)
            for childDelivery in childDeliveries {
                state.deliveries[state.nextDelivery] = (process, childDelivery)
                ids.append(state.nextDelivery)
                state.nextDelivery += 1
            }
            return (subscriber, ids)
        }
        guard let (subscriber, ids) = target else {
            settleInChild(childDeliveries.map { ($0, .release) }, process)
            return
        }
        let taken = subscriber.deliver(batch: ids, messages)
        // The rest go back in one frame, released in order in the child.
        let refused = lock.withLock {
            delivered(to: subscription)
            return (taken..<ids.count).filter { state.deliveries.removeValue(forKey: ids[$0]) != nil }
        }
        refuseInChild(subscription, refused.map { childDeliveries[$0] }, process)
    }

    /// Tells the child the subscriber refused `deliveries` (a `refused` frame, without waiting).
    private func refuseInChild(_ subscription: SubscriptionID, _ deliveries: [DeliveryID], _ process: PluginProcess) {
        guard !deliveries.isEmpty else { return }
        var payload = WireWriter()
        payload.integer(subscription)
        payload.integer(UInt32(deliveries.count))
        for delivery in deliveries { payload.integer(delivery) }
        try? process.post(.refused, payload.bytes)
    }

    /// Settles deliveries in the child in one `settleBatch` request, without waiting.
    private func settleInChild(_ batch: [(DeliveryID, Settlement)], _ process: PluginProcess) {
        guard !batch.isEmpty else { return }
        var payload = WireWriter()
        payload.integer(UInt32(batch.count))
        for (delivery, settlement) in batch {
            payload.integer(delivery)
            payload.settlement(settlement)
        }
        try? process.post(.settleBatch, payload.bytes)
    }

    /// Makes a started child the current one; false when it has already ended (its end was not
    /// acted on, as it was never current) or the transport is closing.
    private func install(_ process: PluginProcess) -> Bool {
        lock.withLock {
            guard !state.closing, !process.hasEnded else { return false }
            state.current = process
            lock.broadcast()
            return true
        }
    }

    /// The child's socket closed: forget what it held and, if it was the current child, start
    /// another with backoff (a child that ends while starting is its starter's business).
    private func ended(_ process: PluginProcess, reason: String) {
        let restart = lock.withLock { () -> Int64? in
            let wasCurrent = state.current === process
            if wasCurrent { state.current = nil }
            state.deliveries = state.deliveries.filter { $0.value.process !== process }
            for id in state.subscriptions.keys where state.subscriptions[id]?.process === process {
                state.subscriptions[id]?.childID = nil
                state.subscriptions[id]?.process = nil
            }
            guard wasCurrent, !state.closing else { return nil }
            // A child that ran a while earns a fresh backoff; one that dies young doubles it.
            if monotonicNanoseconds() - process.startedNanos > 10_000_000_000 {
                state.backoffNanos = options.restartBackoffNanos
            }
            return state.backoffNanos
        }
        guard let wait = restart else { return }
        logger.error(
            "plugin process ended; restarting",
            metadata: [
                "transport": "\(name)", "plugin": "\(plugin.name)", "reason": "\(reason)", "restart_in_ms": "\(wait / 1_000_000)",
            ])
        let thread = Thread(named: "switchyard-restart") { [weak self] in self?.restart(after: wait) }
        thread.start()
    }

    private func restart(after firstWait: Int64) {
        var wait = firstWait
        while true {
            usleep(useconds_t(clamping: wait / 1000))
            if lock.withLock({ state.closing }) { return }
            do throws(TransportError) {
                let process = try start()
                if install(process) {
                    lock.withLock { state.backoffNanos = min(options.maxRestartBackoffNanos, wait * 2) }
                    return
                }
                if lock.withLock({ state.closing }) {
                    _ = try? process.request(.shutdown, [], timeoutNanos: options.callTimeoutNanos, operation: "shutdown")
                    return
                }
                wait = min(options.maxRestartBackoffNanos, wait * 2)
            } catch {
                wait = min(options.maxRestartBackoffNanos, wait * 2)
                logger.error(
                    "plugin process did not start; trying again",
                    metadata: [
                        "transport": "\(name)", "reason": "\(error.message)", "retry_in_ms": "\(wait / 1_000_000)",
                    ])
            }
        }
    }
}
