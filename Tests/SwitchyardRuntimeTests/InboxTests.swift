import Distributed
import Foundation
import SwitchyardABI
import SwitchyardPostgres
import SwitchyardTestSupport
import SwitchyardTransportKit
import SwitchyardWire
import Testing

@testable import SwitchyardRuntime

@Resolvable
protocol Bookkeeper: DistributedActor where ActorSystem == SwitchyardActorSystem {
    distributed func book(_ id: Int) async throws
}

/// Books each call as a row in the inbox's own database, through the inbox transaction.
distributed actor BookkeeperService: Bookkeeper {
    typealias ActorSystem = SwitchyardActorSystem
    let label: String

    init(actorSystem: ActorSystem, label: String) {
        self.actorSystem = actorSystem
        self.label = label
    }

    distributed func book(_ id: Int) async throws {
        let label = self.label
        try Switchyard.inboxTransaction { db in
            try db.execute("CREATE TABLE IF NOT EXISTS booked (id INTEGER NOT NULL, label TEXT NOT NULL)")
            try db.run("INSERT INTO booked VALUES (?, ?)", [.int(Int64(id)), .text(label)])
        }
    }
}

@Resolvable
protocol Poster: DistributedActor where ActorSystem == SwitchyardActorSystem {
    distributed func post(_ id: Int) async throws
}

/// Writes through the PostgreSQL form of the inbox transaction, on whatever route it is hosted.
distributed actor PostgresPosterService: Poster {
    typealias ActorSystem = SwitchyardActorSystem
    distributed func post(_ id: Int) async throws {
        try Switchyard.inboxTransaction(PostgresDatabase.self) { db in try db.execute("SELECT 1") }
    }
}

/// Starts a task that writes through the inbox transaction after the handler has returned, and
/// records what that write got; throws for a negative id (the handler failed).
distributed actor LateBookkeeperService: Bookkeeper {
    typealias ActorSystem = SwitchyardActorSystem
    let outcome: Guarded<String?>

    init(actorSystem: ActorSystem, outcome: Guarded<String?>) {
        self.actorSystem = actorSystem
        self.outcome = outcome
    }

    distributed func book(_ id: Int) async throws {
        let outcome = self.outcome
        Task {  // inherits the handler's task-locals, its inbox effects among them
            try? await Task.sleep(for: .milliseconds(300))
            do {
                try Switchyard.inboxTransaction { db in try db.execute("CREATE TABLE IF NOT EXISTS late (id INTEGER)") }
                outcome.withLock { $0 = "accepted" }
            } catch {
                outcome.withLock { $0 = "\(error)" }
            }
        }
        if id < 0 { throw BookingRefused() }
    }
}

/// What ``LateBookkeeperService`` throws for a negative id.
struct BookingRefused: Error {}

/// Two routes' inboxes on one database, one remembering calls for 1 ms and one for an hour: the
/// short one's pruning must keep the long one's record; alone on its database, the short one
/// forgets its own.
func expectLongestWindowKept(open: () throws -> any InboxDatabase, openAlone: () throws -> any InboxDatabase) throws {
    let shortWindow: Int64 = 1_000_000
    let longWindow: Int64 = 3_600_000_000_000
    let short = try open()
    let long = try open()
    try short.declareWindow(shortWindow)
    try long.declareWindow(longWindow)
    let shortInbox = Inbox(windowNanos: shortWindow, database: short)
    let longInbox = Inbox(windowNanos: longWindow, database: long)
    guard case .claimed = try longInbox.claim("call-1") else { Issue.record("a new key was not claimed"); return }
    _ = try longInbox.finish("call-1", Inbox.Handled(outcome: "return", reply: [1]))
    usleep(20_000)
    try shortInbox.prune()
    guard case .handled(let kept) = try longInbox.claim("call-1") else {
        Issue.record("the 1 ms window's pruning forgot a call the 1 h window remembers")
        return
    }
    #expect(kept.reply == [1])

    let alone = try openAlone()
    try alone.declareWindow(shortWindow)
    let aloneInbox = Inbox(windowNanos: shortWindow, database: alone)
    guard case .claimed = try aloneInbox.claim("call-2") else { Issue.record("a new key was not claimed"); return }
    _ = try aloneInbox.finish("call-2", Inbox.Handled(outcome: "return", reply: [2]))
    usleep(20_000)
    try aloneInbox.prune()
    #expect(try alone.lookup("call-2", cutoff: 0) == nil, "a record older than every declared window was kept")
}

/// Rows of the `booked` table in the inbox file at `path`: "label:id".
func booked(in path: String) throws -> [String] {
    let database = try SQLiteDatabase(path: path)
    var rows: [String] = []
    try database.run("SELECT label, id FROM booked ORDER BY rowid") { row in rows.append("\(row.text(0)):\(row.int(1))") }
    return rows
}

@Suite("Inbox transactions")
struct InboxTests {
    @Test("effects added with Switchyard.inboxTransaction commit once, with the inbox record, however often the call is delivered")
    func effectsCommitOnce() async throws {
        let directory = try TemporaryDirectory()
        let inboxPath = directory.file("inbox.db")
        let system = try await makeSystem(
            """
            transports:
              memq: { plugin: queue }
            routes:
              Bookkeeper.*: { transport: memq, mode: fire-and-forget, inbox: { window: 1h, path: "\(inboxPath)" } }
            """)
        try system.host("books", as: $Bookkeeper.self) { BookkeeperService(actorSystem: $0, label: "books") }
        let books = try $Bookkeeper.resolve(id: "books", using: system)
        try await books.book(1)
        #expect(await eventually { (try? booked(in: inboxPath)) == ["books:1"] })
        // The same call (one envelope id) delivered three more times.
        let call = try #require(system.targets.withLock { $0.values.first { $0.call.method == "book" }?.call })
        var arguments: [UInt8] = []
        try ArgumentEncoding.compact.encode(2, appendingTo: &arguments)
        let envelope = Envelope(id: "same-call", target: .init(name: "Bookkeeper.book(_:)", identifier: call.identifier), arguments: arguments)
        let client = try #require(system.transports?["memq"]?.client)
        for _ in 0..<3 { try client.publish(envelope.message(channel: "books")) }
        #expect(await eventually { (try? booked(in: inboxPath))?.contains("books:2") == true })
        try await Task.sleep(for: .milliseconds(300))
        #expect(try booked(in: inboxPath) == ["books:1", "books:2"])
        await system.shutdown()
    }

    @Test("the tables a handler writes in its inbox's file can be read outside a handler: the same file named under outboxes")
    func inboxFileAsAnOutbox() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("books.db")
        let system = try await makeSystem(
            """
            transports:
              memq: { plugin: queue }
            routes:
              Bookkeeper.*: { transport: memq, mode: fire-and-forget, inbox: { window: 1h, path: "\(path)" } }
            outboxes:
              books: { path: "\(path)" }
            """)
        try system.host("books", as: $Bookkeeper.self) { BookkeeperService(actorSystem: $0, label: "books") }
        let books = try $Bookkeeper.resolve(id: "books", using: system)
        for id in 1...3 { try await books.book(id) }
        #expect(await eventually { (try? booked(in: path))?.count == 3 })
        let count = try await system.transaction(on: "books") { db -> Int64 in
            var count: Int64 = 0
            try db.run("SELECT count(*) FROM booked") { row in count = row.int(0) }
            return count
        }
        #expect(count == 3)
        try await books.book(4)  // and the inbox goes on writing it
        #expect(await eventually { (try? booked(in: path))?.count == 4 })
        await system.shutdown()
    }

    @Test("a file an outbox created first is refused as an inbox, with the reason and what to do (not as another application's)")
    func outboxFileFirst() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("books.db")
        let first = try await makeSystem("outboxes:\n  books: { path: \"\(path)\" }\n")
        try await first.transaction(on: "books") { db in try db.execute("CREATE TABLE booked (id INTEGER NOT NULL, label TEXT NOT NULL)") }
        await first.shutdown()
        await #expect {
            _ = try await makeSystem(
                """
                transports:
                  memq: { plugin: queue }
                routes:
                  Bookkeeper.*: { transport: memq, mode: fire-and-forget, inbox: { window: 1h, path: "\(path)" } }
                """)
        } throws: { error in
            "\(error)".contains("was created by an outbox (outboxes:)") && "\(error)".contains("routes.Bookkeeper.*.inbox.path")
        }
    }

    @Test("on a topic each subscriber group runs and books the same event once")
    func groupsEachBookOnce() async throws {
        let directory = try TemporaryDirectory()
        let inboxPath = directory.file("inbox.db")
        let system = try await makeSystem(
            """
            transports:
              events: { plugin: topic }
            routes:
              Bookkeeper.*: { transport: events, mode: fire-and-forget, inbox: { window: 1h, path: "\(inboxPath)" } }
            """)
        for group in ["audit", "mail"] {
            try system.host(SwitchyardActorID("books", group: group), as: $Bookkeeper.self) { BookkeeperService(actorSystem: $0, label: group) }
        }
        let books = try $Bookkeeper.resolve(id: "books", using: system)
        try await books.book(7)
        #expect(await eventually { (try? booked(in: inboxPath))?.count == 2 })
        try await Task.sleep(for: .milliseconds(200))
        #expect(try Set(booked(in: inboxPath)) == ["audit:7", "mail:7"])
        await system.shutdown()
    }

    @Test("a closure for the other kind of database (PostgreSQL's on a SQLite inbox) fails the call, and the reason names the call to use")
    func wrongDatabaseKind() async throws {
        let directory = try TemporaryDirectory()
        let system = try await makeSystem(
            """
            transports:
              memq: { plugin: queue }
            routes:
              Poster.*: { transport: memq, deadline: 10s, inbox: { path: "\(directory.file("inbox.db"))" } }
            """)
        try system.host("poster", as: $Poster.self) { PostgresPosterService(actorSystem: $0) }
        let poster = try $Poster.resolve(id: "poster", using: system)
        let error = await #expect(throws: SwitchyardError.self) { try await poster.post(1) }
        #expect(error?.code == .deadLettered, "\(String(describing: error))")
        #expect(error?.reason.contains("this route's inbox is in SQLite") == true, "\(String(describing: error))")
        #expect(error?.reason.contains("Switchyard.inboxTransaction { db in … } (the SQLite form, no type named)") == true, "\(String(describing: error))")
        await system.shutdown()
    }

    @Test("inboxTransaction from a task the handler started, after the handler returned, is refused: it used to be dropped without a word")
    func refusedAfterTheHandlerReturned() async throws {
        let directory = try TemporaryDirectory()
        let system = try await makeSystem(
            """
            transports:
              memq: { plugin: queue }
            routes:
              Bookkeeper.*: { transport: memq, deadline: 10s, inbox: { path: "\(directory.file("inbox.db"))" } }
            """)
        let outcome = Guarded<String?>(nil)
        try system.host("late", as: $Bookkeeper.self) { LateBookkeeperService(actorSystem: $0, outcome: outcome) }
        try await $Bookkeeper.resolve(id: "late", using: system).book(1)
        #expect(await eventually { outcome.withLock { $0 } != nil })
        let said = outcome.withLock { $0 } ?? ""
        #expect(said.contains("the handler's call has already ended") && said.contains("inside the handler"), "\(said)")

        // A handler that threw: its transaction is over too, so the task's write is refused the
        // same way. (That it ends as the handler returns, before the failure is settled, is not
        // timed here: the settlement takes a moment, the task waits 300 ms.)
        outcome.withLock { $0 = nil }
        await #expect(throws: (any Error).self) { try await $Bookkeeper.resolve(id: "late", using: system).book(-1) }
        #expect(await eventually { outcome.withLock { $0 } != nil })
        let afterThrow = outcome.withLock { $0 } ?? ""
        #expect(afterThrow.contains("the handler's call has already ended"), "\(afterThrow)")
        await system.shutdown()
    }

    @Test("routes sharing an inbox file keep every record for the longest window among them: a 1 ms window's pruning keeps a 1 h window's calls")
    func sharedFileKeepsLongestWindow() throws {
        let directory = try TemporaryDirectory()
        try expectLongestWindowKept(
            open: { try SQLiteInboxDatabase(path: directory.file("inbox.db")) }, openAlone: { try SQLiteInboxDatabase(path: directory.file("alone.db")) })
    }

    @Test("inboxTransaction on a route whose inbox is in memory dead-letters the call at once, saying why: no retry could commit it")
    func inMemoryInboxRefusedAtOnce() async throws {
        let system = try await makeSystem(
            """
            transports:
              memq: { plugin: queue }
            routes:
              Bookkeeper.*: { transport: memq, deadline: 10s, inbox: { window: 10m }, retry: { max_attempts: 3, initial_delay: 1ms, jitter: none } }
            """)
        try system.host("books", as: $Bookkeeper.self) { BookkeeperService(actorSystem: $0, label: "memory") }
        let error = await #expect(throws: SwitchyardError.self) { try await $Bookkeeper.resolve(id: "books", using: system).book(1) }
        #expect(error?.code == .deadLettered && error?.attempts == 1, "\(String(describing: error))")
        #expect(error?.reason.contains("this route's inbox is in memory") == true, "\(String(describing: error))")
        await system.shutdown()
    }

    @Test("outside a handler on a route with a durable inbox, inboxTransaction refuses at once with a routing error saying where it works")
    func refusedOutsideInbox() {
        let error = #expect(throws: SwitchyardError.self) { try Switchyard.inboxTransaction { _ in } }
        #expect(error?.code == .routing, "\(String(describing: error))")
        #expect(error?.reason.contains("only inside a handler whose route has a durable inbox") == true, "\(String(describing: error))")
    }
}
