import Distributed
import Foundation
import SwitchyardABI
import SwitchyardConfig
import SwitchyardPostgres
import SwitchyardTestSupport
import SwitchyardTransportKit
import SwitchyardWire
import Testing

@testable import SwitchyardRuntime

@Resolvable
protocol Accounts: DistributedActor where ActorSystem == SwitchyardActorSystem {
    /// Books `id` and announces it; throws after announcing when `fail` (a rolled-back handler).
    distributed func post(_ id: Int, fail: Bool) async throws
}

@Resolvable
protocol Notices: DistributedActor where ActorSystem == SwitchyardActorSystem {
    distributed func notice(_ id: Int) async throws
}

struct AccountsRefused: Error {}

@Resolvable
protocol Nesting: DistributedActor where ActorSystem == SwitchyardActorSystem {
    /// Opens a transaction on the outbox "shop" and returns what it read.
    distributed func nest() async throws -> Int
}

distributed actor NestingService: Nesting {
    typealias ActorSystem = SwitchyardActorSystem
    distributed func nest() async throws -> Int {
        try await actorSystem.transaction(on: "shop") { db in
            var count = 0
            try db.run("SELECT count(*) FROM orders") { row in count = Int(row.int(0)) }
            return count
        }
    }
}

distributed actor AccountsService: Accounts {
    typealias ActorSystem = SwitchyardActorSystem
    let notices: any Notices
    let postgres: Bool

    init(actorSystem: ActorSystem, notices: any Notices, postgres: Bool = false) {
        self.actorSystem = actorSystem
        self.notices = notices
        self.postgres = postgres
    }

    distributed func post(_ id: Int, fail: Bool) async throws {
        if postgres {
            try Switchyard.inboxTransaction(PostgresDatabase.self) { db in
                try db.execute("CREATE TABLE IF NOT EXISTS booked (id bigint NOT NULL, label text NOT NULL)")
                try db.run("INSERT INTO booked VALUES ($1, 'ledger')", [.int(Int64(id))])
            }
        } else if Switchyard.inboxDatabase == .sqlite && id < 0 {
            try Switchyard.inboxTransaction { _ in throw AccountsRefused() }  // an effect that always fails
        } else if Switchyard.inboxDatabase == .sqlite {
            try Switchyard.inboxTransaction { db in
                try db.execute("CREATE TABLE IF NOT EXISTS booked (id INTEGER NOT NULL, label TEXT NOT NULL)")
                try db.run("INSERT INTO booked VALUES (?, 'ledger')", [.int(Int64(id))])
            }
        }
        try await notices.notice(id)
        if id == 5000 {
            // A task of the handler's, calling once the handler's transaction is over.
            let notices = self.notices
            Task {
                try await Task.sleep(for: .milliseconds(100))
                try await notices.notice(6000)
            }
        }
        if fail { throw AccountsRefused() }
    }
}

/// Books each id in the inbox's transaction, whose first `failures` runs fail (a database that
/// refuses for a while), and announces it.
distributed actor FlakyLedger: Accounts {
    typealias ActorSystem = SwitchyardActorSystem
    let notices: any Notices
    let runs: Guarded<Int>
    let failures: Int

    init(actorSystem: ActorSystem, notices: any Notices, runs: Guarded<Int>, failures: Int) {
        self.actorSystem = actorSystem
        self.notices = notices
        self.runs = runs
        self.failures = failures
    }

    distributed func post(_ id: Int, fail: Bool) async throws {
        let run = runs.withLock { runs in
            runs += 1
            return runs
        }
        try Switchyard.inboxTransaction { db in
            guard run > self.failures else { throw AccountsRefused() }
            try db.execute("CREATE TABLE IF NOT EXISTS booked (id INTEGER NOT NULL, label TEXT NOT NULL)")
            try db.run("INSERT INTO booked VALUES (?, 'ledger')", [.int(Int64(id))])
        }
        try await notices.notice(id)
    }
}

/// Keeps the ids it is told, in arrival order.
distributed actor NoticeCollector: Notices {
    typealias ActorSystem = SwitchyardActorSystem
    let seen: Guarded<[Int]>

    init(actorSystem: ActorSystem, seen: Guarded<[Int]>) {
        self.actorSystem = actorSystem
        self.seen = seen
    }

    distributed func notice(_ id: Int) async throws { seen.withLock { $0.append(id) } }
}

/// Hosts a ``NoticeCollector`` as "notices" and an ``AccountsService`` that calls it as
/// "ledger" on `system`: the ledger's stub, and the notices the collector saw.
func hostLedger(on system: SwitchyardActorSystem) throws -> (ledger: any Accounts, seen: Guarded<[Int]>) {
    let seen = Guarded<[Int]>([])
    try system.host("notices", as: $Notices.self) { NoticeCollector(actorSystem: $0, seen: seen) }
    let notices = try $Notices.resolve(id: "notices", using: system)
    try system.host("ledger", as: $Accounts.self) { AccountsService(actorSystem: $0, notices: notices) }
    return (try $Accounts.resolve(id: "ledger", using: system), seen)
}

/// A system with an outbox `shop` at `path` and a notice collector served on a queue: the
/// system, what the collector saw, and a reference to it.
func noticesWithOutbox(at path: String, concurrency: Int = 16) async throws -> (SwitchyardActorSystem, Guarded<[Int]>, any Notices) {
    try await noticesWithOutboxes(["shop: { path: \"\(path)\" }"], concurrency: concurrency)
}

/// ``noticesWithOutbox(at:concurrency:)`` with the entries `outboxes` (each `NAME: { ... }`)
/// under `outboxes:`; without `concurrency`, the route's default.
func noticesWithOutboxes(_ outboxes: [String], concurrency: Int? = nil) async throws -> (SwitchyardActorSystem, Guarded<[Int]>, any Notices) {
    let system = try await makeSystem(
        """
        transports:
          work: { plugin: queue }
        outboxes:
          \(outboxes.joined(separator: "\n  "))
        routes:
          Notices.*: { transport: work, mode: fire-and-forget\(concurrency.map { ", concurrency: \($0)" } ?? "") }
        """)
    let seen = Guarded<[Int]>([])
    try system.host("notices", as: $Notices.self) { NoticeCollector(actorSystem: $0, seen: seen) }
    return (system, seen, try $Notices.resolve(id: "notices", using: system))
}

/// Outbox rows calling `Notices.notice(id)` for each of `ids` (through `call`, the method's
/// target as a caller knows it) on the channel `channel(id)` gives.
func noticeRows(_ ids: some Sequence<Int>, call: CallTarget, channel: (Int) -> String = { _ in "notices" }) throws -> [OutboxMessage] {
    try ids.map { id in
        var arguments: [UInt8] = []
        try ArgumentEncoding.compact.encode(id, appendingTo: &arguments)
        let envelope = Envelope(target: .init(name: "Notices.notice(_:)", identifier: call.identifier), arguments: arguments)
        return OutboxMessage(transport: "work", message: envelope.message(channel: channel(id)))
    }
}

/// Writes `messages` into the SQLite outbox at `path` as a process that committed them and
/// crashed before relaying leaves them (unclaimed); `then` runs inside the same transaction.
func leaveInOutbox(_ messages: [OutboxMessage], at path: String, then: (SQLiteDatabase) throws -> Void = { _ in }) throws {
    let database = try SQLiteDatabase(path: path)
    try database.configureDurable(sharedWithApplication: true)
    try database.execute("BEGIN IMMEDIATE")
    _ = try SQLiteOutboxStorage.insert(messages, into: database)
    try database.execute("UPDATE switchyard_outbox SET claimed_until = 0")
    try then(database)
    try database.execute("COMMIT")
}

/// Calls `notices.notice(id)` with a 4,000-byte header: a message the tests' transports with
/// `max_message_bytes: 2000` refuse (the host's own limit is 1 MiB).
func noticeTooLarge(_ notices: any Notices, _ id: Int) async throws {
    try await Switchyard.withCallOptions(CallOptions(headers: ["pad": String(repeating: "x", count: 4000)])) { try await notices.notice(id) }
}

/// Messages waiting in the `switchyard_outbox` table of the database at `path`.
func outboxDepth(_ path: String) throws -> Int {
    let database = try SQLiteDatabase(path: path)
    var count = 0
    try database.run("SELECT count(*) FROM switchyard_outbox") { row in count = Int(row.int(0)) }
    return count
}

/// Five rows another process left in the outbox `shop` (configured by `outbox`), the third
/// corrupt (`leave` writes them so), then one more message committed after: every readable one
/// is delivered in order, and the corrupt row stays with its reason (`remaining`: the
/// `last_error` of the rows left).
func expectCorruptRowSetAside(
    outbox: String, postgres: Bool = false, leave: ([OutboxMessage]) throws -> Void, remaining: @escaping () throws -> [String],
    depth: () throws -> Int
) async throws {
    let (system, seen, notices) = try await noticesWithOutboxes([outbox], concurrency: 1)
    func notice(_ id: Int) async throws {
        if postgres {
            try await system.transaction(on: "shop", PostgresDatabase.self) { _ in try await notices.notice(id) }
        } else {
            try await system.transaction(on: "shop") { _ in try await notices.notice(id) }
        }
    }
    try await notice(0)
    #expect(await eventually { seen.withLock { $0 } == [0] })
    // The relay deletes a row after its publish returns: wait for that, so the rows below are
    // the only ones (the third of them is the one made corrupt).
    #expect(await eventually { (try? remaining())?.isEmpty == true })

    let call = try #require(system.targets.withLock { $0.values.first { $0.call.method == "notice" }?.call })
    try leave(
        try (1...5).map { id in
            var arguments: [UInt8] = []
            try ArgumentEncoding.compact.encode(id, appendingTo: &arguments)
            let envelope = Envelope(target: .init(name: "Notices.notice(_:)", identifier: call.identifier), arguments: arguments)
            return OutboxMessage(transport: "work", message: envelope.message(channel: "notices"))
        })
    #expect(await eventually { seen.withLock { $0 } == [0, 1, 2, 4, 5] }, "\(seen.withLock { $0 })")
    // A message to the same destination committed after the row was set aside goes out too.
    try await notice(6)
    #expect(await eventually { seen.withLock { $0 } == [0, 1, 2, 4, 5, 6] }, "\(seen.withLock { $0 })")
    // The corrupt row stays, with why, for an operator to look at and delete.
    #expect(await eventually { (try? remaining())?.count == 1 })
    let reasons = try remaining()
    #expect(reasons.count == 1 && reasons[0].hasPrefix("unreadable: "), "\(reasons)")
    // It is not counted as waiting to be relayed (the shutdown notice's count): it never will be.
    #expect(try depth() == 0)
    await system.shutdown()
}

@Suite("Transactional outbox")
struct OutboxTests {
    @Test(
        "a handler's follow-up calls go out once its inbox record commits; a handler that throws sends none",
        arguments: [true, false])
    func handlerFollowUps(durable: Bool) async throws {
        let directory = try TemporaryDirectory()
        let inboxPath = directory.file("ledger-inbox.db")
        let inbox = durable ? "inbox: { window: 1h, path: \"\(inboxPath)\" }" : "inbox: { window: 1h }"
        let system = try await makeSystem(
            """
            transports:
              work: { plugin: queue }
            routes:
              Accounts.*: { transport: work, \(inbox), outbox: true }
              Notices.*: { transport: work, mode: fire-and-forget }
            """)
        let (ledger, seen) = try hostLedger(on: system)

        try await ledger.post(1, fail: false)
        await #expect(throws: (any Error).self) { try await ledger.post(2, fail: true) }
        try await ledger.post(3, fail: false)
        #expect(await eventually { seen.withLock { Set($0) } == [1, 3] })
        try await Task.sleep(for: .milliseconds(300))
        #expect(seen.withLock { $0.sorted() } == [1, 3], "the rolled-back handler's notice must never be sent")
        if durable {
            #expect(try booked(in: inboxPath) == ["ledger:1", "ledger:3"])
            #expect(await eventually { (try? outboxDepth(inboxPath)) == 0 })
        }
        await system.shutdown()
    }

    @Test("calls inside system.transaction commit with the application's rows; a body that throws writes and sends nothing")
    func applicationTransaction() async throws {
        let directory = try TemporaryDirectory()
        let shop = directory.file("shop.db")
        let (system, seen, notices) = try await noticesWithOutbox(at: shop)

        let value = try await system.transaction(on: "shop") { db in
            try db.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY)")
            _ = try db.run("INSERT INTO orders VALUES (10)")
            try await notices.notice(10)
            return "committed"
        }
        #expect(value == "committed")
        await #expect(throws: AccountsRefused.self) {
            try await system.transaction(on: "shop") { db in
                _ = try db.run("INSERT INTO orders VALUES (11)")
                try await notices.notice(11)
                throw AccountsRefused()
            }
        }
        #expect(await eventually { seen.withLock { $0 } == [10] })
        try await Task.sleep(for: .milliseconds(300))
        #expect(seen.withLock { $0 } == [10])
        var orders: [Int64] = []
        try SQLiteDatabase(path: shop).run("SELECT id FROM orders") { row in orders.append(row.int(0)) }
        #expect(orders == [10])

        // An unknown name says which exist.
        await #expect {
            try await system.transaction(on: "nope") { _ in }
        } throws: { error in
            "\(error)".contains("no outbox named 'nope'") && "\(error)".contains("shop")
        }
        // One inside another on the same file would wait for itself for good: refused at once,
        // and the outer one rolls back on the error as on any other.
        await #expect {
            try await system.transaction(on: "shop") { db in
                _ = try db.run("INSERT INTO orders VALUES (12)")
                try await system.transaction(on: "shop") { _ in }
            }
        } throws: { error in
            "\(error)".contains("already inside a transaction on") && "\(error)".contains("use the enclosing transaction's database")
        }
        orders = []
        try SQLiteDatabase(path: shop).run("SELECT id FROM orders") { row in orders.append(row.int(0)) }
        #expect(orders == [10])
        await system.shutdown()
    }

    @Test("a transaction opened by a direct route's handler, called inside a transaction on the same file, is refused rather than waiting for itself")
    func nestedThroughADirectHandler() async throws {
        let directory = try TemporaryDirectory()
        let shop = directory.file("shop.db")
        try SQLiteDatabase(path: shop).execute("CREATE TABLE orders (id INTEGER NOT NULL)")
        // Without a deadline the handler runs in the caller's task; with one, in a child task.
        for deadline in ["", ", deadline: 5s"] {
            let system = try await makeSystem(
                """
                outboxes:
                  shop: { path: "\(shop)" }
                routes:
                  Nesting.*: { transport: direct\(deadline) }
                """)
            try system.host("nesting", as: $Nesting.self) { NestingService(actorSystem: $0) }
            let nesting = try $Nesting.resolve(id: "nesting", using: system)
            // Outside any transaction the handler's own commits.
            #expect(try await nesting.nest() == 0)
            await #expect {
                try await system.transaction(on: "shop") { db in
                    _ = try db.run("INSERT INTO orders VALUES (1)")
                    _ = try await nesting.nest()
                }
            } throws: { error in
                "\(error)".contains("already inside a transaction on")
            }
            var orders = 0
            try SQLiteDatabase(path: shop).run("SELECT count(*) FROM orders") { row in orders = Int(row.int(0)) }
            #expect(orders == 0, "the outer transaction rolled back on the error (route deadline: '\(deadline)')")
            await system.shutdown()
        }
    }

    @Test("the relay publishes what another process committed and left in the outbox, in order per destination")
    func relaysLeftovers() async throws {
        let directory = try TemporaryDirectory()
        let shop = directory.file("shop.db")
        let (system, seen, notices) = try await noticesWithOutbox(at: shop, concurrency: 1)
        try await system.transaction(on: "shop") { _ in try await notices.notice(0) }
        #expect(await eventually { seen.withLock { $0 } == [0] })

        // Rows another process committed before it crashed (its claim on them expired),
        // written as its transaction would.
        let call = try #require(system.targets.withLock { $0.values.first { $0.call.method == "notice" }?.call })
        try leaveInOutbox(try noticeRows(1...20, call: call), at: shop)
        // Found by the relay's poll (once a second), not by a wake-up.
        #expect(await eventually { seen.withLock { $0.count } == 21 })
        #expect(seen.withLock { $0 } == Array(0...20))
        #expect(await eventually { (try? outboxDepth(shop)) == 0 })
        await system.shutdown()
    }

    @Test(
        "a destination with a message another relay has claimed waits for it, in order, while other destinations go on (how several relaying processes keep each destination's order)"
    )
    func claimedDestinationWaits() async throws {
        let directory = try TemporaryDirectory()
        let shop = directory.file("shop.db")
        let (system, notices, toNotices) = try await noticesWithOutbox(at: shop, concurrency: 1)
        let others = Guarded<[Int]>([])
        try system.host("others", as: $Notices.self) { NoticeCollector(actorSystem: $0, seen: others) }
        // One call first: the method's target, as a row carries it, is known once called.
        try await system.transaction(on: "shop") { _ in try await toNotices.notice(-1) }
        #expect(await eventually { notices.withLock { $0 } == [-1] })
        #expect(await eventually { (try? outboxDepth(shop)) == 0 })
        let call = try #require(system.targets.withLock { $0.values.first { $0.call.method == "notice" }?.call })
        // Rows to two destinations, interleaved; the first to "notices" is claimed for 2 s by a
        // relay of another process (one that crashed mid-publish, say), for longer than the test
        // waits: a claim of 2 s ran out before a loaded machine had checked the other destination.
        let claimedUntil = WallClock.nowNanos() + 600_000_000_000
        let firstRow = "(SELECT min(seq) FROM switchyard_outbox)"
        try leaveInOutbox(try noticeRows(0..<40, call: call) { $0 % 2 == 0 ? "notices" : "others" }, at: shop) { database in
            try database.execute("UPDATE switchyard_outbox SET claimed_until = \(claimedUntil) WHERE seq = \(firstRow)")
        }
        // The other destination goes on at the relay's next poll; this one waits for the claim.
        #expect(await eventually { others.withLock { $0 } == Array(stride(from: 1, to: 40, by: 2)) }, "\(others.withLock { $0 })")
        #expect(notices.withLock { $0 } == [-1], "nothing to notices while its first message is claimed elsewhere")
        // The claim runs out (now, as the other relay's clock would have it): the first, then the
        // rest, in order.
        let database = try SQLiteDatabase(path: shop, waitingWhenBusy: true)
        try database.execute("UPDATE switchyard_outbox SET claimed_until = \(WallClock.nowNanos() - 1) WHERE seq = \(firstRow)")
        database.close()
        #expect(await eventually { notices.withLock { $0.count } == 21 })
        #expect(notices.withLock { $0 } == [-1] + Array(stride(from: 0, to: 40, by: 2)))
        await system.shutdown()
    }

    @Test("a row that cannot be decoded is set aside with the reason; later messages to its destination still go out")
    func corruptRowSetAside() async throws {
        let directory = try TemporaryDirectory()
        let shop = directory.file("shop.db")
        try await expectCorruptRowSetAside(outbox: "shop: { path: \"\(shop)\" }") { messages in
            let database = try SQLiteDatabase(path: shop)
            try database.configureDurable(sharedWithApplication: true)
            try database.execute("BEGIN IMMEDIATE")
            _ = try SQLiteOutboxStorage.insert(messages, into: database)
            try database.execute("UPDATE switchyard_outbox SET message = x'00ff' WHERE seq = (SELECT min(seq) + 2 FROM switchyard_outbox)")
            try database.execute("UPDATE switchyard_outbox SET claimed_until = 0")
            try database.execute("COMMIT")
        } remaining: {
            var reasons: [String] = []
            try SQLiteDatabase(path: shop).run("SELECT last_error FROM switchyard_outbox") { row in reasons.append(row.text(0)) }
            return reasons
        } depth: {
            try SQLiteOutboxStorage(path: shop, sharedWithApplication: true).depth(transports: ["work"])
        }
    }

    @Test(
        "a message the transport refuses stays in the outbox with its error, retried with backoff; later messages to its destination wait behind it with no attempt or error noted, every other destination goes on, even from the same batch; deleting the row lets the rest go"
    )
    func refusedPublish() async throws {
        let directory = try TemporaryDirectory()
        let shop = directory.file("shop.db")
        let log = CapturedLog()
        // The transport takes messages of up to 2000 bytes; the host's own limit is 1 MiB.
        let system = try await offPool {
            let config = try SwitchyardConfig.parse(
                yaml: """
                    transports:
                      work: { plugin: queue, config: { max_message_bytes: 2000 } }
                    outboxes:
                      shop: { path: "\(shop)" }
                    routes:
                      Notices.*: { transport: work, mode: fire-and-forget, concurrency: 1 }
                    """, baseDirectory: directory.path)
            return try SwitchyardActorSystem(config: config, pluginDirectories: [BuildProducts.directory], logger: log.logger())
        }
        let notices = Guarded<[Int]>([])
        let others = Guarded<[Int]>([])
        try system.host("notices", as: $Notices.self) { NoticeCollector(actorSystem: $0, seen: notices) }
        try system.host("others", as: $Notices.self) { NoticeCollector(actorSystem: $0, seen: others) }
        let toNotices = try $Notices.resolve(id: "notices", using: system)
        let toOthers = try $Notices.resolve(id: "others", using: system)
        func rows() throws -> [(seq: Int64, attempts: Int64, error: String)] {
            var found: [(Int64, Int64, String)] = []
            try SQLiteDatabase(path: shop).run("SELECT seq, attempts, coalesce(last_error, '') FROM switchyard_outbox ORDER BY seq") { row in
                found.append((row.int(0), row.int(1), row.text(2)))
            }
            return found
        }

        // One transaction, one batch to the transport: a message it refuses, one to the same
        // destination after it, and one to another destination (the batch is refused whole,
        // then tried one message at a time).
        let started = ContinuousClock.now
        try await system.transaction(on: "shop") { _ in
            try await noticeTooLarge(toNotices, 1)
            try await toNotices.notice(2)
            try await toOthers.notice(3)
        }
        // A later message to the refused one's destination waits behind it too.
        try await system.transaction(on: "shop") { _ in try await toNotices.notice(4) }
        #expect(await eventually { others.withLock { $0 } == [3] })
        #expect(await eventually { (try? rows().first?.attempts ?? 0) ?? 0 >= 1 })
        let refused = try #require(try rows().first)
        #expect(refused.error.contains("max_message_bytes"), "\(refused.error)")
        // (The relay deletes a published row after its publish returns, so wait for that.)
        #expect(await eventually { (try? rows().count) == 3 }, "\((try? rows()).map { "\($0)" } ?? "")")
        // Only the refused row is marked: the ones waiting behind it count no attempt and note no
        // error, so an operator who looks for the bad row by its error finds that one alone.
        for waiting in try rows().dropFirst() {
            #expect(waiting.attempts == 0 && waiting.error.isEmpty, "a message waiting behind the refused one was marked: \(waiting)")
        }
        // Backoff of 1 s doubling: by 3.5 s at most three attempts (the first, at 1 s, at 3 s),
        // where retrying at every pass would have made many. The bound follows the time actually
        // passed: on a loaded machine the sleep may end seconds late (one more attempt at 7 s).
        try await Task.sleep(until: started + .milliseconds(3500))
        let attempts = try #require(try rows().first).attempts
        let passed = (ContinuousClock.now - started) / .seconds(1)
        let allowed = [0.0, 1, 3, 7, 15, 31].filter { $0 <= passed }.count
        #expect(attempts >= 1 && attempts <= allowed, "\(attempts) attempts in \(passed) s")
        #expect(notices.withLock { $0 }.isEmpty)
        // Another destination of the same transport goes out meanwhile: that is not the refused
        // one's recovery. Its destination was warned of once, naming it, and is not "publishing
        // again" while its row still blocks it.
        try await system.transaction(on: "shop") { _ in try await toOthers.notice(5) }
        #expect(await eventually { others.withLock { $0 } == [3, 5] })
        try await Task.sleep(for: .milliseconds(1200))  // past the refused row's next retry
        let warnings = log.all.filter { $0.contains("outbox relay cannot publish") }
        #expect(warnings.count == 1 && warnings.first?.contains("channel=notices") == true, "\(warnings)")
        #expect(!log.all.contains { $0.contains("outbox relay publishing again") }, "\(log.all.filter { $0.contains("outbox relay") })")

        // An operator deletes the row the transport will never take: the rest go out.
        try SQLiteDatabase(path: shop, waitingWhenBusy: true).execute("DELETE FROM switchyard_outbox WHERE seq = \(refused.seq)")
        #expect(await eventually(40) { notices.withLock { $0 } == [2, 4] }, "\(notices.withLock { $0 })")
        #expect(await eventually { (try? outboxDepth(shop)) == 0 })
        await system.shutdown()
    }

    /// Two processes share an outbox and run different transports: each relays only messages
    /// to transports it runs. Claiming the others' would mark them failed ("not running here")
    /// and hold them up to 30 s from the process that could send them.
    @Test(
        "a relay leaves messages to transports its process does not run untouched, says so once they have waited a minute, and still relays its own"
    )
    func relayLeavesOtherProcessesTransports() async throws {
        let directory = try TemporaryDirectory()
        let shop = directory.file("shop.db")
        // The first process runs 'elsewhere', which refuses the message: it stays in the outbox.
        let first = try await makeSystem(
            """
            transports:
              elsewhere: { plugin: queue, config: { max_message_bytes: 2000 } }
            outboxes:
              shop: { path: "\(shop)" }
            routes:
              Notices.*: { transport: elsewhere, mode: fire-and-forget }
            """)
        try await first.transaction(on: "shop") { _ in
            try await noticeTooLarge($Notices.resolve(id: "far", using: first), 1)
        }
        func row() throws -> (attempts: Int64, error: String)? {
            var found: (Int64, String)?
            try SQLiteDatabase(path: shop, waitingWhenBusy: true).run("SELECT attempts, coalesce(last_error, '') FROM switchyard_outbox") { row in
                found = (row.int(0), row.text(1))
            }
            return found
        }
        #expect(await eventually { (try? row()?.attempts) ?? 0 >= 1 })
        await first.shutdown()
        let before = try #require(try row())
        // Committed over a minute ago, and due at once.
        try SQLiteDatabase(path: shop, waitingWhenBusy: true).execute(
            "UPDATE switchyard_outbox SET created_at = created_at - 120000000000, claimed_until = 0")

        // The second process runs 'work' only.
        let log = CapturedLog()
        let second = try await offPool {
            let config = try SwitchyardConfig.parse(
                yaml: """
                    transports:
                      work: { plugin: queue }
                    outboxes:
                      shop: { path: "\(shop)" }
                    routes:
                      Notices.*: { transport: work, mode: fire-and-forget }
                    """, baseDirectory: directory.path)
            return try SwitchyardActorSystem(config: config, pluginDirectories: [BuildProducts.directory], logger: log.logger())
        }
        let seen = Guarded<[Int]>([])
        try second.host("notices", as: $Notices.self) { NoticeCollector(actorSystem: $0, seen: seen) }
        try await second.transaction(on: "shop") { _ in try await $Notices.resolve(id: "notices", using: second).notice(2) }
        #expect(await eventually { seen.withLock { $0 } == [2] }, "its own message goes out")
        #expect(
            await eventually { log.all.contains { $0.contains("does not run") && $0.contains("transport=elsewhere") && $0.contains("messages=1") } },
            "\(log.all.filter { $0.contains("outbox") })")
        // Several polls later the other process's message is as it was: not claimed, not marked.
        try await Task.sleep(for: .milliseconds(2500))
        let after = try #require(try row())
        #expect(after.attempts == before.attempts && after.error == before.error, "touched by the process that does not run its transport: \(after)")
        #expect(!log.all.contains { $0.contains("not running here") }, "\(log.all.filter { $0.contains("outbox") })")
        await second.shutdown()
    }

    @Test(
        "shutdown right after a commit publishes what is due before the transports close; a row waiting out a refusal stays in the database for the next process"
    )
    func drainPublishesWhatIsDue() async throws {
        let directory = try TemporaryDirectory()
        let shop = directory.file("shop.db")
        let queue = directory.file("work.db")
        let config = """
            transports:
              work: { plugin: queue, config: { path: "\(queue)", max_message_bytes: 2000 } }
            outboxes:
              shop: { path: "\(shop)" }
            routes:
              Notices.*: { transport: work, mode: fire-and-forget }
            """
        // The sender hosts nothing: what it relayed waits in the durable queue.
        let sender = try await makeSystem(config)
        let notices = try $Notices.resolve(id: "notices", using: sender)
        try await sender.transaction(on: "shop") { _ in
            try await noticeTooLarge($Notices.resolve(id: "refused", using: sender), 0)
        }
        try await sender.transaction(on: "shop") { _ in
            for id in 1...500 { try await notices.notice(id) }
        }
        await sender.shutdown()
        // Everything due was published before the transports closed; the refused row stays.
        var left: [String] = []
        try SQLiteDatabase(path: shop).run("SELECT coalesce(last_error, '') FROM switchyard_outbox") { row in left.append(row.text(0)) }
        #expect(left.count == 1 && left[0].contains("max_message_bytes"), "\(left)")

        let receiver = try await makeSystem(config)
        let seen = Guarded<[Int]>([])
        try receiver.host("notices", as: $Notices.self) { NoticeCollector(actorSystem: $0, seen: seen) }
        #expect(await eventually { seen.withLock { $0.count } == 500 }, "\(seen.withLock { $0.count })")
        #expect(Set(seen.withLock { $0 }) == Set(1...500))
        await receiver.shutdown()
    }

    @Test("system.transaction waits for another connection's write lock on the file, then commits (transactions.md: other processes wait on the lock)")
    func waitsForAnotherWriter() async throws {
        let directory = try TemporaryDirectory()
        let shop = directory.file("shop.db")
        let (system, seen, notices) = try await noticesWithOutbox(at: shop)
        try await system.transaction(on: "shop") { db in try db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)") }
        // Another writer (a connection of its own, as another process would have) holds the
        // file's write lock for a second.
        nonisolated(unsafe) let other = try SQLiteDatabase(path: shop)  // used by one thread at a time
        try other.configureDurable(sharedWithApplication: true)
        try other.execute("BEGIN IMMEDIATE")
        try other.execute("INSERT INTO orders VALUES (1)")
        // Released from a thread of its own: a task could wait for a pool thread while the
        // transaction below blocks one in SQLite's busy handler.
        let released = DispatchSemaphore(value: 0)
        let commitError = Guarded<TransportError?>(nil)
        Thread {
            usleep(1_000_000)
            do throws(TransportError) { try other.execute("COMMIT") } catch { commitError.withLock { $0 = error } }
            released.signal()
        }.start()
        let started = ContinuousClock.now
        try await system.transaction(on: "shop") { db in
            _ = try db.run("INSERT INTO orders VALUES (2)")
            try await notices.notice(2)
        }
        let waited = ContinuousClock.now - started
        try await offPool { released.wait() }
        #expect(commitError.withLock { $0 == nil }, "\(String(describing: commitError.withLock { $0 }))")
        #expect(waited >= .milliseconds(800), "it committed after \(waited), while the other writer held the lock")
        #expect(await eventually { seen.withLock { $0 } == [2] })
        var orders: [Int64] = []
        try SQLiteDatabase(path: shop).run("SELECT id FROM orders ORDER BY id") { row in orders.append(row.int(0)) }
        #expect(orders == [1, 2])
        await system.shutdown()
    }

    @Test("a transaction whose outbox write fails rolls back whole, throws and sends nothing")
    func failedCommit() async throws {
        let directory = try TemporaryDirectory()
        let shop = directory.file("shop.db")
        let (system, seen, notices) = try await noticesWithOutbox(at: shop)
        // A body that breaks the transaction itself (a constraint failure inside SQL it ran
        // and swallowed) still rolls back whole: the call goes nowhere.
        await #expect(throws: (any Error).self) {
            try await system.transaction(on: "shop") { db in
                try await notices.notice(99)
                try db.execute("DROP TABLE switchyard_outbox")
            }
        }
        try await Task.sleep(for: .milliseconds(300))
        #expect(seen.withLock { $0 }.isEmpty)
        #expect(try outboxDepth(shop) == 0)
        await system.shutdown()
    }

    @Test("an inbox transaction that always fails is retried by the route's policy, then dead-lettered with the reason; its follow-ups are never sent")
    func failingEffect() async throws {
        let directory = try TemporaryDirectory()
        let system = try await makeSystem(
            """
            transports:
              work: { plugin: queue }
            routes:
              Accounts.*: { transport: work, retry: { max_attempts: 3, initial_delay: 10ms }, inbox: { path: "\(directory.file("inbox.db"))" }, outbox: true }
              Notices.*: { transport: work, mode: fire-and-forget }
            """)
        let (ledger, seen) = try hostLedger(on: system)
        await #expect {
            try await ledger.post(-1, fail: false)
        } throws: { error in
            guard let error = error as? SwitchyardError else { return false }
            return error.code == .deadLettered && error.attempts == 3 && error.reason.contains("the inbox transaction failed")
        }
        try await Task.sleep(for: .milliseconds(200))
        #expect(seen.withLock { $0 }.isEmpty)
        await system.shutdown()
    }

    @Test("an inbox transaction that always fails on a route without a policy but with max_deliveries is dead-lettered saying so, not as a crashed host's poison message")
    func failingEffectUpToMaxDeliveries() async throws {
        let directory = try TemporaryDirectory()
        let system = try await makeSystem(
            """
            transports:
              work: { plugin: queue }
            routes:
              Accounts.*: { transport: work, deadline: 20s, max_deliveries: 2, inbox: { path: "\(directory.file("inbox.db"))" }, outbox: true }
              Notices.*: { transport: work, mode: fire-and-forget }
            """)
        let (ledger, seen) = try hostLedger(on: system)
        let error = await #expect(throws: SwitchyardError.self) { try await ledger.post(-1, fail: false) }
        #expect(error?.code == .deadLettered && error?.attempts == 2, "\(String(describing: error))")
        #expect(error?.reason.contains("the inbox transaction failed") == true && error?.reason.contains("the host crashed") == false, "\(String(describing: error))")
        #expect(seen.withLock { $0 }.isEmpty)
        await system.shutdown()
    }

    @Test("an inbox transaction that fails on a route without a retry policy runs again a second later, until it commits: once, with one follow-up")
    func failingEffectWithoutPolicy() async throws {
        let directory = try TemporaryDirectory()
        let inbox = directory.file("inbox.db")
        let system = try await makeSystem(
            """
            transports:
              work: { plugin: queue }
            routes:
              Accounts.*: { transport: work, mode: fire-and-forget, inbox: { path: "\(inbox)" }, outbox: true }
              Notices.*: { transport: work, mode: fire-and-forget }
            """)
        let seen = Guarded<[Int]>([])
        try system.host("notices", as: $Notices.self) { NoticeCollector(actorSystem: $0, seen: seen) }
        let notices = try $Notices.resolve(id: "notices", using: system)
        let runs = Guarded(0)
        try system.host("ledger", as: $Accounts.self) { FlakyLedger(actorSystem: $0, notices: notices, runs: runs, failures: 2) }
        let ledger = try $Accounts.resolve(id: "ledger", using: system)
        let sent = ContinuousClock.now
        try await ledger.post(7, fail: false)
        #expect(await eventually { seen.withLock { $0 } == [7] })
        let took = ContinuousClock.now - sent
        #expect(runs.withLock { $0 } == 3)
        #expect(took >= .milliseconds(1_900), "two failures, each redelivered a second later: \(took)")
        #expect(try booked(in: inbox) == ["ledger:7"])
        try await Task.sleep(for: .milliseconds(300))
        #expect(seen.withLock { $0 } == [7], "the failed runs' follow-ups were never sent")
        await system.shutdown()
    }

    @Test("concurrent transactions whose bodies suspend: no thread starved, every call sent, in commit order per destination")
    func concurrentTransactionsKeepOrder() async throws {
        let directory = try TemporaryDirectory()
        let system = try await makeSystem(
            """
            transports:
              work: { plugin: queue }
            outboxes:
              shop: { path: "\(directory.file("shop.db"))" }
            routes:
              Notices.*: { transport: work, mode: fire-and-forget, concurrency: 1 }
            """)
        let seen = Guarded<[Int]>([])
        try system.host("notices", as: $Notices.self) { NoticeCollector(actorSystem: $0, seen: seen) }
        let notices = try $Notices.resolve(id: "notices", using: system)
        let committed = Guarded<[Int]>([])
        // More transactions at once than the cooperative pool has threads, each suspending
        // inside its body while it holds SQLite's write lock.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for id in 0..<24 {
                group.addTask {
                    try await system.transaction(on: "shop") { _ in
                        try await Task.sleep(for: .milliseconds(2))
                        try await notices.notice(id)
                        committed.withLock { $0.append(id) }  // bodies run one at a time: commit order
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(await eventually { seen.withLock { $0.count } == 24 })
        #expect(seen.withLock { $0 } == committed.withLock { $0 })
        await system.shutdown()
    }

    /// One file as a route's inbox and an `outboxes:` entry (transactions.md allows it). A
    /// transaction holds the file's write lock across an `await`; the inbox's commits of calls
    /// handled meanwhile used to wait for that lock on threads of the cooperative pool — all of
    /// them, with enough calls — so nothing was left to resume the transaction: a stall until
    /// SQLite's busy timeout (10 s), and the calls failed and ran again.
    @Test("a transaction holding a file across an await, and inbox commits of calls handled meanwhile on the same file, take turns without a stall")
    func inboxAndTransactionShareAFile() async throws {
        let directory = try TemporaryDirectory()
        let shared = directory.file("shared.db")
        // More handlers committing at once than the cooperative pool has threads.
        let width = ProcessInfo.processInfo.activeProcessorCount + 2
        let log = CapturedLog()
        let system = try await offPool {
            let config = try SwitchyardConfig.parse(
                yaml: """
                    transports:
                      work: { plugin: queue }
                    outboxes:
                      shop: { path: "\(shared)" }
                    routes:
                      Accounts.*: { transport: work, inbox: { path: "\(shared)" }, outbox: true, concurrency: \(width) }
                      Notices.*: { transport: work, mode: fire-and-forget }
                    """, baseDirectory: directory.path)
            return try SwitchyardActorSystem(config: config, pluginDirectories: [BuildProducts.directory], logger: log.logger())
        }
        let (ledger, seen) = try hostLedger(on: system)
        try await ledger.post(1, fail: false)  // the inbox's tables, and `booked`, exist

        let holding = Guarded(false)
        let started = ContinuousClock.now
        let transaction = Task {
            try await system.transaction(on: "shop") { db in
                try db.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER NOT NULL)")
                holding.withLock { $0 = true }
                try await Task.sleep(for: .milliseconds(500))  // calls are handled meanwhile
                try db.run("INSERT INTO orders VALUES (1)")
            }
        }
        #expect(await eventually { holding.withLock { $0 } })
        try await withThrowingTaskGroup(of: Void.self) { group in
            for id in 2...(2 * width + 1) { group.addTask { try await ledger.post(id, fail: false) } }
            try await group.waitForAll()
        }
        try await transaction.value
        // A stall ends when SQLite's busy handler gives up (10 s): the inbox's commit fails and
        // says so, and the call runs again. Not a stopwatch (a sanitizer build on a loaded
        // machine took 5.8 s for the whole, without any stall).
        let took = ContinuousClock.now - started
        #expect(!log.all.contains { $0.contains("inbox transaction failed") }, "after \(took): \(log.all.filter { $0.contains("inbox") })")
        var booked: [Int64] = []
        try SQLiteDatabase(path: shared, waitingWhenBusy: true).run("SELECT id FROM booked ORDER BY id") { row in booked.append(row.int(0)) }
        #expect(booked == (1...(2 * width + 1)).map(Int64.init))
        #expect(await eventually { Set(seen.withLock { $0 }) == Set(1...(2 * width + 1)) })

        // A request-reply call from inside such a transaction to that route would wait for its
        // own transaction's end: refused at once, saying why.
        let refused = Guarded<String?>(nil)
        try await system.transaction(on: "shop") { _ in
            do {
                try await ledger.post(99, fail: false)
            } catch {
                refused.withLock { $0 = "\(error)" }
            }
        }
        let reason = try #require(refused.withLock { $0 }, "the call inside the transaction was not refused")
        #expect(reason.contains("would wait for its own transaction"), "\(reason)")
        try await ledger.post(99, fail: false)  // after the transaction: served
        await system.shutdown()
    }

    @Test("a call made by a task the handler started, after its transaction ended, is sent (not lost in a finished outbox)")
    func callAfterTheTransaction() async throws {
        let directory = try TemporaryDirectory()
        let system = try await makeSystem(
            """
            transports:
              work: { plugin: queue }
            routes:
              Accounts.*: { transport: work, inbox: { path: "\(directory.file("inbox.db"))" }, outbox: true }
              Notices.*: { transport: work, mode: fire-and-forget }
            """)
        let (ledger, seen) = try hostLedger(on: system)
        try await ledger.post(5000, fail: false)  // starts a task that calls after returning
        #expect(await eventually { Set(seen.withLock { $0 }) == [5000, 6000] })
        await system.shutdown()
    }

    @Test("a follow-up on a request-reply route is not part of the handler's transaction: it runs, and a warning says so once")
    func requestReplyFollowUpWarned() async throws {
        let directory = try TemporaryDirectory()
        let log = CapturedLog()
        let system = try await offPool {
            let config = try SwitchyardConfig.parse(
                yaml: """
                    transports:
                      work: { plugin: queue }
                    routes:
                      Accounts.*: { transport: work, inbox: { path: "\(directory.file("inbox.db"))" }, outbox: true }
                      Notices.*: { transport: work }
                    """, baseDirectory: directory.path)
            return try SwitchyardActorSystem(config: config, pluginDirectories: [BuildProducts.directory], logger: log.logger())
        }
        let (ledger, seen) = try hostLedger(on: system)
        try await ledger.post(1, fail: false)
        try await ledger.post(2, fail: false)
        #expect(seen.withLock { $0 } == [1, 2], "request-reply: sent at once, answered before the handler returned")
        let warnings = log.all.filter { $0.contains("a call made inside a transaction is not part of it") }
        #expect(warnings.count == 1 && warnings[0].contains("Notices.notice(_:)") && warnings[0].contains("fire-and-forget"), "\(warnings)")
        await system.shutdown()
    }

    @Test("an inbox and an outbox on a direct route are refused at start-up, naming the key")
    func directRouteRefused() async throws {
        await #expect {
            _ = try await makeSystem(
                """
                routes:
                  Accounts.*: { transport: direct, inbox: {}, outbox: true }
                """)
        } throws: { error in
            (error as? ConfigError)?.key == "routes.Accounts.*.inbox"
        }
    }

    @Test("config: an outbox needs an inbox on its route, and an outboxes entry needs a path")
    func configErrors() throws {
        #expect {
            _ = try SwitchyardConfig.parse(
                yaml: """
                    transports: { work: { plugin: queue } }
                    routes:
                      Accounts.*: { transport: work, outbox: true }
                    """, baseDirectory: "/tmp")
        } throws: { error in
            let error = error as? ConfigError
            return error?.key == "routes.Accounts.*.outbox" && error?.line == 3 && error?.message.contains("needs an inbox") == true
        }
        #expect {
            _ = try SwitchyardConfig.parse(yaml: "outboxes:\n  shop: {}\n", baseDirectory: "/tmp")
        } throws: { error in
            (error as? ConfigError)?.key == "outboxes.shop.path"
        }
        #expect {
            _ = try SwitchyardConfig.parse(yaml: "outboxes:\n  shop: { path: a.db, postgres: {} }\n", baseDirectory: "/tmp")
        } throws: { error in
            (error as? ConfigError)?.key == "outboxes.shop.postgres"
        }
        #expect {
            _ = try SwitchyardConfig.parse(
                yaml: """
                    transports: { work: { plugin: queue } }
                    routes:
                      Accounts.*: { transport: work, inbox: { path: a.db, postgres: {} } }
                    """, baseDirectory: "/tmp")
        } throws: { error in
            (error as? ConfigError)?.key == "routes.Accounts.*.inbox"
        }
        #expect {
            _ = try SwitchyardConfig.parse(
                yaml: """
                    transports: { work: { plugin: queue } }
                    routes:
                      Accounts.*: { transport: work, inbox: {}, outbox: maybe }
                    """, baseDirectory: "/tmp")
        } throws: { error in
            (error as? ConfigError)?.key == "routes.Accounts.*.outbox"
        }
    }
}

/// The same promises with the inbox, the outbox, the application's rows and the queue in one
/// PostgreSQL database (a server of the test's own).
@Suite("Transactional outbox in PostgreSQL", .enabled(if: PostgresServer.binDirectory != nil, "needs Debian's postgresql package"))
struct PostgresOutboxTests {
    static func rows(_ server: PostgresServer, _ sql: String) throws -> [Int64] {
        let database = try PostgresDatabase(conninfo: server.conninfo)
        var rows: [Int64] = []
        try database.run(sql) { row in rows.append(row.int(0)) }
        return rows
    }

    /// When a system's shutdown returns, none of its connections (the transport's, the inbox's,
    /// the outboxes', the transactions') is left open.
    static func expectNoConnectionsLeft(_ server: PostgresServer, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(server.clientConnections == 0, "\(server.clientConnections) connections still open after shutdown", sourceLocation: sourceLocation)
    }

    @Test("inboxes sharing a PostgreSQL schema keep every record for the longest window among them: a 1 ms window's pruning keeps a 1 h window's calls")
    func sharedSchemaKeepsLongestWindow() async throws {
        let server = try await offPool { try PostgresServer() }
        try expectLongestWindowKept(
            open: { try PostgresInboxDatabase(conninfo: server.conninfo, schema: "shared_tx") },
            openAlone: { try PostgresInboxDatabase(conninfo: server.conninfo, schema: "alone_tx") })
    }

    @Test("a handler's writes, its follow-up calls and its inbox record commit in one PostgreSQL transaction; a handler that throws commits none")
    func handlerFollowUps() async throws {
        let server = try await offPool { try PostgresServer() }
        let system = try await makeSystem(
            """
            transports:
              work: { plugin: postgres, config: { conninfo: "\(server.conninfo)", schema: tx_work } }
            routes:
              Accounts.*: { transport: work, inbox: { window: 1h, postgres: { conninfo: "\(server.conninfo)", schema: tx } }, outbox: true }
              Notices.*: { transport: work, mode: fire-and-forget }
            """)
        let seen = Guarded<[Int]>([])
        try system.host("notices", as: $Notices.self) { NoticeCollector(actorSystem: $0, seen: seen) }
        let notices = try $Notices.resolve(id: "notices", using: system)
        try system.host("ledger", as: $Accounts.self) { AccountsService(actorSystem: $0, notices: notices, postgres: true) }
        let ledger = try $Accounts.resolve(id: "ledger", using: system)

        try await ledger.post(1, fail: false)
        await #expect(throws: (any Error).self) { try await ledger.post(2, fail: true) }
        try await ledger.post(3, fail: false)
        #expect(await eventually { seen.withLock { Set($0) } == [1, 3] })
        try await Task.sleep(for: .milliseconds(300))
        #expect(seen.withLock { $0.sorted() } == [1, 3], "the rolled-back handler's notice must never be sent")
        #expect(try Self.rows(server, "SELECT id FROM booked ORDER BY id") == [1, 3])
        #expect(await eventually { (try? Self.rows(server, "SELECT count(*)::bigint FROM tx.outbox")) == [0] })
        #expect(try Self.rows(server, "SELECT count(*)::bigint FROM tx.inbox") == [3])
        #expect(server.clientConnections > 0, "the system's connections are counted")
        await system.shutdown()
        Self.expectNoConnectionsLeft(server)
    }

    @Test("a row that cannot be decoded is set aside with the reason; later messages to its destination still go out")
    func corruptRowSetAside() async throws {
        let server = try await offPool { try PostgresServer() }
        try await expectCorruptRowSetAside(outbox: "shop: { postgres: { conninfo: \"\(server.conninfo)\" } }", postgres: true) { messages in
            let database = try PostgresDatabase(conninfo: server.conninfo)
            try database.transaction { () throws(TransportError) in
                try PostgresOutboxStorage.insert(messages, into: database, schema: "switchyard")
                try database.run("UPDATE switchyard.outbox SET message = '\\x00ff'::bytea WHERE seq = (SELECT min(seq) + 2 FROM switchyard.outbox)")
                try database.run("UPDATE switchyard.outbox SET claimed_until = 0")
            }
        } remaining: {
            let database = try PostgresDatabase(conninfo: server.conninfo)
            var reasons: [String] = []
            try database.run("SELECT last_error FROM switchyard.outbox") { row in reasons.append(row.text(0)) }
            return reasons
        } depth: {
            let storage = try PostgresOutboxStorage(conninfo: server.conninfo, schema: "switchyard")
            defer { storage.closeConnections() }
            return try storage.depth(transports: ["work"])
        }
    }

    /// The SQLite test of the same name, on PostgreSQL, whose claim is other SQL (an advisory
    /// lock and one UPDATE … RETURNING).
    @Test(
        "PostgreSQL: a destination with a message another relay has claimed waits for it, in order, while other destinations go on"
    )
    func claimedDestinationWaits() async throws {
        let server = try await offPool { try PostgresServer() }
        let system = try await makeSystem(
            """
            transports:
              work: { plugin: queue }
            outboxes:
              shop: { postgres: { conninfo: "\(server.conninfo)" } }
            routes:
              Notices.*: { transport: work, mode: fire-and-forget, concurrency: 1 }
            """)
        let notices = Guarded<[Int]>([])
        let others = Guarded<[Int]>([])
        try system.host("notices", as: $Notices.self) { NoticeCollector(actorSystem: $0, seen: notices) }
        try system.host("others", as: $Notices.self) { NoticeCollector(actorSystem: $0, seen: others) }
        let toNotices = try $Notices.resolve(id: "notices", using: system)
        try await system.transaction(on: "shop", PostgresDatabase.self) { _ in try await toNotices.notice(-1) }
        #expect(await eventually { notices.withLock { $0 } == [-1] })
        #expect(await eventually { (try? Self.rows(server, "SELECT count(*)::bigint FROM switchyard.outbox")) == [0] })
        let call = try #require(system.targets.withLock { $0.values.first { $0.call.method == "notice" }?.call })
        // Rows to two destinations, interleaved; the first to "notices" claimed by another
        // process's relay for longer than the test waits.
        let firstRow = "(SELECT min(seq) FROM switchyard.outbox)"
        let database = try PostgresDatabase(conninfo: server.conninfo)
        let rows = try noticeRows(0..<40, call: call) { $0 % 2 == 0 ? "notices" : "others" }
        try database.transaction { () throws(TransportError) in
            try PostgresOutboxStorage.insert(rows, into: database, schema: "switchyard")
            try database.run("UPDATE switchyard.outbox SET claimed_until = 0")
            try database.run("UPDATE switchyard.outbox SET claimed_until = \(WallClock.nowNanos() + 600_000_000_000) WHERE seq = \(firstRow)")
        }
        #expect(await eventually { others.withLock { $0 } == Array(stride(from: 1, to: 40, by: 2)) }, "\(others.withLock { $0 })")
        #expect(notices.withLock { $0 } == [-1], "nothing to notices while its first message is claimed elsewhere")
        // The claim runs out: the first, then the rest, in order.
        try database.run("UPDATE switchyard.outbox SET claimed_until = \(WallClock.nowNanos() - 1) WHERE seq = \(firstRow)")
        #expect(await eventually { notices.withLock { $0.count } == 21 })
        #expect(notices.withLock { $0 } == [-1] + Array(stride(from: 0, to: 40, by: 2)))
        await system.shutdown()
    }

    @Test("a PostgreSQL connection lost before COMMIT: the error says the change may have been stored, and the next transaction works on a fresh connection")
    func connectionLostAtCommit() async throws {
        let server = try await offPool { try PostgresServer() }
        let (system, seen, notices) = try await noticesWithOutboxes(["ledger: { postgres: { conninfo: \"\(server.conninfo)\" } }"])
        try await system.transaction(on: "ledger", PostgresDatabase.self) { db in try db.execute("CREATE TABLE payments (id bigint PRIMARY KEY)") }
        // The server ends the transaction's connection (an administrator, a failover, a network
        // cut) after its last statement: only COMMIT is left to send.
        await #expect {
            try await system.transaction(on: "ledger", PostgresDatabase.self) { db in
                try db.run("INSERT INTO payments VALUES (30)")
                var pid: Int64 = 0
                try db.run("SELECT pg_backend_pid()") { row in pid = row.int(0) }  // an integer column
                #expect(try Self.rows(server, "SELECT pg_terminate_backend(\(pid))::int::bigint") == [1], "backend \(pid) terminated")
            }
        } throws: { error in
            "\(error)".contains("may have been stored")
        }
        // It was not (the server ended the session before COMMIT), and nothing is lost or stuck:
        // the next transaction commits its row and its call.
        #expect(try Self.rows(server, "SELECT id FROM payments") == [])
        try await system.transaction(on: "ledger", PostgresDatabase.self) { db in
            try db.run("INSERT INTO payments VALUES (31)")
            try await notices.notice(31)
        }
        #expect(await eventually { seen.withLock { $0 } == [31] })
        #expect(try Self.rows(server, "SELECT id FROM payments") == [31])
        #expect(server.clientConnections > 0, "the system's connections are counted")
        await system.shutdown()
        Self.expectNoConnectionsLeft(server)
    }

    @Test("system.transaction on a PostgreSQL outbox commits the application's rows and its calls together, or neither")
    func applicationTransaction() async throws {
        let server = try await offPool { try PostgresServer() }
        let dir = try TemporaryDirectory()
        let (system, seen, notices) = try await noticesWithOutboxes([
            "ledger: { postgres: { conninfo: \"\(server.conninfo)\" } }", "shop: { path: \"\(dir.file("outbox.db"))\" }",
        ])
        try await system.transaction(on: "ledger", PostgresDatabase.self) { db in
            try db.execute("CREATE TABLE payments (id bigint PRIMARY KEY)")
            try db.run("INSERT INTO payments VALUES (20)")
            try await notices.notice(20)
        }
        await #expect(throws: AccountsRefused.self) {
            try await system.transaction(on: "ledger", PostgresDatabase.self) { db in
                try db.run("INSERT INTO payments VALUES (21)")
                try await notices.notice(21)
                throw AccountsRefused()
            }
        }
        #expect(await eventually { seen.withLock { $0 } == [20] })
        try await Task.sleep(for: .milliseconds(300))
        #expect(seen.withLock { $0 } == [20])
        #expect(try Self.rows(server, "SELECT id FROM payments") == [20])
        // A body that catches a failed statement and goes on: PostgreSQL aborted the transaction,
        // so the commit throws and neither the row nor the call is committed.
        await #expect {
            try await system.transaction(on: "ledger", PostgresDatabase.self) { db in
                try db.run("INSERT INTO payments VALUES (22)")
                _ = try? db.run("INSERT INTO payments VALUES (20)")  // a duplicate key: aborts the transaction
                try await notices.notice(22)
            }
        } throws: { error in
            "\(error)".contains("rolled back")
        }
        try await Task.sleep(for: .milliseconds(300))
        #expect(seen.withLock { $0 } == [20])
        #expect(try Self.rows(server, "SELECT id FROM payments") == [20])
        // The wrong kind of database says which call to use.
        await #expect {
            try await system.transaction(on: "ledger") { _ in }
        } throws: { error in
            "\(error)".contains("PostgresDatabase.self")
        }
        #expect(server.clientConnections > 0, "the system's connections are counted")
        await system.shutdown()
        Self.expectNoConnectionsLeft(server)
    }
}
