import Distributed
import Foundation
import SwitchyardABI
import SwitchyardWire

/// Runs a distributed target on a local actor as the standard library's
/// `executeDistributedTarget` does, minus the work it repeats on every call: from the target's
/// mangled name it looks up the generic environment, checks the substitutions' conformances into
/// witness tables, and demangles the parameter and return types (three demanglings and type
/// lookups, 2–3 µs a call here). ``PreparedTarget`` does that once per target and substitution;
/// each call then goes straight to the runtime entry point the standard library calls itself,
/// with the same arguments.
///
/// What it relies on: the lookups are the Distributed module's public SPI (`__getParameterCount`,
/// `__getParameterTypeInfo`, `__getReturnTypeInfo`, `_getGenericEnvironmentOfDistributedTarget`,
/// `_getWitnessTablesFor`); the call is `swift_distributed_execute_target`, declared below with
/// the standard library's own signature. Both are part of the Distributed module's stable ABI
/// (exported by `libswiftDistributed` and frozen on Apple platforms, where binaries built in 2022
/// still call them), so a toolchain cannot change them under a built binary. Anything that does
/// not prepare cleanly (a lookup that fails, a result type that is not `Codable`) takes the
/// standard path, and `SWITCHYARD_EXECUTE=standard` sends every call there.
///
/// What it does not change: checking that the target belongs to the actor (``Server``'s
/// `substitutions(for:on:)`, before either path), and the substitutions (always the hosted stub
/// type, never read off the wire).
enum TargetExecutor {
    /// False when `SWITCHYARD_EXECUTE=standard`: every call through `executeDistributedTarget`.
    static let usesPreparedTargets = ProcessInfo.processInfo.environment["SWITCHYARD_EXECUTE"] != "standard"

    /// Runs `call` on `actor` with `decoder`'s arguments; the outcome (a thrown error included)
    /// lands in `handler`. Throws only what `executeDistributedTarget` throws itself.
    nonisolated(nonsending) static func execute(
        _ call: CallTarget, on actor: any DistributedActor, substitutions: [Any.Type],
        decoder: inout SwitchyardInvocationDecoder, handler: SwitchyardResultHandler, system: SwitchyardActorSystem
    ) async throws {
        guard usesPreparedTargets, let prepared = call.prepared(substitutions: substitutions) else {
            // Not `nonisolated(nonsending)`, so the decoder crosses into it (see ``PreparedTarget/run``).
            nonisolated(unsafe) var arguments = decoder
            defer { decoder = arguments }
            return try await system.executeDistributedTarget(
                on: actor, target: RemoteCallTarget(call.identifier), invocationDecoder: &arguments, handler: handler)
        }
        try await prepared.run(on: actor, decoder: &decoder, handler: handler)
    }
}

/// The standard library's own declaration of the runtime's entry point (internal there; see
/// ``TargetExecutor``): `Builtin.RawPointer` parameters are `UnsafeRawPointer` here, which has
/// the same representation.
@_silgen_name("swift_distributed_execute_target")
private func runtimeExecuteDistributedTarget<D: DistributedTargetInvocationDecoder>(
    on actor: AnyObject,
    _ targetName: UnsafePointer<UInt8>, _ targetNameLength: UInt,
    argumentDecoder: inout D,
    argumentTypes: UnsafeRawPointer,
    resultBuffer: UnsafeRawPointer,
    substitutions: UnsafeRawPointer?,
    witnessTables: UnsafeRawPointer?,
    numWitnessTables: UInt
) async throws

/// What `executeDistributedTarget` works out from a target's name, worked out once: the name as
/// the runtime reads it, the substitutions and their witness tables, the parameter types, and
/// how to hold and take the result. Kept for the life of the process (one per target and
/// substitution: a handful per hosted protocol).
final class PreparedTarget: @unchecked Sendable {
    // @unchecked: every field is written once in init and only read afterwards.
    private let name: UnsafeMutableBufferPointer<UInt8>
    private let substitutions: UnsafeMutableBufferPointer<Any.Type>?
    private let witnessTables: UnsafeRawPointer?
    private let witnessTableCount: Int
    private let argumentTypes: UnsafeMutableBufferPointer<Any.Type>
    /// How many parameters the target takes.
    private let parameterCount: Int
    private let result: ResultSlot

    /// Prepares `identifier` for these substitutions; nil when any lookup fails (the standard
    /// path then runs the call and reports why).
    init?(identifier: String, substitutions given: [Any.Type]) {
        let utf8 = Array(identifier.utf8)
        guard !utf8.isEmpty else { return nil }
        let name = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: utf8.count)
        _ = name.initialize(from: utf8)
        var substitutions: UnsafeMutableBufferPointer<Any.Type>?
        var witnessTables: UnsafeRawPointer?
        var witnessTableCount = 0
        var argumentTypes: UnsafeMutableBufferPointer<Any.Type>?
        func release() {
            name.deallocate()
            substitutions?.deallocate()
            witnessTables?.deallocate()
            argumentTypes?.deallocate()
        }
        let environment = _getGenericEnvironmentOfDistributedTarget(name.baseAddress!, UInt(name.count))
        if let environment {
            guard !given.isEmpty else {
                release()
                return nil
            }
            let buffer = UnsafeMutableBufferPointer<Any.Type>.allocate(capacity: given.count)
            _ = buffer.initialize(from: given)
            substitutions = buffer
            let (tables, count) = _getWitnessTablesFor(environment: environment, genericArguments: UnsafeRawPointer(buffer.baseAddress!))
            witnessTables = tables
            guard count >= 0 else {
                release()
                return nil
            }
            witnessTableCount = count
        }
        let genericArguments = substitutions.map { UnsafeRawPointer($0.baseAddress!) }
        let parameterCount = Int(__getParameterCount(name.baseAddress!, UInt(name.count)))
        guard parameterCount >= 0 else {
            release()
            return nil
        }
        let types = UnsafeMutableBufferPointer<Any.Type>.allocate(capacity: max(1, parameterCount))
        argumentTypes = types
        let decoded = __getParameterTypeInfo(
            name.baseAddress!, UInt(name.count), environment, genericArguments,
            UnsafeMutableRawPointer(types.baseAddress!)._rawValue, parameterCount)
        guard Int(decoded) == parameterCount,
            let returnType = __getReturnTypeInfo(name.baseAddress!, UInt(name.count), environment, genericArguments),
            let result = ResultSlot(returnType)
        else {
            release()
            return nil
        }
        self.name = name
        self.substitutions = substitutions
        self.witnessTables = witnessTables
        self.witnessTableCount = witnessTableCount
        self.argumentTypes = types
        self.parameterCount = parameterCount
        self.result = result
    }

    deinit {
        name.deallocate()
        substitutions?.deallocate()
        witnessTables?.deallocate()
        argumentTypes.deallocate()
    }

    /// Runs the target on `actor`: the outcome, a thrown error included, lands in `handler`, as
    /// `executeDistributedTarget` would leave it.
    nonisolated(nonsending) func run(on actor: any DistributedActor, decoder: inout SwitchyardInvocationDecoder, handler: SwitchyardResultHandler) async throws {
        // Nothing more than the method takes (its accessor reads only as many as it has).
        decoder.expectedCount = parameterCount
        if parameterCount == 0 && !decoder.isComplete {
            handler.outcome = .error(EnvelopeError("the call has more arguments than the method's 0"))
            return
        }
        let buffer = result.allocate()
        defer { result.deallocate(buffer) }
        // The runtime's entry point is not `nonisolated(nonsending)` (its calling convention is
        // fixed), so the decoder crosses into it: only for the call, while this task waits for
        // it, so no two accesses overlap.
        nonisolated(unsafe) var arguments = decoder
        defer { decoder = arguments }
        do {
            try await runtimeExecuteDistributedTarget(
                on: actor as AnyObject, name.baseAddress!, UInt(name.count), argumentDecoder: &arguments,
                argumentTypes: UnsafeRawPointer(argumentTypes.baseAddress!), resultBuffer: UnsafeRawPointer(buffer),
                substitutions: substitutions.map { UnsafeRawPointer($0.baseAddress!) },
                witnessTables: witnessTables, numWitnessTables: UInt(witnessTableCount))
        } catch {
            handler.outcome = .error(error)
            return
        }
        handler.outcome = result.take(buffer)
    }

    /// How a target's result is held in the buffer the runtime writes it to, and taken out.
    private struct ResultSlot {
        let size: Int
        let alignment: Int
        /// Moves the result out of the buffer (which is left uninitialized).
        let take: (UnsafeMutableRawPointer) -> SwitchyardResultHandler.Outcome

        /// Nil for a result type that is neither `Void` nor `Codable` (never a distributed method's).
        init?(_ type: Any.Type) {
            if type == Void.self {
                self.init(size: 0, alignment: 1, take: { _ in .void })
            } else if let codable = type as? any Codable.Type {
                self = Self.holding(codable)
            } else {
                return nil
            }
        }

        private init(size: Int, alignment: Int, take: @escaping (UnsafeMutableRawPointer) -> SwitchyardResultHandler.Outcome) {
            self.size = size
            self.alignment = alignment
            self.take = take
        }

        /// Room for one result. A `Void` method writes nothing: it gets one shared buffer. Others
        /// get `malloc`'s, which is aligned for any type not over-aligned: the standard library's
        /// `UnsafeMutableRawPointer.allocate` always takes the runtime's aligned path
        /// (`posix_memalign`), about 300 instructions more a call by callgrind.
        func allocate() -> UnsafeMutableRawPointer {
            if size == 0 { return Self.noResult }
            if alignment <= Self.mallocAlignment { return malloc(size)! }
            return UnsafeMutableRawPointer.allocate(byteCount: size, alignment: alignment)
        }

        /// Gives back what ``allocate()`` returned.
        func deallocate(_ buffer: UnsafeMutableRawPointer) {
            if size == 0 { return }
            if alignment <= Self.mallocAlignment { return free(buffer) }
            buffer.deallocate()
        }

        private static let mallocAlignment = 16
        // Never written (a `Void` result has no bytes), so safe to share between calls.
        private nonisolated(unsafe) static let noResult = UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 16)

        private static func holding<R: Codable>(_: R.Type) -> ResultSlot {
            ResultSlot(size: max(1, MemoryLayout<R>.size), alignment: MemoryLayout<R>.alignment) {
                .value($0.assumingMemoryBound(to: R.self).move())
            }
        }
    }
}

/// The prepared forms of one target, by substitution (none, or the hosted stub type).
final class PreparedTargets: Sendable {
    // A list, not a dictionary: a target is called with one set of substitutions (its hosted
    // actor's type) or a few, and a look at each costs less than hashing the key.
    private let byStub = Guarded<[(stub: ObjectIdentifier?, target: PreparedTarget?)]>([])

    /// The prepared target for `identifier` with `substitutions`, prepared on first use; nil
    /// when it cannot be prepared (remembered, so it is tried once).
    func prepared(_ identifier: String, substitutions: [Any.Type]) -> PreparedTarget? {
        guard substitutions.count <= 1 else { return nil }
        let key = substitutions.first.map { ObjectIdentifier($0) }
        if let known = byStub.withLock({ $0.first { $0.stub == key } }) { return known.target }
        let made = PreparedTarget(identifier: identifier, substitutions: substitutions)
        return byStub.withLock { prepared in
            // Two first calls may prepare at once: the first one stored is kept.
            if let first = prepared.first(where: { $0.stub == key }) { return first.target }
            prepared.append((key, made))
            return made
        }
    }
}
