import Distributed
import Foundation
import SwitchyardABI
import SwitchyardRuntime
import SwitchyardTransportKit

// The services `switchyard soak` runs in its producer and consumer processes. Every handler
// effect is one row in an `effects` table: (kind, seq). With the inbox on, the row is written
// through Switchyard.inboxTransaction (committed with the inbox record); without it, straight
// into a database of its own — which is what the inbox protects against.

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

/// A failure the first attempt of every seventh item meets, so the retry path is exercised.
struct SoakTransientFailure: Error, CustomStringConvertible {
    let seq: Int
    var description: String { "transient failure of item \(seq) (first attempt in this process)" }
}

/// Writes handler effects: through the inbox transaction, or into `effects.db` directly.
final class EffectRecorder: Sendable {
    private let direct: Guarded<SQLiteDatabase>?

    init(directDatabase path: String?) throws {
        if let path {
            let database = try SQLiteDatabase(path: path)
            try database.execute("PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL")
            try database.execute(EffectRecorder.schema)
            direct = Guarded(database)
        } else {
            direct = nil
        }
    }

    static let schema = "CREATE TABLE IF NOT EXISTS effects (kind TEXT NOT NULL, seq INTEGER NOT NULL, pid INTEGER NOT NULL)"

    func record(_ kind: String, _ seq: Int) throws {
        let pid = Int64(getpid())
        let insert: @Sendable (SQLiteDatabase) throws -> Void = { database in
            _ = try database.run("INSERT INTO effects VALUES (?, ?, ?)", [.text(kind), .int(Int64(seq)), .int(pid)])
        }
        if try direct?.withLock({ database in try insert(database) }) == nil {
            try Switchyard.inboxTransaction { database in
                try database.execute(EffectRecorder.schema)
                try insert(database)
            }
        }
    }
}

distributed actor SoakWorkService: SoakWork {
    typealias ActorSystem = SwitchyardActorSystem
    let recorder: EffectRecorder
    private var failedOnce: Set<Int> = []

    init(actorSystem: ActorSystem, recorder: EffectRecorder) {
        self.actorSystem = actorSystem
        self.recorder = recorder
    }

    distributed func process(_ seq: Int) async throws {
        if seq % 7 == 0, failedOnce.insert(seq).inserted { throw SoakTransientFailure(seq: seq) }
        try recorder.record("work", seq)
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

/// What the soak's processes do: the producer's calls and the consumers' hosted services.
package enum SoakWorkload {
    /// Calls `SoakWork.process` and `SoakEvents.noted` for each item, reporting `try N` before
    /// and `ack N` once both were accepted (then `done`), pausing `paceMicroseconds` between items.
    package static func produce(
        on system: SwitchyardActorSystem, items: Range<Int>, paceMicroseconds: Int, emit: (String) -> Void
    ) async throws {
        let work = try $SoakWork.resolve(id: "soak-work", using: system)
        let events = try $SoakEvents.resolve(id: "soak-events", using: system)
        for seq in items {
            emit("try \(seq)")
            try await work.process(seq)
            try await events.noted(seq)
            emit("ack \(seq)")
            if paceMicroseconds > 0 { try await Task.sleep(for: .microseconds(paceMicroseconds)) }
        }
        emit("done")
    }

    /// Hosts the work service and the two event groups (`audit`, `mail`), recording effects
    /// through the inbox, or straight into `effectsDatabase` when given (inbox off).
    package static func hostConsumers(on system: SwitchyardActorSystem, effectsDatabase: String?) throws {
        let recorder = try EffectRecorder(directDatabase: effectsDatabase)
        try system.host("soak-work", as: $SoakWork.self) { SoakWorkService(actorSystem: $0, recorder: recorder) }
        for group in ["audit", "mail"] {
            try system.host(SwitchyardActorID("soak-events", group: group), as: $SoakEvents.self) {
                SoakEventsService(actorSystem: $0, recorder: recorder, group: group)
            }
        }
    }
}
