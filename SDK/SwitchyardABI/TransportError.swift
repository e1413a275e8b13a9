import CSwitchyard

/// A status code of the plugin ABI (`sy_status`), with the codes the header defines as constants.
///
/// A struct rather than an enum so that codes added by later ABI minors still round-trip.
public struct StatusCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The `sy_status` value.
    public let rawValue: Int32
    /// Wraps an `sy_status` value, known or not.
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// Success.
    public static let ok = StatusCode(rawValue: SY_OK)
    /// A NULL, empty or malformed argument.
    public static let invalidArgument = StatusCode(rawValue: SY_ERR_INVALID_ARGUMENT)
    /// Malformed instance config; the message names the key.
    public static let config = StatusCode(rawValue: SY_ERR_CONFIG)
    /// The plugin does not do this.
    public static let unsupported = StatusCode(rawValue: SY_ERR_UNSUPPORTED)
    /// Unknown subscription or delivery id.
    public static let notFound = StatusCode(rawValue: SY_ERR_NOT_FOUND)
    /// Bounded capacity reached; nothing was stored.
    public static let full = StatusCode(rawValue: SY_ERR_FULL)
    /// A message or header exceeds a limit.
    public static let tooLarge = StatusCode(rawValue: SY_ERR_TOO_LARGE)
    /// A deadline passed first.
    public static let timeout = StatusCode(rawValue: SY_ERR_TIMEOUT)
    /// The instance is draining or destroyed.
    public static let closed = StatusCode(rawValue: SY_ERR_CLOSED)
    /// Storage or network failure; the operation did not happen.
    public static let io = StatusCode(rawValue: SY_ERR_IO)
    /// A remote dependency cannot be reached now.
    public static let unavailable = StatusCode(rawValue: SY_ERR_UNAVAILABLE)
    /// A bug or impossible state in the plugin.
    public static let internalError = StatusCode(rawValue: SY_ERR_INTERNAL)

    public var description: String {
        switch self {
        case .ok: "ok"
        case .invalidArgument: "invalid argument"
        case .config: "config error"
        case .unsupported: "unsupported"
        case .notFound: "not found"
        case .full: "full"
        case .tooLarge: "too large"
        case .timeout: "timeout"
        case .closed: "closed"
        case .io: "I/O error"
        case .unavailable: "unavailable"
        case .internalError: "internal error"
        default: "status \(rawValue)"
        }
    }
}

/// An error that crossed (or will cross) the plugin boundary: a status code and a one-line message.
public struct TransportError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What kind of failure.
    public var code: StatusCode
    /// One line saying what went wrong; for config errors it names the key.
    public var message: String
    /// The configured transport the error is about, where the host knows it (creating a
    /// transport set, for example); never set by a plugin, nil when no one transport is at fault.
    public var transport: String?

    /// An error of kind `code` saying `message` (one line), about `transport` when given.
    public init(_ code: StatusCode, _ message: String, transport: String? = nil) {
        self.code = code
        self.message = message
        self.transport = transport
    }

    /// The plugin config key a config error names, written as the ABI asks plugins to
    /// (`config key 'path': must be …`); nil when the message names none.
    public var configKey: String? {
        guard let start = message.firstRange(of: "config key '") else { return nil }
        let rest = message[start.upperBound...]
        return rest.firstIndex(of: "'").map { String(rest[..<$0]) }
    }

    public var description: String { message.isEmpty ? code.description : "\(code): \(message)" }

    /// Reads the error a callee reported through `sy_error`, given the status it returned. A
    /// callee that left the message empty is said to have, so that the error still reads as one
    /// (an empty message printed nothing after the transport's name).
    public init(status: Int32, error: borrowing sy_error) {
        let message = withUnsafeBytes(of: error.message) { raw -> String in
            let bytes = raw.bindMemory(to: UInt8.self)
            let length = bytes.firstIndex(of: 0) ?? bytes.count
            return String(decoding: UnsafeBufferPointer(rebasing: bytes[..<length]), as: UTF8.self)
        }
        let code = StatusCode(rawValue: status)
        self.init(
            code,
            message.isEmpty
                ? "the plugin returned '\(code)' and gave no reason (it left sy_error's message empty: a plugin fills it on every failure, with sy_error_set in switchyard_plugin.h)"
                : message)
    }

    /// Writes this error into a caller's `sy_error` (when not nil), truncating the message to fit
    /// on a UTF-8 boundary, and returns the status code to hand back across the boundary.
    @discardableResult
    public func write(to error: UnsafeMutablePointer<sy_error>?) -> Int32 {
        guard let error else { return code.rawValue }
        error.pointee.code = code.rawValue
        withUnsafeMutableBytes(of: &error.pointee.message) { raw in
            let utf8 = Array(message.utf8)
            var count = min(utf8.count, raw.count - 1)
            // When truncating, do not cut a multi-byte character in half.
            if count < utf8.count { while count > 0 && utf8[count] & 0xC0 == 0x80 { count -= 1 } }
            raw.copyBytes(from: utf8[..<count])
            raw[count] = 0
        }
        return code.rawValue
    }

    /// Calls a C function of the ABI that reports failures through `sy_error`, and throws what it
    /// reported when it does not return `SY_OK`.
    public static func check(_ call: (UnsafeMutablePointer<sy_error>) -> Int32) throws(TransportError) {
        var error = sy_error()
        let status = call(&error)
        if status != SY_OK { throw TransportError(status: status, error: error) }
    }
}

extension Array where Element == TransportError? {
    /// The outcomes of a batch of `count` operations that all succeeded (nil each), written in
    /// place: `init(repeating:count:)` copies its value into every element through the enum's
    /// outlined copy, which showed per message in a batch's settlement (callgrind).
    public static func noErrors(count: Int) -> [TransportError?] {
        [TransportError?](unsafeUninitializedCapacity: count) { buffer, initialized in
            for index in 0..<count { (buffer.baseAddress! + index).initialize(to: nil) }
            initialized = count
        }
    }
}
