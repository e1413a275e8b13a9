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
        @OptionGroup var pluginDirectories: PluginDirectoryOptions

        @Option(help: ArgumentHelp("The config file that declares the transport (and its plugins section: directory, pins).", valueName: "file"))
        var config: String

        @Option(help: ArgumentHelp("The configured transport.", valueName: "name"))
        var transport: String

        @Option(help: ArgumentHelp("The channel whose dead letters to use (C, or its dead-letter channel C.dlq).", valueName: "channel"))
        var channel: String

        @Option(
            help: """
                Most dead letters held at once. list and show look at this many (list says when there \
                may be more); replay and purge with --all go on in passes of this many until none is left.
                """)
        var limit = DeadLetterBrowser.defaultLimit

        /// Set when the transport is not durable: what to say where no dead letter was found.
        let notDurable = Guarded<String?>(nil)
        /// Set by `list` before it looks: whether to find out where dead letters are, should the
        /// channel hold none (it reads the whole store; the other commands do not need it).
        let explainsEmpty = Guarded(false)
        /// Set when the channel held no dead letter and `explainsEmpty`: which channels of the
        /// transport do (ABI 1.9 `channel_stats`), or that none does — a mistyped channel reads the
        /// same as an empty one.
        let elsewhere = Guarded<String?>(nil)

        enum CodingKeys: CodingKey {
            case pluginDirectories, config, transport, channel, limit
        }

        func validate() throws {
            if limit < 1 { throw ValidationError("--limit must be at least 1") }
            if channel.trimmingCharacters(in: .whitespaces).isEmpty {
                throw ValidationError("--channel must not be empty: name the channel whose dead letters to read, e.g. payments (switchyard stats --channels lists them)")
            }
        }

        /// Opens the transport, holds every dead letter (delivered, unsettled), hands them to `body`
        /// (which may replay or purge some), and releases the rest.
        func withDeadLetters(_ body: (DeadLetterBrowser) throws -> Void) throws {
            // As it is (file, line, key and what to do), not as a usage error.
            let config = try SwitchyardConfig.load(path: self.config)
            guard config.transport(named: transport) != nil else {
                throw CommandFailure("no transport named '\(transport)' in the config (configured: \(config.transports.map(\.name).joined(separator: ", ")))")
            }
            try config.requireExistingStores(of: [transport])
            var quiet = Logger(label: "switchyard.plugins")
            quiet.logLevel = .error
            let set = try TransportSet.start(config, discovery: pluginDirectories.discovery(config), only: [transport], logger: quiet)
            defer { set.close() }
            let target = set[transport]!
            // A fresh in-memory instance holds nothing: "no dead letters" read like a mistyped channel.
            if SystemOverview.TransportInfo.engine(of: target, config: config) == "memory" {
                throw CommandFailure(
                    "transport '\(transport)' keeps its messages in memory, so its dead letters live only in the process that runs it: "
                        + "read them through that process's admin endpoint (GET /api/dead-letters/\(transport)/\(channel), or the console's dead-letter page), "
                        + "or give the transport a path: to make it durable")
            }
            let chain = target.chainCapabilities
            if !chain.contains(.durable) {
                // A plugin that is not durable may keep them in memory too: an empty list here
                // need not mean the running host holds none.
                let note =
                    "transport '\(transport)' (\(target.chainDescription)) is not durable: if its plugin keeps messages in memory, "
                    + "its dead letters live only in the process that runs it; read them through that process's admin endpoint "
                    + "(GET /api/dead-letters/\(transport)/\(channel), or the console's dead-letter page)"
                notDurable.withLock { $0 = note }
            }
            guard chain.contains(.deadLetter) else {
                throw CommandFailure(
                    "transport '\(transport)' has no dead-letter support (capabilities: \(chain)): it keeps no dead letters to list. Pass the transport that "
                        + "does (a queue, topic or retry transport; the one its dead-lettered calls were routed through), or give this one a retry transport in front")
            }
            let suffix = config.deadLetterSuffix(ofTransport: transport)
            let letters = try DeadLetterBrowser(client: target.client, channel: channel, deadLetterSuffix: suffix, limit: limit)
            defer { letters.close() }  // releases whatever was not settled
            // Not for a transport that may keep them in another process: "none on any channel"
            // would contradict the note that says so.
            if letters.letters.isEmpty && explainsEmpty.withLock({ $0 }) && chain.contains(.durable) {
                let found = DeadLetterCommand.deadLettersElsewhere(target.client, suffix: suffix, transport: transport)
                elsewhere.withLock { $0 = found }
            }
            try body(letters)
        }

        /// Runs `action` on each dead letter `selection` picks, one at a time; returns how many,
        /// and the named ids that are not dead letters on the channel. With `--all`, in passes of
        /// `limit` dead letters until a pass finds fewer: each pass's letters leave the channel,
        /// so the next one holds the following ones. (Named ids are looked for in one pass.)
        func forEach(
            _ selection: Selection, _ action: (DeadLetterBrowser, DeadLetterBrowser.Letter) throws -> Void
        ) throws -> (count: Int, missing: [String], channel: String) {
            let passes = try DeadLetterBrowser.inPasses(all: selection.all, limit: limit, open: withDeadLetters, picks: selection.matches, action)
            return (passes.count, selection.ids.filter { !passes.ids.contains($0) }, passes.channel)
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List dead-lettered messages.")
        @OptionGroup var target: Target
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            target.explainsEmpty.withLock { $0 = true }
            try target.withDeadLetters { held in
                let letters = held.letters
                // On a topic each subscriber group's copy is dead-lettered on its own: say whose.
                let groups = letters.map { DeadLetterCommand.group(of: $0.message) ?? "" }
                let showGroups = groups.contains { !$0.isEmpty }
                let rows = zip(letters, groups).map { letter, group -> [String] in
                    let m = letter.message
                    let call = ReadableCall(m)
                    return [m.id] + (showGroups ? [group] : []) + [
                        call?.target ?? m.header(DeadLetterHeader.channel) ?? "?", m.header(DeadLetterHeader.attempts) ?? "?",
                        m.header(DeadLetterHeader.at).flatMap { Int64($0) }.map(formatTime) ?? "?", m.header(DeadLetterHeader.reason) ?? "",
                    ]
                }
                if letters.count >= target.limit {
                    printError("showing the first \(letters.count) dead letters; there may be more (--limit N looks at more)")
                }
                if json {
                    try printJSON(letters.map { DeadLetterRecord($0.message) })  // as the admin API writes it
                    // Standard error: the JSON stays what the admin API answers.
                    if letters.isEmpty, let elsewhere = target.elsewhere.withLock({ $0 }) { printError(elsewhere) }
                } else if rows.isEmpty {
                    // A mistyped channel reads the same as an empty one: say what a channel is.
                    print("No dead letters on \(held.channel). (A channel is the id an actor is hosted under, e.g. 'payments'.)")
                    if let elsewhere = target.elsewhere.withLock({ $0 }) { print(elsewhere) }
                    if let note = target.notDurable.withLock({ $0 }) { printError("note: \(note)") }
                } else {
                    print(table(["ID"] + (showGroups ? ["GROUP"] : []) + ["CALL / CHANNEL", "ATTEMPTS", "DEAD-LETTERED", "REASON"], rows))
                }
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one dead-lettered message in full.")
        @OptionGroup var target: Target
        @Argument(help: "The message id.") var id: String
        @Flag(help: "Print JSON.") var json = false

        @Option(help: ArgumentHelp("Only this topic subscriber group's copy (see replay --help).", valueName: "group"))
        var group: String?

        func run() throws {
            try target.withDeadLetters { held in
                // On a topic every group's copy has the message's id: all of them, each saying its group.
                let copies = held.letters.filter { letter in
                    letter.message.id == id && (group.map { DeadLetterBrowser.isCopy(letter.message, of: $0) } ?? true)
                }
                guard !copies.isEmpty else {
                    try DeadLetterCommand.failOnMissing([id], channel: held.channel)
                    return
                }
                if json {
                    return copies.count == 1 ? try printJSON(DeadLetterRecord(copies[0].message)) : try printJSON(copies.map { DeadLetterRecord($0.message) })
                }
                print(copies.map { describe($0.message) }.joined(separator: "\n\n"))
            }
        }
    }

    /// The topic subscriber group whose copy `m` was, for a person: `(default)` for the group of an
    /// actor hosted without one; nil for a letter that names none (a queue's).
    static func group(of m: Message) -> String? {
        m.header(DeadLetterHeader.group).map { $0.isEmpty ? "(default)" : $0 }
    }

    /// One dead letter in full, for a person: where it came from, why and when it ended here,
    /// every attempt, and — for a typed call — the call itself, decoded.
    static func describe(_ m: Message) -> String {
        var lines = ["id:              \(m.id)"]
        lines.append("from channel:    \(m.header(DeadLetterHeader.channel) ?? "?")")
        if let group = group(of: m) { lines.append("group:           \(group)") }
        lines.append("attempts made:   \(m.header(DeadLetterHeader.attempts) ?? "?")")
        lines.append("dead-lettered:   \(m.header(DeadLetterHeader.at).flatMap { Int64($0) }.map(formatTime) ?? "?")")
        lines.append("reason:          \(m.header(DeadLetterHeader.reason) ?? "")")
        lines.append("history:")
        for entry in (m.header(DeadLetterHeader.history) ?? "").split(separator: "\n") {
            lines.append("  \(DeadLetterRecord.readableHistory(String(entry)))")
        }
        if let call = ReadableCall(m) {
            lines.append("call:            \(call.target)")
            lines.append("arguments:       \(call.argumentsJSON ?? "unreadable (\(call.argumentsProblem ?? "?"))") (\(call.encoding))")
            if let replyTo = call.replyTo {
                let deadline = call.deadlineNanos > 0 ? formatTime(call.deadlineNanos) : "none"
                lines.append(
                    "request-reply:   the caller waited on \(replyTo) until \(deadline)\(call.isExpired() ? " (passed: replaying it as is dead-letters it again as expired; see dlq replay --fire-and-forget)" : "")"
                )
            } else {
                let deadline =
                    call.deadlineNanos > 0
                    ? ", deadline \(formatTime(call.deadlineNanos))\(call.isExpired() ? " (passed: replaying it as is dead-letters it again as expired; see dlq replay --fire-and-forget)" : "")"
                    : ""
                lines.append("fire-and-forget: nobody waits for its result\(deadline)")
            }
        }
        for header in m.headers where !header.key.hasPrefix(DeadLetterHeader.prefix) { lines.append("header:          \(header.key): \(header.value)") }
        if ReadableCall(m) == nil {
            lines.append("body (\(m.body.count) bytes):")
            lines.append(String(validating: m.body, as: UTF8.self) ?? m.body.map { String(format: "%02x", $0) }.joined())
        }
        return lines.joined(separator: "\n")
    }

    /// Which dead letters a command acts on: named ids, or all of them; on a topic, optionally
    /// one subscriber group's copies only.
    struct Selection: ParsableArguments {
        @Argument(help: "Message ids.") var ids: [String] = []
        @Flag(help: "Every dead letter on the channel.") var all = false
        @Option(
            help: ArgumentHelp(
                """
                Only this topic subscriber group's copies ('default' for an actor hosted without a group). On a topic each group's \
                dead letter of a message has the message's id: an id with copies of several groups must name one.
                """, valueName: "group"))
        var group: String?

        func validate() throws {
            if ids.isEmpty && !all { throw ValidationError("name message ids, or --all") }
            // --all won silently: naming ids by mistake beside it acted on the whole channel.
            if !ids.isEmpty && all { throw ValidationError("name message ids or --all, not both") }
        }

        func matches(_ letter: DeadLetterBrowser.Letter) -> Bool {
            (all || ids.contains(letter.message.id)) && (group.map { DeadLetterBrowser.isCopy(letter.message, of: $0) } ?? true)
        }

        /// Refuses named ids that match copies of several subscriber groups (a topic's) without
        /// --group: purging one group's failed copy deleted every group's dead letter of it.
        func refuseSeveralGroups(_ target: Target) throws {
            guard !ids.isEmpty, group == nil else { return }
            var ambiguous: String?
            try target.withDeadLetters { held in ambiguous = held.idsOfSeveralGroups(ids) }
            if let ambiguous {
                throw CommandFailure(
                    "each subscriber group has its own dead letter of \(ambiguous): name the group whose copy to act on with --group GROUP (switchyard dlq list shows them)"
                )
            }
        }
    }

    /// The ids a replay or purge has acted on so far.
    final class Progress {
        var ids: [String] = []
    }

    /// Runs `work` (a replay or purge), and when it fails partway says what was already done —
    /// those letters have left the dead-letter channel — and what to do; exit 1.
    static func reportingProgress<R>(_ verb: String, _ work: (Progress) throws -> R) throws -> R {
        let progress = Progress()
        do {
            return try work(progress)
        } catch let error as ExitCode {
            throw error
        } catch {
            let ids = progress.ids
            printError(
                "\(verb) \(ids.count) message\(ids.count == 1 ? "" : "s")\(ids.isEmpty ? "" : " (\(ids.joined(separator: ", ")))"), then stopped: \(error). "
                    + "Those left the dead-letter channel; the rest are still there: run the command again for them (switchyard dlq list shows what is left)")
            throw ExitCode.failure
        }
    }

    struct Replay: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move dead letters back to their original channel, one at a time.",
            discussion: """
                A call whose deadline has passed (a request-reply call's caller stopped waiting) is \
                dead-lettered again as expired when it arrives; replay says which ones. \
                --fire-and-forget replays calls without their reply channel and deadline, so the \
                receiver runs them and discards any result.
                """)
        @OptionGroup var target: Target
        @OptionGroup var selection: Selection
        @Flag(help: "Replay calls as fire-and-forget: without reply channel and deadline (their callers are gone).")
        var fireAndForget = false

        func run() throws {
            try selection.refuseSeveralGroups(target)
            var expired: [String] = []
            let (moved, missing, channel) = try DeadLetterCommand.reportingProgress("replayed") { progress in
                try target.forEach(selection) { letters, letter in
                    if let call = try letters.replay(letter, asFireAndForget: fireAndForget) { expired.append(call.description) }
                    progress.ids.append(letter.message.id)
                }
            }
            // Where they went: back on the channel, where a host serving it takes them, which may be
            // none now (the tool opens the store itself, with or without the system running).
            print(
                "replayed \(moved) message\(moved == 1 ? "" : "s")\(fireAndForget ? " as fire-and-forget" : "")"
                    + (moved == 0 ? "" : " back on its channel: a host serving it takes \(moved == 1 ? "it" : "them") from there"))
            if !expired.isEmpty {
                printError(
                    """
                    warning: \(expired.count) of them \(expired.count == 1 ? "is a call" : "are calls") whose deadline has passed; \
                    the receiver will dead-letter them again as expired: \(expired.joined(separator: ", ")). \
                    Replay them with --fire-and-forget to run them without a deadline, with nobody waiting for a result.
                    """)
            }
            try DeadLetterCommand.failOnMissing(missing, channel: channel)
        }
    }

    struct Purge: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete dead letters for good.")
        @OptionGroup var target: Target
        @OptionGroup var selection: Selection

        func run() throws {
            try selection.refuseSeveralGroups(target)
            let (purged, missing, channel) = try DeadLetterCommand.reportingProgress("purged") { progress in
                try target.forEach(selection) { letters, letter in
                    try letters.purge(letter)
                    progress.ids.append(letter.message.id)
                }
            }
            print("purged \(purged) message\(purged == 1 ? "" : "s")")
            try DeadLetterCommand.failOnMissing(missing, channel: channel)
        }
    }

    /// Where `client`'s transport holds dead letters, for a person who found none on the channel
    /// they named: the channels whose dead-letter channels hold some (with how many), or that none
    /// does; nil where the plugin does not report its channels (ABI 1.9 `channel_stats`).
    static func deadLettersElsewhere(_ client: TransportClient, suffix: String, transport: String) -> String? {
        guard let channels = try? client.channelStats() else { return nil }
        var held: [String: UInt64] = [:]
        for one in channels where one.channel.hasSuffix(suffix) && one.depth + one.inFlight > 0 {
            held[String(one.channel.dropLast(suffix.count)), default: 0] += one.depth + one.inFlight
        }
        guard !held.isEmpty else { return "Transport '\(transport)' holds no dead letters on any channel." }
        let listed = held.sorted { $0.key < $1.key }.map { "\($0.key) (\($0.value))" }.joined(separator: ", ")
        return "Transport '\(transport)' holds dead letters of: \(listed). Pass one of those as --channel."
    }

    /// Names the ids that were not there (a typo, or already replayed or purged) and fails, so a
    /// script notices; the ones that were there have been acted on.
    static func failOnMissing(_ missing: [String], channel: String) throws {
        guard !missing.isEmpty else { return }
        printError(
            "no dead letter with id \(missing.map { "'\($0)'" }.joined(separator: ", ")) on \(channel) (already replayed or purged, a typo, held by another reader such as a console, or past --limit? switchyard dlq list shows what is there)"
        )
        throw ExitCode.failure
    }
}

/// Formats ns since the Unix epoch as RFC 3339 (UTC, nanoseconds).
func formatTime(_ nanos: Int64) -> String { RFC3339.format(nanos: nanos) }
