import CSwitchyard
import Foundation
import SwitchyardABI
import SwitchyardConformance
import SwitchyardHost
import SwitchyardLoader
import SwitchyardTestSupport
import Testing

/// Expired messages leave the bundled broker transports even where nobody reads the channel.
@Suite("Message expiry")
struct ExpiryTests {
    @Test("an expired message on a channel nobody reads is dead-lettered, or dropped when it says so", arguments: [false, true])
    func sweep(_ durable: Bool) async throws {
        let dir = try TemporaryDirectory()
        let plugin = try BuildProducts.plugin("queue")
        let path = durable ? #", "path": "\#(dir.file("q.db"))""# : ""
        let transport = try Transport(name: "q", plugin: plugin, configJSON: #"{"expiry_sweep": "50ms"\#(path)}"#)
        defer { transport.close() }
        let soon = wallClockNanoseconds() + 200_000_000
        var call = Message(id: "call", channel: "nobody", body: [1])
        call.expiresAtNanos = soon
        var reply = Message(id: "reply", channel: "nobody", body: [2])
        reply.expiresAtNanos = soon
        reply.flags = .dropWhenExpired
        try transport.client.publish(batch: [call, reply, Message(id: "kept", channel: "nobody")])
        #expect(await eventually { (try? transport.client.stats()?.depth) == 2 }, "depth \(String(describing: try? transport.client.stats()?.depth))")
        let dead = Collector()
        let live = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "nobody.dlq"), handler: dead.handler(client: transport.client))
        #expect(dead.wait(for: 1))
        #expect(dead.received.map(\.message.id) == ["call"])
        #expect(dead.received.first?.message.header("sy-dlq-reason") == "expired")
        #expect(dead.received.first?.message.expiresAtNanos == 0, "a dead letter must not expire again")
        _ = try transport.client.subscribe(SubscribeOptions(channel: "nobody"), handler: live.handler(client: transport.client))
        #expect(live.wait(for: 1))
        try await Task.sleep(for: .milliseconds(200))
        #expect(live.received.map(\.message.id) == ["kept"])
    }

    @Test("a durable store made before expiry existed opens, and its messages are delivered")
    func olderStoreMigrates() async throws {
        let dir = try TemporaryDirectory()
        let db = dir.file("old.db")
        // The schema as version 1 of the store wrote it, with one message in it.
        let old = """
            CREATE TABLE switchyard_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO switchyard_meta VALUES ('schema', '1'), ('kind', 'queue');
            CREATE TABLE entries (id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, grp TEXT NOT NULL,
                ordering_key TEXT, attempt INTEGER NOT NULL, visible_at INTEGER NOT NULL,
                lease_token INTEGER NOT NULL DEFAULT 0, lease_until INTEGER NOT NULL DEFAULT 0,
                history TEXT NOT NULL DEFAULT '', message BLOB NOT NULL);
            CREATE TABLE groups (channel TEXT NOT NULL, grp TEXT NOT NULL, PRIMARY KEY (channel, grp));
            CREATE TABLE retained (id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, message BLOB NOT NULL);
            INSERT INTO entries (channel, grp, attempt, visible_at, message) VALUES ('old', '', 0, 0, X'\(Self.sym1Hex)');
            """
        let created = try await run("/usr/bin/env", ["sqlite3", db, old])
        try #require(created.status == 0, "\(created.stderr)")
        let transport = try Transport(name: "q", plugin: try BuildProducts.plugin("queue"), configJSON: #"{"path": "\#(db)"}"#)
        defer { transport.close() }
        var expiring = Message(id: "new", channel: "old")
        expiring.expiresAtNanos = wallClockNanoseconds() + 60_000_000_000
        try transport.client.publish(expiring)
        let inbox = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "old"), handler: inbox.handler(client: transport.client))
        #expect(inbox.wait(for: 2))
        #expect(inbox.received.map(\.message.id) == ["stored-before", "new"])
        #expect(inbox.received.last?.message.expiresAtNanos == expiring.expiresAtNanos)
    }

    /// A message in the SYM1 record format older versions stored: id `stored-before` on `old`.
    static let sym1Hex: String = {
        var bytes = Array("SYM1".utf8)
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
        func string(_ s: String) { u32(UInt32(s.utf8.count)); bytes += s.utf8 }
        u32(0); u64(0); u64(0)
        string("stored-before"); string("old"); string("")
        u32(0)
        u32(1); bytes.append(9)
        return bytes.map { String(format: "%02X", $0) }.joined()
    }()
}
