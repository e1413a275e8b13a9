import ArgumentParser
import Foundation
import Logging
import SwitchyardABI
import SwitchyardConfig
import SwitchyardHost
import SwitchyardLoader
import SwitchyardRuntime
import SwitchyardTransportKit
import SwitchyardWire

/// `switchyard dlq …`: look at, replay and purge dead-lettered messages on any transport that
/// declares dead-letter support, through the plugin ABI alone.
struct DeadLetterCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dlq",
        abstract: "List, show, replay or purge dead-lettered messages of a configured transport.",
        discussion: """
            Dead-lettered messages of channel C wait on C.dlq (or C plus the transport's \
            dead_letter_suffix). Replay moves them back one at a time: \
            each is published to its original channel and only then removed from the dead-letter \
            channel, so an interrupted replay loses nothing and never duplicates a message within \
            the dead-letter channel (at worst a message is published twice, with the same id).
            """,
        subcommands: [List.self, Show.self, Replay.self, Purge.self])

    /// Which transport and channel, shared by every subcommand.
    struct Target: ParsableArguments {
        @OptionGroup var search: PluginSearchOptions

        @Option(help: ArgumentHelp("The configured transport.", valueName: "name"))
        var transport: String

        @Option(help: ArgumentHelp("The channel whose dead letters to use (C, or its dead-letter channel C.dlq).", valueName: "channel"))
        var channel: String

        @Option(help: "Most messages to look at.")
        var limit = 10_000

        /// The dead-letter suffix of the transport `spec` names: its own `dead_letter_suffix`, else
        /// its inner transport's (a decorator's dead letters are its inner's), else the SDK's
        /// default — the one definition the plugins use too.
        static func deadLetterSuffix(of name: String, in config: SwitchyardConfig) -> String {
            var current = config.transport(named: name)
            var seen: Set<String> = []
            while let entry = current, seen.insert(entry.name).inserted {
                if let object = try? JSONSerialization.jsonObject(with: Data(entry.configJSON.utf8)) as? [String: Any],
                    let suffix = object["dead_letter_suffix"] as? String, !suffix.isEmpty
                {
                    return suffix
                }
                current = entry.inner.flatMap { config.transport(named: $0) }
            }
            return DeadLetter.defaultSuffix
        }

        /// Opens the transport, holds every dead letter (delivered, unsettled), hands them to `body`
        /// (which may settle some through `letters.client`), and releases the rest.
        func withDeadLetters(_ body: (DeadLetters) throws -> Void) throws {
            let config = try search.loadConfig()
            guard config.transport(named: transport) != nil else {
                throw ValidationError("no transport named '\(transport)' in the config (configured: \(config.transports.map(\.name).joined(separator: ", ")))")
            }
            var quiet = Logger(label: "switchyard.plugins")
            quiet.logLevel = .error
            let set = try TransportSet.start(config, discovery: search.discovery(config), only: [transport], logger: quiet)
            defer { set.close() }
            let target = set[transport]!
            let chain = target.chainCapabilities
            guard chain.contains(.deadLetter) else {
                throw ValidationError("transport '\(transport)' has no dead-letter support (capabilities: \(chain))")
            }
            let suffix = Self.deadLetterSuffix(of: transport, in: config)
            let original = channel.hasSuffix(suffix) ? String(channel.dropLast(suffix.count)) : channel
            let letters = DeadLetters(client: target.client, originalChannel: original, channel: original + suffix)
            let subscription = try target.client.subscribe(
                SubscribeOptions(channel: letters.channel, maxInFlight: UInt32(max(1, min(limit, 1_000_000)))), handler: letters.handler)
            letters.waitUntilQuiet()
            defer { try? target.client.unsubscribe(subscription) }  // releases whatever was not settled
            try body(letters)
        }

        /// Runs `action` on each dead letter `selection` picks, one at a time; returns how many.
        func forEach(_ selection: Selection, _ action: (DeadLetters, DeadLetters.Letter) throws -> Void) throws -> Int {
            var count = 0
            try withDeadLetters { letters in
                for letter in letters.letters where selection.matches(letter) {
                    try action(letters, letter)
                    count += 1
                }
            }
            return count
        }
    }

    /// The dead letters collected from one subscription.
    final class DeadLetters: @unchecked Sendable {
        struct Letter {
            let delivery: DeliveryID
            let message: Message
        }
        let client: TransportClient
        /// The channel the dead letters came from, and their dead-letter channel.
        let originalChannel: String, channel: String
        private let collected = Guarded<[Letter]>([])
        private let lastArrival = Guarded<Date>(Date())

        init(client: TransportClient, originalChannel: String, channel: String) {
            self.client = client
            self.originalChannel = originalChannel
            self.channel = channel
        }

        var letters: [Letter] { collected.withLock { $0 } }

        var handler: DeliveryHandler {
            { [self] delivery, view in
                let message = view.copy()
                collected.withLock { $0.append(Letter(delivery: delivery, message: message)) }
                lastArrival.withLock { $0 = Date() }
                return .ok
            }
        }

        /// Waits until no delivery arrived for 300 ms.
        func waitUntilQuiet() {
            while Date().timeIntervalSince(lastArrival.withLock { $0 }) < 0.3 { usleep(20_000) }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List dead-lettered messages.")
        @OptionGroup var target: Target
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            try target.withDeadLetters { held in
                let letters = held.letters
                let rows = letters.map { letter -> [String] in
                    let m = letter.message
                    let call = ReadableCall(m)
                    return [
                        m.id, call?.target ?? m.header(DeadLetterHeader.channel) ?? "?", m.header(DeadLetterHeader.attempts) ?? "?",
                        m.header(DeadLetterHeader.at).flatMap { Int64($0) }.map(formatTime) ?? "?", m.header(DeadLetterHeader.reason) ?? "",
                    ]
                }
                if json {
                    try printJSON(letters.map { LetterJSON($0.message) })
                } else if rows.isEmpty {
                    print("No dead letters on \(held.channel).")
                } else {
                    print(table(["ID", "CALL / CHANNEL", "ATTEMPTS", "DEAD-LETTERED", "REASON"], rows))
                }
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one dead-lettered message in full.")
        @OptionGroup var target: Target
        @Argument(help: "The message id.") var id: String
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            try target.withDeadLetters { held in
                guard let letter = held.letters.first(where: { $0.message.id == id }) else {
                    printError("no dead letter with id '\(id)' on \(held.channel)")
                    throw ExitCode.failure
                }
                let m = letter.message
                if json { return try printJSON(LetterJSON(m)) }
                print(describe(m))
            }
        }
    }

    /// One dead letter in full, for a person: where it came from, why and when it ended here,
    /// every attempt, and — for a typed call — the call itself, decoded.
    static func describe(_ m: Message) -> String {
        var lines = ["id:              \(m.id)"]
        lines.append("from channel:    \(m.header(DeadLetterHeader.channel) ?? "?")")
        if let group = m.header(DeadLetterHeader.group) { lines.append("group:           \(group)") }
        lines.append("attempts made:   \(m.header(DeadLetterHeader.attempts) ?? "?")")
        lines.append("dead-lettered:   \(m.header(DeadLetterHeader.at).flatMap { Int64($0) }.map(formatTime) ?? "?")")
        lines.append("reason:          \(m.header(DeadLetterHeader.reason) ?? "")")
        lines.append("history:")
        for entry in (m.header(DeadLetterHeader.history) ?? "").split(separator: "\n") { lines.append("  \(readableHistory(String(entry)))") }
        if let call = ReadableCall(m) {
            lines.append("call:            \(call.target)")
            lines.append("arguments:       \(call.argumentsJSON ?? "unreadable (\(call.argumentsProblem ?? "?"))") (\(call.encoding))")
            if let replyTo = call.replyTo {
                let deadline = call.deadlineNanos > 0 ? formatTime(call.deadlineNanos) : "none"
                lines.append(
                    "request-reply:   the caller waited on \(replyTo) until \(deadline)\(call.isExpired() ? " (passed: replaying it as is dead-letters it again as expired; see dlq replay --fire-and-forget)" : "")"
                )
            } else {
                lines.append("fire-and-forget: nobody waits for its result")
            }
        }
        for header in m.headers where !header.key.hasPrefix(DeadLetterHeader.prefix) { lines.append("header:          \(header.key): \(header.value)") }
        if ReadableCall(m) == nil {
            lines.append("body (\(m.body.count) bytes):")
            lines.append(String(validating: m.body, as: UTF8.self) ?? m.body.map { String(format: "%02x", $0) }.joined())
        }
        return lines.joined(separator: "\n")
    }

    /// `attempt 2 at 1764489600000000000: reason` with the time in RFC 3339.
    static func readableHistory(_ entry: String) -> String {
        guard let at = entry.range(of: " at "), let colon = entry[at.upperBound...].firstIndex(of: ":"),
            let nanos = Int64(entry[at.upperBound..<colon])
        else { return entry }
        return entry[..<at.upperBound] + formatTime(nanos) + entry[colon...]
    }

    /// Which dead letters a command acts on: named ids, or all of them.
    struct Selection: ParsableArguments {
        @Argument(help: "Message ids.") var ids: [String] = []
        @Flag(help: "Every dead letter on the channel.") var all = false

        func validate() throws {
            if ids.isEmpty && !all { throw ValidationError("name message ids, or --all") }
        }

        func matches(_ letter: DeadLetters.Letter) -> Bool { all || ids.contains(letter.message.id) }
    }

    struct Replay: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move dead letters back to their original channel, one at a time.",
            discussion: """
                A request-reply call whose caller's deadline has passed is dead-lettered again as \
                expired when it arrives (nobody waits for its reply); replay says which ones. \
                --fire-and-forget replays calls without their reply channel and deadline, so the \
                receiver runs them and discards the result.
                """)
        @OptionGroup var target: Target
        @OptionGroup var selection: Selection
        @Flag(help: "Replay calls as fire-and-forget: without reply channel and deadline (their callers are gone).")
        var fireAndForget = false

        func run() throws {
            var expired: [String] = []
            let moved = try target.forEach(selection) { letters, letter in
                var message = DeadLetter.original(of: letter.message, fallbackChannel: letters.originalChannel)
                if let call = ReadableCall(message), call.replyTo != nil {
                    if fireAndForget {
                        message.headers.removeAll { $0.key == EnvelopeHeader.replyTo || $0.key == EnvelopeHeader.deadline }
                    } else if call.isExpired() {
                        expired.append("\(message.id) (\(call.target), deadline \(formatTime(call.deadlineNanos)))")
                    }
                }
                // Publish first, then remove from the dead-letter channel: never lose it.
                try letters.client.publish(message)
                try letters.client.settle(letter.delivery, .ack)
            }
            print("replayed \(moved) message\(moved == 1 ? "" : "s")\(fireAndForget ? " as fire-and-forget" : "")")
            if !expired.isEmpty {
                print(
                    """
                    warning: \(expired.count) of them are request-reply calls whose caller's deadline has passed; \
                    the receiver will dead-letter them again as expired: \(expired.joined(separator: ", ")). \
                    Replay them with --fire-and-forget to run them with nobody waiting for the result.
                    """)
            }
        }
    }

    struct Purge: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete dead letters for good.")
        @OptionGroup var target: Target
        @OptionGroup var selection: Selection

        func run() throws {
            let purged = try target.forEach(selection) { letters, letter in try letters.client.settle(letter.delivery, .ack) }
            print("purged \(purged) message\(purged == 1 ? "" : "s")")
        }
    }
}

/// A dead letter as `--json` prints it.
struct LetterJSON: Encodable {
    let id, channel, reason, deadLetteredAt: String
    let attempts: Int
    let history: [String]
    /// For a typed call: `Interface.method(labels:)` and its arguments as JSON text.
    let call, arguments: String?
    let headers: [String: String]
    let body: String

    init(_ m: Message) {
        id = m.id
        channel = m.header(DeadLetterHeader.channel) ?? ""
        reason = m.header(DeadLetterHeader.reason) ?? ""
        deadLetteredAt = m.header(DeadLetterHeader.at).flatMap { Int64($0) }.map(formatTime) ?? ""
        attempts = Int(m.header(DeadLetterHeader.attempts) ?? "") ?? 0
        let readable = ReadableCall(m)
        call = readable?.target
        arguments = readable?.argumentsJSON
        history = (m.header(DeadLetterHeader.history) ?? "").split(separator: "\n").map { DeadLetterCommand.readableHistory(String($0)) }
        headers = Dictionary(m.headers.filter { !$0.key.hasPrefix(DeadLetterHeader.prefix) }.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
        body = String(validating: m.body, as: UTF8.self) ?? m.body.map { String(format: "%02x", $0) }.joined()
    }
}

/// Formats ns since the Unix epoch as RFC 3339 (UTC, nanoseconds).
func formatTime(_ nanos: Int64) -> String { RFC3339.format(nanos: nanos) }
