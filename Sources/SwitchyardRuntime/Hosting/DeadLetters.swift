import Logging
import SwitchyardABI
import SwitchyardHost
import SwitchyardTransportKit
import SwitchyardWire

/// Envelope ids whose dead-lettering this runtime is doing itself right now (it has answered the
/// caller and logged it already), so that the transport's report of the same dead letter is not
/// answered twice. An id is only here for the duration of one `settle` call.
final class AnsweredDeadLetters: Sendable {
    private let ids = Guarded<Set<String>>([])
    func insert(_ id: String) { _ = ids.withLock { $0.insert(id) } }
    func remove(_ id: String) { _ = ids.withLock { $0.remove(id) } }
    func contains(_ id: String) -> Bool { ids.withLock { $0.contains(id) } }
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
        answeredDeadLetters.insert(item.envelope.id)
        defer { answeredDeadLetters.remove(item.envelope.id) }
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
        if answeredDeadLetters.contains(id) { return }
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
