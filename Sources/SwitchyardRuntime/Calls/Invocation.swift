import Distributed
import Foundation
import SwitchyardWire

/// The identity of a distributed actor in a Switchyard system: a name that callers resolve and
/// that names its channel on every transport, plus the subscriber group it serves in (for topic
/// routes, where each group receives every call; empty otherwise).
public struct SwitchyardActorID: Hashable, Sendable, Codable, ExpressibleByStringLiteral, CustomStringConvertible {
    /// The name callers resolve, e.g. `"orders"`. Also the channel its calls travel on.
    public var name: String
    /// The subscriber group, for fan-out routes; empty for none.
    public var group: String

    /// An id with a name and an optional group.
    public init(_ name: String, group: String = "") {
        self.name = name
        self.group = group
    }

    /// `"orders"` as an id.
    public init(stringLiteral name: String) { self.init(name) }

    /// `name`, or `name[group]` with a group.
    public var description: String { group.isEmpty ? name : "\(name)[\(group)]" }
}

/// Records one call's arguments as they are passed; they are encoded once the route (and with
/// it the encoding) is known, or handed over unencoded to a local actor on a direct route.
public struct SwitchyardInvocationEncoder: DistributedTargetInvocationEncoder {
    /// Arguments and results are `Codable`.
    public typealias SerializationRequirement = any Codable

    /// One recorded argument.
    struct Argument {
        let name: String
        let value: any Codable
    }
    var arguments: [Argument] = []
    /// How many generic parameters' types the call recorded: one for a call through a
    /// `@Resolvable` stub (its type: the methods are a protocol extension's), more for a generic
    /// method, which is refused. Counted, not kept: the receiver takes the substitutions from
    /// what it hosts, never from the caller, and an array here was an allocation on every call.
    var substitutionCount = 0

    /// Records a generic parameter's type (a generic method's call; refused on transport routes).
    public mutating func recordGenericSubstitution<T>(_ type: T.Type) throws { substitutionCount += 1 }
    /// Records one argument as it is passed; it is encoded once the route is known.
    public mutating func recordArgument<Value: Codable>(_ argument: RemoteCallArgument<Value>) throws {
        // Room for a few at the first: growing from one to two to four was an allocation each.
        if arguments.isEmpty { arguments.reserveCapacity(4) }
        arguments.append(Argument(name: argument.name, value: argument.value))
    }
    /// Not recorded: a thrown error travels by its registered type (`registerError`).
    public mutating func recordErrorType<E: Error>(_ type: E.Type) throws {}
    /// Not recorded: the caller's stub knows the type it decodes.
    public mutating func recordReturnType<R: Codable>(_ type: R.Type) throws {}
    /// Nothing to finish: the arguments are encoded when the call is routed.
    public mutating func doneRecording() throws {}

    /// The arguments in `encoding`: compact values one after another, or a JSON array.
    func encodedArguments(_ encoding: ArgumentEncoding) throws -> [UInt8] {
        switch encoding {
        case .compact:
            var bytes: [UInt8] = []
            bytes.reserveCapacity(32 * arguments.count)
            for argument in arguments { try encoding.encode(argument.value, appendingTo: &bytes) }
            return bytes
        case .json:
            return Array(try JSONEncoder().encode(arguments.map { AnyEncodable(value: $0.value) }))
        }
    }
}

/// Lets a JSON array hold values of different types.
private struct AnyEncodable: Encodable {
    let value: any Encodable
    func encode(to encoder: any Encoder) throws { try value.encode(to: encoder) }
}

/// Hands a call's arguments to `executeDistributedTarget`: decoded from an envelope, or passed
/// through as values for a call that never left the process.
public struct SwitchyardInvocationDecoder: DistributedTargetInvocationDecoder {
    /// Arguments and results are `Codable`.
    public typealias SerializationRequirement = any Codable

    enum Arguments {
        /// As the caller's stub recorded them (a direct call): passed on, never encoded.
        case recorded([SwitchyardInvocationEncoder.Argument])
        case compact([UInt8])
        case json([Data])

        /// Values passed as they are, unnamed (as recorded, without the names).
        static func values(_ values: [any Codable]) -> Arguments { .recorded(values.map { .init(name: "", value: $0) }) }
    }
    let arguments: Arguments
    let substitutions: [Any.Type]
    /// How many arguments the target takes, when known (a prepared target): an argument left
    /// over after the last one is an error, as a missing one is.
    var expectedCount: Int?
    private var index = 0
    private var offset = 0

    init(_ arguments: Arguments, substitutions: [Any.Type]) {
        self.arguments = arguments
        self.substitutions = substitutions
    }

    /// Arguments in `encoding`; a malformed JSON array throws.
    init(encoded bytes: [UInt8], encoding: ArgumentEncoding, substitutions: [Any.Type]) throws {
        switch encoding {
        case .compact: self.init(.compact(bytes), substitutions: substitutions)
        case .json:
            guard let array = try JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed]) as? [Any] else {
                throw EnvelopeError("JSON arguments must be an array")
            }
            let elements = try array.map { try JSONSerialization.data(withJSONObject: $0, options: [.fragmentsAllowed]) }
            self.init(.json(elements), substitutions: substitutions)
        }
    }

    /// Whether every argument was read (a call with too many arguments is refused).
    var isComplete: Bool {
        switch arguments {
        case .recorded(let values): index == values.count
        case .compact(let bytes): offset == bytes.count
        case .json(let elements): index == elements.count
        }
    }

    /// Throws when the argument just read was the target's last and more are left.
    private func checkNothingLeft(afterReading count: Int) throws(EnvelopeError) {
        guard let expectedCount, count == expectedCount else { return }
        let more =
            switch arguments {
            case .recorded(let values): values.count > count
            case .compact(let bytes): offset < bytes.count
            case .json(let elements): elements.count > count
            }
        if more { throw EnvelopeError("the call has more arguments than the method's \(expectedCount)") }
    }

    /// The generic parameters' types, as recorded (in process) or resolved by the receiver.
    public mutating func decodeGenericSubstitutions() throws -> [Any.Type] { substitutions }

    /// The next argument: handed over as recorded in process, or decoded from the call's encoding.
    public mutating func decodeNextArgument<Argument: Codable>() throws -> Argument {
        let value: Argument = try readArgument()
        try checkNothingLeft(afterReading: index)
        return value
    }

    /// An argument recorded in process (a direct route), as the type the target takes. Apart
    /// from ``readArgument()``: its cast makes an `Argument?`, whose metadata (code not
    /// specialized for `Argument` looks it up on every call, about 330 instructions) would
    /// otherwise be fetched for every argument decoded from a transport too.
    @inline(never)
    private static func recorded<Argument>(_ values: [SwitchyardInvocationEncoder.Argument], at index: Int, as type: Argument.Type) throws -> Argument {
        guard index < values.count else { throw EnvelopeError("argument \(index + 1) is missing") }
        guard let value = values[index].value as? Argument else {
            throw EnvelopeError("argument \(index + 1) is a \(Swift.type(of: values[index].value)), expected \(Argument.self)")
        }
        return value
    }

    private mutating func readArgument<Argument: Codable>() throws -> Argument {
        defer { index += 1 }
        switch arguments {
        case .recorded(let values):
            return try Self.recorded(values, at: index, as: Argument.self)
        case .compact(let bytes):
            guard offset < bytes.count else { throw EnvelopeError("argument \(index + 1) (\(Argument.self)) is missing") }
            let start = offset
            return try bytes.withUnsafeBytes { raw in
                var reader = CompactReader(raw, offset: start)
                do {
                    let value = try CompactDecoding.value(Argument.self, from: &reader, codingPath: [])
                    offset = reader.offset
                    return value
                } catch {
                    throw EnvelopeError("argument \(index + 1) is not a valid \(Argument.self): \(error)")
                }
            }
        case .json(let elements):
            guard index < elements.count else { throw EnvelopeError("argument \(index + 1) (\(Argument.self)) is missing") }
            do {
                return try JSONDecoder().decode(Argument.self, from: elements[index])
            } catch {
                throw EnvelopeError("argument \(index + 1) is not a valid \(Argument.self): \(error)")
            }
        }
    }

    /// Not carried: see ``SwitchyardInvocationEncoder/recordErrorType(_:)``.
    public mutating func decodeErrorType() throws -> Any.Type? { nil }
    /// Not carried: see ``SwitchyardInvocationEncoder/recordReturnType(_:)``.
    public mutating func decodeReturnType() throws -> Any.Type? { nil }
}

/// Collects how an executed call ended; the runtime encodes and delivers it afterwards.
public final class SwitchyardResultHandler: DistributedTargetInvocationResultHandler, @unchecked Sendable {
    // @unchecked: written once by executeDistributedTarget, read after it returns, in one task.
    /// Arguments and results are `Codable`.
    public typealias SerializationRequirement = any Codable

    enum Outcome {
        case value(any Codable)
        case void
        case error(any Error)
    }
    var outcome: Outcome?

    init() {}

    /// Records a returned value.
    public func onReturn<Success: Codable>(value: Success) async throws { outcome = .value(value) }
    /// Records a return from a `Void` method.
    public func onReturnVoid() async throws { outcome = .void }
    /// Records a thrown error.
    public func onThrow<Err: Error>(error: Err) async throws { outcome = .error(error) }
}
