import CNats
import Foundation
import SwitchyardPluginKit
import SwitchyardTransportKit
import Synchronization

/// Thin, checked wrappers over nats.c.
enum NATSLibrary {
    private static let opened: Bool = {
        nats_Open(lockSpinCount)
        return true
    }()

    /// How many times nats.c tries a taken lock before it sleeps on it: its default (2,000, asked
    /// for with -1) with four cores or more; none below. Publishers, the fetch thread and nats.c's
    /// own threads share one connection's lock, and with fewer cores than threads a spinning
    /// thread takes the core the holder needs: on two cores the spin was a fifth of the samples of
    /// `bench nats`, and without it the plugin moved 11% more messages (raw nats.c 16% more) with
    /// 12% less CPU (docs/benchmark-history.md, twenty-second round). nats.c is set up once per process,
    /// by whoever opens it first.
    static var lockSpinCount: Int64 { UsableCores.count < 4 ? 0 : -1 }

    /// Initialises the library once per process (never closed: other instances may still use it).
    static func open() { _ = opened }

    /// `status` as a TransportError: unreachable servers and closed connections are `unavailable`,
    /// time-outs `timeout`, the rest `io`, each with nats.c's own words.
    static func error(_ status: natsStatus, _ what: String) -> TransportError {
        let text = String(cString: natsStatus_GetText(status))
        let detail = nats_GetLastError(nil).map { String(cString: $0) } ?? ""
        let message = "\(what): \(text)\(detail.isEmpty || detail == text ? "" : " (\(detail))")"
        switch status {
        case NATS_NO_SERVER, NATS_CONNECTION_CLOSED, NATS_CONNECTION_DISCONNECTED, NATS_NOT_YET_CONNECTED, NATS_STALE_CONNECTION:
            return TransportError(.unavailable, message)
        case NATS_TIMEOUT: return TransportError(.timeout, message)
        case NATS_NOT_FOUND: return TransportError(.notFound, message)
        case NATS_INVALID_ARG, NATS_INVALID_SUBJECT: return TransportError(.invalidArgument, message)
        case NATS_MAX_PAYLOAD: return TransportError(.tooLarge, message)
        default: return TransportError(.io, message)
        }
    }

    static func check(_ status: natsStatus, _ what: String) throws(TransportError) {
        guard status == NATS_OK else { throw error(status, what) }
    }

    /// As ``check(_:_:)`` for a value taken from the config (a CA file that cannot be read):
    /// a config error naming the key, whatever nats.c's status.
    static func checkConfig(_ status: natsStatus, _ what: String) throws(TransportError) {
        guard status == NATS_OK else { throw TransportError(.config, error(status, what).message) }
    }

    /// What to check when connecting failed with `status`, for the statuses that come from the
    /// config rather than the network (empty for the others).
    static func connectHint(_ status: natsStatus) -> String {
        switch status {
        case NATS_CONNECTION_AUTH_FAILED, NATS_NOT_PERMITTED:
            "; the server refused the authorization: check the config's token_env or token_file, user_env and password_env, or credentials, and what the server expects"
        case NATS_SSL_ERROR:
            "; TLS failed: check tls.ca (the CA that signed the server's certificate, for the address in servers), tls.cert and tls.key, or tls.verify"
        case NATS_SECURE_CONNECTION_REQUIRED:
            "; the server requires TLS: add a tls section to the config (tls.ca for a certificate your system does not trust)"
        case NATS_SECURE_CONNECTION_WANTED:
            "; the config asks for TLS (a tls section or tls:// servers) but the server does not offer it"
        case NATS_NO_SERVER, NATS_TIMEOUT:
            "; is nats-server running (with -js) and reachable there? check config key 'servers' (and 'connect_timeout' for a slow network)"
        default: ""
        }
    }

    /// A connection with reconnection forever (every 250 ms), flushes as soon as possible, and the
    /// config's credentials and TLS. Secrets are passed to nats.c only, never logged.
    static func connect(_ settings: NATSSettings) throws(TransportError) -> OpaquePointer {
        var options: OpaquePointer?
        try check(natsOptions_Create(&options), "cannot create connection options")
        defer { natsOptions_Destroy(options) }
        let servers = settings.servers.map { strdup($0) }
        defer { servers.forEach { free($0) } }
        var serverPointers = servers.map { UnsafePointer($0) }
        try check(natsOptions_SetServers(options, &serverPointers, Int32(servers.count)), "config key 'servers'")
        try check(natsOptions_SetName(options, settings.name), "connection name")
        try check(natsOptions_SetTimeout(options, settings.connectTimeoutMillis), "connect timeout")
        try check(natsOptions_SetMaxReconnect(options, -1), "reconnect")
        try check(natsOptions_SetReconnectWait(options, 250), "reconnect wait")
        try check(natsOptions_SetSendAsap(options, true), "send asap")
        if let token = settings.token { try check(natsOptions_SetToken(options, token), "config key 'token_env'/'token_file'") }
        if let (user, password) = settings.user { try check(natsOptions_SetUserInfo(options, user, password), "config key 'user_env'") }
        if let credentials = settings.credentials {
            try checkConfig(natsOptions_SetUserCredentialsFromFiles(options, credentials, nil), "config key 'credentials' ('\(credentials)')")
        }
        if let tls = settings.tls {
            try check(natsOptions_SetSecure(options, true), "config key 'tls'")
            if let ca = tls.ca { try checkConfig(natsOptions_LoadCATrustedCertificates(options, ca), "config key 'tls.ca' ('\(ca)')") }
            if let cert = tls.cert, let key = tls.key {
                try checkConfig(natsOptions_LoadCertificatesChain(options, cert, key), "config keys 'tls.cert'/'tls.key'")
            }
            if tls.verify == false { try check(natsOptions_SkipServerVerification(options, true), "config key 'tls.verify'") }
        }
        var connection: OpaquePointer?
        let status = natsConnection_Connect(&connection, options)
        guard status == NATS_OK, let connection else {
            throw TransportError(
                status == NATS_NO_SERVER ? .unavailable : error(status, "").code,
                "cannot connect to NATS at \(settings.servers.joined(separator: ", ")): \(error(status, "connect").message)\(connectHint(status))")
        }
        return connection
    }

    /// A JetStream context whose API calls wait at most `waitMillis`.
    static func jetStream(_ connection: OpaquePointer, waitMillis: Int64) throws(TransportError) -> OpaquePointer {
        var options = jsOptions()
        jsOptions_Init(&options)
        options.Wait = waitMillis
        var context: OpaquePointer?
        try check(natsConnection_JetStream(&context, connection, &options), "cannot open JetStream (is the server started with -js?)")
        return context!
    }

    /// A delivered JetStream message as a Switchyard message: the id from `Nats-Msg-Id` (or
    /// `ce-id`), the attempt from JetStream's delivery count, the time it was stored, and every
    /// header but the plugin's own.
    static func message(_ natsMessage: OpaquePointer, channel: String) -> Message {
        message(natsMessage, channel: channel, sequence: nil)
    }

    /// ``message(_:channel:)``, also giving the message's stream sequence.
    static func message(_ natsMessage: OpaquePointer, channel: String, sequence streamSequence: UnsafeMutablePointer<UInt64>?) -> Message {
        var byKey: [String: [String]] = [:]
        var keyOrder: [String] = []
        var id: String?
        var switchyardID: String?
        var orderingKey: String?
        var publisherOrder: [String]?
        var addedCloudEvent = false
        var escapedKeys: [String] = []
        var keys: UnsafeMutablePointer<UnsafePointer<CChar>?>?
        var count: Int32 = 0
        if natsMsgHeader_Keys(natsMessage, &keys, &count) == NATS_OK, let keys {
            for index in 0..<Int(count) {
                guard let cKey = keys[index] else { continue }
                let key = String(cString: cKey)
                var values: UnsafeMutablePointer<UnsafePointer<CChar>?>?
                var valueCount: Int32 = 0
                guard natsMsgHeader_Values(natsMessage, cKey, &values, &valueCount) == NATS_OK, let values else { continue }
                for valueIndex in 0..<Int(valueCount) {
                    guard let cValue = values[valueIndex] else { continue }
                    let value = String(cString: cValue)
                    switch key {
                    case NATSHeaders.messageID: id = value
                    case NATSHeaders.id: switchyardID = value
                    case NATSHeaders.orderingKey: orderingKey = value
                    case NATSHeaders.order: publisherOrder = value.split(separator: ",").map(String.init)
                    case NATSHeaders.addedCloudEvent: addedCloudEvent = true
                    case NATSHeaders.escaped: escapedKeys = value.split(separator: ",").map(String.init)
                    default:
                        if byKey[key] == nil { keyOrder.append(key) }
                        byKey[key, default: []].append(value)
                    }
                }
                free(values)
            }
            free(keys)
        }
        for key in escapedKeys { byKey[key] = byKey[key]?.map(NATSHeaders.unescape) }
        if addedCloudEvent {
            for key in [CloudEventsHeader.specVersion, CloudEventsHeader.id, CloudEventsHeader.source, CloudEventsHeader.type] {
                byKey[key] = nil
            }
        }
        let headers = HeaderOrder.restore(byKey, keyOrder: keyOrder, publisherOrder: publisherOrder)
        var attempt: UInt32 = 1
        var storedAt: Int64 = 0
        var sequence: UInt64 = 0
        var meta: UnsafeMutablePointer<jsMsgMetaData>?
        if natsMsg_GetMetaData(&meta, natsMessage) == NATS_OK, let meta {
            attempt = UInt32(clamping: meta.pointee.NumDelivered)
            storedAt = meta.pointee.Timestamp
            sequence = meta.pointee.Sequence.Stream
            jsMsgMetaData_Destroy(meta)
        }
        streamSequence?.pointee = sequence
        let length = Int(natsMsg_GetDataLength(natsMessage))
        let body = natsMsg_GetData(natsMessage).map { [UInt8](UnsafeRawBufferPointer(start: $0, count: length)) } ?? []
        return Message(
            id: switchyardID ?? id ?? headers.first { $0.key == CloudEventsHeader.id }?.value ?? "nats-\(sequence)", channel: channel,
            orderingKey: orderingKey, headers: headers, body: body, attempt: attempt, enqueuedAtNanos: storedAt)
    }
}

/// One pull subscription and the thread that fetches for it, never more than `maxInFlight`
/// unsettled at a time.
final class NATSSubscription: @unchecked Sendable {
    // @unchecked: mutable fields are guarded by `condition`.
    let id: SubscriptionID
    let channel: String
    let group: String
    let subscriber: Subscriber
    private let subscription: OpaquePointer
    private let maxInFlight: Int
    private let batch: Int
    private let condition = NSCondition()
    private var inFlight = 0
    private var running = true
    private var paused = false
    private var finished = false
    /// Settles of its deliveries under way: their acks use the nats.c subscription, which
    /// ``destroy()`` must not free before they end.
    private let settling = Atomic<Int>(0)

    /// The ack wait this subscription asked its consumer for: a delivery unsettled that long has
    /// been handed out again by JetStream.
    let ackWaitNanos: Int64

    init(
        id: SubscriptionID, channel: String, group: String, subscription: OpaquePointer, subscriber: Subscriber, maxInFlight: Int, batch: Int,
        ackWaitNanos: Int64
    ) {
        self.ackWaitNanos = ackWaitNanos
        self.id = id
        self.channel = channel
        self.group = group
        self.subscription = subscription
        self.subscriber = subscriber
        self.maxInFlight = maxInFlight
        self.batch = batch
    }

    /// Starts the fetch thread; `deliver` gets each batch (ownership of the messages passes to it),
    /// and `afterFetch` runs after every fetch, messages or not (every fetch timeout, 500 ms, while
    /// it fetches; not while it is paused, full or backing off): the transport's metrics report
    /// there, so that counts settled after the last one reach the host while the subscription idles.
    func start(_ deliver: @escaping ([OpaquePointer]) -> Void, afterFetch: @escaping () -> Void) {
        let deliver = UncheckedSendable(deliver)
        let afterFetch = UncheckedSendable(afterFetch)
        let thread = Thread(named: "switchyard-nats-fetch") { [self] in
            var failures = 0
            while true {
                condition.lock()
                while running && (paused || inFlight >= maxInFlight) { condition.wait() }
                let room = min(batch, maxInFlight - inFlight)
                let go = running
                condition.unlock()
                guard go else { break }
                var list = natsMsgList()
                var code = jsErrCode(rawValue: 0)
                let status = natsSubscription_Fetch(&list, subscription, Int32(room), 500, &code)
                if status == NATS_OK && list.Count > 0 {
                    failures = 0
                    var messages: [OpaquePointer] = []
                    for index in 0..<Int(list.Count) {
                        if let message = list.Msgs[index] {
                            messages.append(message)
                            list.Msgs[index] = nil  // ours now; natsMsgList_Destroy skips it
                        }
                    }
                    natsMsgList_Destroy(&list)
                    condition.lock()
                    inFlight += messages.count
                    condition.unlock()
                    deliver.value(messages)
                } else {
                    natsMsgList_Destroy(&list)
                    if status != NATS_OK && status != NATS_TIMEOUT {
                        // Disconnected or the server is electing a leader: back off, keep trying.
                        failures += 1
                        usleep(UInt32(min(1_000_000, 50_000 * failures)))
                    }
                }
                afterFetch.value()
            }
            condition.lock()
            finished = true
            condition.broadcast()
            condition.unlock()
        }
        thread.start()
    }

    /// One of its deliveries was settled: room for another.
    func settled() {
        condition.lock()
        inFlight -= 1
        condition.signal()
        condition.unlock()
    }

    /// A settle of one of its deliveries begins: called where the transport takes the delivery out
    /// of its table (under its lock), so that whoever then destroys the subscription waits for it.
    func beginSettle() {
        settling.add(1, ordering: .acquiringAndReleasing)
    }

    /// That settle ended: its ack or nak has been sent.
    func endSettle() {
        settling.subtract(1, ordering: .acquiringAndReleasing)
    }

    /// Stops fetching (draining); deliveries in hand stay.
    func pause() {
        condition.lock()
        paused = true
        condition.unlock()
    }

    /// Stops the fetch thread and waits for it (at most one fetch timeout).
    func stop() {
        condition.lock()
        running = false
        condition.broadcast()
        while !finished { condition.wait() }
        condition.unlock()
    }

    /// Tells the server this subscription no longer listens (after `stop`): it then drops a pull
    /// request of its own still waiting there instead of handing it a message. The consumer stays
    /// (it was made with `js_AddConsumer`, so nats.c does not delete it), and the subscription's
    /// messages can still be settled until ``destroy()``.
    func removeInterest() {
        _ = natsSubscription_Unsubscribe(subscription)
    }

    /// Frees the nats.c subscription (after `stop`), once the settles under way have sent their
    /// acks (they go through it). The consumer stays on the server.
    func destroy() {
        while settling.load(ordering: .acquiring) > 0 { usleep(100) }
        natsSubscription_Destroy(subscription)
    }
}

/// Carries a value the compiler cannot prove Sendable into a thread that is its only user.
struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
