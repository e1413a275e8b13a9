import Foundation
import SwitchyardABI
import SwitchyardConformance
import SwitchyardHost
import SwitchyardLoader
import SwitchyardPostgres
import SwitchyardTestSupport
import SwitchyardTransportKit
import Testing

/// The postgres plugins against a real PostgreSQL server, started by the test.
@Suite("PostgreSQL", .enabled(if: PostgresServer.binDirectory != nil, "needs Debian's postgresql package"))
struct PostgresTests {
    @Test("postgres and postgres-topic pass every check their capabilities claim (each check in a schema of its own)", arguments: ["postgres", "postgres-topic"])
    func conformance(_ plugin: String) async throws {
        let server = try await offPool { try PostgresServer() }
        let loaded = try BuildProducts.plugin(plugin)
        let config = #"{"conninfo": "\#(server.conninfo)"}"#
        let results = try await offPool { ConformanceSuite.forPlugin(loaded, configJSON: config, isolationKey: "schema").run() }
        expectBundledConformance(results, plugin)
    }

    static func transport(_ server: PostgresServer, _ plugin: String = "postgres", extra: String = "") throws -> Transport {
        try Transport(
            name: "pg-test", plugin: try BuildProducts.plugin(plugin), configJSON: #"{"conninfo": "\#(server.conninfo)", "visibility_timeout": "2s"\#(extra)}"#)
    }

    @Test("the server SIGKILLed and restarted under load: every acknowledged publish is delivered")
    func serverRestart() async throws {
        let server = try await offPool { try PostgresServer() }
        let transport = try Self.transport(server)
        defer { transport.close() }
        let inbox = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "load"), handler: inbox.handler(client: transport.client))
        var acknowledged = Set<String>()
        for index in 0..<600 {
            if index == 200 {
                server.kill()
                try await offPool { try server.start() }
            }
            let id = "m-\(index)"
            if await publishUntilAcknowledged({ try transport.client.publish(Message(id: id, channel: "load", body: Array(id.utf8))) }) { acknowledged.insert(id) }
        }
        #expect(acknowledged.count == 600)
        #expect(await eventually(60) { acknowledged.isSubset(of: Set(inbox.received.map(\.message.id))) })
        let lost = acknowledged.subtracting(inbox.received.map(\.message.id))
        #expect(lost.isEmpty, "\(lost.count) acknowledged messages lost, e.g. \(lost.prefix(5))")
    }

    /// Notifications go out after the change they announce commits (a notifying transaction
    /// holds PostgreSQL's commit order lock through its flush to disk), so a process that stops
    /// between the two leaves a change unannounced: the broker finds it when it looks on its own.
    @Test("another process's publishes wake this one's subscriber at once; a change nobody announced is found within seconds")
    func wakeUps() async throws {
        let server = try await offPool { try PostgresServer() }
        // Two stores on one schema, each with its own connections: as two processes.
        let publisher = try Self.transport(server, extra: #", "schema": "wake""#)
        defer { publisher.close() }
        let consumer = try Self.transport(server, extra: #", "schema": "wake""#)
        defer { consumer.close() }
        let inbox = Collector()
        _ = try consumer.client.subscribe(SubscribeOptions(channel: "wake"), handler: inbox.handler(client: consumer.client))
        var latencies: [Duration] = []
        for index in 0..<10 {
            // The consumer idle first: a publish right after its last acknowledgement can be
            // found by the pass that acknowledgement starts, notified or not.
            try await Task.sleep(for: .milliseconds(300))
            // Measured to the delivery's own time, not to when a polling wait on the (busy) pool
            // saw it.
            let started = wallClockNanoseconds()
            try publisher.client.publish(Message(id: "n-\(index)", channel: "wake"))
            #expect(await eventually(30) { inbox.count == index + 1 })
            if inbox.count > index { latencies.append(.nanoseconds(inbox.received[index].at - started)) }
        }
        try #require(latencies.count == 10)
        let median = latencies.sorted()[latencies.count / 2]
        #expect(median < .milliseconds(500), "median wake-up \(median): no notification woke the subscriber (only the listener's own look every 2 s)")

        // A row committed with no notification at all, once the consumer is idle (its last
        // passes, reporting the counts as they settle, would find it).
        try await Task.sleep(for: .seconds(1))
        let database = try PostgresDatabase(conninfo: server.conninfo)
        try database.run(
            #"INSERT INTO "wake".entries (channel, grp, attempt, visible_at, message) VALUES ('wake', '', 0, 0, $1)"#,
            [.blob(MessageCodec.encode(Message(id: "silent", channel: "wake")))])
        // The broker looks on its own at least at every sweep for expired messages (5 s).
        #expect(await eventually(30) { inbox.received.contains { $0.message.id == "silent" } }, "an unannounced change was never found")
    }

    /// As `DurableQueueTests.corruptRecord` and `corruptDeadLetter` on SQLite: a record that no
    /// longer decodes is dead-lettered with its bytes and the messages behind it still delivered;
    /// one in a dead-letter channel is deleted and logged as an error.
    @Test("a corrupt record is dead-lettered and the rest delivered; one in a dead-letter channel is deleted and logged as an error")
    func corruptRecords() async throws {
        let server = try await offPool { try PostgresServer() }
        let database = try PostgresDatabase(conninfo: server.conninfo)
        defer { database.close() }
        for (schema, channel, ids) in [("corrupt", "work", ["a", "b", "c"]), ("corruptdlq", "work.dlq", ["x", "y"])] {
            let writer = try Self.transport(server, extra: #", "schema": "\#(schema)""#)
            try writer.client.publish(batch: ids.map { Message(id: $0, channel: channel, body: Array($0.utf8)) })
            writer.close()
            let corrupted = schema == "corrupt" ? 1 : 0
            _ = try database.run(#"UPDATE "\#(schema)".entries SET message = '\xdeadbeef'::bytea WHERE id = (SELECT MIN(id) + \#(corrupted) FROM "\#(schema)".entries)"#)
        }
        let transport = try Self.transport(server, extra: #", "schema": "corrupt""#)
        defer { transport.close() }
        try expectCorruptRecordDeadLettered(transport.client)

        let dlqLog = CapturedLog()
        let dlqTransport = try Transport(
            name: "pg-test", plugin: try BuildProducts.plugin("postgres"),
            configJSON: #"{"conninfo": "\#(server.conninfo)", "schema": "corruptdlq"}"#, logger: dlqLog.logger())
        defer { dlqTransport.close() }
        let letters = Collector()
        _ = try dlqTransport.client.subscribe(SubscribeOptions(channel: "work.dlq", maxInFlight: 1), handler: letters.handler(client: dlqTransport.client))
        #expect(letters.wait(for: 1, seconds: 10))
        #expect(letters.received.map(\.message.id) == ["y"])
        let line = dlqLog.all.first { $0.contains("corrupt record in the dead-letter channel 'work.dlq'") }
        #expect(line?.hasPrefix("error") == true, "\(dlqLog.all)")
        var left: Int64 = -1
        _ = try database.run(#"SELECT count(*) FROM "corruptdlq".entries WHERE message = '\xdeadbeef'::bytea"#) { row in left = row.int(0) }
        #expect(left == 0)
    }

    @Test("postgres-topic keeps the last `retain` messages of each channel, a quiet one beside a busy one too")
    func retainedPerChannel() async throws {
        let server = try await offPool { try PostgresServer() }
        let topic = try Self.transport(server, "postgres-topic", extra: #", "schema": "retained", "retain": 3"#)
        defer { topic.close() }
        try await expectRetainedPerChannel(topic.client)
    }

    /// A single acknowledgement returns before its row is deleted: a writer deletes many in one
    /// statement. Closing the transport writes what still waits.
    @Test("every acknowledgement is written by the time the transport closes: nothing acknowledged stays stored")
    func acknowledgementsWrittenByClose() async throws {
        let server = try await offPool { try PostgresServer() }
        let transport = try Self.transport(server, extra: #", "schema": "acks""#)
        let inbox = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "acks"), handler: inbox.handler(client: transport.client))
        for index in 0..<300 { try transport.client.publish(Message(id: "a-\(index)", channel: "acks")) }
        #expect(await eventually(30) { inbox.count == 300 })
        transport.close()
        let database = try PostgresDatabase(conninfo: server.conninfo)
        var left: Int64 = -1
        try database.run(#"SELECT count(*) FROM "acks".entries"#) { row in left = row.int(0) }
        #expect(left == 0, "\(left) acknowledged messages still stored after close")
    }

    /// A user who closes a transport and then drops its database, or restarts with a
    /// connection limit, must not find its connections still open.
    @Test("closing a transport closes every connection it opened (its pool and its listener) before close returns")
    func closeLetsGoOfConnections() async throws {
        let server = try await offPool { try PostgresServer() }
        for round in 0..<3 {
            let transport = try Self.transport(server, extra: #", "schema": "closing""#)
            let inbox = Collector()
            _ = try transport.client.subscribe(SubscribeOptions(channel: "c"), handler: inbox.handler(client: transport.client))
            for index in 0..<50 { try transport.client.publish(Message(id: "c-\(round)-\(index)", channel: "c")) }
            #expect(await eventually(30) { inbox.count == 50 })
            #expect(await eventually(30) { server.clientConnections >= 2 }, "round \(round): the pool and the listener connect (\(server.clientConnections) open)")
            transport.close()
            #expect(server.clientConnections == 0, "round \(round): \(server.clientConnections) connections still open after close returned")
        }
    }

    @Test("the server down: publish fails at once with a clear error; publishes and subscribers resume when it is back")
    func unreachable() async throws {
        let server = try await offPool { try PostgresServer() }
        let transport = try Self.transport(server)
        defer { transport.close() }
        let inbox = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: "later"), handler: inbox.handler(client: transport.client))
        try transport.client.publish(Message(id: "before", channel: "later"))
        #expect(await eventually(30) { inbox.count == 1 })
        server.kill()
        let started = ContinuousClock.now
        let error = #expect(throws: TransportError.self) { try transport.client.publish(Message(id: "during", channel: "later")) }
        #expect(error?.code == .unavailable, "\(String(describing: error))")
        #expect(error?.message.hasPrefix("postgres: ") == true, "\(String(describing: error))")
        #expect(ContinuousClock.now - started < .seconds(5), "publish took \(ContinuousClock.now - started) with the server down")
        try await offPool { try server.start() }
        #expect(await publishUntilAcknowledged({ try transport.client.publish(Message(id: "after", channel: "later", body: Array("after".utf8))) }))
        #expect(await eventually(30) { inbox.received.contains { $0.message.id == "after" } }, "the subscriber did not resume")
    }

    @Test("a bad config names its key; an unreachable server or an unparsable connection string fails creation with the reason and no password in it")
    func configErrors() async throws {
        let server = try await offPool { try PostgresServer() }
        let bad = #expect(throws: TransportError.self) { _ = try Self.transport(server, extra: #", "schema": "no\"quotes""#) }
        #expect(bad?.configKey == "schema", "\(String(describing: bad))")
        let path = #expect(throws: TransportError.self) {
            _ = try Transport(name: "pg", plugin: try BuildProducts.plugin("postgres"), configJSON: #"{"path": "/tmp/x.db"}"#)
        }
        #expect(path?.configKey == "path", "\(String(describing: path))")
        // Refused before connecting: no server answers on port 1, and the error names 'shards'.
        let sharded = #expect(throws: TransportError.self) {
            _ = try Transport(name: "pg", plugin: try BuildProducts.plugin("postgres"), configJSON: #"{"conninfo": "host=127.0.0.1 port=1 user=postgres", "shards": 2}"#)
        }
        #expect(sharded?.configKey == "shards", "\(String(describing: sharded))")
        let refused = #expect(throws: TransportError.self) {
            _ = try Transport(
                name: "pg", plugin: try BuildProducts.plugin("postgres"),
                configJSON: #"{"conninfo": "host=127.0.0.1 port=1 user=postgres password=s3cret connect_timeout=2"}"#)
        }
        #expect(refused?.code == .unavailable && refused?.message.contains("cannot connect") == true, "\(String(describing: refused))")
        #expect(refused?.message.contains("s3cret") == false)
        // libpq's own parse errors quote the text they choke on, which may be the password.
        let unparsable = #expect(throws: TransportError.self) {
            _ = try Transport(name: "pg", plugin: try BuildProducts.plugin("postgres"), configJSON: #"{"conninfo": "postgresql://u:p%zzs3cret@127.0.0.1/db"}"#)
        }
        #expect(unparsable?.configKey == "conninfo", "\(String(describing: unparsable))")
        #expect(unparsable?.message.contains("s3cret") == false, "\(String(describing: unparsable))")
        // A queue's schema refuses a topic.
        let queue = try Self.transport(server, extra: #", "schema": "shared""#)
        queue.close()
        let kind = #expect(throws: TransportError.self) { _ = try Self.transport(server, "postgres-topic", extra: #", "schema": "shared""#) }
        #expect(kind?.message.contains("holds a queue store") == true, "\(String(describing: kind))")
    }
}
