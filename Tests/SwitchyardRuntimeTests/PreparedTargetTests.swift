import Distributed
import Foundation
import SwitchyardABI
import SwitchyardTestSupport
import SwitchyardWire
import Testing

@testable import SwitchyardRuntime

// Calls of every shape through the prepared-target path (TargetExecutor), checked against what
// the standard library's executeDistributedTarget gives for the same target and arguments.

/// A result held by reference: moved out of the runtime's result buffer exactly once.
final class Parcel: Codable, Sendable {
    let label: String
    let weights: [Double]
    init(label: String, weights: [Double]) {
        self.label = label
        self.weights = weights
    }
}

struct Manifest: Codable, Hashable, Sendable {
    var id: Int
    var lines: [String]
    var rush: Bool
    var note: String?
}

enum Carrier: String, Codable, Sendable {
    case road, rail
}

struct Refused: Error, Codable, Hashable {
    var why: String
}

@Resolvable
protocol Shapes: DistributedActor where ActorSystem == SwitchyardActorSystem {
    distributed func nothing() async throws
    distributed func echo(_ text: String) async throws -> String
    distributed func many(_ a: Int8, _ b: Double, _ c: String, _ d: Bool, _ e: [Int], _ f: Manifest?) async throws -> Manifest
    distributed func parcel(_ label: String) async throws -> Parcel
    distributed func carrier(_ rush: Bool) async throws -> Carrier
    distributed func optional(_ value: Int?) async throws -> Int?
    distributed func refuse(_ why: String) async throws -> Int
    distributed func record(_ manifest: Manifest) async throws
}

distributed actor ShapesService: Shapes {
    typealias ActorSystem = SwitchyardActorSystem
    let recorded: Guarded<[Manifest]>

    init(actorSystem: SwitchyardActorSystem, recorded: Guarded<[Manifest]>) {
        self.actorSystem = actorSystem
        self.recorded = recorded
    }

    distributed func nothing() {}
    distributed func echo(_ text: String) -> String { text + text }
    distributed func many(_ a: Int8, _ b: Double, _ c: String, _ d: Bool, _ e: [Int], _ f: Manifest?) -> Manifest {
        Manifest(id: Int(a) + e.reduce(0, +), lines: [c, "\(b)"] + (f?.lines ?? []), rush: d, note: f?.note)
    }
    distributed func parcel(_ label: String) -> Parcel { Parcel(label: label, weights: [1.5, 2.5]) }
    distributed func carrier(_ rush: Bool) -> Carrier { rush ? .rail : .road }
    distributed func optional(_ value: Int?) -> Int? { value.map { $0 * 2 } }
    distributed func refuse(_ why: String) throws -> Int { throw Refused(why: why) }
    distributed func record(_ manifest: Manifest) { recorded.withLock { $0.append(manifest) } }
}

@Suite("prepared targets")
struct PreparedTargetTests {
    /// Every shape, through a stub on a direct route (in process, unencoded) and through the
    /// in-memory queue (encoded, decoded on the receiver): both run the prepared path.
    @Test("calls of every shape give what the method returns or throws", arguments: ["direct", "queue"])
    func everyShape(_ transport: String) async throws {
        let system = try await makeSystem(
            transport == "direct"
                ? "routes:\n  \"*\": { transport: direct }\n"
                : "transports:\n  q: { plugin: queue }\nroutes:\n  \"*\": { transport: q }\n")
        defer { Task { await system.shutdown() } }
        system.registerError(Refused.self)
        let recorded = Guarded<[Manifest]>([])
        _ = try system.host("shapes", as: $Shapes.self) { ShapesService(actorSystem: $0, recorded: recorded) }
        let shapes = try $Shapes.resolve(id: "shapes", using: system)

        try await shapes.nothing()
        #expect(try await shapes.echo("ab") == "abab")
        let manifest = Manifest(id: 1, lines: ["x"], rush: true, note: "n")
        #expect(try await shapes.many(-3, 2.5, "c", false, [1, 2], manifest) == Manifest(id: 0, lines: ["c", "2.5", "x"], rush: false, note: "n"))
        #expect(try await shapes.many(4, 0, "", true, [], nil) == Manifest(id: 4, lines: ["", "0.0"], rush: true, note: nil))
        #expect(try await shapes.carrier(true) == .rail)
        #expect(try await shapes.optional(nil) == nil)
        #expect(try await shapes.optional(21) == 42)
        await #expect(throws: Refused(why: "closed")) { try await shapes.refuse("closed") }
        try await shapes.record(manifest)
        #expect(await eventually { recorded.withLock { $0 } == [manifest] })

        // A result held by reference is handed over once: the caller's copy is the only one left.
        weak var released: Parcel?
        do {
            let parcel = try await shapes.parcel("p")
            #expect(parcel.label == "p" && parcel.weights == [1.5, 2.5])
            released = parcel
        }
        #expect(released == nil)
    }

    /// The prepared path is the one taken (nothing fell back to the standard one unnoticed), and
    /// it gives the same outcome as `executeDistributedTarget` for the same target and arguments.
    @Test("each target prepares, and runs as executeDistributedTarget runs it")
    func sameAsStandard() async throws {
        let (system, service, shapes) = try await hostedShapes()
        defer { Task { await system.shutdown() } }
        _ = try await shapes.echo("warm")
        _ = try await shapes.many(1, 1, "", true, [], nil)
        await #expect(throws: (any Error).self) { try await shapes.refuse("x") }

        let calls = system.targets.withLock { Array($0.values.map(\.call)) }
        #expect(calls.count == 3)
        for call in calls {
            let substitutions = try system.server.substitutions(for: call, on: service)
            #expect(substitutions.count == 1, "a call through \(call.owningType) runs with the stub type")
            #expect(call.prepared(substitutions: substitutions) != nil, "\(call.name) did not prepare")
        }

        // Same arguments both ways, including ones of the wrong type (a decoding error, thrown
        // by the method's accessor, lands in the handler on both paths).
        let cases: [(String, [any Codable])] = [
            ("echo", ["q"]), ("many", [Int8(2), 1.0, "s", false, [3], Manifest?.none]), ("refuse", ["no"]), ("echo", [7]),
        ]
        for (method, arguments) in cases {
            let call = try #require(calls.first { $0.method == method })
            let substitutions = try system.server.substitutions(for: call, on: service)
            let viaPrepared = try await prepared(call, .values(arguments), on: service, in: system)
            var standard = SwitchyardInvocationDecoder(.values(arguments), substitutions: substitutions)
            let viaStandard = SwitchyardResultHandler()
            try await system.executeDistributedTarget(
                on: service, target: RemoteCallTarget(call.identifier), invocationDecoder: &standard, handler: viaStandard)
            #expect(describe(viaPrepared) == describe(viaStandard.outcome), "\(method)\(arguments)")
        }
    }

    /// The receiver reads the arguments a method takes "and nothing more" (docs/envelope.md): an
    /// envelope carrying extra ones is refused, not run with the extras ignored.
    @Test("a call with more arguments than the method takes is refused")
    func extraArguments() async throws {
        let (system, service, shapes) = try await hostedShapes()
        defer { Task { await system.shutdown() } }
        _ = try await shapes.echo("warm")
        try await shapes.nothing()
        var extraCompact: [UInt8] = []
        try ArgumentEncoding.compact.encode("q", appendingTo: &extraCompact)
        try ArgumentEncoding.compact.encode("extra", appendingTo: &extraCompact)
        let cases: [(String, SwitchyardInvocationDecoder.Arguments)] = [
            ("echo", .values(["q", "extra"])), ("echo", .compact(extraCompact)), ("nothing", .values([1])),
        ]
        let calls = system.targets.withLock { Array($0.values.map(\.call)) }
        for (method, arguments) in cases {
            let call = try #require(calls.first { $0.method == method })
            let outcome = try await prepared(call, arguments, on: service, in: system)
            guard case .error(let error as EnvelopeError)? = outcome else {
                Issue.record("\(method) with \(arguments) ran: \(describe(outcome))")
                continue
            }
            #expect(error.description.contains("more arguments"))
        }
    }

    /// A system with every route direct, `ShapesService` hosted as "shapes", and a stub for it.
    private func hostedShapes() async throws -> (SwitchyardActorSystem, ShapesService, $Shapes) {
        let system = try await makeSystem("routes:\n  \"*\": { transport: direct }\n")
        let service = try system.host("shapes", as: $Shapes.self) { ShapesService(actorSystem: $0, recorded: Guarded([])) }
        return (system, service, try $Shapes.resolve(id: "shapes", using: system))
    }

    /// How `call` ends on the prepared path with `arguments`.
    private func prepared(
        _ call: CallTarget, _ arguments: SwitchyardInvocationDecoder.Arguments, on service: ShapesService, in system: SwitchyardActorSystem
    ) async throws -> SwitchyardResultHandler.Outcome? {
        let substitutions = try system.server.substitutions(for: call, on: service)
        var decoder = SwitchyardInvocationDecoder(arguments, substitutions: substitutions)
        let handler = SwitchyardResultHandler()
        try await TargetExecutor.execute(call, on: service, substitutions: substitutions, decoder: &decoder, handler: handler, system: system)
        return handler.outcome
    }

    private func describe(_ outcome: SwitchyardResultHandler.Outcome?) -> String {
        switch outcome {
        case .value(let value)?: "value \(value)"
        case .void?: "void"
        case .error(let error)?: "error \(String(reflecting: type(of: error))) \(error)"
        case nil: "none"
        }
    }
}
