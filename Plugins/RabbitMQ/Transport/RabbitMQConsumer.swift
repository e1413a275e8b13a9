import CRabbitMQ
import Foundation
import SwitchyardPluginKit
import SwitchyardTransportKit
import Synchronization

/// One subscription: its own connection and thread, which reads deliveries (at most `prefetch`
/// unsettled, the broker's basic.qos), hands them to the subscriber in batches, and sends the
/// acknowledgements other threads settle with — rabbitmq-c connections are single-threaded, and
/// an ack must go out on the channel its delivery came on. It reconnects with backoff when the
/// connection fails; deliveries of a lost connection are the broker's again (settling one is
/// `notFound`).
final class RabbitMQConsumer: @unchecked Sendable {
    // @unchecked: mutable state is behind `lock`; `connection` and `generation` belong to the thread.
    let id: SubscriptionID
    let channel: String
    let group: String
    /// The AMQP queue it reads.
    let queue: String
    let subscriber: Subscriber
    private let prefetch: Int
    private let visibilityNanos: Int64
    private unowned let transport: RabbitMQTransport
    private let lock = NSCondition()
    private var state = State()
    /// Wakes the thread when a settlement or a stop is waiting (an eventfd beside the socket).
    private let wake: Int32

    /// A delivery not settled yet.
    struct Pending {
        let tag: UInt64
        /// The connection it came on: a tag means nothing on another.
        let generation: UInt64
        let message: Message
        let history: [String]
        /// When its lease started: at delivery, or at its last extension.
        var deliveredAt: Int64
    }

    private enum Command {
        case ack(tag: UInt64, generation: UInt64)
        case requeue(tag: UInt64, generation: UInt64)
    }

    private struct State {
        var pending: [DeliveryID: Pending] = [:]
        var commands: [Command] = []
        var nextSequence: UInt64 = 0
        var generation: UInt64 = 0
        var cancel = false
        /// The broker confirmed the cancel (or the connection is gone): nothing new comes.
        var cancelled = false
        var stopping = false
        var finished = false
    }

    /// Deliveries carry their subscription in the top 24 bits: settle finds the consumer without
    /// a lock shared by all subscriptions.
    static func subscription(of delivery: DeliveryID) -> SubscriptionID { delivery >> 40 }

    init(
        id: SubscriptionID, channel: String, group: String, queue: String, subscriber: Subscriber, prefetch: Int, visibilityNanos: Int64,
        transport: RabbitMQTransport
    ) {
        self.id = id
        self.channel = channel
        self.group = group
        self.queue = queue
        self.subscriber = subscriber
        self.prefetch = prefetch
        self.visibilityNanos = visibilityNanos
        self.transport = transport
        wake = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
    }

    deinit { close(wake) }

    /// Deliveries handed out and not settled.
    var unsettled: Int { lock.withLock { state.pending.count } }

    /// Opens the connection (so that subscribe fails when the broker refuses) and starts the thread.
    func start() throws(TransportError) {
        let connection = try connect()
        lock.withLock { state.generation = 1 }
        let handOff = ConnectionHandOff(connection: connection)
        let thread = Thread(named: "switchyard-amqp-consume") { [self] in run(handOff.connection) }
        thread.start()
    }

    private func connect() throws(TransportError) -> AMQPConnection {
        let settings = transport.settings
        let connection = try AMQPConnection(settings, confirms: false, heartbeatSeconds: settings.heartbeatSeconds)
        let arena = AMQPArena()
        defer { withExtendedLifetime(arena) {} }  // rabbitmq-c reads its memory during the call
        do {
            // Declared again (a no-op unless the broker lost it, or someone deleted it).
            _ = try transport.subscriptionQueue(channel, group: group, on: connection)
            amqp_basic_qos(connection.state, AMQPConnection.channel, 0, UInt16(prefetch), 0)
            try connection.check("set the prefetch (basic.qos) to \(prefetch)")
            amqp_basic_consume(connection.state, AMQPConnection.channel, arena.bytes(queue), arena.bytes("switchyard-\(id)"), 0, 0, 0, amqp_table_t())
            try connection.check("consume from queue '\(queue)'")
        } catch {
            connection.close()
            throw error
        }
        return connection
    }

    // MARK: Settling (any thread)

    /// Removes a delivery for settling; nil when unknown or already settled.
    func take(_ delivery: DeliveryID) -> Pending? {
        lock.withLock { state.pending.removeValue(forKey: delivery) }
    }

    /// Acknowledges a taken delivery (on the consumer's thread, soon).
    func acknowledge(_ pending: Pending) {
        enqueue(.ack(tag: pending.tag, generation: pending.generation))
    }

    /// Runs `publish` (a copy queued again, or a dead letter), then acknowledges the delivery; when
    /// the publish fails the delivery goes back to the queue as it is (the broker counts it).
    func settleAfterPublishing(_ pending: Pending, _ publish: () throws(TransportError) -> Void) throws(TransportError) {
        do {
            try publish()
        } catch {
            enqueue(.requeue(tag: pending.tag, generation: pending.generation))
            throw TransportError(error.code, "\(error.message); the delivery was returned to the queue as it was")
        }
        enqueue(.ack(tag: pending.tag, generation: pending.generation))
    }

    private func enqueue(_ command: Command) {
        lock.withLock { state.commands.append(command) }
        var one: UInt64 = 1
        _ = write(wake, &one, 8)
    }

    /// Stops new deliveries (basic.cancel) and waits until the broker confirmed it (at most 5 s):
    /// what is queued again from now on cannot come back to this consumer.
    func cancel() {
        lock.withLock { state.cancel = true }
        var one: UInt64 = 1
        _ = write(wake, &one, 8)
        let deadline = Date().addingTimeInterval(5)
        lock.lock()
        while !state.cancelled && !state.finished && Date() < deadline { _ = lock.wait(until: deadline) }
        lock.unlock()
    }

    /// Releases every unsettled delivery (queued again unchanged, then acknowledged); returns how
    /// many. A drain's deadline passed.
    func releaseAll() -> Int {
        let left = lock.withLock {
            defer { state.pending.removeAll() }
            return Array(state.pending.values)
        }
        for pending in left { release(pending) }
        return left.count
    }

    /// Queues a copy of `pending` again without counting an attempt and acknowledges it; when
    /// that fails, returns it to the queue (the broker then counts an attempt).
    private func release(_ pending: Pending) {
        do {
            try transport.requeue(pending.message, on: queue, attempt: pending.message.attempt, history: pending.history, afterNanos: 0)
            enqueue(.ack(tag: pending.tag, generation: pending.generation))
        } catch {
            enqueue(.requeue(tag: pending.tag, generation: pending.generation))
        }
        transport.counters.released.add(1, ordering: .relaxed)
    }

    /// Stops the thread and waits for it. With `releasing` (unsubscribe), what it holds is
    /// released first, so another member gets it without an attempt counted; otherwise (shutdown)
    /// the broker gets it back when the connection closes.
    func stop(releasing: Bool) {
        if releasing {
            // Cancelled first: what arrives from now on is released by the thread itself. The
            // acknowledgements of these releases are queued before the thread may finish.
            cancel()
            _ = releaseAll()
        }
        lock.lock()
        state.stopping = true
        lock.unlock()
        var one: UInt64 = 1
        _ = write(wake, &one, 8)
        lock.lock()
        while !state.finished { lock.wait() }
        lock.unlock()
    }

    // MARK: The thread

    private func run(_ first: AMQPConnection) {
        var connection: AMQPConnection? = first
        var generation: UInt64 = 1
        var cancelled = false
        var failures = 0
        var lastSent = monotonicNow()
        var lastHeard = monotonicNow()
        let heartbeatNanos = Int64(transport.settings.heartbeatSeconds) * 1_000_000_000
        while true {
            let (commands, cancel, stopping) = lock.withLock { () -> ([Command], Bool, Bool) in
                defer { state.commands.removeAll(keepingCapacity: true) }
                return (state.commands, state.cancel, state.stopping)
            }
            guard let live = connection else {
                if stopping { break }
                if cancel {
                    // Nothing to cancel without a connection, and nothing to reconnect for.
                    lock.withLock {
                        state.cancelled = true
                        lock.broadcast()
                    }
                    sleepUnlessWoken(nanos: 100_000_000)
                    continue
                }
                // Reconnect with backoff; what was pending on the lost connection is the broker's.
                failures += 1
                sleepUnlessWoken(nanos: min(2_000_000_000, Int64(failures) * 100_000_000))
                do {
                    connection = try connect()
                    generation += 1
                    let current = generation
                    lock.withLock {
                        state.generation = current
                        state.pending = state.pending.filter { $0.value.generation == current }
                    }
                    transport.host.log(.info, "consumer of '\(queue)' reconnected after \(failures) attempt(s)")
                    failures = 0
                    cancelled = false
                    lastHeard = monotonicNow()
                } catch {
                    if failures == 1 || failures % 30 == 0 { transport.host.log(.warning, "consumer of '\(queue)': \(error.message); retrying") }
                }
                continue
            }
            var broken = false
            for command in commands {
                switch command {
                case .ack(let tag, let from) where from == generation:
                    broken = broken || amqp_basic_ack(live.state, AMQPConnection.channel, tag, 0) != AMQP_STATUS_OK.rawValue
                case .requeue(let tag, let from) where from == generation:
                    broken = broken || amqp_basic_nack(live.state, AMQPConnection.channel, tag, 0, 1) != AMQP_STATUS_OK.rawValue
                default: continue  // a tag of a lost connection: the broker has that message back
                }
                lastSent = monotonicNow()
            }
            if (cancel || stopping) && !cancelled && !broken {
                let arena = AMQPArena()
                amqp_basic_cancel(live.state, AMQPConnection.channel, arena.bytes("switchyard-\(id)"))
                withExtendedLifetime(arena) {}
                cancelled = true
                do {
                    try live.check("cancel the consumer")
                } catch {
                    transport.host.log(.warning, "consumer of '\(queue)': \(error.message)")
                    broken = true
                }
                // Deliveries the broker sent before its cancel-ok are read (and released) below.
                lock.withLock {
                    state.cancelled = true
                    lock.broadcast()
                }
            }
            if stopping {
                // Read what is already on the way, to release it rather than leave it to the broker.
                if !broken { broken = read(live, generation: generation, heard: &lastHeard) }
                if lock.withLock({ state.commands.isEmpty }) || broken { break }
                continue
            }
            if !broken { broken = expireLeases(live, generation: generation) }
            if !broken { broken = read(live, generation: generation, heard: &lastHeard) }
            if !broken && heartbeatNanos > 0 {
                let now = monotonicNow()
                if now - lastSent >= heartbeatNanos / 2 {
                    var frame = amqp_frame_t()
                    frame.frame_type = UInt8(AMQP_FRAME_HEARTBEAT)
                    frame.channel = 0
                    broken = amqp_send_frame(live.state, &frame) != AMQP_STATUS_OK.rawValue
                    lastSent = now
                }
                if now - lastHeard > 3 * heartbeatNanos {
                    transport.host.log(.warning, "consumer of '\(queue)': nothing from the broker for \(3 * heartbeatNanos / 1_000_000_000) s; reconnecting")
                    broken = true
                }
            }
            if broken || live.broken {
                live.close()
                connection = nil
                transport.forgetDeclarations()
                // What it delivered is the broker's again: settling one now is `notFound` (a retry
                // or dead-letter of it would copy a message the broker redelivers anyway).
                lock.withLock { state.pending.removeAll() }
                continue
            }
            if lock.withLock({ state.commands.isEmpty && !state.stopping && state.cancel == cancelled }) {
                if wait(live, untilNanos: nextLeaseDeadline()) { lastHeard = monotonicNow() }
            }
            transport.reportIfDue()
        }
        connection?.close()
        lock.lock()
        state.finished = true
        lock.broadcast()
        lock.unlock()
    }

    /// Waits for the socket, a wake-up, or at most 100 ms (leases, heartbeats); true when the
    /// socket has something.
    private func wait(_ connection: AMQPConnection, untilNanos deadline: Int64) -> Bool {
        if amqp_frames_enqueued(connection.state) != 0 || amqp_data_in_buffer(connection.state) != 0 { return true }
        var fds = [
            pollfd(fd: amqp_get_sockfd(connection.state), events: Int16(POLLIN), revents: 0),
            pollfd(fd: wake, events: Int16(POLLIN), revents: 0),
        ]
        let millis = max(0, min(100, (deadline - monotonicNow() + 999_999) / 1_000_000))
        _ = poll(&fds, 2, Int32(millis))
        if fds[1].revents != 0 {
            var value: UInt64 = 0
            _ = Foundation.read(wake, &value, 8)
        }
        return fds[0].revents != 0
    }

    private func sleepUnlessWoken(nanos: Int64) {
        var fds = [pollfd(fd: wake, events: Int16(POLLIN), revents: 0)]
        _ = poll(&fds, 1, Int32(nanos / 1_000_000))
        if fds[0].revents != 0 {
            var value: UInt64 = 0
            _ = Foundation.read(wake, &value, 8)
        }
    }

    private func nextLeaseDeadline() -> Int64 {
        let oldest = lock.withLock { state.pending.values.map(\.deliveredAt).min() }
        return oldest.map { $0 + visibilityNanos } ?? monotonicNow() + 100_000_000
    }

    /// Restarts the lease of `delivery` (ABI 1.6 `extend`); false when it is not unsettled here
    /// (settled, or its lease ran out and it went back to the queue).
    func extend(_ delivery: DeliveryID) -> Bool {
        let now = monotonicNow()
        return lock.withLock {
            guard state.pending[delivery] != nil else { return false }
            state.pending[delivery]!.deliveredAt = now
            return true
        }
    }

    /// Returns deliveries unsettled past the visibility timeout to the queue (an attempt: the
    /// broker counts it); a later settle of one is `notFound`. True when the connection broke.
    private func expireLeases(_ connection: AMQPConnection, generation: UInt64) -> Bool {
        let now = monotonicNow()
        let expired = lock.withLock { () -> [Pending] in
            let late = state.pending.filter { now - $0.value.deliveredAt >= visibilityNanos }
            for key in late.keys { state.pending.removeValue(forKey: key) }
            return Array(late.values)
        }
        for pending in expired where pending.generation == generation {
            if amqp_basic_nack(connection.state, AMQPConnection.channel, pending.tag, 0, 1) != AMQP_STATUS_OK.rawValue { return true }
        }
        return false
    }

    /// Reads every delivery already received (never blocking) and hands them over; true when
    /// the connection broke.
    private func read(_ connection: AMQPConnection, generation: UInt64, heard: inout Int64) -> Bool {
        var batch: [(tag: UInt64, delivered: AMQPDelivered)] = []
        var broken = false
        let deadLetters = transport.isDeadLetterChannel(channel)
        while batch.count < prefetch {
            amqp_maybe_release_buffers(connection.state)
            var envelope = amqp_envelope_t()
            var immediately = timeval(tv_sec: 0, tv_usec: 0)
            let reply = amqp_consume_message(connection.state, &envelope, &immediately, 0)
            if reply.reply_type == AMQP_RESPONSE_NORMAL {
                batch.append((envelope.delivery_tag, AMQPMessage.read(envelope, channel: channel, deadLetterChannel: deadLetters)))
                amqp_destroy_envelope(&envelope)
                heard = monotonicNow()
                continue
            }
            if reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && reply.library_error == AMQP_STATUS_TIMEOUT.rawValue { break }
            if reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && reply.library_error == AMQP_STATUS_UNEXPECTED_STATE.rawValue {
                // Not a delivery: a cancel from the broker (queue deleted), a close, or a reply.
                var frame = amqp_frame_t()
                let status = amqp_simple_wait_frame_noblock(connection.state, &frame, &immediately)
                if status == AMQP_STATUS_OK.rawValue, frame.frame_type == AMQP_FRAME_METHOD {
                    let method = frame.payload.method.id
                    if method == SY_AMQP_BASIC_CANCEL || method == SY_AMQP_CHANNEL_CLOSE || method == SY_AMQP_CONNECTION_CLOSE {
                        let what =
                            method == SY_AMQP_BASIC_CANCEL
                            ? "cancelled the consumer (queue deleted?)" : method == SY_AMQP_CHANNEL_CLOSE ? "closed the channel" : "closed the connection"
                        transport.host.log(.warning, "the broker \(what) of '\(queue)'; reconnecting and declaring it again")
                        broken = true
                        break
                    }
                    heard = monotonicNow()
                    continue
                }
                if status == AMQP_STATUS_OK.rawValue || status == AMQP_STATUS_TIMEOUT.rawValue { continue }
            }
            transport.host.log(.warning, "consumer of '\(queue)': \(AMQPConnection.describe(reply)); reconnecting")
            broken = true
            break
        }
        if !batch.isEmpty { deliver(batch, generation: generation) }
        return broken
    }

    /// Registers and hands over a batch; expired messages are dead-lettered (or dropped) instead,
    /// and what the subscriber does not take (or a drain or stop began) is released.
    private func deliver(_ batch: [(tag: UInt64, delivered: AMQPDelivered)], generation: UInt64) {
        let now = monotonicNow()
        let wallNow = transport.host.nowNanos()
        var ids: [DeliveryID] = []
        var messages: [Message] = []
        let stopping = transport.draining.load(ordering: .relaxed) || lock.withLock { state.stopping || state.cancel }
        lock.withLock {
            for (tag, delivered) in batch {
                state.nextSequence += 1
                let id = (self.id << 40) | (state.nextSequence & 0xff_ffff_ffff)
                state.pending[id] = Pending(tag: tag, generation: generation, message: delivered.message, history: delivered.history, deliveredAt: now)
                ids.append(id)
                messages.append(delivered.message)
            }
        }
        var handOver: [Int] = []
        for index in batch.indices {
            let delivered = batch[index].delivered
            if let reason = delivered.brokerDeadLetterReason {
                // The broker dead-lettered it (TTL, delivery limit): give it the plugin's headers.
                guard let pending = take(ids[index]) else { continue }
                if reason == "expired" && delivered.message.flags.contains(.dropWhenExpired) {
                    acknowledge(pending)
                    continue
                }
                // On a topic the group's queue names the group: its replay then reaches that group
                // alone (without it, every group, and each group's expired copy: G² deliveries).
                let original = String(channel.dropLast(transport.settings.deadLetterSuffix.count))
                let group = transport.group(ofQueue: delivered.brokerDeadLetterQueue, channel: original)
                messages[index] = DeadLetter.copy(
                    of: delivered.message, to: channel, group: group ?? "", groupCopy: group != nil,
                    reason: reason == "expired" ? "expired" : "broker: \(reason)", history: delivered.history + [reason], now: wallNow)
                messages[index].headers = messages[index].headers.map {
                    $0.key == DeadLetterHeader.channel ? Header($0.key, String(channel.dropLast(transport.settings.deadLetterSuffix.count))) : $0
                }
                messages[index].attempt = delivered.message.attempt
                lock.withLock { state.pending[ids[index]] = Pending(tag: pending.tag, generation: generation, message: messages[index], history: [], deliveredAt: now) }
            } else if delivered.message.isExpired(at: wallNow) {
                guard let pending = take(ids[index]) else { continue }
                if delivered.message.flags.contains(.dropWhenExpired) {
                    acknowledge(pending)
                } else {
                    try? settleAfterPublishing(pending) { () throws(TransportError) in
                        try transport.deadLetter(delivered.message, group: group, reason: "expired", history: delivered.history)
                    }
                }
                continue
            }
            if stopping {
                if let pending = take(ids[index]) { release(pending) }
                continue
            }
            handOver.append(index)
        }
        guard !handOver.isEmpty else { return }
        let handIDs = handOver.map { ids[$0] }
        transport.counters.delivered.add(UInt64(handIDs.count), ordering: .relaxed)
        let taken = max(0, subscriber.deliver(batch: handIDs, handOver.map { messages[$0] }))
        for id in handIDs.dropFirst(taken) {
            if let pending = take(id) { release(pending) }
        }
    }
}

/// Hands the first connection to the consumer thread, its only user from then on.
private struct ConnectionHandOff: @unchecked Sendable {
    let connection: AMQPConnection
}
