import Foundation
import Logging
import SwitchyardABI
import SwitchyardLoader
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Keeps one order among requests the child otherwise serves concurrently: a settlement read
/// before an `unsubscribe` is served before it. The parent writes a subscriber's settlement before
/// its unsubscribe (a caller acknowledging its reply, then closing), but two serving threads
/// could run them the other way round — the plugin then released the delivery with the
/// subscription, and the settlement failed with "unknown delivery", the message left behind.
/// Plain settlements only (`settle`, `settle_batch`, a refusal): they return promptly, where a
/// `publish_and_settle` may wait for room in the queue, which an unsubscribe must not wait behind.
final class SettlementOrder: @unchecked Sendable {
    // @unchecked: every field is read and written under `condition`.
    /// Where a request stands in the order.
    enum Place {
        case settlement(UInt64)
        case unsubscribe(before: UInt64)
        case other
    }

    private let condition = NSCondition()
    private var nextIndex: UInt64 = 0
    private var running: Set<UInt64> = []
    /// How long an `unsubscribe` waits for earlier settlements: they finish in microseconds, so
    /// this only bounds a plugin that hangs in one, and stays well under the parent's
    /// `call_timeout` for the unsubscribe itself.
    let patience: TimeInterval

    init(patience: TimeInterval = 1) { self.patience = patience }

    /// Notes a request just read, in the order read (by the thread holding the reader).
    func read(_ kind: WireKind) -> Place {
        switch kind {
        case .settle, .settleBatch, .refused:
            condition.lock()
            defer { condition.unlock() }
            nextIndex += 1
            running.insert(nextIndex)
            return .settlement(nextIndex)
        case .unsubscribe:
            condition.lock()
            defer { condition.unlock() }
            return .unsubscribe(before: nextIndex + 1)
        default:
            return .other
        }
    }

    /// The settlement `index` has been served.
    func served(_ index: UInt64) {
        condition.lock()
        running.remove(index)
        condition.broadcast()
        condition.unlock()
    }

    /// Waits until every settlement read before `mark` has been served; false when ``patience``
    /// ran out first.
    @discardableResult
    func awaitServed(before mark: UInt64) -> Bool {
        let deadline = Date(timeIntervalSinceNow: patience)
        condition.lock()
        defer { condition.unlock() }
        while running.contains(where: { $0 < mark }) {
            if !condition.wait(until: deadline) { return !running.contains(where: { $0 < mark }) }
        }
        return true
    }
}

/// The child side of `isolation: process` (`switchyard plugin-host --fd 3`): loads one plugin
/// with the loader's usual checks, creates one instance, and serves the parent's requests on the
/// socket until the parent asks it to shut down or goes away.
///
/// Requests run concurrently (a slow `publish` or `drain` does not hold up settlements), each on
/// the thread that read it: that thread hands the socket's reading to an idle thread first
/// (leader/follower), so a request reaches the plugin without a hop to another thread, and a
/// request that blocks — a publish waiting for room — does not stop the settlements that would
/// make the room from being read (up to 256 requests served at once; past that, the next request
/// is read when one finishes). Deliveries are sent to the parent as they happen and taken on its
/// behalf (a refusal comes back as a `release` settlement). The process exits when the socket closes or
/// its parent changes (the parent died), so a child never outlives its host.
public enum PluginHostServer {
    /// Serves on `fd` and returns the exit status for the process.
    public static func serve(fd: Int32, logger: Logger) -> Int32 {
        let parent = getppid()
        let watchdog = Thread(named: "switchyard-watchdog") {
            // The socket's end of stream covers a parent that dies; this covers a plugin that
            // hangs with the reader blocked elsewhere.
            while true {
                usleep(200_000)
                if getppid() != parent { _exit(0) }
            }
        }
        watchdog.start()
        let session = Session(fd: fd, logger: logger)
        return session.run()
    }

    private final class Session: @unchecked Sendable {
        // @unchecked: `transport` is written once, by the thread holding the reader, before that
        // thread hands the reader on (under `leadership`'s lock) and so before any request that
        // uses it is served; the reader is used only by the thread that holds it; writes to the
        // socket are serialised by `writeLock`; the rest is guarded by `leadership`.
        let fd: Int32
        let logger: Logger
        var transport: Transport?
        let writeLock = Guarded<Void>(())
        private let reader: FrameReader
        /// Subscriptions (the parent's ids) whose subscriber just refused: their next offer is
        /// refused here, so the plugin waits for a change before offering again.
        private let refusals = Guarded<Set<SubscriptionID>>([])

        /// Settlements read before an `unsubscribe` are served before it.
        private let settlementOrder = SettlementOrder()

        /// A serving thread waiting to be handed the reader.
        private final class IdleThread: Sendable {
            private let handed = DispatchSemaphore(value: 0)
            /// Set by ``hand()`` before `handed` is signalled, for a thread that spins first.
            private let flag = Atomic<Bool>(false)

            /// Hands this thread the reader (or wakes it to see the session's end).
            func hand() {
                flag.store(true, ordering: .releasing)
                handed.signal()
            }

            /// Waits until ``hand()``, spinning briefly first (the next request usually comes
            /// within microseconds); false after `timeout`.
            func awaitHanded(timeout: DispatchTime) -> Bool {
                let spun = SpinBeforeSleeping.poll { flag.load(ordering: .acquiring) ? true : nil } ?? false
                if spun {
                    handed.wait()  // signalled right after the flag: returns at once
                } else if handed.wait(timeout: timeout) == .timedOut {
                    return false
                }
                flag.store(false, ordering: .relaxed)
                return true
            }
        }

        private struct Leadership {
            /// A thread holds the reader (at most one does).
            var leading = false
            /// Threads waiting to be handed the reader, the most recently idle last: the reader
            /// goes to it, so threads a burst left behind stay idle and end.
            var idle: [IdleThread] = []
            /// Serving threads running.
            var threads = 0
            /// Requests read and not yet answered.
            var serving = 0
            /// The session's end is waiting for `serving` to reach zero (`served` is signalled).
            var awaitingServed = false
            /// Set once, when the session ends.
            var exitStatus: Int32?
        }
        private let leadership = Guarded(Leadership())
        private let served = DispatchSemaphore(value: 0)
        private let ended = DispatchSemaphore(value: 0)

        /// Most serving threads, and so most requests served at once. At the limit, the next
        /// request is read when one of them finishes.
        static let maxThreads = 256
        /// How long a thread waits for the reader before it ends, if other threads are waiting.
        static let idleThreadLifetime = DispatchTimeInterval.seconds(30)
        /// How long the session's end waits for requests still in the plugin before it destroys
        /// the instance.
        static let endGrace = DispatchTimeInterval.seconds(5)

        init(fd: Int32, logger: Logger) {
            self.fd = fd
            self.logger = logger
            self.reader = FrameReader(fd: fd)
        }

        func run() -> Int32 {
            leadership.withLock { $0.threads = 1 }
            startThread()
            ended.wait()
            return leadership.withLock { $0.exitStatus ?? 0 }
        }

        private func startThread() {
            let thread = Thread(named: "switchyard-serve") { [self] in serve() }
            thread.start()
        }

        /// One serving thread: takes the reader, reads requests until one that goes to the
        /// plugin, hands the reader on and serves that request; until the session ends or the
        /// thread is no longer needed.
        private func serve() {
            let me = IdleThread()
            while takeReader(as: me) {
                guard let frame = readRequest() else { return }
                let place = settlementOrder.read(frame.kind)  // still holding the reader: in wire order
                handOver()
                if case .unsubscribe(let mark) = place, !settlementOrder.awaitServed(before: mark) {
                    logger.warning(
                        "plugin host: an unsubscribe went ahead of a settlement read before it, still inside the plugin after \(settlementOrder.patience) s")
                }
                handle(frame)
                if case .settlement(let index) = place { settlementOrder.served(index) }
                let last = leadership.withLock { state in
                    state.serving -= 1
                    return state.serving == 0 && state.awaitingServed
                }
                if last { served.signal() }
            }
        }

        /// Waits until this thread holds the reader; false when the session has ended or the
        /// thread was idle for ``idleThreadLifetime`` while others were too (it ends).
        private func takeReader(as me: IdleThread) -> Bool {
            enum Next { case lead, wait, end, handedMeanwhile }
            while true {
                let next = leadership.withLock { state -> Next in
                    if state.exitStatus != nil { return .end }
                    if !state.leading {
                        state.leading = true
                        return .lead
                    }
                    state.idle.append(me)
                    return .wait
                }
                switch next {
                case .lead: return true
                case .end: return false
                case .wait, .handedMeanwhile: break
                }
                if me.awaitHanded(timeout: .now() + Self.idleThreadLifetime) {
                    return leadership.withLock { $0.exitStatus == nil }  // handed the reader, or woken by the end
                }
                let afterTimeout = leadership.withLock { state -> Next in
                    guard let index = state.idle.firstIndex(where: { $0 === me }) else { return .handedMeanwhile }
                    state.idle.remove(at: index)
                    guard !state.idle.isEmpty else { return .wait }  // the only idle thread stays
                    state.threads -= 1
                    return .end
                }
                switch afterTimeout {
                case .end: return false
                case .handedMeanwhile:
                    _ = me.awaitHanded(timeout: .distantFuture)  // popped as the wait timed out: its signal is on the way
                    return leadership.withLock { $0.exitStatus == nil }
                case .lead, .wait: continue
                }
            }
        }

        /// Reads until a request for the plugin, serving the session's own requests (create,
        /// shutdown) on the way, still holding the reader; nil once the session has ended.
        private func readRequest() -> Frame? {
            while true {
                let frame: Frame?
                do throws(TransportError) {
                    frame = try reader.next()
                } catch {
                    logger.error("plugin host: bad frame from the parent; exiting", metadata: ["reason": "\(error.message)"])
                    end(status: 2)
                    return nil
                }
                guard let frame else {
                    // The parent closed the socket (it exited): release what we hold, then go.
                    end(status: 0)
                    return nil
                }
                switch frame.kind {
                case .create:
                    replyWith(frame.sequence) { () throws(TransportError) in
                        var data = WireWriter()
                        data.integer(try create(frame.payload).rawValue)
                        return data.bytes
                    }
                case .shutdown:
                    let closed = awaitServed()
                    if closed { transport?.close() }
                    reply(frame.sequence) { () throws(TransportError) in
                        // The parent kills a child that does not shut down cleanly.
                        guard closed else { throw TransportError(.timeout, "calls were still inside the plugin after \(Self.endGrace); not destroyed") }
                    }
                    end(status: 0, closed: true)
                    return nil
                default:
                    guard transport != nil else {
                        reply(frame.sequence) { () throws(TransportError) in throw TransportError(.invalidArgument, "no instance: create first") }
                        continue
                    }
                    return frame
                }
            }
        }

        /// Counts the request just read as being served and gives the reader to the most recently
        /// idle thread, or to a new one while under ``maxThreads``.
        private func handOver() {
            var startAnother = false
            let next = leadership.withLock { state -> IdleThread? in
                state.serving += 1
                if let next = state.idle.popLast() { return next }  // `leading` passes to it
                state.leading = false
                if state.threads < Self.maxThreads {
                    state.threads += 1
                    startAnother = true
                }
                return nil
            }
            next?.hand()
            if startAnother { startThread() }
        }

        /// Waits up to ``endGrace`` for the requests being served to finish: the instance must
        /// not be destroyed while a call is inside it. False when some are still running.
        private func awaitServed() -> Bool {
            let wait = leadership.withLock { state in
                state.awaitingServed = state.serving > 0
                return state.awaitingServed
            }
            if wait { _ = served.wait(timeout: .now() + Self.endGrace) }
            // Read under the lock the last request's thread took: what it did happens before.
            return leadership.withLock { $0.serving == 0 }
        }

        /// Ends the session (called by the thread holding the reader): wakes the idle threads to
        /// end, closes the instance unless `closed` (once the requests being served have finished,
        /// if they do within ``endGrace``), and lets `run` return `status`.
        private func end(status: Int32, closed: Bool = false) {
            let idle = leadership.withLock { state in
                state.exitStatus = status
                defer { state.idle.removeAll() }
                return state.idle
            }
            for thread in idle { thread.hand() }
            // A call still inside the plugin after the grace keeps the instance from being
            // destroyed under it: the process exits without (the plugin's own state is as after a
            // crash, which a durable plugin survives).
            if !closed, awaitServed() { transport?.close() }
            ended.signal()
        }

        /// Creates the instance; returns what it keeps as configured.
        private func create(_ payload: [UInt8]) throws(TransportError) -> Capabilities {
            guard transport == nil else { throw TransportError(.invalidArgument, "the instance exists already") }
            var reader = WireReader(payload)
            let version: UInt32 = try reader.integer("wire version")
            guard version == wireVersion else {
                throw TransportError(.unsupported, "plugin host speaks wire version \(wireVersion), the parent \(version): use the same switchyard build for both")
            }
            let path = try reader.string("plugin path")
            let pluginName = try reader.string("plugin name")
            let sha256 = try reader.string("sha256")
            let instanceName = try reader.string("instance name")
            let configJSON = try reader.string("config")
            let slowCallWarningNanos: Int64 = try reader.integer("slow call warning")
            let loader = PluginLoader(trust: TrustPolicy(pins: sha256.isEmpty ? [:] : [pluginName: sha256]))
            let plugin: LoadedPlugin
            do {
                plugin = try loader.load(path: path)
            } catch {
                throw TransportError(.unavailable, "plugin host cannot load \(path): \(error.reason)")
            }
            guard plugin.name == pluginName else {
                throw TransportError(.unavailable, "\(path) now holds plugin '\(plugin.name)', not '\(pluginName)'")
            }
            // Metrics and dead letters are the parent's business (it records the metrics under
            // the transport's name and answers waiting callers): pass them on, from creation on.
            let made = try Transport(
                name: instanceName, plugin: plugin, configJSON: configJSON, inner: nil,
                slowCallWarningNanos: slowCallWarningNanos, logger: logger, metrics: nil,
                forwardingMetrics: { [self] kind, name, value in
                    var payload = WireWriter()
                    payload.integer(kind)
                    payload.string(name)
                    payload.integer(value.bitPattern)
                    send(Frame(kind: .metric, sequence: 0, payload: payload.bytes))
                })
            made.observeDeadLetters { [self] message, reason in
                var payload = WireWriter()
                payload.message(message)
                payload.string(reason)
                send(Frame(kind: .deadLettered, sequence: 0, payload: payload.bytes))
            }
            transport = made
            return made.capabilities
        }

        private func handle(_ frame: Frame) {
            guard let client = transport?.client else { return }
            var reader = WireReader(frame.payload)
            switch frame.kind {
            case .publish:
                reply(frame.sequence) { () throws(TransportError) in try client.publish(try reader.message()) }
            case .publishBatch:
                reply(frame.sequence) { () throws(TransportError) in
                    let count: UInt32 = try reader.integer("count")
                    var batch: [Message] = []
                    for _ in 0..<count { batch.append(try reader.message()) }
                    try client.publish(batch: batch)
                }
            case .subscribe:
                replyWith(frame.sequence) { () throws(TransportError) in
                    let parentID: SubscriptionID = try reader.integer("subscription")
                    let options = try reader.options()
                    let id = try client.subscribe(
                        options,
                        handler: { [self] delivery, message in
                            if refusesOnce(parentID) { return .unavailable }
                            var payload = WireWriter()
                            payload.integer(parentID)
                            payload.integer(delivery)
                            payload.message(message.copy())
                            return send(Frame(kind: .deliver, sequence: 0, payload: payload.bytes)) ? .ok : .unavailable
                        },
                        batchHandler: { [self] deliveries, messages in
                            if refusesOnce(parentID) { return 0 }
                            // A plugin's batch crosses the socket as one frame.
                            var payload = WireWriter()
                            payload.integer(parentID)
                            payload.integer(UInt32(messages.count))
                            for index in messages.indices {
                                payload.integer(deliveries[index])
                                payload.message(messages[index].copy())
                            }
                            return send(Frame(kind: .deliverBatch, sequence: 0, payload: payload.bytes)) ? messages.count : 0
                        })
                    var out = WireWriter()
                    out.integer(id)
                    return out.bytes
                }
            case .unsubscribe:
                reply(frame.sequence) { () throws(TransportError) in try client.unsubscribe(try reader.integer("subscription")) }
            case .settle:
                reply(frame.sequence) { () throws(TransportError) in
                    let delivery: DeliveryID = try reader.integer("delivery")
                    try client.settle(delivery, try reader.settlement())
                }
            case .settleBatch:
                replyWith(frame.sequence) { () throws(TransportError) in
                    let count: UInt32 = try reader.integer("count")
                    var batch: [(DeliveryID, Settlement)] = []
                    for _ in 0..<count { batch.append((try reader.integer("delivery"), try reader.settlement())) }
                    var out = WireWriter()
                    out.outcomes(try client.settle(batch: batch))
                    return out.bytes
                }
            case .extend:
                replyWith(frame.sequence) { () throws(TransportError) in
                    let count: UInt32 = try reader.integer("count")
                    var deliveries: [DeliveryID] = []
                    for _ in 0..<count { deliveries.append(try reader.integer("delivery")) }
                    var out = WireWriter()
                    out.integer(try client.leaseNanos() ?? 0)
                    out.outcomes(try client.extend(deliveries))
                    return out.bytes
                }
            case .publishAndSettle:
                reply(frame.sequence) { () throws(TransportError) in
                    let count: UInt32 = try reader.integer("count")
                    var batch: [Message] = []
                    for _ in 0..<count { batch.append(try reader.message()) }
                    let delivery: DeliveryID = try reader.integer("delivery")
                    try client.publish(batch, settling: delivery, try reader.settlement())
                }
            case .refused:
                reply(frame.sequence) { () throws(TransportError) in
                    let parentID: SubscriptionID = try reader.integer("subscription")
                    let count: UInt32 = try reader.integer("count")
                    var batch: [(DeliveryID, Settlement)] = []
                    for _ in 0..<count { batch.append((try reader.integer("delivery"), .release)) }
                    refusals.withLock { _ = $0.insert(parentID) }  // before the release offers them again
                    _ = try client.settle(batch: batch)
                }
            case .drain:
                reply(frame.sequence) { () throws(TransportError) in try client.drain(deadlineNanos: try reader.integer("deadline")) }
            case .stats:
                replyWith(frame.sequence) { () throws(TransportError) in
                    var out = WireWriter()
                    out.stats(try client.stats() ?? TransportStats())
                    return out.bytes
                }
            case .channelStats:
                replyWith(frame.sequence) { () throws(TransportError) in
                    var out = WireWriter()
                    out.channelStats(try client.channelStats())
                    return out.bytes
                }
            default:
                reply(frame.sequence) { () throws(TransportError) in throw TransportError(.invalidArgument, "unexpected request kind \(frame.kind)") }
            }
        }

        /// Whether to refuse this offer for subscription `parentID` (once per refusal the parent
        /// reported).
        private func refusesOnce(_ parentID: SubscriptionID) -> Bool {
            refusals.withLock { $0.remove(parentID) != nil }
        }

        private func reply(_ sequence: UInt64, _ body: () throws(TransportError) -> Void) {
            replyWith(sequence) { () throws(TransportError) in
                try body(); return []
            }
        }

        private func replyWith(_ sequence: UInt64, _ body: () throws(TransportError) -> [UInt8]) {
            var out = WireWriter()
            do throws(TransportError) {
                let data = try body()
                out.integer(StatusCode.ok.rawValue)
                out.string("")
                out.raw(data)
            } catch {
                out = WireWriter()
                out.integer(error.code.rawValue)
                out.string(error.message)
            }
            _ = send(Frame(kind: .reply, sequence: sequence, payload: out.bytes))
        }

        @discardableResult
        private func send(_ frame: Frame) -> Bool {
            do throws(TransportError) {
                try writeLock.withLock { _ throws(TransportError) in try FrameIO.write(frame, to: fd) }
                return true
            } catch {
                return false
            }
        }
    }
}
