import ArgumentParser
import Foundation
import SwitchyardABI
import SwitchyardHost
import SwitchyardLoader
import SwitchyardRuntime
import SwitchyardTransportKit

/// `switchyard dlq …`: look at, replay and purge dead-lettered messages on any transport that
/// declares dead-letter support, through the plugin ABI alone.
struct DeadLetterCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dlq",
        abstract: "List, show, replay or purge dead-lettered messages of a configured transport.",
        discussion: """
            Dead-lettered messages of channel C wait on C.dlq. Replay moves them back one at a time: \
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

        @Option(help: ArgumentHelp("The channel whose dead letters to use (C or C.dlq).", valueName: "channel"))
        var channel: String

        @Option(help: "Most messages to look at.")
        var limit = 10_000

        var deadLetterChannel: String { channel.hasSuffix(".dlq") ? channel : channel + ".dlq" }

        /// Opens the transport, holds every dead letter (delivered, unsettled), hands them to `body`
        /// (which may settle some through `letters.client`), and releases the rest.
        func withDeadLetters(_ body: (DeadLetters) throws -> Void) throws {
            let config = try search.loadConfig()
            guard config.transport(named: transport) != nil else {
                throw ValidationError("no transport named '\(transport)' in the config (configured: \(config.transports.map(\.name).joined(separator: ", ")))")
            }
            let catalog = search.discover(config)
            let specs = config.transports.map(TransportSpec.init)
            let set = try TransportSet(specs: specs, catalog: catalog, only: [transport])
            defer { set.close() }
            let target = set[transport]!
            var chain: Capabilities = []
            var link: Transport? = target
            while let current = link {
                chain.formUnion(current.plugin.capabilities)
                link = current.inner
            }
            guard chain.contains(.deadLetter) else {
                throw ValidationError("transport '\(transport)' has no dead-letter support (capabilities: \(chain))")
            }
            let letters = DeadLetters(client: target.client)
            let subscription = try target.client.subscribe(
                SubscribeOptions(channel: deadLetterChannel, maxInFlight: UInt32(max(1, min(limit, 1_000_000)))), handler: letters.handler)
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
        private let collected = Guarded<[Letter]>([])
        private let lastArrival = Guarded<Date>(Date())

        init(client: TransportClient) { self.client = client }

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
                    return [m.id, m.header(DeadLetter.channelHeader) ?? "?", m.header(DeadLetter.attemptsHeader) ?? "?",
                            m.header(DeadLetter.atHeader).flatMap { Int64($0) }.map(formatTime) ?? "?", m.header(DeadLetter.reasonHeader) ?? ""]
                }
                if json {
                    try printJSON(letters.map { LetterJSON($0.message) })
                } else if rows.isEmpty {
                    print("No dead letters on \(target.deadLetterChannel).")
                } else {
                    print(table(["ID", "CHANNEL", "ATTEMPTS", "DEAD-LETTERED", "REASON"], rows))
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
                    printError("no dead letter with id '\(id)' on \(target.deadLetterChannel)")
                    throw ExitCode.failure
                }
                let m = letter.message
                if json { return try printJSON(LetterJSON(m)) }
                print("id:        \(m.id)\nchannel:   \(m.channel)\nattempt:   \(m.attempt)")
                for header in m.headers where header.key != DeadLetter.historyHeader { print("header:    \(header.key): \(header.value)") }
                print("history:")
                for line in (m.header(DeadLetter.historyHeader) ?? "").split(separator: "\n") { print("  \(line)") }
                print("body (\(m.body.count) bytes):")
                print(String(validating: m.body, as: UTF8.self) ?? m.body.map { String(format: "%02x", $0) }.joined())
            }
        }
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
        static let configuration = CommandConfiguration(abstract: "Move dead letters back to their original channel, one at a time.")
        @OptionGroup var target: Target
        @OptionGroup var selection: Selection

        func run() throws {
            let fallback = String(target.deadLetterChannel.dropLast(4))
            let moved = try target.forEach(selection) { letters, letter in
                // Publish first, then remove from the dead-letter channel: never lose it.
                try letters.client.publish(DeadLetter.original(of: letter.message, fallbackChannel: fallback))
                try letters.client.settle(letter.delivery, .ack)
            }
            print("replayed \(moved) message\(moved == 1 ? "" : "s")")
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
    let headers: [String: String]
    let body: String

    init(_ m: Message) {
        id = m.id
        channel = m.header(DeadLetter.channelHeader) ?? ""
        reason = m.header(DeadLetter.reasonHeader) ?? ""
        deadLetteredAt = m.header(DeadLetter.atHeader).flatMap { Int64($0) }.map(formatTime) ?? ""
        attempts = Int(m.header(DeadLetter.attemptsHeader) ?? "") ?? 0
        history = (m.header(DeadLetter.historyHeader) ?? "").split(separator: "\n").map(String.init)
        headers = Dictionary(m.headers.filter { !$0.key.hasPrefix("sy-dlq-") }.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
        body = String(validating: m.body, as: UTF8.self) ?? m.body.map { String(format: "%02x", $0) }.joined()
    }
}

/// Formats ns since the Unix epoch as ISO 8601.
func formatTime(_ nanos: Int64) -> String {
    ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(nanos) / 1e9))
}
