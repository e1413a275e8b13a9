// The NATS JetStream transports (`nats`, `nats-topic`): Switchyard's channels as subjects of one
// stream, subscriber groups as durable pull consumers, settlements as JetStream acknowledgements.
// Built on nats.c (Debian's libnats-dev). Mapping and semantics: docs/transports.md, "nats".
//
// Threading: nats.c blocks (publish waits for JetStream's acknowledgement, fetch long-polls), so
// every subscription has its own fetch thread, and nothing here runs on Swift's cooperative pool.

import CNats
import Foundation
import SwitchyardPluginKit
import SwitchyardTransportKit
import Synchronization

/// The shared implementation; `nats` and `nats-topic` differ only in `fanOut`.
open class NATSTransport: TransportPlugin, @unchecked Sendable {
    // @unchecked: the connection and JetStream context are thread-safe in nats.c; mutable state
    // is behind `state`.

    /// Subclasses override: the plugin's identity.
    open class var info: PluginInfo { fatalError("NATSTransport subclasses must override info") }
    /// Subclasses override: true when each subscriber group gets every message.
    open class var fanOut: Bool { false }

    let settings: NATSSettings
    let host: HostServices
    let instance: String
    let connection: OpaquePointer
    let jetStream: OpaquePointer
    private let state = Guarded(State())
    private let counters = TransportCounters()
    /// Hands the counters to the host's metrics, at most every 250 ms, from publish and settle.
    private let reporter: StatsReporter

    private struct State {
        var subscriptions: [SubscriptionID: NATSSubscription] = [:]
        var deliveries: [DeliveryID: Delivery] = [:]
        /// What JetStream cannot record for a message: how often this instance released it (a
        /// nak counts as a delivery there, a release must not count as an attempt here) and the
        /// reasons of its retries (the dead letter's history). By consumer (channel and group: on
        /// `nats-topic` each group's consumer delivers the same stream sequences, and dead letters
        /// have a stream, so sequences, of their own) and stream sequence; dropped when the message
        /// is settled for good.
        var records: [RecordKey: (releases: UInt32, reasons: [String])] = [:]
        /// Per subscription, the stream sequences of its first deliveries (``FirstDeliveries``).
        var firstDeliveries: [SubscriptionID: FirstDeliveries] = [:]
        var nextSubscription: SubscriptionID = 0
        var nextDelivery: DeliveryID = 0

        /// Changes what is remembered of a message, keeping the table bounded: it is cleared
        /// when full (a bound, not an expectation: entries of messages another process settled
        /// would otherwise stay).
        mutating func record(_ key: RecordKey, _ change: (inout (releases: UInt32, reasons: [String])) -> Void) {
            if records.count >= 100_000 { records.removeAll() }
            change(&records[key, default: (0, [])])
        }
    }

    /// A message as one consumer (channel and group) delivers it.
    struct RecordKey: Hashable {
        let channel: String
        let group: String
        let sequence: UInt64
        init(_ sequence: UInt64, of subscription: NATSSubscription) {
            channel = subscription.channel
            group = subscription.group
            self.sequence = sequence
        }
    }
    /// Set by `drain`; read without a lock on every publish and fetched batch.
    private let draining = Atomic<Bool>(false)

    /// The stream sequences of one subscription's latest first deliveries (JetStream's delivery
    /// count 1). A first delivery of a sequence this subscription already had is a message sent
    /// again as new — nats-server before 2.10.14 could, when a redelivery met only expired pull
    /// requests (nats-io/nats-server#5305) — and is a redelivery however JetStream counts it.
    /// Only a sequence the subscription really had counts: one another process's request missed
    /// may come later than higher ones and is a first delivery. And only with the same stored
    /// time: a stream made again (memory storage after a server restart) numbers its messages
    /// from 1 again. The latest ``capacity`` are kept, by count: what the server sends again is
    /// the consumer's latest new message (its next-message pointer stepped back by one), acked or
    /// not, so the latest few are what matter.
    struct FirstDeliveries {
        static let capacity = 4096
        /// Each sequence with the time its message was stored.
        private var seen: [UInt64: Int64] = [:]
        private var order: [UInt64] = []
        private var next = 0  // where the oldest is, once `order` is full

        /// Records a first delivery of `sequence` (stored at `storedAt`); false when the
        /// subscription had that message already.
        mutating func isFirst(_ sequence: UInt64, storedAt: Int64) -> Bool {
            if let known = seen[sequence] {
                if known == storedAt { return false }
                seen[sequence] = storedAt  // another message under a reused number: still in `order`
                return true
            }
            seen[sequence] = storedAt
            if order.count < Self.capacity {
                order.append(sequence)
            } else {
                seen.removeValue(forKey: order[next])
                order[next] = sequence
                next = (next + 1) % Self.capacity
            }
            return true
        }
    }

    private struct Delivery {
        let message: OpaquePointer
        let subscription: NATSSubscription
        let sequence: UInt64
        let attempt: UInt32
        /// When its ack wait last started (monotonic ns): at delivery, or at its last extension.
        var leaseStart: Int64
        /// Where what the plugin remembers of it is kept.
        var record: RecordKey { RecordKey(sequence, of: subscription) }
        /// Whether its ack wait still runs at `now`, as far as this process can tell (JetStream
        /// started it earlier, when it sent the message: past it here, past it there).
        func leaseAlive(at now: Int64) -> Bool { now - leaseStart < subscription.ackWaitNanos }
    }

    /// Connects, and makes sure the stream and the dead-letter stream exist.
    public required init(context: TransportContext) throws(TransportError) {
        let config = try context.decodeConfig(NATSConfig.self)
        settings = try NATSSettings(config, instance: context.instanceName)
        host = context.host
        // JetStream keeps the depth; this instance knows only its own deliveries.
        reporter = StatsReporter(host: context.host, reportsDepth: false)
        instance = context.instanceName
        NATSLibrary.open()
        connection = try NATSLibrary.connect(settings)
        do {
            jetStream = try NATSLibrary.jetStream(connection, waitMillis: settings.publishTimeoutMillis)
        } catch {
            natsConnection_Destroy(connection)
            throw error
        }
        do {
            try ensureStream(
                settings.stream, subject: settings.prefix + ".ch.>", retention: Self.fanOut ? js_InterestPolicy : js_WorkQueuePolicy,
                maxAgeNanos: settings.maxAgeNanos)
            // Dead letters are kept until someone deals with them: no max_age there.
            try ensureStream(settings.dlqStream, subject: settings.prefix + ".dlq.>", retention: js_WorkQueuePolicy, maxAgeNanos: 0)
        } catch {
            jsCtx_Destroy(jetStream)
            natsConnection_Destroy(connection)
            throw error
        }
        host.log(.info, "connected to \(settings.servers.joined(separator: ",")); stream \(settings.stream), replicas \(settings.replicas)")
    }

    // MARK: Subjects

    /// The subject and stream of `channel`; dead-letter channels live in the dead-letter stream.
    func place(_ channel: String) throws(TransportError) -> (subject: String, stream: String) {
        guard !channel.isEmpty, !channel.hasPrefix("."), !channel.hasSuffix("."), !channel.contains(".."),
            !channel.contains(where: { $0 == " " || $0 == "*" || $0 == ">" || $0 == "\t" || $0 == "\r" || $0 == "\n" })
        else {
            throw TransportError(.invalidArgument, "channel '\(channel)' cannot be a NATS subject (no spaces, '*', '>' or empty '.'-separated parts)")
        }
        if channel.hasSuffix(settings.deadLetterSuffix) {
            return (settings.prefix + ".dlq." + channel, settings.dlqStream)
        }
        return (settings.prefix + ".ch." + channel, settings.stream)
    }

    /// Creates stream `name`, or brings an existing one's limits to the config's: replicas,
    /// `max_age`, `max_bytes` and the discard policy (JetStream changes them in place); a storage
    /// type that differs cannot be changed, which is logged. A full stream refuses new messages
    /// (`js_DiscardNew`: a publish fails with `full`); JetStream's default, dropping the oldest,
    /// would lose messages nobody had read, without a word.
    private func ensureStream(_ name: String, subject: String, retention: jsRetentionPolicy, maxAgeNanos: Int64) throws(TransportError) {
        var info: UnsafeMutablePointer<jsStreamInfo>?
        var code = jsErrCode(rawValue: 0)
        let found = js_GetStreamInfo(&info, jetStream, name, nil, &code)
        if found == NATS_OK {
            defer { jsStreamInfo_Destroy(info) }
            if let current = info?.pointee.Config { updateStream(name, current, maxAgeNanos: maxAgeNanos) }
            return
        }
        guard found == NATS_NOT_FOUND || code == JSStreamNotFoundErr else {
            throw NATSLibrary.error(found, "cannot look up stream \(name)")
        }
        var config = jsStreamConfig()
        jsStreamConfig_Init(&config)
        config.Retention = retention
        config.Storage = settings.memory ? js_MemoryStorage : js_FileStorage
        config.Replicas = Int64(settings.replicas)
        config.MaxAge = maxAgeNanos
        config.MaxBytes = settings.maxBytes
        config.Discard = js_DiscardNew
        config.Duplicates = Self.duplicateWindow(maxAgeNanos: maxAgeNanos)
        let status = name.withCString { cName in
            subject.withCString { cSubject in
                var subjects: [UnsafePointer<CChar>?] = [cSubject]
                return subjects.withUnsafeMutableBufferPointer { list in
                    config.Name = cName
                    config.Subjects = list.baseAddress
                    config.SubjectsLen = 1
                    return js_AddStream(&info, jetStream, &config, nil, &code)
                }
            }
        }
        if status == NATS_OK {
            jsStreamInfo_Destroy(info)
        } else if code != JSStreamNameExistErr {
            throw NATSLibrary.error(status, "cannot create stream \(name) (subjects \(subject))")
        }
    }

    /// Applies the config's limits to an existing stream whose own differ (another version of the
    /// config created it), saying what changed; a change JetStream refuses is logged, not thrown:
    /// the stream still works, with its old limits.
    /// The `Nats-Msg-Id` window: publishes retried within 2 minutes are stored once. JetStream
    /// refuses a window longer than the stream's `max_age`, so a shorter age shortens it (a stream
    /// with `max_age: 30s` for replies nobody waits for failed to be created).
    static func duplicateWindow(maxAgeNanos: Int64) -> Int64 {
        maxAgeNanos > 0 ? min(120_000_000_000, maxAgeNanos) : 120_000_000_000
    }

    private func updateStream(_ name: String, _ current: UnsafeMutablePointer<jsStreamConfig>, maxAgeNanos: Int64) {
        var wanted = current.pointee  // its strings stay the stream info's, alive until it is destroyed
        wanted.Replicas = Int64(settings.replicas)
        wanted.MaxAge = maxAgeNanos
        wanted.Duplicates = Self.duplicateWindow(maxAgeNanos: maxAgeNanos)
        wanted.MaxBytes = settings.maxBytes
        wanted.Discard = js_DiscardNew
        let before = current.pointee
        var changes: [String] = []
        if before.Replicas != wanted.Replicas { changes.append("replicas \(before.Replicas) → \(wanted.Replicas)") }
        if before.MaxAge != wanted.MaxAge { changes.append("max_age \(before.MaxAge / 1_000_000) ms → \(wanted.MaxAge / 1_000_000) ms (0: none)") }
        if before.Duplicates != wanted.Duplicates {
            changes.append("duplicate window \(before.Duplicates / 1_000_000) ms → \(wanted.Duplicates / 1_000_000) ms (at most max_age)")
        }
        if before.MaxBytes != wanted.MaxBytes { changes.append("max_bytes \(before.MaxBytes) → \(wanted.MaxBytes) (-1: none)") }
        if before.Discard != wanted.Discard { changes.append("discard old → new (a full stream refuses publishes)") }
        let storage = settings.memory ? js_MemoryStorage : js_FileStorage
        if before.Storage != storage {
            host.log(
                .warning,
                "stream \(name) keeps its \(before.Storage == js_MemoryStorage ? "memory" : "file") storage: JetStream cannot change a stream's storage (config key 'storage'); delete the stream to recreate it, once it is empty"
            )
        }
        guard !changes.isEmpty else { return }
        var updated: UnsafeMutablePointer<jsStreamInfo>?
        var code = jsErrCode(rawValue: 0)
        let status = js_UpdateStream(&updated, jetStream, &wanted, nil, &code)
        jsStreamInfo_Destroy(updated)
        if status == NATS_OK {
            host.log(.info, "stream \(name) updated to the config: \(changes.joined(separator: ", "))")
        } else {
            host.log(
                .warning,
                "stream \(name) keeps its limits: JetStream refused \(changes.joined(separator: ", ")): \(NATSLibrary.error(status, "update").message) (jsErrCode \(code.rawValue))"
            )
        }
    }

    // MARK: Publish

    public func publish(_ message: MessageView) throws(TransportError) {
        try publish(message, messageID: nil)
    }

    /// Publishes `message`; `messageID` overrides the de-duplication id (dead letters, replays).
    func publish(_ message: MessageView, messageID explicitID: String?) throws(TransportError) {
        if draining.load(ordering: .relaxed) { throw TransportError(.closed, "the transport is draining") }
        // The whole message, as every transport counts it (body, id, channel, headers).
        if let limit = settings.maxMessageBytes, let violation = MessageLimits.size(limit).violation(of: message) {
            throw TransportError(.tooLarge, "\(violation); nothing was sent")
        }
        if message.deliverAtNanos > host.nowNanos() + 1_000_000 {
            throw TransportError(.unsupported, "\(Self.info.name) cannot hold a message until later: put a delay transport in front of it")
        }
        let id = message.id
        var messageID = explicitID
        if messageID == nil, message.headerCount > 0, let replayed = message.header(DeadLetterHeader.replayedAt) {
            // A dead letter published again: not a repeat of the original publish, which
            // JetStream would drop within its de-duplication window (the replay then lost).
            messageID = "\(id).replay.\(replayed)"
        }
        let (subject, _) = try place(message.channel)
        var natsMessage: OpaquePointer?
        let body = message.body
        try NATSLibrary.check(natsMsg_Create(&natsMessage, subject, nil, body.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(body.count)), "cannot create a message")
        defer { natsMsg_Destroy(natsMessage) }
        var hasCloudEvent = false
        var order: [String] = []
        // A key with a line break in any of its values has every value escaped: the reader
        // unescapes by key.
        var escaped: [String] = []
        for index in 0..<message.headerCount where NATSHeaders.needsEscaping(message.fields.headers[index].value) {
            let key = String(message.fields.headers[index].key)
            if !escaped.contains(key) { escaped.append(key) }
        }
        for index in 0..<message.headerCount {
            let header = message.fields.headers[index]
            let key = String(header.key)
            if key == CloudEventsHeader.specVersion { hasCloudEvent = true }
            order.append(key)
            natsMsgHeader_Add(natsMessage, key, escaped.contains(key) ? NATSHeaders.escape(String(header.value)) : String(header.value))
        }
        if !escaped.isEmpty { natsMsgHeader_Set(natsMessage, NATSHeaders.escaped, escaped.joined(separator: ",")) }
        if !hasCloudEvent {
            // Every message on the wire is a CloudEvent: give plain messages the required
            // attributes (and take them off again on delivery, so a message arrives as it left).
            natsMsgHeader_Add(natsMessage, CloudEventsHeader.specVersion, "1.0")
            natsMsgHeader_Add(natsMessage, CloudEventsHeader.id, id)
            natsMsgHeader_Add(natsMessage, CloudEventsHeader.source, "switchyard://nats/\(instance)")
            natsMsgHeader_Add(natsMessage, CloudEventsHeader.type, "switchyard.message")
            natsMsgHeader_Set(natsMessage, NATSHeaders.addedCloudEvent, "1")
        }
        // NATS headers are a map: keep the order the publisher gave.
        if order.count > 1 { natsMsgHeader_Set(natsMessage, NATSHeaders.order, order.joined(separator: ",")) }
        if let key = message.orderingKey { natsMsgHeader_Set(natsMessage, NATSHeaders.orderingKey, key) }
        natsMsgHeader_Set(natsMessage, NATSHeaders.messageID, messageID ?? id)
        if let messageID, messageID != id { natsMsgHeader_Set(natsMessage, NATSHeaders.id, id) }
        var options = jsPubOptions()
        jsPubOptions_Init(&options)
        options.MaxWait = settings.publishTimeoutMillis
        var ack: UnsafeMutablePointer<jsPubAck>?
        var code = jsErrCode(rawValue: 0)
        let status = (messageID ?? id).withCString { cID in
            options.MsgId = cID
            return js_PublishMsg(&ack, jetStream, natsMessage, &options, &code)
        }
        jsPubAck_Destroy(ack)
        guard status == NATS_OK else {
            if status == NATS_TIMEOUT {
                throw TransportError(
                    .timeout,
                    "JetStream did not acknowledge the publish within \(settings.publishTimeoutMillis) ms (config key 'publish_timeout'; NATS unreachable or electing a leader); it may have been stored — publishing it again with the same id is deduplicated"
                )
            }
            let failed = NATSLibrary.error(status, "NATS publish to \(subject) failed")
            if code == JSStreamStoreFailedErr {
                // A stream at its max_bytes refuses new messages (discard new): nothing stored.
                throw TransportError(.full, "\(failed.message): the stream is full (config key 'max_bytes'); nothing was stored")
            }
            // A send that broke on a connection the server closed (reset, killed): the server is
            // unreachable, as for the statuses nats.c reports once it knows (and maybe stored).
            guard status == NATS_IO_ERROR else { throw failed }
            throw TransportError(
                .unavailable,
                "\(failed.message): the connection to the NATS server broke (it is reconnecting); the message may have been stored — publishing it again with the same id is deduplicated"
            )
        }
        counters.published.add(1, ordering: .relaxed)
        reporter.report(stats())
    }

    // MARK: Subscribe

    public func subscribe(_ options: SubscribeOptions, _ subscriber: Subscriber) throws(TransportError) -> SubscriptionID {
        // Drained: a new consumer would only fetch and give back (nak) everything, in a loop.
        if draining.load(ordering: .relaxed) { throw TransportError(.closed, "subscribe: the transport is draining") }
        let (subject, stream) = try place(options.channel)
        let deadLetters = options.channel.hasSuffix(settings.deadLetterSuffix)
        let group = Self.fanOut && !deadLetters ? options.group : ""
        let ephemeral = settings.ephemeralPrefixes.contains { options.channel.hasPrefix($0) }
        let ackWait = options.visibilityTimeoutNanos > 0 ? options.visibilityTimeoutNanos : settings.ackWaitNanos
        let consumer = try ensureConsumer(
            stream: stream, subject: subject, name: ephemeral ? nil : Self.consumerName(options.channel, group: group), group: group,
            deliverNew: Self.fanOut && !deadLetters && options.start == .new, ackWaitNanos: ackWait)
        var subscription: OpaquePointer?
        var code = jsErrCode(rawValue: 0)
        var subOptions = jsSubOptions()
        jsSubOptions_Init(&subOptions)
        let status = stream.withCString { cStream in
            consumer.withCString { cConsumer in
                subOptions.Stream = cStream
                subOptions.Consumer = cConsumer
                return js_PullSubscribe(&subscription, jetStream, subject, cConsumer, nil, &subOptions, &code)
            }
        }
        guard status == NATS_OK, let subscription else { throw NATSLibrary.error(status, "cannot subscribe to \(subject) as consumer \(consumer)") }
        let maxInFlight = options.maxInFlight > 0 ? Int(options.maxInFlight) : settings.maxInFlight
        let id = state.withLock { state -> SubscriptionID in
            state.nextSubscription += 1
            return state.nextSubscription
        }
        let handle = NATSSubscription(
            id: id, channel: options.channel, group: group, subscription: subscription, subscriber: subscriber,
            maxInFlight: maxInFlight, batch: settings.fetchBatch, ackWaitNanos: ackWait)
        state.withLock { $0.subscriptions[id] = handle }
        handle.start(
            { [weak self] messages in self?.deliver(messages, to: handle) ?? messages.forEach { natsMsg_Destroy($0) } },
            afterFetch: { [weak self] in
                guard let self else { return }
                reporter.report(stats())
            })
        return id
    }

    /// Creates the consumer (or updates it, when it exists with another AckWait) and returns its
    /// name. A subscription's visibility timeout is its consumer's AckWait: the members of a group
    /// share it, and the last one to subscribe sets it.
    private func ensureConsumer(
        stream: String, subject: String, name: String?, group: String, deliverNew: Bool, ackWaitNanos: Int64
    ) throws(TransportError) -> String {
        var config = jsConsumerConfig()
        jsConsumerConfig_Init(&config)
        config.AckPolicy = js_AckExplicit
        config.AckWait = ackWaitNanos
        config.MaxDeliver = -1  // dead-lettering is Switchyard's decision (a message at MaxDeliver would stay in a work queue)
        config.MaxAckPending = Int64(settings.maxInFlight)
        config.DeliverPolicy = deliverNew ? js_DeliverNew : js_DeliverAll
        if name == nil { config.InactiveThreshold = 60_000_000_000 }
        var info: UnsafeMutablePointer<jsConsumerInfo>?
        var code = jsErrCode(rawValue: 0)
        let status = subject.withCString { cSubject in
            (name ?? "").withCString { cName in
                (Self.groupDescriptionPrefix + group).withCString { cDescription in
                    config.FilterSubject = cSubject
                    config.Description = cDescription
                    if name != nil { config.Durable = cName }
                    let added = js_AddConsumer(&info, jetStream, stream, &config, nil, &code)
                    guard added != NATS_OK, name != nil, code == JSConsumerNameExistErr else { return added }
                    jsConsumerInfo_Destroy(info)
                    info = nil
                    return js_UpdateConsumer(&info, jetStream, stream, &config, nil, &code)
                }
            }
        }
        defer { jsConsumerInfo_Destroy(info) }
        if status == NATS_OK, let info { return String(cString: info.pointee.Name) }
        if let name, code == JSConsumerNameExistErr || code == JSConsumerExistingActiveErr { return name }
        throw NATSLibrary.error(status, "cannot create the consumer for \(subject) on stream \(stream)")
    }

    /// How a consumer's description starts; the subscriber group follows, so that
    /// ``channelStats()`` reads it back (the name is a hash) and `nats consumer info` shows it.
    static let groupDescriptionPrefix = "Switchyard subscriber group: "

    /// What JetStream holds per channel and group (ABI 1.9), every process's deliveries counted:
    /// each consumer's pending messages (not yet delivered to it) and acknowledgements pending (in
    /// flight — a retry waiting for its backoff too: JetStream keeps it unacknowledged, so nothing
    /// reads as waiting), by its filter subject; on a work-queue stream (`nats`, and the dead
    /// letters of both) a channel that no consumer reads yet has its stored messages as depth.
    public func channelStats() throws(TransportError) -> [ChannelStats]? {
        var found: [ChannelStats] = []
        for (stream, prefix, workQueue) in [
            (settings.stream, settings.prefix + ".ch.", !Self.fanOut), (settings.dlqStream, settings.prefix + ".dlq.", true),
        ] {
            var read = Set<String>()
            var consumers: UnsafeMutablePointer<jsConsumerInfoList>?
            var code = jsErrCode(rawValue: 0)
            let listed = js_Consumers(&consumers, jetStream, stream, nil, &code)
            guard listed == NATS_OK || listed == NATS_NOT_FOUND else { throw NATSLibrary.error(listed, "cannot list the consumers of stream \(stream)") }
            defer { jsConsumerInfoList_Destroy(consumers) }
            for index in 0..<Int(consumers?.pointee.Count ?? 0) {
                guard let info = consumers?.pointee.List[index], let config = info.pointee.Config, let filter = config.pointee.FilterSubject
                else { continue }
                let subject = String(cString: filter)
                guard subject.hasPrefix(prefix) else { continue }
                let channel = String(subject.dropFirst(prefix.count))
                let description = config.pointee.Description.map { String(cString: $0) } ?? ""
                let group = description.hasPrefix(Self.groupDescriptionPrefix) ? String(description.dropFirst(Self.groupDescriptionPrefix.count)) : ""
                found.append(
                    ChannelStats(channel: channel, group: group, depth: info.pointee.NumPending, inFlight: UInt64(max(0, info.pointee.NumAckPending))))
                read.insert(channel)
            }
            guard workQueue else { continue }  // an interest stream keeps nothing for a channel nobody reads
            var options = jsOptions()
            jsOptions_Init(&options)
            var info: UnsafeMutablePointer<jsStreamInfo>?
            let status = (prefix + ">").withCString { filter in
                options.Stream.Info.SubjectsFilter = filter
                return js_GetStreamInfo(&info, jetStream, stream, &options, &code)
            }
            guard status == NATS_OK else { throw NATSLibrary.error(status, "cannot read the subjects of stream \(stream)") }
            defer { jsStreamInfo_Destroy(info) }
            guard let subjects = info?.pointee.State.Subjects else { continue }
            for index in 0..<Int(subjects.pointee.Count) {
                let one = subjects.pointee.List[index]
                guard let name = one.Subject else { continue }
                let channel = String(String(cString: name).dropFirst(prefix.count))
                if !read.contains(channel) { found.append(ChannelStats(channel: channel, depth: one.Msgs)) }
            }
        }
        return found
    }

    /// A durable consumer name for a channel and group: readable, and unique by a hash.
    static func consumerName(_ channel: String, group: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in (channel + "\u{0}" + group).utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        let readable = (channel + (group.isEmpty ? "" : "-" + group)).map { $0.isASCII && ($0.isLetter || $0.isNumber) ? $0 : "_" }
        return "sy-" + String(readable.prefix(40)) + "-" + String(hash, radix: 16)
    }

    /// Hands fetched messages to the subscriber (on the subscription's fetch thread): read
    /// outside the lock, registered as deliveries under one lock for the whole fetch, then handed
    /// over in one `deliver_batch` where the subscriber takes batches. What it does not take goes
    /// back to JetStream, as does the whole batch when a drain began meanwhile.
    private func deliver(_ fetched: [OpaquePointer], to subscription: NATSSubscription) {
        var sequences: [UInt64] = []
        var messages: [Message] = []
        sequences.reserveCapacity(fetched.count)
        messages.reserveCapacity(fetched.count)
        for natsMessage in fetched {
            var sequence: UInt64 = 0
            messages.append(NATSLibrary.message(natsMessage, channel: subscription.channel, sequence: &sequence))
            sequences.append(sequence)
        }
        // Registered under the lock `drain` reads the deliveries under, after setting its flag:
        // a drain that began meanwhile either sees these deliveries and waits for them, or is
        // seen here and gets the batch back.
        let now = monotonicNanoseconds()
        let deliveries = state.withLock { state -> [DeliveryID]? in
            if draining.load(ordering: .relaxed) {
                for index in fetched.indices { state.record(RecordKey(sequences[index], of: subscription)) { $0.releases += 1 } }
                return nil
            }
            return fetched.indices.map { index in
                state.nextDelivery += 1
                let record = RecordKey(sequences[index], of: subscription)
                // A message JetStream sent again as new is a redelivery all the same.
                if messages[index].attempt == 1,
                    !state.firstDeliveries[subscription.id, default: FirstDeliveries()].isFirst(
                        sequences[index], storedAt: messages[index].enqueuedAtNanos)
                {
                    messages[index].attempt = 2
                }
                // A redelivery proves every earlier delivery of the message stale, whatever this
                // process's clock says of its lease (JetStream started the ack wait before the
                // fetch returned it): a settle or extend of one is refused from now on. Looked
                // for on redeliveries only, which are rare.
                if messages[index].attempt > 1 {
                    for (id, held) in state.deliveries where held.record == record { state.deliveries[id]!.leaseStart = Int64.min / 2 }
                }
                let releases = state.records[record]?.releases ?? 0
                messages[index].attempt = messages[index].attempt > releases ? messages[index].attempt - releases : 1
                state.deliveries[state.nextDelivery] = Delivery(
                    message: fetched[index], subscription: subscription, sequence: sequences[index], attempt: messages[index].attempt,
                    leaseStart: now)
                return state.nextDelivery
            }
        }
        guard let deliveries else {
            for natsMessage in fetched { giveBack(natsMessage, subscription) }
            return
        }
        counters.delivered.add(UInt64(fetched.count), ordering: .relaxed)
        let taken = max(0, subscription.subscriber.deliver(batch: deliveries, messages))
        guard taken < deliveries.count else { return }
        // Not taken: not an attempt either (JetStream counts the nak as a delivery; remember it).
        let refused = state.withLock { state in
            deliveries[taken...].compactMap { delivery -> Delivery? in
                guard let entry = state.deliveries.removeValue(forKey: delivery) else { return nil }
                state.record(entry.record) { $0.releases += 1 }
                return entry
            }
        }
        for entry in refused { giveBack(entry.message, subscription) }
        // A subscriber that took nothing is full or closing: wait a little before the fetch
        // thread fetches (and JetStream redelivers) the same messages again.
        if taken == 0 { usleep(10_000) }
    }

    /// Returns a fetched message that was never delivered to JetStream, to be redelivered.
    private func giveBack(_ natsMessage: OpaquePointer, _ subscription: NATSSubscription) {
        natsMsg_Nak(natsMessage, nil)
        natsMsg_Destroy(natsMessage)
        subscription.settled()
    }

    public func unsubscribe(_ id: SubscriptionID) throws(TransportError) {
        guard let subscription = state.withLock({ $0.subscriptions.removeValue(forKey: id) }) else {
            throw TransportError(.notFound, "no subscription \(id)")
        }
        subscription.stop()
        // The last fetch's pull request can outlive the client's wait for it on the server (it
        // expires there from when the server got it): still listened to, it would be handed the
        // first of the messages released below, which would then sit unseen until the ack wait
        // ran out (30 s by default) and come back with an attempt too many (CI saw [1,1,1,1,2]
        // in the conformance check unsubscribe-releases). The UNSUB goes out before the naks on
        // the same connection, and the server drops a waiting request whose interest is gone. It
        // narrows the window rather than closing it: a message published meanwhile can still
        // reach the request before the UNSUB does, and a server with leaf nodes or gateways
        // serves requests younger than 2 s without checking interest.
        subscription.removeInterest()
        // Its unsettled deliveries go back to the other members of the group now.
        state.withLock { $0.firstDeliveries[id] = nil }  // after stop(): a last fetch's deliver would make it again
        giveBackHeld { $0.subscription === subscription }
        subscription.destroy()
    }

    /// Takes the deliveries `picks` chooses out of the table and gives them back to JetStream: a
    /// nak, counted as this instance's release, for each whose ack wait still runs; nothing for
    /// one whose ack wait ran out — JetStream redelivers it already and ignores a nak, so counting
    /// a release would make its next attempt read one too low. Their messages are destroyed;
    /// returns the deliveries taken and how many were nak'ed.
    @discardableResult
    private func giveBackHeld(where picks: (Delivery) -> Bool) -> (taken: [Delivery], released: Int) {
        let now = monotonicNanoseconds()
        let taken = state.withLock { state in
            let mine = state.deliveries.filter { picks($0.value) }
            for (key, delivery) in mine {
                state.deliveries.removeValue(forKey: key)
                if delivery.leaseAlive(at: now) { state.record(delivery.record) { $0.releases += 1 } }
            }
            return Array(mine.values)
        }
        var released = 0
        for delivery in taken {
            if delivery.leaseAlive(at: now) {
                natsMsg_Nak(delivery.message, nil)
                released += 1
            }
            natsMsg_Destroy(delivery.message)
        }
        return (taken, released)
    }

    // MARK: Leases

    /// The consumer's ack wait (`ack_wait`), which JetStream restarts on an in-progress ack.
    public var leaseNanos: Int64 { settings.ackWaitNanos }

    /// An in-progress acknowledgement per delivery (`natsMsg_InProgress`): JetStream restarts its
    /// ack wait. Under the lock, so that a settlement cannot free the message meanwhile. A
    /// delivery whose ack wait ran out is not found: JetStream has handed the message out again,
    /// and an in-progress acknowledgement (which names the message, not the delivery) would
    /// extend the new holder's wait.
    public func extend(_ deliveries: UnsafeBufferPointer<DeliveryID>) -> [TransportError?] {
        let now = monotonicNanoseconds()
        return state.withLock { state in
            deliveries.map { delivery -> TransportError? in
                guard let entry = state.deliveries[delivery], now - entry.leaseStart < entry.subscription.ackWaitNanos else {
                    return TransportError(.notFound, "extend: no unsettled delivery \(delivery) (settled, or its ack wait ran out)")
                }
                do throws(TransportError) {
                    try NATSLibrary.check(natsMsg_InProgress(entry.message, nil), "in-progress acknowledgement failed")
                    state.deliveries[delivery]!.leaseStart = now
                    return nil
                } catch {
                    return error
                }
            }
        }
    }

    // MARK: Settle

    public func settle(_ delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {
        let now = monotonicNanoseconds()
        var late = false
        // One lock: the delivery, and on an acknowledgement what this instance remembered of it.
        let taken = state.withLock { state -> Delivery? in
            let entry = state.deliveries.removeValue(forKey: delivery)
            // Its ack wait ran out: JetStream has handed the message out again (or will), and an
            // acknowledgement names the message, not the delivery: a late ack would settle the
            // new holder's copy, a late term dead-letter it under that holder. Refused, as extend
            // refuses it (and as the header says of a delivery whose lease ran out).
            if let entry, now - entry.leaseStart >= entry.subscription.ackWaitNanos {
                late = true
                entry.subscription.beginSettle()
                return entry
            }
            if case .ack = settlement, let entry, !state.records.isEmpty { state.records.removeValue(forKey: entry.record) }
            // Taken under the lock unsubscribe and shutdown take theirs under: they wait for it.
            entry?.subscription.beginSettle()
            return entry
        }
        guard let entry = taken else {
            throw TransportError(.notFound, "no unsettled delivery \(delivery)")
        }
        defer {
            natsMsg_Destroy(entry.message)
            entry.subscription.endSettle()
            entry.subscription.settled()
            reporter.report(stats())
        }
        if late {
            throw TransportError(
                .notFound,
                "delivery \(delivery) was settled after its ack wait ran out (\(entry.subscription.ackWaitNanos / 1_000_000) ms): JetStream "
                    + "delivers the message again, so this settlement was not applied; extend a lease a handler needs longer (the host "
                    + "does for typed calls), or raise the transport's ack_wait")
        }
        switch settlement {
        case .ack:
            try NATSLibrary.check(natsMsg_Ack(entry.message, nil), "ack failed")
            counters.acked.add(1, ordering: .relaxed)
        case .retry(let after, let reason):
            state.withLock { $0.record(entry.record) { $0.reasons.append(reason) } }
            try NATSLibrary.check(natsMsg_NakWithDelay(entry.message, max(1, (after + 999_999) / 1_000_000), nil), "nak failed")
            counters.retried.add(1, ordering: .relaxed)
        case .release:
            state.withLock { $0.record(entry.record) { $0.releases += 1 } }
            try NATSLibrary.check(natsMsg_Nak(entry.message, nil), "nak failed")
            counters.released.add(1, ordering: .relaxed)
        case .deadLetter(let reason):
            var original = NATSLibrary.message(entry.message, channel: entry.subscription.channel)
            original.attempt = entry.attempt
            let history = (state.withLock { $0.records.removeValue(forKey: entry.record)?.reasons } ?? []) + [reason]
            let dead = DeadLetter.copy(
                of: original, to: entry.subscription.channel + settings.deadLetterSuffix, group: entry.subscription.group,
                groupCopy: Self.fanOut && !entry.subscription.channel.hasSuffix(settings.deadLetterSuffix),
                reason: reason, history: history, now: host.nowNanos())
            do {
                try dead.withCMessage { (pointer) throws(TransportError) in
                    try publish(try MessageView(validating: pointer), messageID: "\(dead.id)\(settings.deadLetterSuffix).\(entry.sequence)")
                }
            } catch {
                // Not in the dead-letter stream: leave it with JetStream, to be redelivered.
                natsMsg_Nak(entry.message, nil)
                throw TransportError(error.code, "dead-lettering failed, message released: \(error.message)")
            }
            // Only now terminate it: a message at MaxDeliver would stay in a work-queue stream.
            try NATSLibrary.check(natsMsg_Term(entry.message, nil), "term failed")
            counters.deadLettered.add(1, ordering: .relaxed)
            host.deadLettered(dead, reason: reason)
        }
    }

    // MARK: Lifecycle

    public func drain(deadlineNanos: Int64) throws(TransportError) {
        draining.store(true, ordering: .relaxed)
        let subscriptions = state.withLock { Array($0.subscriptions.values) }
        for subscription in subscriptions { subscription.pause() }
        while host.monotonicNanos() < deadlineNanos && state.withLock({ !$0.deliveries.isEmpty }) {
            usleep(5_000)
        }
        let (left, released) = giveBackHeld { _ in true }
        for delivery in left { delivery.subscription.settled() }
        counters.released.add(UInt64(released), ordering: .relaxed)
        if !left.isEmpty {
            throw TransportError(.timeout, "\(left.count) deliveries were still unsettled at the drain deadline; released to JetStream")
        }
    }

    public func stats() -> TransportStats {
        counters.stats(inFlight: UInt64(state.withLock { $0.deliveries.count }))
    }

    public func shutdown() {
        let subscriptions = state.withLock { state in
            defer { state.subscriptions.removeAll() }
            return Array(state.subscriptions.values)
        }
        for subscription in subscriptions {
            subscription.stop()
            subscription.removeInterest()  // as in unsubscribe: no pull request of ours takes a release
        }
        counters.released.add(UInt64(giveBackHeld { _ in true }.released), ordering: .relaxed)  // as drain counts them
        for subscription in subscriptions { subscription.destroy() }
        reporter.report(stats(), force: true)  // what changed since the last report
        natsConnection_Flush(connection)
        jsCtx_Destroy(jetStream)
        natsConnection_Destroy(connection)
    }
}

/// Header names the plugins add on the wire.
enum NATSHeaders {
    /// JetStream's de-duplication id: the Switchyard message id (unless `sy-id` says otherwise).
    static let messageID = "Nats-Msg-Id"
    /// The Switchyard message id when the de-duplication id differs (dead letters).
    static let id = "sy-id"
    /// The message's ordering key.
    static let orderingKey = "sy-ordering-key"
    /// The publisher's header order (keys, comma-separated); NATS headers are a map.
    static let order = "sy-header-order"
    /// Marks the CloudEvents attributes the plugin added to a plain message.
    static let addedCloudEvent = "sy-ce-added"
    /// The keys (comma-separated) whose values were escaped: a NATS header is one line, so a
    /// line break in a value (a dead letter's history has one per attempt) would be lost.
    static let escaped = "sy-header-escaped"

    /// Whether `value` holds a character a NATS header line cannot carry (read in place).
    static func needsEscaping(_ value: sy_str) -> Bool {
        guard value.len > 0, let data = value.data else { return false }
        return UnsafeRawBufferPointer(start: data, count: value.len).contains { $0 == 0x0A || $0 == 0x0D }
    }

    /// `value` with `\`, line feeds and carriage returns written as `\\`, `\n` and `\r`.
    static func escape(_ value: String) -> String {
        var out = ""
        out.reserveCapacity(value.utf8.count + 8)
        for character in value.unicodeScalars {
            switch character {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            default: out.unicodeScalars.append(character)
            }
        }
        return out
    }

    /// The inverse of ``escape(_:)``.
    static func unescape(_ value: String) -> String {
        var out = ""
        var pendingBackslash = false
        for character in value.unicodeScalars {
            if pendingBackslash {
                switch character {
                case "n": out += "\n"
                case "r": out += "\r"
                default: out.unicodeScalars.append(character)
                }
                pendingBackslash = false
            } else if character == "\\" {
                pendingBackslash = true
            } else {
                out.unicodeScalars.append(character)
            }
        }
        if pendingBackslash { out += "\\" }
        return out
    }
}
