import SwitchyardABI
import SwitchyardWire

/// Errors a typed call can end with that the implementation did not throw itself.
///
/// Errors the implementation throws come back as themselves when their type is `Codable` and
/// registered with ``SwitchyardActorSystem/registerError(_:)``, and as a ``Code/remote`` error
/// otherwise.
///
/// A struct over a ``Code`` rather than an enum (as swift-service-lifecycle's
/// `ServiceGroupError`), so that a new kind of failure is not a breaking change. Match a kind with
/// its code, and read what that kind carries from the properties:
///
/// ```swift
/// do {
///     try await payments.charge(order)
/// } catch SwitchyardError.Code.timeout {
///     // retry later, with the same CallOptions(idempotencyKey:)
/// } catch let error as SwitchyardError where error.code == .deadLettered {
///     print("gave up after \(error.attempts!) attempts: \(error.reason)")
/// }
/// ```
public struct SwitchyardError: Error, Codable, Hashable, Sendable, CustomStringConvertible {
    /// What kind of failure this is. Codes may be added in later versions; a `switch` over them
    /// needs a `default`.
    public struct Code: Codable, Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }

        /// No reply within the call's deadline. The call may still run (or have run) on the receiver.
        public static let timeout = Code("timeout")
        /// The implementation threw an error whose type is not registered here:
        /// ``SwitchyardError/remoteType`` and the error's description as ``SwitchyardError/reason``.
        public static let remote = Code("remote")
        /// The receiver gave up after ``SwitchyardError/attempts`` attempts and dead-lettered the call.
        public static let deadLettered = Code("deadLettered")
        /// The receiver refused the call before running it (an unknown or forged target, an
        /// envelope it cannot read, a wrong argument): the call is dead-lettered with the reason.
        public static let rejected = Code("rejected")
        /// No route matches the call, the route cannot carry it (e.g. fire-and-forget for a
        /// method with a result), or its call options cannot be carried. Nothing was sent.
        public static let routing = Code("routing")
        /// The transport (``SwitchyardError/transport``) refused the call: full, closed, unreachable…
        public static let transport = Code("transport")
        /// The actor system is shutting down and takes no new calls.
        public static let shuttingDown = Code("shuttingDown")
        /// The call (or its reply) exceeds a configured message limit (`limits:`, see
        /// docs/configuration.md); nothing was sent.
        public static let limitExceeded = Code("limitExceeded")

        /// The code's name, as in `.timeout`.
        public var description: String { name }

        /// Decodes a code by its name; a name this version does not know stays as it is.
        public init(from decoder: any Decoder) throws { name = try decoder.singleValueContainer().decode(String.self) }
        /// Encodes the code as its name.
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            try container.encode(name)
        }

        /// `catch SwitchyardError.Code.timeout { … }`: true when `error` is a Switchyard error
        /// with this code.
        public static func ~= (code: Code, error: any Error) -> Bool {
            (error as? SwitchyardError)?.code == code
        }
    }

    /// What kind of failure this is.
    public let code: Code
    /// The call's readable target, `Interface.method(labels:)` (or the hosted actor, for a
    /// failure to serve it); empty for ``Code/remote``.
    public let target: String
    /// What went wrong, for a person; for ``Code/remote``, the remote error's description.
    public let reason: String
    /// ``Code/timeout``: the deadline that passed.
    public let deadline: Duration?
    /// ``Code/deadLettered``: how many times the call was attempted.
    public let attempts: Int?
    /// ``Code/remote``: the type name of the error the implementation threw.
    public let remoteType: String?
    /// ``Code/transport``: the configured transport that failed, when one was named.
    public let transport: String?

    private init(
        _ code: Code, target: String, reason: String, deadline: Duration? = nil, attempts: Int? = nil,
        remoteType: String? = nil, transport: String? = nil
    ) {
        self.code = code
        self.target = target
        self.reason = reason
        self.deadline = deadline
        self.attempts = attempts
        self.remoteType = remoteType
        self.transport = transport
    }

    /// No reply to the call to `target` within `deadline`. The reason says what to check: most
    /// often nothing serving the call runs.
    public static func timeout(target: String, deadline: Duration) -> SwitchyardError {
        SwitchyardError(
            .timeout, target: target,
            reason:
                "no reply within \(deadline) (is a process hosting it running and reading its route's transport? a handler that needs longer needs a longer deadline: the route's 'deadline', or CallOptions.deadline)",
            deadline: deadline)
    }
    /// The implementation threw an unregistered error of `type`, described as `message`.
    public static func remote(type: String, message: String) -> SwitchyardError {
        SwitchyardError(.remote, target: "", reason: message, remoteType: type)
    }
    /// The receiver gave up on the call to `target` after `attempts` attempts.
    public static func deadLettered(target: String, attempts: Int, reason: String) -> SwitchyardError {
        SwitchyardError(.deadLettered, target: target, reason: reason, attempts: attempts)
    }
    /// The receiver refused the call to `target` before running it.
    public static func rejected(target: String, reason: String) -> SwitchyardError {
        SwitchyardError(.rejected, target: target, reason: reason)
    }
    /// The call to `target` cannot be routed as asked.
    public static func routing(target: String, reason: String) -> SwitchyardError {
        SwitchyardError(.routing, target: target, reason: reason)
    }
    /// The configured transport `transport` refused the call to `target`.
    public static func transport(target: String, transport: String? = nil, reason: String) -> SwitchyardError {
        SwitchyardError(.transport, target: target, reason: reason, transport: transport)
    }
    /// The system stopped taking calls; the call to `target` was not made.
    public static func shuttingDown(target: String) -> SwitchyardError {
        SwitchyardError(.shuttingDown, target: target, reason: "the actor system is shutting down")
    }
    /// The call to `target` (or its reply) exceeds a configured limit.
    public static func limitExceeded(target: String, reason: String) -> SwitchyardError {
        SwitchyardError(.limitExceeded, target: target, reason: reason)
    }

    /// The error for a person: what happened to the call to its target, and why.
    public var description: String {
        switch code {
        case .remote: "remote \(remoteType ?? "error"): \(reason)"
        case .deadLettered: "\(target): dead-lettered after \(attempts ?? 0) attempt(s): \(reason)"
        case .rejected: "\(target): rejected by the receiver: \(reason)"
        case .transport: "\(target): transport error: \(transport.map { "\($0): " } ?? "")\(reason)"
        default: target.isEmpty ? reason : "\(target): \(reason)"
        }
    }
}

/// How an error crosses the wire in a reply: its type name, a description, and — for registered
/// `Codable` error types — its encoded value.
struct ErrorPayload: Codable {
    var type: String
    var message: String
    var value: [UInt8]?
}

/// Error types that come back to callers as themselves.
final class ErrorRegistry: Sendable {
    private struct Entry {
        let encode: @Sendable (any Error) throws -> [UInt8]
        let decode: @Sendable ([UInt8]) throws -> any Error
    }
    private let entries = Guarded<[String: Entry]>([:])

    init() {
        register(SwitchyardError.self)
    }

    func register<E: Error & Codable>(_ type: E.Type) {
        let entry = Entry(
            encode: { error in try CompactEncoder().encode(error as! E) },
            decode: { bytes in try CompactDecoder().decode(E.self, from: bytes) })
        entries.withLock { $0[String(reflecting: type)] = entry }
    }

    /// The wire form of `error`.
    func payload(for error: any Error) -> ErrorPayload {
        let name = String(reflecting: Swift.type(of: error))
        let entry = entries.withLock { $0[name] }
        let value = entry.flatMap { try? $0.encode(error) }
        return ErrorPayload(type: name, message: String(describing: error), value: value)
    }

    /// Whether `error` would cross a transport as itself (its type is registered); true the first
    /// time only for the others, so that a caller can say so once per type.
    func crossesAsRemoteForTheFirstTime(_ error: any Error) -> Bool {
        if error is CancellationError { return false }
        let name = String(reflecting: Swift.type(of: error))
        return entries.withLock { $0[name] == nil } && unregisteredSeen.withLock { $0.insert(name).inserted }
    }
    private let unregisteredSeen = Guarded<Set<String>>([])

    /// The error a payload stands for: the registered type itself, or ``SwitchyardError/remote``.
    func error(from payload: ErrorPayload) -> any Error {
        if let value = payload.value, let entry = entries.withLock({ $0[payload.type] }), let error = try? entry.decode(value) {
            return error
        }
        return SwitchyardError.remote(type: payload.type, message: payload.message)
    }
}
