import ArgumentParser
import Foundation
import SwitchyardSoak

/// `switchyard soak`: crash-tests the delivery promises with real processes.
///
/// One producer and two consumer processes run over a durable SQLite queue (with a route retry
/// policy that every seventh item's first attempt meets) and a durable topic with two
/// subscriber groups; the producer prints each item it tries and each the transports
/// acknowledged. `--cycles` times, at a random moment, one of them is killed with SIGKILL and
/// started again. Then the run waits for the consumers to catch up and checks every effect
/// (one row per item for `work`, `audit` and `mail`): nothing acknowledged may be missing, and
/// with the inbox on nothing may have happened twice.
///
/// `--outbox` adds the transactional outbox: the producer commits each item's two calls with a
/// row of its own (`system.transaction`), and the work handler's follow-up call commits with its
/// effect — on every seventh item's first attempt the handler throws after making it, and that
/// follow-up must never arrive. `--engine postgres` keeps everything in PostgreSQL (libpq's
/// `PG*` environment variables say where) instead of SQLite files.
struct SoakCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "soak",
        abstract: "Kill producer and consumer processes at random under load; check that nothing acknowledged is lost or handled twice.",
        discussion: "Exits 1 when an acknowledged item was lost, any effect happened twice with the inbox on, a rolled-back follow-up was delivered, or messages are stuck.")

    enum Engine: String, ExpressibleByArgument, CaseIterable { case sqlite, postgres }

    @Option(help: "How many times to SIGKILL a process (0: none, a run without crashes).")
    var cycles = 10

    @Option(help: "How many items the producer publishes (each is one queue call and one topic event).")
    var messages = 2000

    @Flag(inversion: .prefixedNo, help: "Use the idempotent inbox (effects commit with the inbox record).")
    var inbox = true

    @Flag(help: "Outbox mode: calls commit with the producer's rows and with the handler's effects (needs the inbox).")
    var outbox = false

    @Flag(help: "With --outbox: the work route without outbox: true, to show what it prevents (phantom_follow_ups > 0 expected; not a failure).")
    var followUpsWithoutOutbox = false

    @Option(
        help:
            "Where queues, topics, inboxes and outboxes live: sqlite (files in the run's directory) or postgres (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD say which server).")
    var engine: Engine = .sqlite

    @Flag(help: "Print the result as one JSON object.")
    var json = false

    @Option(help: "Random seed, to repeat a run's kill schedule.")
    var seed: UInt64?

    @Option(help: ArgumentHelp("Keep the run's databases and logs here instead of a temporary directory.", valueName: "dir"))
    var directory: String?

    @Option(
        parsing: .unconditional, help: ArgumentHelp("Longest wait for the consumers to catch up at the end, in seconds (default: 120).", valueName: "seconds"), transform: seconds)
    var settleTimeout: Double = 120

    @Option(name: [.customLong("plugins-dir")], help: ArgumentHelp("A directory to search for plugins first (repeatable).", valueName: "dir"))
    var pluginDirectories: [String] = []

    func validate() throws {
        guard cycles >= 0 else { throw ValidationError("--cycles must be 0 or more") }
        guard messages > 0 else { throw ValidationError("--messages must be at least 1") }
        guard settleTimeout.isFinite, settleTimeout > 0 else { throw ValidationError("--settle-timeout must be more than 0 seconds (default 120)") }
        guard inbox || !outbox else { throw ValidationError("--outbox needs the inbox: the follow-ups commit with its records (drop --no-inbox)") }
        guard outbox || !followUpsWithoutOutbox else { throw ValidationError("--follow-ups-without-outbox is a control for --outbox: add --outbox") }
        guard inbox || engine == .sqlite else { throw ValidationError("--engine postgres records effects through the inbox: drop --no-inbox") }
    }

    func run() async throws {
        var options = SoakOptions()
        options.cycles = cycles
        options.messages = messages
        options.inbox = inbox
        options.outbox = outbox
        options.followUpsWithoutOutbox = followUpsWithoutOutbox
        options.postgres = engine == .postgres
        options.seed = seed
        options.directory = directory
        options.settleTimeout = settleTimeout
        options.pluginDirectories = pluginDirectories
        let report = try await SoakRun(options).run()
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print(report.summary)
        }
        if !report.passed { throw ExitCode.failure }
    }
}
