import Distributed
import Foundation
import SwitchyardABI
import SwitchyardPostgres
import SwitchyardRuntime
import SwitchyardTransportKit

// The services `switchyard soak` runs in its producer and consumer processes. Every handler
// effect is one row in an `effects` table: (kind, seq, pid, attempt). With the inbox on, the row
// is written through Switchyard.inboxTransaction (committed with the inbox record, in SQLite or
// PostgreSQL); without it, straight into a database of its own — which is what the inbox
// protects against. In outbox mode the producer commits each item's calls with a `sent` row
// (system.transaction), and the work handler's follow-up call commits with its effect.

/// Work items over the durable queue, with a route retry policy.
@Resolvable
protocol SoakWork: DistributedActor where ActorSystem == SwitchyardActorSystem {
    distributed func process(_ seq: Int) async throws
}

/// Events over the durable topic, handled by two subscriber groups.
@Resolvable
protocol SoakEvents: DistributedActor where ActorSystem == SwitchyardActorSystem {
    distributed func noted(_ seq: Int) async throws
}

/// The work handler's follow-up (outbox mode): made by the attempt `attempt` of item `seq`.
@Resolvable
protocol SoakFollowUps: DistributedActor where ActorSystem == SwitchyardActorSystem {
    distributed func followed(_ seq: Int, attempt: Int) async throws
}

/// A failure the first attempt of every seventh item meets, so the retry path is exercised (in
/// outbox mode after the handler made its follow-up call, which must then never be sent).
struct SoakTransientFailure: Error, CustomStringConvertible {
    let seq: Int
    var description: String { "transient failure of item \(seq) (first attempt)" }
}

/// Which database a soak run's durable state lives in, as its processes are told.
package enum SoakEngine: Sendable, Equatable {
    /// SQLite files in the run's directory.
    case sqlite
    /// PostgreSQL (libpq's `PG*` environment), every schema named with this prefix.
    case postgres(schemaPrefix: String)

    /// The schema for `part` (`work`, `events`, `tx`, `app`).
    func schema(_ part: String) -> String {
        if case .postgres(let prefix) = self { return "\(prefix)_\(part)" }
        return part
    }
}

/// Writes handler effects: through the inbox transaction, or into `effects.db` directly.
final class EffectRecorder: Sendable {
    private let direct: Guarded<SQLiteDatabase>?
    private let engine: SoakEngine

    init(directDatabase path: String?, engine: SoakEngine) throws {
        self.engine = engine
        if let path {
            let database = try SQLiteDatabase(path: path)
            try database.execute("PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL")
            try database.execute(EffectRecorder.schema)
            direct = Guarded(database)
        } else {
            direct = nil
        }
        if case .postgres = engine {
            // Created before any handler runs: concurrent CREATE TABLEs in PostgreSQL collide.
            let database = try PostgresDatabase(conninfo: "")
            try database.prepareSchema(
                engine.schema("tx"), kind: "transactions",
                tables: "CREATE TABLE IF NOT EXISTS $schema.effects (kind text NOT NULL, seq bigint NOT NULL, pid bigint NOT NULL, attempt bigint NOT NULL DEFAULT 0);")
        }
    }

    static let schema = "CREATE TABLE IF NOT EXISTS effects (kind TEXT NOT NULL, seq INTEGER NOT NULL, pid INTEGER NOT NULL, attempt INTEGER NOT NULL DEFAULT 0)"

    func record(_ kind: String, _ seq: Int, attempt: Int = 0) throws {
        let pid = Int64(getpid())
        if let direct {
            try direct.withLock { database in
                _ = try database.run("INSERT INTO effects VALUES (?, ?, ?, ?)", [.text(kind), .int(Int64(seq)), .int(pid), .int(Int64(attempt))])
            }
            return
        }
        switch engine {
        case .sqlite:
            try Switchyard.inboxTransaction { database in
                try database.execute(EffectRecorder.schema)
                _ = try database.run("INSERT INTO effects VALUES (?, ?, ?, ?)", [.text(kind), .int(Int64(seq)), .int(pid), .int(Int64(attempt))])
            }
        case .postgres:
            let table = "\"\(engine.schema("tx"))\".effects"
            try Switchyard.inboxTransaction(PostgresDatabase.self) { database in
                try database.run("INSERT INTO \(table) VALUES ($1, $2, $3, $4)", [.text(kind), .int(Int64(seq)), .int(pid), .int(Int64(attempt))])
            }
        }
    }
}

distributed actor SoakWorkService: SoakWork {
    typealias ActorSystem = SwitchyardActorSystem
    let recorder: EffectRecorder
    let followUps: (any SoakFollowUps)?
    private var failedOnce: Set<Int> = []

    init(actorSystem: ActorSystem, recorder: EffectRecorder, followUps: (any SoakFollowUps)?) {
        self.actorSystem = actorSystem
        self.recorder = recorder
        self.followUps = followUps
    }

    distributed func process(_ seq: Int) async throws {
        guard let followUps else {
            if seq % 7 == 0, failedOnce.insert(seq).inserted { throw SoakTransientFailure(seq: seq) }
            try recorder.record("work", seq)
            return
        }
        // Outbox mode: the effect and the follow-up commit together, or (a throw) neither.
        let attempt = Switchyard.currentCall?.attempt ?? 1
        try recorder.record("work", seq, attempt: attempt)
        try await followUps.followed(seq, attempt: attempt)
        if seq % 7 == 0 && attempt == 1 { throw SoakTransientFailure(seq: seq) }
    }
}

distributed actor SoakEventsService: SoakEvents {
    typealias ActorSystem = SwitchyardActorSystem
    let recorder: EffectRecorder
    let group: String

    init(actorSystem: ActorSystem, recorder: EffectRecorder, group: String) {
        self.actorSystem = actorSystem
        self.recorder = recorder
        self.group = group
    }

    distributed func noted(_ seq: Int) async throws {
        try recorder.record(group, seq)
    }
}

distributed actor SoakFollowUpService: SoakFollowUps {
    typealias ActorSystem = SwitchyardActorSystem
    let recorder: EffectRecorder

    init(actorSystem: ActorSystem, recorder: EffectRecorder) {
        self.actorSystem = actorSystem
        self.recorder = recorder
    }

    distributed func followed(_ seq: Int, attempt: Int) async throws {
        try recorder.record("follow", seq, attempt: attempt)
    }
}

/// What the soak's processes do: the producer's calls and the consumers' hosted services.
package enum SoakWorkload {
    /// Calls `SoakWork.process` and `SoakEvents.noted` for each item, reporting `try N` before
    /// and `ack N` once both were accepted (then `done`), pausing `paceMicroseconds` between items.
    /// With `outbox`, both calls commit with a `sent` row in the outbox `app` (system.transaction),
    /// and `ack N` means that transaction committed.
    package static func produce(
        on system: SwitchyardActorSystem, items: Range<Int>, paceMicroseconds: Int, outbox: Bool, engine: SoakEngine, emit: (String) -> Void
    ) async throws {
        let work = try $SoakWork.resolve(id: "soak-work", using: system)
        let events = try $SoakEvents.resolve(id: "soak-events", using: system)
        for seq in items {
            emit("try \(seq)")
            switch (outbox, engine) {
            case (false, _):
                try await work.process(seq)
                try await events.noted(seq)
            case (true, .sqlite):
                try await system.transaction(on: "app") { database in
                    try database.execute("CREATE TABLE IF NOT EXISTS sent (seq INTEGER PRIMARY KEY)")
                    _ = try database.run("INSERT INTO sent VALUES (?)", [.int(Int64(seq))])
                    try await work.process(seq)
                    try await events.noted(seq)
                }
            case (true, .postgres):
                let table = "\"\(engine.schema("app"))\".sent"
                try await system.transaction(on: "app", PostgresDatabase.self) { database in
                    try database.run("INSERT INTO \(table) VALUES ($1)", [.int(Int64(seq))])
                    try await work.process(seq)
                    try await events.noted(seq)
                }
            }
            emit("ack \(seq)")
            if paceMicroseconds > 0 { try await Task.sleep(for: .microseconds(paceMicroseconds)) }
        }
        emit("done")
    }

    /// Hosts the work service and the two event groups (`audit`, `mail`) — and in outbox mode the
    /// follow-up service — recording effects through the inbox, or straight into
    /// `effectsDatabase` when given (inbox off).
    package static func hostConsumers(on system: SwitchyardActorSystem, effectsDatabase: String?, outbox: Bool, engine: SoakEngine) throws {
        let recorder = try EffectRecorder(directDatabase: effectsDatabase, engine: engine)
        let followUps = outbox ? try $SoakFollowUps.resolve(id: "soak-follow", using: system) : nil
        if outbox {
            try system.host("soak-follow", as: $SoakFollowUps.self) { SoakFollowUpService(actorSystem: $0, recorder: recorder) }
        }
        try system.host("soak-work", as: $SoakWork.self) { SoakWorkService(actorSystem: $0, recorder: recorder, followUps: followUps) }
        for group in ["audit", "mail"] {
            try system.host(SwitchyardActorID("soak-events", group: group), as: $SoakEvents.self) {
                SoakEventsService(actorSystem: $0, recorder: recorder, group: group)
            }
        }
    }

    /// Creates the producer's `sent` table (PostgreSQL: before any transaction uses it).
    package static func prepareProducer(outbox: Bool, engine: SoakEngine) throws {
        guard outbox, case .postgres = engine else { return }
        let database = try PostgresDatabase(conninfo: "")
        try database.prepareSchema(engine.schema("app"), kind: "transactions", tables: "CREATE TABLE IF NOT EXISTS $schema.sent (seq bigint PRIMARY KEY);")
    }
}
