import Distributed
import Foundation
import Logging
import SwitchyardABI
import SwitchyardConfig
import SwitchyardHost
import SwitchyardPostgres
import SwitchyardRuntime
import Synchronization

/// The service the outbox figure calls: each `handle` makes one follow-up call.
@Resolvable
public protocol BenchTransactions: DistributedActor where ActorSystem == SwitchyardActorSystem {
    /// A handled call that makes one fire-and-forget follow-up.
    distributed func handle(_ value: Int) async throws
    /// The follow-up.
    distributed func followed(_ value: Int)
}

/// Handles calls and counts their follow-ups.
public distributed actor BenchTransactionsService: BenchTransactions {
    public typealias ActorSystem = SwitchyardActorSystem
    let followUps: BenchCallsService.Counter
    let me: (any BenchTransactions)?

    init(actorSystem: ActorSystem, followUps: BenchCallsService.Counter, me: (any BenchTransactions)?) {
        self.actorSystem = actorSystem
        self.followUps = followUps
        self.me = me
    }

    public distributed func handle(_ value: Int) async throws { try await me?.followed(value) }
    public distributed func followed(_ value: Int) { followUps.value.add(1, ordering: .relaxed) }
}

/// `postgres`: on the PostgreSQL server libpq's environment names (`PGHOST`, `PGPORT`, `PGUSER`,
/// `PGDATABASE`): the `postgres` plugin's publish → deliver → ack against a raw libpq loop doing
/// the same inserts, leases and deletes in the same run; and a handled call whose follow-up goes
/// through the outbox against the same handler sending it directly (the inbox in PostgreSQL both
/// times, so the difference is the outbox alone).
struct PostgresSuite: BenchSuite {
    let name = "postgres"
    let summary = "PostgreSQL (PG* environment): the postgres plugin vs a raw libpq queue loop; a handler's follow-up through the outbox vs sent directly"
    let publishers = 16

    func run(_ context: BenchContext) throws -> [BenchResult] {
        do {
            _ = try PostgresDatabase(conninfo: "")
        } catch {
            throw BenchUnavailable("no PostgreSQL server reachable through libpq's environment (set PGHOST, PGPORT, PGUSER, PGDATABASE): \(error.message)")
        }
        let tag = "bench_\(getpid())"
        defer { drop(prefix: tag) }
        let count = context.quick ? 4_000 : 20_000
        let rounds = context.quick ? 1 : 3
        let plugins = BenchPlugins(context)
        var raw: [Double] = []
        var plugin: [Double] = []
        for round in 0..<rounds {
            context.progress("postgres: raw libpq ×\(count), round \(round + 1)")
            raw.append(try rawRate(schema: "\(tag)_raw_\(round)", count: count))
            context.progress("postgres: the postgres plugin ×\(count), round \(round + 1)")
            plugin.append(try pluginRate(plugins, schema: "\(tag)_plugin_\(round)", count: count))
        }
        let calls = context.quick ? 2_000 : 10_000
        var direct: [Double] = []
        var outbox: [Double] = []
        for round in 0..<rounds {
            context.progress("postgres: handled calls, follow-up sent directly ×\(calls), round \(round + 1)")
            direct.append(try handledRate(context, schema: "\(tag)_tx_\(round)", outbox: false, count: calls))
            context.progress("postgres: handled calls, follow-up through the outbox ×\(calls), round \(round + 1)")
            outbox.append(try handledRate(context, schema: "\(tag)_txo_\(round)", outbox: true, count: calls))
        }
        let baseline = Measure.median(raw)
        let handled = Measure.median(direct)
        return [
            BenchResult(suite: name, metric: "raw_libpq_msgs_per_s", value: baseline, unit: "msg/s"),
            BenchResult(suite: name, metric: "plugin_msgs_per_s", value: Measure.median(plugin), unit: "msg/s", baseline: ("raw_libpq_msgs_per_s", baseline)),
            BenchResult(suite: name, metric: "handled_direct_follow_up_calls_per_s", value: handled, unit: "calls/s"),
            BenchResult(
                suite: name, metric: "handled_outbox_follow_up_calls_per_s", value: Measure.median(outbox), unit: "calls/s",
                baseline: ("handled_direct_follow_up_calls_per_s", handled)),
        ]
    }

    /// The plugin through the ABI: `publishers` threads publishing, a subscriber acknowledging.
    func pluginRate(_ plugins: BenchPlugins, schema: String, count: Int) throws -> Double {
        let transport = try plugins.transport("postgres", config: #"{"schema": "\#(schema)", "max_in_flight": 4096}"#)
        defer { transport.close() }
        return try publishDeliverAckRate(through: transport, count: count, publishers: publishers, maxInFlight: 4096, idPrefix: "p")
    }

    /// The same work with libpq alone: each publisher inserts on its own connection (autocommit);
    /// one consumer leases batches of 256 with `FOR UPDATE SKIP LOCKED` and deletes them.
    func rawRate(schema: String, count: Int) throws -> Double {
        let setup = try PostgresDatabase(conninfo: "")
        let table =
            try setup.prepareSchema(
                schema, kind: "bench",
                tables: """
                    CREATE TABLE IF NOT EXISTS $schema.q (
                        id bigserial PRIMARY KEY, channel text NOT NULL, lease_until bigint NOT NULL DEFAULT 0, message bytea NOT NULL);
                    """) + ".q"
        let acked = Atomic<Int>(0)
        let failure = Mutex<TransportError?>(nil)
        let consumer = Thread {
            do throws(TransportError) {
                let db = try PostgresDatabase(conninfo: "")
                while acked.load(ordering: .relaxed) < count {
                    let now = Int64(Measure.now())
                    var ids: [Int64] = []
                    try db.run(
                        """
                        UPDATE \(table) SET lease_until = $1 WHERE id IN (
                            SELECT id FROM \(table) WHERE channel = 'bench' AND lease_until < $2 ORDER BY id LIMIT 256 FOR UPDATE SKIP LOCKED)
                        RETURNING id, message
                        """, [.int(now + 30_000_000_000), .int(now)]
                    ) { row in ids.append(row.int(0)) }
                    if ids.isEmpty {
                        usleep(200)
                        continue
                    }
                    try db.run("DELETE FROM \(table) WHERE id = ANY(string_to_array($1, ',')::bigint[])", [.text(ids.map(String.init).joined(separator: ","))])
                    acked.add(ids.count, ordering: .relaxed)
                }
            } catch {
                failure.withLock { $0 = error }
                acked.store(count, ordering: .relaxed)
            }
        }
        let body = [UInt8](repeating: 0x5A, count: 64)
        let start = Measure.now()
        consumer.start()
        try onThreads(publishers) { thread in
            let db = try PostgresDatabase(conninfo: "")
            for _ in stride(from: thread, to: count, by: publishers) {
                try db.run("INSERT INTO \(table) (channel, message) VALUES ('bench', $1)", [.blob(body)])
            }
        }
        while acked.load(ordering: .relaxed) < count { usleep(200) }
        if let error = failure.withLock({ $0 }) { throw BenchFailure("the raw libpq loop failed: \(error.message)") }
        return Double(count) / (Double(Measure.now() - start) / 1e9)
    }

    /// Fire-and-forget calls to a handler on the in-memory queue with its inbox in PostgreSQL,
    /// each making one follow-up call: through the outbox or directly. Calls handled per second
    /// (until every follow-up arrived).
    func handledRate(_ context: BenchContext, schema: String, outbox: Bool, count: Int) throws -> Double {
        try blocking {
            var logger = Logger(label: "switchyard.bench")
            logger.logLevel = .error
            let config = try SwitchyardConfig.parse(
                yaml: """
                    transports:
                      work: { plugin: queue, config: { max_in_flight: 4096 } }
                    routes:
                      BenchTransactions.handle: { transport: work, mode: fire-and-forget, inbox: { window: 1h, postgres: { schema: \(schema) } }, outbox: \(outbox) }
                      BenchTransactions.followed: { transport: work, mode: fire-and-forget }
                    """, baseDirectory: NSTemporaryDirectory())
            let system = try SwitchyardActorSystem(config: config, pluginDirectories: context.pluginDirectories, logger: logger)
            let followUps = BenchCallsService.Counter()
            let me = try $BenchTransactions.resolve(id: "bench-tx", using: system)
            try system.host("bench-tx", as: $BenchTransactions.self) { BenchTransactionsService(actorSystem: $0, followUps: followUps, me: me) }
            let start = Measure.now()
            for value in 0..<count { try await me.handle(value) }
            while followUps.value.load(ordering: .relaxed) < count { try await Task.sleep(for: .microseconds(200)) }
            let rate = Double(count) / (Double(Measure.now() - start) / 1e9)
            await system.shutdown()
            return rate
        }
    }

    /// Removes the run's schemas.
    private func drop(prefix: String) {
        guard let db = try? PostgresDatabase(conninfo: "") else { return }
        var schemas: [String] = []
        _ = try? db.run("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", [.text(prefix + "%")]) { row in schemas.append(row.text(0)) }
        for schema in schemas { try? db.execute("DROP SCHEMA \"\(schema)\" CASCADE") }
    }
}
