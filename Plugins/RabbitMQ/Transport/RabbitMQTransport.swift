// The RabbitMQ transports (`rabbitmq`, `rabbitmq-topic`) on AMQP 0-9-1 through rabbitmq-c
// (Debian's librabbitmq-dev). Mapping and semantics: docs/transports.md, "rabbitmq".
//
// Topology, all durable, all named from `prefix` (default `switchyard.<transport>`):
//   rabbitmq        channel `orders` → quorum queue `<prefix>.orders` (default exchange)
//   rabbitmq-topic  channel `events` → fanout exchange `<prefix>.events`; subscriber group `billing`
//                   → quorum queue `<prefix>.events~billing` bound to it
//   dead letters    `<channel>.dlq` → queue `<prefix>.<channel>.dlq`, bound to the direct exchange
//                   `<prefix>.dlx`, which is also every queue's dead-letter exchange (TTL expiry)
//   delays          queue `<prefix>.delay.<ms>.<target>` with that message TTL, dead-lettering to
//                   its target when it is due (a queue per delay bucket: no head-of-line blocking)
//
// Publishes wait for publisher confirms on a small pool of connections. Each subscription has
// its own connection and thread: rabbitmq-c connections are single-threaded, and acks must go
// out on the channel the delivery came on, so settlements are handed to that thread.

import CRabbitMQ
import Foundation
import SwitchyardPluginKit
import SwitchyardTransportKit
import Synchronization

/// The shared implementation; `rabbitmq` and `rabbitmq-topic` differ only in `fanOut`.
open class RabbitMQTransport: TransportPlugin, @unchecked Sendable {
    // @unchecked: connections are confined (pool, consumer threads); shared state is Guarded.

    /// Subclasses override: the plugin's identity.
    open class var info: PluginInfo { fatalError("RabbitMQTransport subclasses must override info") }
    /// Subclasses override: true when each subscriber group gets every message.
    open class var fanOut: Bool { false }

    let settings: RabbitMQSettings
    let host: HostServices
    let instance: String
    let publishers: PublisherPool
    let counters = TransportCounters()
    private let reporter: StatsReporter
    /// What was declared on the broker, and when (monotonic): declarations are idempotent, this
    /// saves the round trip. Delay queues are declared again before their `x-expires` runs out.
    private let declared = Guarded<[String: Int64]>([:])
    private let consumers = Guarded<(byID: [SubscriptionID: RabbitMQConsumer], next: SubscriptionID)>(([:], 0))
    /// Set by `drain`; read without a lock on every publish and delivery.
    let draining = Atomic<Bool>(false)
    /// What the plugin puts as CloudEvents `source` on plain messages.
    let source: String

    /// Where a message is sent.
    struct Target: Hashable {
        var exchange: String
        var routingKey: String
        /// Unroutable messages come back as errors (queues); a topic without groups drops them.
        var mandatory: Bool
        /// Readable, for names and errors.
        var name: String { exchange.isEmpty ? routingKey : exchange }
    }

    /// Connects once, to fail at start with a clear error when the broker is unreachable or the
    /// credentials are wrong, and keeps that connection as the first publisher.
    public required init(context: TransportContext) throws(TransportError) {
        let config = try context.decodeConfig(RabbitMQConfig.self)
        settings = try RabbitMQSettings(config, instance: context.instanceName)
        host = context.host
        instance = context.instanceName
        // The broker keeps the depth; this instance knows only its own deliveries.
        reporter = StatsReporter(host: context.host, reportsDepth: false)
        source = "switchyard://rabbitmq/\(context.instanceName)"
        publishers = PublisherPool(settings: settings)
        try publishers.warmUp()
        host.log(.info, "connected to \(settings.address) as \(settings.user); \(settings.quorum ? "quorum" : "classic") queues under '\(settings.prefix)'")
    }

    // MARK: Names and topology

    var deadLetterExchange: String { settings.prefix + ".dlx" }
    func queueName(_ channel: String) -> String { settings.prefix + "." + channel }
    func groupQueueName(_ channel: String, group: String) -> String { settings.prefix + "." + channel + "~" + (group.isEmpty ? "default" : group) }
    /// The subscriber group whose queue of `channel` `queue` is (``groupQueueName(_:group:)``
    /// read back), or nil for another queue (a queue's, not a topic group's).
    func group(ofQueue queue: String?, channel: String) -> String? {
        let prefix = settings.prefix + "." + channel + "~"
        guard Self.fanOut, let queue, queue.hasPrefix(prefix) else { return nil }
        let group = String(queue.dropFirst(prefix.count))
        return group == "default" ? "" : group
    }
    func isDeadLetterChannel(_ channel: String) -> Bool { channel.hasSuffix(settings.deadLetterSuffix) }
    func isEphemeral(_ channel: String) -> Bool { settings.ephemeralPrefixes.contains { channel.hasPrefix($0) } }

    /// A channel must make queue and exchange names of at most 255 bytes (AMQP's short strings);
    /// the names derived from it are checked again where they are declared.
    func checkChannel(_ channel: String) throws(TransportError) {
        guard !channel.isEmpty else { throw TransportError(.invalidArgument, "channel is empty") }
        guard (queueName(channel) + settings.deadLetterSuffix).utf8.count <= 255 else {
            throw TransportError(.invalidArgument, "channel '\(channel.prefix(40))…' is too long for RabbitMQ's 255-byte queue names with prefix '\(settings.prefix)'")
        }
    }

    /// Runs `declare` once per `key` (again after `refreshNanos`, when given).
    private func once(_ key: String, refreshNanos: Int64? = nil, _ declare: () throws(TransportError) -> Void) throws(TransportError) {
        let now = monotonicNow()
        let fresh = declared.withLock { declared -> Bool in
            guard let at = declared[key] else { return false }
            return refreshNanos.map { now - at < $0 } ?? true
        }
        if fresh { return }
        try declare()
        declared.withLock { $0[key] = now }
    }

    /// Forgets every declaration (the broker may have lost or deleted something).
    func forgetDeclarations() { declared.withLock { $0.removeAll() } }

    /// The arguments of a queue that holds messages (not a dead-letter or delay queue).
    private func queueArguments(deadLetterQueue: String?) -> [(String, AMQPField)] {
        var arguments: [(String, AMQPField)] = [("x-queue-type", .string(settings.quorum ? "quorum" : "classic"))]
        if let deadLetterQueue {
            arguments += [("x-dead-letter-exchange", .string(deadLetterExchange)), ("x-dead-letter-routing-key", .string(deadLetterQueue))]
            // Quorum queues dead-letter at most once unless told otherwise (which needs reject-publish).
            if settings.quorum { arguments += [("x-dead-letter-strategy", .string("at-least-once")), ("x-overflow", .string("reject-publish"))] }
        }
        return arguments
    }

    /// The dead-letter queue `name`, bound to the dead-letter exchange under its own name.
    private func ensureDeadLetterQueue(_ name: String, on connection: AMQPConnection) throws(TransportError) {
        try once("dlq:" + name) { () throws(TransportError) in
            try connection.declareExchange(deadLetterExchange, type: "direct")
            try connection.declareQueue(name, arguments: queueArguments(deadLetterQueue: nil))
            try connection.bind(name, to: deadLetterExchange, routingKey: name)
        }
    }

    /// A queue for `channel` (its dead-letter queue first); ephemeral channels get a classic
    /// queue the broker deletes once unused for a minute, without dead letters.
    func ensureQueue(_ name: String, channel: String, on connection: AMQPConnection) throws(TransportError) {
        if isEphemeral(channel) {
            try once("q:" + name) { () throws(TransportError) in
                try connection.declareQueue(name, arguments: [("x-queue-type", .string("classic")), ("x-expires", .int(60_000))])
            }
            return
        }
        let deadLetters = queueName(channel + settings.deadLetterSuffix)
        try ensureDeadLetterQueue(deadLetters, on: connection)
        try once("q:" + name) { () throws(TransportError) in try connection.declareQueue(name, arguments: queueArguments(deadLetterQueue: deadLetters)) }
    }

    /// Where a fresh publish to `channel` goes, declared.
    func target(_ channel: String, on connection: AMQPConnection) throws(TransportError) -> Target {
        try checkChannel(channel)
        if isDeadLetterChannel(channel) {
            let name = queueName(channel)
            try ensureDeadLetterQueue(name, on: connection)
            return Target(exchange: deadLetterExchange, routingKey: name, mandatory: true)
        }
        if Self.fanOut && !isEphemeral(channel) {
            let exchange = queueName(channel)
            try once("x:" + exchange) { () throws(TransportError) in try connection.declareExchange(exchange, type: "fanout") }
            return Target(exchange: exchange, routingKey: "", mandatory: false)
        }
        let name = queueName(channel)
        try ensureQueue(name, channel: channel, on: connection)
        return Target(exchange: "", routingKey: name, mandatory: true)
    }

    /// The queue a subscription of `channel` and `group` reads, declared (and bound, on a topic).
    func subscriptionQueue(_ channel: String, group: String, on connection: AMQPConnection) throws(TransportError) -> String {
        try checkChannel(channel)
        if isDeadLetterChannel(channel) {
            let name = queueName(channel)
            try ensureDeadLetterQueue(name, on: connection)
            return name
        }
        guard Self.fanOut && !isEphemeral(channel) else {
            let name = queueName(channel)
            try ensureQueue(name, channel: channel, on: connection)
            return name
        }
        let exchange = queueName(channel)
        let name = groupQueueName(channel, group: group)
        try once("x:" + exchange) { () throws(TransportError) in try connection.declareExchange(exchange, type: "fanout") }
        try ensureQueue(name, channel: channel, on: connection)
        try once("b:" + name) { () throws(TransportError) in try connection.bind(name, to: exchange, routingKey: "") }
        return name
    }

    /// The longest delay: a delay queue must outlive its messages, and its `x-expires` (at least
    /// twice the TTL plus ten minutes) may not pass RabbitMQ's limit of 2^32 - 1 ms. About 24.8 days.
    static let longestDelayMillis: Int64 = (4_294_967_295 - 600_000) / 2

    /// The delay bucket for `nanos`: the next of 8 steps per doubling at or above it, so a
    /// message waits at most 9% longer than asked, never less, and few queues exist.
    static func delayBucketMillis(_ nanos: Int64) -> Int64 {
        let millis = max(1, (nanos + 999_999) / 1_000_000)
        guard millis > 8 else { return millis }
        var step = Int64((8 * log2(Double(millis))).rounded(.down))
        while true {
            let bucket = Int64(pow(2, Double(step) / 8).rounded(.up))
            if bucket >= millis { return min(bucket, longestDelayMillis) }
            step += 1
        }
    }

    /// A queue that holds messages for `millis` and then dead-letters them to `target`; it
    /// deletes itself when unused for twice that plus ten minutes, and is declared again before.
    func delayQueue(_ millis: Int64, to target: Target, on connection: AMQPConnection) throws(TransportError) -> Target {
        let targetName = target.name.hasPrefix(settings.prefix + ".") ? String(target.name.dropFirst(settings.prefix.count + 1)) : target.name
        let name = "\(settings.prefix).delay.\(millis).\(targetName)"
        let expires = 2 * millis + 600_000
        try once("d:" + name, refreshNanos: expires / 2 * 1_000_000) { () throws(TransportError) in
            var arguments: [(String, AMQPField)] = [
                ("x-queue-type", .string(settings.quorum ? "quorum" : "classic")), ("x-message-ttl", .int(millis)), ("x-expires", .int(expires)),
                ("x-dead-letter-exchange", .string(target.exchange)),
            ]
            if !target.routingKey.isEmpty { arguments.append(("x-dead-letter-routing-key", .string(target.routingKey))) }
            if settings.quorum { arguments += [("x-dead-letter-strategy", .string("at-least-once")), ("x-overflow", .string("reject-publish"))] }
            try connection.declareQueue(name, arguments: arguments)
        }
        return Target(exchange: "", routingKey: name, mandatory: true)
    }

    // MARK: Publish

    public func publish(_ message: MessageView) throws(TransportError) {
        try publish(batch: [message])
    }

    /// Checks every message first, then sends them all and waits for the broker's confirms: a
    /// batch with a bad message sends nothing. (AMQP has no atomic batch: a connection lost
    /// midway can leave part of it stored, and the error says to publish again.)
    public func publish(batch: [MessageView]) throws(TransportError) {
        if draining.load(ordering: .relaxed) { throw TransportError(.closed, "the transport is draining") }
        let now = host.nowNanos()
        for message in batch {
            try checkChannel(message.channel)
            // The whole message, as every transport counts it (body, id, channel, headers).
            if let violation = MessageLimits.size(settings.maxMessageBytes).violation(of: message) {
                throw TransportError(.tooLarge, "\(violation); nothing was sent")
            }
            // AMQP short strings: the message id, and header names with their `cloudEvents_` prefix.
            guard message.fields.id.len <= 255 else { throw TransportError(.invalidArgument, "message id is \(message.fields.id.len) bytes; AMQP allows 255") }
            for index in 0..<message.headerCount where message.fields.headers[index].key.len > 240 {
                throw TransportError(.invalidArgument, "header name '\(String(message.fields.headers[index].key).prefix(40))…' is longer than the 240 bytes AMQP leaves it")
            }
            if message.deliverAtNanos > 0, (message.deliverAtNanos - now) / 1_000_000 > Self.longestDelayMillis {
                throw TransportError(.invalidArgument, "RabbitMQ holds a message for at most 24 days (a delay queue's lifetime limit); use a delay transport for longer")
            }
        }
        try withPublisher { (connection, deadline) throws(TransportError) in
            // Every destination declared before anything is sent: a refused declaration sends nothing.
            var plan: [(message: MessageView, target: Target, extras: AMQPExtras, dead: Message?)] = []
            for message in batch {
                if message.expiresAtNanos > 0 && message.expiresAtNanos <= now {
                    // Expired already: never queued (a TTL of 0 still reaches a waiting consumer).
                    if message.flags.contains(.dropWhenExpired) { continue }
                    let dead = DeadLetter.copy(
                        of: message.copy(), to: message.channel + settings.deadLetterSuffix, group: "", reason: "expired", history: ["expired"], now: now)
                    plan.append((message, try target(dead.channel, on: connection), AMQPExtras(), dead))
                    continue
                }
                var target = try target(message.channel, on: connection)
                var extras = AMQPExtras()
                let delayNanos = message.deliverAtNanos - now
                if delayNanos > 1_000_000 {
                    target = try delayQueue(Self.delayBucketMillis(delayNanos), to: target, on: connection)
                } else if message.expiresAtNanos > 0 {
                    extras.expirationMillis = (message.expiresAtNanos - now + 999_999) / 1_000_000
                }
                plan.append((message, target, extras, nil))
            }
            try sendConfirmed(plan.count, on: connection, deadline: deadline) { (index) throws(TransportError) in
                let item = plan[index]
                let arena = AMQPArena()
                if let dead = item.dead {
                    return try dead.withCMessage { (pointer) throws(TransportError) in
                        try send(try MessageView(validating: pointer), to: item.target, extras: item.extras, on: connection, arena: arena, now: now)
                    }
                }
                return try send(item.message, to: item.target, extras: item.extras, on: connection, arena: arena, now: now)
            }
            // Counted and reported only once the broker has them.
            for item in plan {
                if let dead = item.dead {
                    counters.deadLettered.add(1, ordering: .relaxed)
                    host.deadLettered(dead, reason: "expired")
                } else {
                    counters.published.add(1, ordering: .relaxed)
                }
            }
        }
        reporter.report(stats())
    }

    /// Runs `body` on a publisher connection; after a failure, every declaration is made again
    /// the next time (the broker may have lost or deleted a queue: a return, a 404).
    func withPublisher<R>(_ body: (AMQPConnection, Int64) throws(TransportError) -> R) throws(TransportError) -> R {
        do {
            return try publishers.with(deadlineNanos: monotonicNow() + settings.publishTimeoutNanos, body)
        } catch {
            forgetDeclarations()
            throw error
        }
    }

    /// Sends one message (no confirm wait) and returns its publish tag.
    @discardableResult
    func send(_ message: MessageView, to target: Target, extras: AMQPExtras, on connection: AMQPConnection, arena: AMQPArena, now: Int64) throws(TransportError)
        -> UInt64
    {
        var properties = AMQPMessage.properties(message, extras: extras, source: source, nowNanos: now, arena: arena)
        return try connection.publish(
            exchange: target.exchange, routingKey: target.routingKey, mandatory: target.mandatory, properties: &properties, body: message.body, arena: arena)
    }

    /// Sends items `0..<count` with `send` (which returns each one's publish tag) and waits for
    /// the broker's confirms; what it nacks (did not store: a quorum queue that has no leader yet,
    /// as just after it was declared) is sent again, with a growing pause, until `deadline`.
    func sendConfirmed(_ count: Int, on connection: AMQPConnection, deadline: Int64, _ send: (Int) throws(TransportError) -> UInt64) throws(TransportError) {
        var pending = Array(0..<count)
        var pauseMicros: UInt32 = 5_000
        while true {
            var byTag: [UInt64: Int] = [:]
            for index in pending { byTag[try send(index)] = index }
            let nacked = try connection.waitForConfirms(deadlineNanos: deadline)
            guard !nacked.isEmpty else { return }
            guard monotonicNow() + Int64(pauseMicros) * 1_000 < deadline else {
                throw TransportError(
                    .unavailable,
                    "RabbitMQ refused to store \(nacked.count) message(s) until the publish timeout (nack: a quorum queue without a leader, or a queue at its length limit); they are not stored — publish again"
                )
            }
            pending = nacked.compactMap { byTag[$0] }
            usleep(pauseMicros)
            pauseMicros = min(pauseMicros * 2, 200_000)
        }
    }

    /// Queues `message` again on `queue` — now, or after `afterNanos` through a delay queue — as
    /// attempt `attempt` with `history`, and waits for the confirm. Retries and releases; not
    /// refused while draining (a drain releases this way).
    /// A delay longer than the longest a delay queue holds (24 days) is cut to it.
    func requeue(_ message: Message, on queue: String, attempt: UInt32, history: [String], afterNanos requested: Int64) throws(TransportError) {
        let now = host.nowNanos()
        let afterNanos = min(requested, Self.longestDelayMillis * 1_000_000)
        try withPublisher { (connection, deadline) throws(TransportError) in
            var target = Target(exchange: "", routingKey: queue, mandatory: true)
            if afterNanos > 1_000_000 { target = try delayQueue(Self.delayBucketMillis(afterNanos), to: target, on: connection) }
            var extras = AMQPExtras(attempt: attempt, history: history)
            if message.expiresAtNanos > 0 && afterNanos <= 1_000_000 { extras.expirationMillis = (message.expiresAtNanos - now + 999_999) / 1_000_000 }
            try sendConfirmed(1, on: connection, deadline: deadline) { (_) throws(TransportError) in
                let arena = AMQPArena()
                return try message.withCMessage { (pointer) throws(TransportError) in
                    try send(try MessageView(validating: pointer), to: target, extras: extras, on: connection, arena: arena, now: now)
                }
            }
        }
    }

    /// Publishes the dead-letter copy of `delivered` (waiting for the confirm) and tells the host.
    func deadLetter(_ delivered: Message, group: String, reason: String, history: [String]) throws(TransportError) {
        let channel = isDeadLetterChannel(delivered.channel) ? delivered.channel : delivered.channel + settings.deadLetterSuffix
        let dead = DeadLetter.copy(
            of: delivered, to: channel, group: group, groupCopy: Self.fanOut && !isDeadLetterChannel(delivered.channel), reason: reason,
            history: history + [reason], now: host.nowNanos())
        let now = host.nowNanos()
        try withPublisher { (connection, deadline) throws(TransportError) in
            let target = try target(dead.channel, on: connection)
            try sendConfirmed(1, on: connection, deadline: deadline) { (_) throws(TransportError) in
                let arena = AMQPArena()
                return try dead.withCMessage { (pointer) throws(TransportError) in
                    try send(try MessageView(validating: pointer), to: target, extras: AMQPExtras(), on: connection, arena: arena, now: now)
                }
            }
        }
        counters.deadLettered.add(1, ordering: .relaxed)
        host.deadLettered(dead, reason: reason)
    }

    // MARK: Subscribe

    public func subscribe(_ options: SubscribeOptions, _ subscriber: Subscriber) throws(TransportError) -> SubscriptionID {
        try checkChannel(options.channel)
        if draining.load(ordering: .relaxed) { throw TransportError(.closed, "the transport is draining") }
        let group = Self.fanOut && !isDeadLetterChannel(options.channel) ? options.group : ""
        // Declared now, on a publisher connection: a bad name or a mismatched queue fails here.
        let queue = try withPublisher { (connection, _) throws(TransportError) in
            try subscriptionQueue(options.channel, group: group, on: connection)
        }
        let id = consumers.withLock { state -> SubscriptionID in
            state.next += 1
            return state.next
        }
        let consumer = RabbitMQConsumer(
            id: id, channel: options.channel, group: group, queue: queue, subscriber: subscriber,
            prefetch: options.maxInFlight > 0 ? min(65_535, Int(options.maxInFlight)) : settings.maxInFlight,
            visibilityNanos: options.visibilityTimeoutNanos > 0 ? options.visibilityTimeoutNanos : settings.ackWaitNanos, transport: self)
        try consumer.start()
        consumers.withLock { $0.byID[id] = consumer }
        return id
    }

    public func unsubscribe(_ id: SubscriptionID) throws(TransportError) {
        guard let consumer = consumers.withLock({ $0.byID.removeValue(forKey: id) }) else {
            throw TransportError(.notFound, "no subscription \(id)")
        }
        consumer.stop(releasing: true)
    }

    // MARK: Settle

    /// The plugin's own lease (`ack_wait`): RabbitMQ has none; the consumer returns a delivery
    /// unsettled that long to the queue.
    public var leaseNanos: Int64 { settings.ackWaitNanos }

    /// Restarts each delivery's lease in its consumer (nothing crosses the wire).
    public func extend(_ deliveries: UnsafeBufferPointer<DeliveryID>) -> [TransportError?] {
        deliveries.map { delivery in
            let consumer = consumers.withLock { $0.byID[RabbitMQConsumer.subscription(of: delivery)] }
            guard let consumer, consumer.extend(delivery) else { return TransportError(.notFound, "extend: no unsettled delivery \(delivery)") }
            return nil
        }
    }

    public func settle(_ delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {
        let consumer = consumers.withLock { $0.byID[RabbitMQConsumer.subscription(of: delivery)] }
        guard let consumer, let pending = consumer.take(delivery) else {
            throw TransportError(.notFound, "no unsettled delivery \(delivery)")
        }
        defer { reporter.report(stats()) }
        switch settlement {
        case .ack:
            consumer.acknowledge(pending)
            counters.acked.add(1, ordering: .relaxed)
        case .retry(let after, let reason):
            try consumer.settleAfterPublishing(pending) { () throws(TransportError) in
                try requeue(pending.message, on: consumer.queue, attempt: pending.message.attempt + 1, history: pending.history + [reason], afterNanos: after)
            }
            counters.retried.add(1, ordering: .relaxed)
        case .release:
            try consumer.settleAfterPublishing(pending) { () throws(TransportError) in
                try requeue(pending.message, on: consumer.queue, attempt: pending.message.attempt, history: pending.history, afterNanos: 0)
            }
            counters.released.add(1, ordering: .relaxed)
        case .deadLetter(let reason):
            try consumer.settleAfterPublishing(pending) { () throws(TransportError) in
                try deadLetter(pending.message, group: consumer.group, reason: reason, history: pending.history)
            }
        }
    }

    // MARK: Lifecycle

    public func drain(deadlineNanos: Int64) throws(TransportError) {
        draining.store(true, ordering: .relaxed)
        let all = consumers.withLock { Array($0.byID.values) }
        for consumer in all { consumer.cancel() }
        while host.monotonicNanos() < deadlineNanos && all.contains(where: { $0.unsettled > 0 }) { usleep(5_000) }
        var released = 0
        for consumer in all { released += consumer.releaseAll() }
        if released > 0 {
            throw TransportError(.timeout, "\(released) deliveries were still unsettled at the drain deadline; released to RabbitMQ")
        }
    }

    public func stats() -> TransportStats {
        counters.stats(inFlight: UInt64(consumers.withLock { $0.byID.values.reduce(0) { $0 + $1.unsettled } }))
    }

    /// Reports the counters when an interval is due. The consumers' threads call it as they
    /// loop (at least every 100 ms while connected), so that counts settled after the last
    /// publish or settle reach the host while nothing else happens.
    func reportIfDue() { reporter.report(stats()) }

    public func shutdown() {
        let all = consumers.withLock { state in
            defer { state.byID.removeAll() }
            return Array(state.byID.values)
        }
        for consumer in all { consumer.stop(releasing: false) }
        publishers.close()
        reporter.report(stats(), force: true)
    }
}

/// The publisher connections: at most `settings.publishers` open, each used by one publisher at
/// a time; a connection that failed is closed, and the next publish opens a new one.
final class PublisherPool: @unchecked Sendable {
    // @unchecked: `idle` and `open` are guarded by `condition`.
    private let settings: RabbitMQSettings
    private let condition = NSCondition()
    private var idle: [AMQPConnection] = []
    private var open = 0
    private var closed = false

    init(settings: RabbitMQSettings) { self.settings = settings }

    /// Opens the first connection, so that a bad URL or credentials fail at start.
    func warmUp() throws(TransportError) {
        try with(deadlineNanos: monotonicNow() + settings.connectTimeoutNanos) { (_, _) throws(TransportError) in }
    }

    /// Runs `body` with a connection of its own and the deadline it must finish by.
    func with<R>(deadlineNanos: Int64, _ body: (AMQPConnection, Int64) throws(TransportError) -> R) throws(TransportError) -> R {
        let connection = try take(deadlineNanos: deadlineNanos)
        do {
            let result = try body(connection, deadlineNanos)
            give(connection)
            return result
        } catch {
            give(connection)
            throw error
        }
    }

    private func take(deadlineNanos: Int64) throws(TransportError) -> AMQPConnection {
        condition.lock()
        while true {
            if closed {
                condition.unlock()
                throw TransportError(.closed, "the transport is shut down")
            }
            if let connection = idle.popLast() {
                if connection.closedWhileIdle {
                    // The broker closed it (a restart): open another instead of failing a publish.
                    open -= 1
                    condition.unlock()
                    connection.discard()
                    condition.lock()
                    continue
                }
                condition.unlock()
                return connection
            }
            if open < settings.publishers {
                open += 1
                condition.unlock()
                do {
                    return try AMQPConnection(settings, confirms: true, heartbeatSeconds: 0)
                } catch {
                    condition.lock()
                    open -= 1
                    condition.signal()
                    condition.unlock()
                    throw error
                }
            }
            let left = deadlineNanos - monotonicNow()
            guard left > 0 else {
                condition.unlock()
                throw TransportError(.timeout, "all \(settings.publishers) publisher connections stayed busy until the publish timeout (config key 'publishers')")
            }
            _ = condition.wait(until: Date().addingTimeInterval(Double(left) / 1e9))
        }
    }

    private func give(_ connection: AMQPConnection) {
        condition.lock()
        if connection.broken || closed {
            open -= 1
            condition.signal()
            condition.unlock()
            connection.close()
            return
        }
        idle.append(connection)
        condition.signal()
        condition.unlock()
    }

    /// Closes the idle connections; those in use close when given back.
    func close() {
        condition.lock()
        closed = true
        let connections = idle
        idle.removeAll()
        open -= connections.count
        condition.broadcast()
        condition.unlock()
        for connection in connections { connection.close() }
    }
}
