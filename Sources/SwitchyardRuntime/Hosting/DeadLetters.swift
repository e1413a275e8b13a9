import Logging
import SwitchyardABI
import SwitchyardHost
import SwitchyardTransportKit
import SwitchyardWire

/// Envelope ids (with the subscriber group whose copy it was: on a topic every group's copy has
/// the same id) whose dead-lettering this runtime did itself (it has answered the caller and
/// logged it already), so that the transport's report of the same dead letter is not answered
/// twice. An id stays for the `settle` call and `graceNanos` after it: a transport may report the
/// dead letter after `settle` returned (a plugin in a child process reports it over the socket,
/// read by another thread).
final class AnsweredDeadLetters: Sendable {
    /// How long an id is remembered after its `settle` returned.
    let graceNanos: Int64
    /// Each id: `Int64.max` while its settlement runs, else when it returned (monotonic).
    private let ids = Guarded<(ids: [String: Int64], pruneAbove: Int)>(([:], 64))

    init(graceNanos: Int64 = 10_000_000_000) { self.graceNanos = graceNanos }

    /// Its settlement starts.
    func begin(_ id: String, group: String) {
        let now = monotonicNanoseconds()
        let id = Self.key(id, group)
        ids.withLock { state in
            state.ids[id] = .max
            // Forgotten in sweeps, each once the map has doubled since the last: amortized O(1).
            guard state.ids.count > state.pruneAbove else { return }
            state.ids = state.ids.filter { $0.value == .max || now - $0.value < graceNanos }
            state.pruneAbove = max(64, state.ids.count * 2)
        }
    }

    /// Its settlement returned: remembered for `graceNanos` more.
    func end(_ id: String, group: String) {
        let now = monotonicNanoseconds()
        let id = Self.key(id, group)
        ids.withLock { state in
            if state.ids[id] != nil { state.ids[id] = now }
        }
    }

    private static func key(_ id: String, _ group: String) -> String { group.isEmpty ? id : id + "\u{0}" + group }

    /// How many ids are kept (swept or not yet).
    var count: Int { ids.withLock { $0.ids.count } }

    /// Whether the runtime dead-lettered `group`'s copy of `id` itself, now or within `graceNanos`.
    func contains(_ id: String, group: String) -> Bool {
        let id = Self.key(id, group)
        guard let at = ids.withLock({ $0.ids[id] }) else { return false }
        return at == .max || monotonicNanoseconds() - at < graceNanos
    }
}

/// Dead letters reported since the system started, by dead-letter channel and the transport that
/// reported them: what the admin endpoint lists next to the channels this process serves.
final class DeadLetterTally: Sendable {
    private let counts = Guarded<[String: (transport: String, count: Int)]>([:])
    func count(transport: String, deadLetterChannel: String) {
        counts.withLock { $0[deadLetterChannel, default: (transport, 0)].count += 1 }
    }
    var snapshot: [String: (transport: String, count: Int)] { counts.withLock { $0 } }
}

extension SwitchyardActorSystem {
    /// Subscribes to every transport's dead-letter reports (ABI 1.2), so that a request-reply
    /// call dead-lettered by anyone — a retry decorator, a broker's own delivery limit, a
    /// third-party transport — is answered at once instead of timing out.
    func observeDeadLetters() {
        for transport in transports?.transports.values.map({ $0 }) ?? [] {
            transport.observeDeadLetters { [weak self, unowned transport] message, reason in
                self?.deadLettered(message, reason: reason, on: transport)
            }
        }
    }

    /// Dead-letters a delivery the runtime itself gave up on (it has answered the caller and
    /// logged it): the transport's report of it is then not answered again.
    func deadLetter(_ item: Inbound, reason: String) {
        answeredDeadLetters.begin(item.envelope.id, group: item.group)
        defer { answeredDeadLetters.end(item.envelope.id, group: item.group) }
        do throws(TransportError) {
            try item.transport.client.settle(item.delivery, .deadLetter(reason: reason))
        } catch {
            logger.error(
                "cannot dead-letter a call; the transport delivers it again",
                metadata: [
                    "target": "\(item.envelope.target.name)", "transport": "\(item.transport.name)", "error": "\(error.message)",
                ])
        }
    }

    /// A transport reported that it moved `message` to a dead-letter channel: log and count it
    /// and, when it is a call whose caller still waits for a reply, tell the caller why. Runs on
    /// the plugin's thread, often inside its `settle`: the reply is published from a task of its
    /// own, so the host service returns at once and never calls back into the plugin from it.
    func deadLettered(_ message: Message, reason: String, on transport: Transport) {
        deadLetterTally.count(transport: transport.name, deadLetterChannel: message.channel)
        let call = CallSummary(message)
        let id = call.id ?? message.id
        if answeredDeadLetters.contains(id, group: message.header(DeadLetterHeader.group) ?? "") { return }
        let target = call.type ?? message.header(DeadLetterHeader.channel) ?? message.channel
        let attempts = message.header(DeadLetterHeader.attempts).flatMap { Int($0) } ?? Int(message.attempt)
        if let identifier = call.identifier {
            resolved(identifier)?.route?.metrics.deadLettered.increment()
        }
        logger.notice(
            "a transport dead-lettered a call",
            metadata: [
                "transport": "\(transport.name)", "channel": "\(message.channel)", "target": "\(target)",
                "attempt": "\(attempts)", "reason": "\(reason)",
            ])
        guard let replyTo = call.replyTo, !replyTo.isEmpty else { return }
        let deadline = call.deadlineNanos
        if deadline > 0, deadline < WallClock.nowNanos() {
            return  // the caller stopped waiting
        }
        let encoding = call.contentType ?? .compact
        let error = SwitchyardError.deadLettered(target: target, attempts: attempts, reason: reason)
        let (outcome, body) = encodeReply(.error(error), encoding: encoding)
        Task.detached { [self] in
            publishReply(
                on: transport, to: replyTo, correlationID: id, target: target, outcome: outcome, body: body, encoding: encoding,
                deadlineNanos: deadline, form: call.form)
        }
    }
}
