import SwitchyardABI

/// Errors a typed call can end with that the implementation did not throw itself.
///
/// Errors the implementation throws come back as themselves when their type is `Codable` and
/// registered with ``SwitchyardActorSystem/registerError(_:)``, and as ``remote(type:message:)``
/// otherwise.
public enum SwitchyardError: Error, Codable, Hashable, Sendable, CustomStringConvertible {
    /// No reply within the route's deadline. The call may still run (or have run) on the receiver.
    case timeout(target: String, deadline: Duration)
    /// The implementation threw an error whose type is not registered here: its type name and
    /// description.
    case remote(type: String, message: String)
    /// The receiver gave up after `attempts` attempts and dead-lettered the call.
    case deadLettered(target: String, attempts: Int, reason: String)
    /// The receiver refused the call before running it (an unknown or forged target, an envelope
    /// it cannot read, a wrong argument): the call is dead-lettered with this reason.
    case rejected(target: String, reason: String)
    /// No route matches the call, or the route cannot carry it (e.g. fire-and-forget for a method
    /// with a result).
    case routing(target: String, reason: String)
    /// The transport refused the call (full, closed, unreachable…).
    case transport(target: String, reason: String)
    /// The actor system is shutting down and takes no new calls.
    case shuttingDown(target: String)
    /// The call (or its reply) exceeds a configured message limit (`limits:`, see
    /// docs/configuration.md); nothing was sent.
    case limitExceeded(target: String, reason: String)

    public var description: String {
        switch self {
        case .timeout(let target, let deadline): "\(target): no reply within \(deadline)"
        case .remote(let type, let message): "remote \(type): \(message)"
        case .deadLettered(let target, let attempts, let reason): "\(target): dead-lettered after \(attempts) attempt(s): \(reason)"
        case .rejected(let target, let reason): "\(target): rejected by the receiver: \(reason)"
        case .routing(let target, let reason): "\(target): \(reason)"
        case .transport(let target, let reason): "\(target): transport error: \(reason)"
        case .shuttingDown(let target): "\(target): the actor system is shutting down"
        case .limitExceeded(let target, let reason): "\(target): \(reason)"
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

    /// The error a payload stands for: the registered type itself, or ``SwitchyardError/remote``.
    func error(from payload: ErrorPayload) -> any Error {
        if let value = payload.value, let entry = entries.withLock({ $0[payload.type] }), let error = try? entry.decode(value) {
            return error
        }
        return SwitchyardError.remote(type: payload.type, message: payload.message)
    }
}
