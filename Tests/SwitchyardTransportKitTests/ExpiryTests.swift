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

    /// A pass that leases an expired message disposes of it after the store was asked: the next
    /// message under its ordering key, held back behind it, and its dead letter were not there to
    /// lease yet. They must not wait for the sweep (an hour here) or for the next metrics report
    /// (250 ms, which brings another pass where counters changed): the disposal marks work.
    @Test(
        "a message held behind an expired one's ordering key, and the expired one's dead letter, are delivered without waiting for a sweep",
        arguments: [(false, false), (false, true), (true, false), (true, true)])
    func heldBehindAnExpiredKey(_ durable: Bool, _ dropWhenExpired: Bool) throws {
        // In memory, without the mark, the metrics report's pass delivered it after 251–252 ms
        // (with it: 1 ms); the best of up to ten tries (stopping at the first fast one: a loaded
        // machine can make a few slow) is under 200 ms unless the mark is missing. A durable
        // store's own fallback hides the difference (20 ms), so only what arrives is checked there.
        var fastest = Int64.max
        for _ in 0..<(durable ? 1 : 10) where fastest >= 200 {
            fastest = min(fastest, try deliveryAfterExpiredKey(durable: durable, dropWhenExpired: dropWhenExpired))
        }
        if !durable { #expect(fastest < 200, "delivered \(fastest) ms after subscribing") }
    }

    /// Publishes `first` (ordering key `k`, expiring in 100 ms) and `second` (the same key), lets
    /// `first` expire, subscribes; checks that `second` arrives, and `first` as a dead letter unless
    /// it is dropped. Returns how long `second` took after subscribing, in ms.
    private func deliveryAfterExpiredKey(durable: Bool, dropWhenExpired: Bool) throws -> Int64 {
        let dir = try TemporaryDirectory()
        let path = durable ? #", "path": "\#(dir.file("q.db"))""# : ""
        let transport = try Transport(name: "q", plugin: try BuildProducts.plugin("queue"), configJSON: #"{"expiry_sweep": "1h"\#(path)}"#)
        defer { transport.close() }
        var first = Message(id: "first", channel: "keyed", orderingKey: "k")
        first.expiresAtNanos = wallClockNanoseconds() + 100_000_000
        if dropWhenExpired { first.flags = .dropWhenExpired }
        try transport.client.publish(batch: [first, Message(id: "second", channel: "keyed", orderingKey: "k")])
        Thread.sleep(forTimeInterval: 0.2)  // the first has expired; nobody has leased anything yet
        let dead = Collector()
        let live = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "keyed.dlq"), handler: dead.handler(client: transport.client))
        let subscribed = wallClockNanoseconds()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "keyed"), handler: live.handler(client: transport.client))
        #expect(live.wait(for: 1, seconds: 10))
        let took = ((live.received.first?.at ?? wallClockNanoseconds()) - subscribed) / 1_000_000
        #expect(live.received.map(\.message.id) == ["second"])
        if !dropWhenExpired {
            #expect(dead.wait(for: 1, seconds: 10))
            #expect(dead.received.map(\.message.id) == ["first"])
        }
        return took
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
