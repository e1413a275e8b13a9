import Foundation
import SwitchyardABI
import SwitchyardConfig
import SwitchyardTransportKit
import SwitchyardWire

/// The dead letters of one channel, held while you look at them: what `switchyard dlq` and the
/// admin endpoint's dead-letter pages use, through the plugin ABI alone.
///
/// Opening one subscribes to the dead-letter channel and takes every message there (up to a
/// limit) without settling it; ``replay(_:asFireAndForget:)`` and ``purge(_:)`` settle one;
/// ``close()`` unsubscribes, and the transport keeps whatever was not settled, as it was.
/// Replaying publishes the message to its original channel first and only then removes it from
/// the dead-letter channel, so an interrupted replay loses nothing (at worst a message is
/// published twice, with the same id).
public final class DeadLetterBrowser: @unchecked Sendable {
    // @unchecked: `collected` and `lastArrival` are guarded; the rest is immutable.

    /// One held dead letter.
    public struct Letter: Sendable {
        /// The delivery to settle it by.
        public let delivery: DeliveryID
        /// The message, dead-letter headers included.
        public let message: Message
    }

    /// The transport's client.
    public let client: TransportClient
    /// The channel the dead letters came from (`orders`), and their dead-letter channel (`orders.dlq`).
    public let originalChannel: String, channel: String
    private let collected = Guarded<[Letter]>([])
    private let lastArrival = Guarded<Date>(Date())
    private var subscription: SubscriptionID?

    /// Holds the dead letters of `channel` (given as `C` or as its dead-letter channel `C.dlq`)
    /// on `client`, up to `limit`, waiting until none arrived for `quiet` — or, while none has
    /// arrived yet and the transport reports messages stored and not delivered, for up to
    /// `firstArrival`. Blocks: call it off the cooperative pool. Applications get one from
    /// ``SwitchyardActorSystem/deadLetters(transport:channel:limit:)``.
    package init(
        client: TransportClient, channel: String, deadLetterSuffix: String, limit: Int = DeadLetterBrowser.defaultLimit, quiet: TimeInterval = 0.3,
        firstArrival: TimeInterval = 3
    ) throws(TransportError) {
        self.client = client
        originalChannel = channel.hasSuffix(deadLetterSuffix) ? String(channel.dropLast(deadLetterSuffix.count)) : channel
        self.channel = originalChannel + deadLetterSuffix
        let options = SubscribeOptions(channel: self.channel, maxInFlight: UInt32(max(1, min(limit, 1_000_000))))
        subscription = try client.subscribe(options) { [collected, lastArrival] delivery, view in
            let message = view.copy()
            collected.withLock { $0.append(Letter(delivery: delivery, message: message)) }
            lastArrival.withLock { $0 = Date() }
            return .ok
        }
        // The transport delivers from its own threads. On a loaded machine the first delivery
        // can come later than `quiet` (a sanitizer build's CLI took longer than 0.3 s): an empty
        // list would then say there are no dead letters when there are. So until one arrives,
        // keep waiting while the transport holds undelivered messages (its depth counts every
        // channel: a busy transport with an empty dead-letter channel waits `firstArrival`).
        let started = Date()
        while true {
            usleep(20_000)
            if !collected.withLock({ $0.isEmpty }) {
                if Date().timeIntervalSince(lastArrival.withLock { $0 }) >= quiet { break }
                continue
            }
            let waited = Date().timeIntervalSince(started)
            if waited < quiet { continue }
            if waited >= firstArrival || ((try? client.stats()) ?? nil)?.depth ?? 0 == 0 { break }
        }
    }

    /// How many dead letters one browser holds unless told otherwise (`switchyard dlq --limit`'s
    /// default, and the admin endpoint's).
    public static let defaultLimit = 10_000

    /// The dead letters held, in the order they arrived.
    public var letters: [Letter] { collected.withLock { $0 } }

    /// The held dead letter with message id `id`.
    public func letter(id: String) -> Letter? { letters.first { $0.message.id == id } }

    /// Whether `m` is the dead letter of topic subscriber group `group` (`default`: of an actor
    /// hosted without a group). On a topic each group's dead letter of a message has the
    /// message's id; the group tells them apart.
    public static func isCopy(_ m: Message, of group: String) -> Bool {
        let header = m.header(DeadLetterHeader.group)
        return header == group || (header == "" && group == "default")
    }

    /// The ids among `ids` that several subscriber groups dead-lettered (a topic's), each with
    /// those groups ('default' for an actor hosted without one), sorted, for a message:
    /// `'e-1' (groups: a, b); …`; nil when there are none. Acting on such an id without naming a
    /// group would act on every group's copy: `switchyard dlq` and the admin endpoint refuse it.
    public func idsOfSeveralGroups(_ ids: [String]) -> String? {
        let held = letters
        let ambiguous = ids.compactMap { id -> (id: String, groups: [String])? in
            // Letters that name no group (a queue's) are nobody's copy: only named groups count.
            let groups = Set(held.filter { $0.message.id == id }.compactMap { $0.message.header(DeadLetterHeader.group) })
            return groups.count > 1 ? (id, groups.map { $0.isEmpty ? "default" : $0 }.sorted()) : nil
        }
        guard !ambiguous.isEmpty else { return nil }
        return ambiguous.map { "'\($0.id)' (groups: \($0.groups.joined(separator: ", ")))" }.joined(separator: "; ")
    }

    /// Publishes `letter` to its original channel (without the dead-letter headers, attempt 0),
    /// then removes it from the dead-letter channel. A topic group's dead letter goes out marked
    /// for that group alone (``DeadLetterHeader/replayGroup``): the other groups' receivers drop
    /// their copies. With `asFireAndForget`, a call goes without its reply channel and deadline
    /// (a request-reply call's caller is gone; the receiver runs it and discards the result).
    /// Returns the call when it was replayed as is although its deadline has passed: the receiver
    /// will dead-letter it again as expired.
    @discardableResult
    public func replay(_ letter: Letter, asFireAndForget: Bool = false) throws(TransportError) -> ExpiredCall? {
        var message = DeadLetter.original(of: letter.message, fallbackChannel: originalChannel)
        // Marked as a replay (not a repeat of the first publish, for transports that drop those),
        // replacing the marks of an earlier replay; one write of the headers.
        let group = letter.message.header(DeadLetterHeader.group)
        var headers = message.headers.filter { $0.key != DeadLetterHeader.replayedAt && (group == nil || $0.key != DeadLetterHeader.replayGroup) }
        headers.append(Header(DeadLetterHeader.replayedAt, String(WallClock.nowNanos())))
        if let group {
            // A topic group's copy (empty: the default group's): published again it reaches every
            // group, and only this one is to handle it (the others did, or have their own dead
            // letter to replay). A letter without the header (the transport did not know the
            // group) goes to every group.
            headers.append(Header(DeadLetterHeader.replayGroup, group))
        }
        message.headers = headers
        var expired: ExpiredCall?
        if let call = ReadableCall(message), call.replyTo != nil || call.deadlineNanos > 0 {
            if asFireAndForget {
                message = Envelope.withoutReply(message)
            } else if call.isExpired() {
                expired = ExpiredCall(id: message.id, target: call.target, deadlineNanos: call.deadlineNanos)
            }
        }
        try client.publish(message)  // first: never lose it
        try client.settle(letter.delivery, .ack)
        collected.withLock { $0.removeAll { $0.delivery == letter.delivery } }
        return expired
    }

    /// A call replayed as is after its deadline passed.
    public struct ExpiredCall: Sendable, CustomStringConvertible {
        /// The message id.
        public let id: String
        /// `Interface.method(labels:)`.
        public let target: String
        /// Its deadline, passed (ns since the Unix epoch).
        public let deadlineNanos: Int64
        /// `ID (Target, deadline TIME)`.
        public var description: String { "\(id) (\(target), deadline \(RFC3339.format(nanos: deadlineNanos)))" }
    }

    /// Deletes `letter` for good.
    public func purge(_ letter: Letter) throws(TransportError) {
        try client.settle(letter.delivery, .ack)
        collected.withLock { $0.removeAll { $0.delivery == letter.delivery } }
    }

    /// Unsubscribes; the transport keeps every dead letter not replayed or purged.
    public func close() {
        if let subscription { try? client.unsubscribe(subscription) }
        subscription = nil
    }

    deinit { close() }
}

/// One dead letter for a person or a program: where it came from, why and when it was
/// dead-lettered, its attempts and, for a typed call, the call decoded. What `switchyard dlq
/// list --json` prints and the admin API serves.
public struct DeadLetterRecord: Codable, Sendable {
    /// The message id.
    public var id: String
    /// The channel it was dead-lettered from.
    public var channel: String
    /// The subscriber group whose copy it was, on a topic.
    public var group: String?
    /// Why.
    public var reason: String
    /// When, RFC 3339.
    public var deadLetteredAt: String
    /// Deliveries made before it was dead-lettered.
    public var attempts: Int
    /// One line per failed attempt, times in RFC 3339.
    public var history: [String]
    /// For a typed call: `Interface.method(labels:)`.
    public var call: String?
    /// For a typed call: its arguments as a JSON array.
    public var arguments: String?
    /// For a request-reply call: the channel its caller waited on.
    public var replyTo: String?
    /// For a request-reply call: whether its caller has stopped waiting.
    public var callerGone: Bool?
    /// The message's other headers.
    public var headers: [String: String]
    /// The body as text, or hex when it is not UTF-8 (empty for a typed call, whose arguments
    /// are above).
    public var body: String

    /// The record of `m`, a dead-lettered message.
    public init(_ m: Message) {
        id = m.id
        channel = m.header(DeadLetterHeader.channel) ?? ""
        group = m.header(DeadLetterHeader.group)
        reason = m.header(DeadLetterHeader.reason) ?? ""
        deadLetteredAt = m.header(DeadLetterHeader.at).flatMap { Int64($0) }.map { RFC3339.format(nanos: $0) } ?? ""
        attempts = Int(m.header(DeadLetterHeader.attempts) ?? "") ?? 0
        history = (m.header(DeadLetterHeader.history) ?? "").split(separator: "\n").map { Self.readableHistory(String($0)) }
        let readable = ReadableCall(m)
        call = readable?.target
        arguments = readable?.argumentsJSON ?? readable.map { "unreadable (\($0.argumentsProblem ?? "?"))" }
        replyTo = readable?.replyTo
        callerGone = readable?.replyTo == nil ? nil : readable?.isExpired()
        headers = Dictionary(
            m.headers.filter { !$0.key.hasPrefix(DeadLetterHeader.prefix) }.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
        body =
            readable != nil ? "" : (String(validating: m.body, as: UTF8.self) ?? m.body.map { String(format: "%02x", $0) }.joined())
    }

    /// `attempt 2 at 1764489600000000000: reason` with the time in RFC 3339.
    public static func readableHistory(_ entry: String) -> String {
        guard let at = entry.range(of: " at "), let colon = entry[at.upperBound...].firstIndex(of: ":"),
            let nanos = Int64(entry[at.upperBound..<colon])
        else { return entry }
        return entry[..<at.upperBound] + RFC3339.format(nanos: nanos) + entry[colon...]
    }
}

extension SwitchyardConfig {
    /// The dead-letter suffix of transport `name`: its own `dead_letter_suffix`, else its inner
    /// transport's (a decorator's dead letters are its inner's), else the SDK's default — the
    /// one definition the plugins use too.
    public func deadLetterSuffix(ofTransport name: String) -> String {
        var current = transport(named: name)
        var seen: Set<String> = []
        while let entry = current, seen.insert(entry.name).inserted {
            if let object = try? JSONSerialization.jsonObject(with: Data(entry.configJSON.utf8)) as? [String: Any],
                let suffix = object["dead_letter_suffix"] as? String, !suffix.isEmpty
            {
                return suffix
            }
            current = entry.inner.flatMap { transport(named: $0) }
        }
        return DeadLetter.defaultSuffix
    }
}

extension DeadLetterBrowser {
    /// What ``inPasses(all:limit:open:picks:_:)`` acted on.
    package struct Passes: Sendable {
        /// How many dead letters.
        package var count = 0
        /// Their message ids (a topic's groups each have a copy with the same id).
        package var ids: Set<String> = []
        /// The dead-letter channel.
        package var channel = ""
    }

    /// Runs `action` on each held dead letter `picks` selects, one at a time, in browsers `open`
    /// opens (and closes after the body it is given). With `all`, in passes of `limit` letters
    /// until a pass holds fewer: each pass's letters leave the channel, so the next one holds the
    /// following ones. A letter seen again (its receiver dead-lettered the replayed call
    /// meanwhile) makes that pass the last, or a failing receiver would keep the passes going.
    /// Without `all` (named ids), one pass. What `switchyard dlq` and the admin endpoint's
    /// replay and purge share.
    package static func inPasses(
        all: Bool, limit: Int, open: ((DeadLetterBrowser) throws -> Void) throws -> Void, picks: (Letter) -> Bool,
        _ action: (DeadLetterBrowser, Letter) throws -> Void
    ) throws -> Passes {
        // Handed to `open`'s body, so lent as escaping (they do not outlive this call).
        try withoutActuallyEscaping(action) { action in
            try withoutActuallyEscaping(picks) { picks in
                var passes = Passes()
                // Letters acted on in earlier passes, by id and subscriber group: on a topic each
                // group's copy is a dead letter of its own with the same id.
                var earlier: Set<String> = []
                var full = true
                while full {
                    var thisPass: Set<String> = []
                    try open { letters in
                        passes.channel = letters.channel
                        let held = letters.letters
                        full = all && held.count >= limit
                        for letter in held where picks(letter) {
                            let key = letter.message.id + "\u{0}" + (letter.message.header(DeadLetterHeader.group) ?? "")
                            if earlier.contains(key) {
                                full = false
                                continue
                            }
                            try action(letters, letter)
                            passes.ids.insert(letter.message.id)
                            thisPass.insert(key)
                        }
                    }
                    earlier.formUnion(thisPass)
                    passes.count += thisPass.count
                    if thisPass.isEmpty { break }  // nothing left the channel: another pass would hold the same
                }
                return passes
            }
        }
    }
}
