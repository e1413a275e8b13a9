/// A C type in a native signature (docs/native-modules.md).
public enum NativeType: String, Sendable, Hashable, CaseIterable {
    /// Signed integers of 8, 16, 32 and 64 bits (`int8_t` … `int64_t`).
    case i8, i16, i32, i64
    /// Unsigned integers of 8, 16, 32 and 64 bits (`uint8_t` … `uint64_t`).
    case u8, u16, u32, u64
    /// `float` and `double`.
    case f32, f64
    /// C `bool`.
    case bool
    /// UTF-8 text: a NUL-terminated `const char *` in; out, a `char *` freed by a declared function.
    case str
    /// A byte buffer: two C arguments, `const uint8_t *` and `size_t` (argument only).
    case bytes
    /// No value (result only).
    case void

    /// Whether values of this type are integers, and signed ones.
    package var isSignedInteger: Bool { [.i8, .i16, .i32, .i64].contains(self) }
    /// Whether values of this type are unsigned integers.
    package var isUnsignedInteger: Bool { [.u8, .u16, .u32, .u64].contains(self) }

    /// Bit width of an integer type.
    package var bits: Int {
        switch self {
        case .i8, .u8: 8
        case .i16, .u16: 16
        case .i32, .u32: 32
        default: 64
        }
    }
}

/// A native function's signature in Switchyard's small type language: `result(parameter, …)`,
/// e.g. `f64(i32, f64)`, `str(str)`, `void()`, `u64(bytes)`.
public struct NativeSignature: Sendable, Hashable, CustomStringConvertible {
    /// The result type (`void` for none).
    public let result: NativeType
    /// The parameter types, in order.
    public let parameters: [NativeType]

    /// A signature.
    public init(result: NativeType, parameters: [NativeType]) {
        self.result = result
        self.parameters = parameters
    }

    public var description: String { "\(result.rawValue)(\(parameters.map(\.rawValue).joined(separator: ", ")))" }

    /// Parses `text`; an error points at the offending character.
    public init(parsing text: String) throws(NativeSignatureError) {
        let characters = Array(text)
        var index = 0
        func fail(_ message: String) -> NativeSignatureError { NativeSignatureError(text: text, offset: min(index, characters.count), message: message) }
        func skipSpace() { while index < characters.count, characters[index] == " " || characters[index] == "\t" { index += 1 } }
        func word() -> String {
            let start = index
            while index < characters.count, characters[index].isLetter || characters[index].isNumber { index += 1 }
            return String(characters[start..<index])
        }
        func type(_ role: String) throws(NativeSignatureError) -> NativeType {
            skipSpace()
            let start = index
            let name = word()
            guard !name.isEmpty else { throw fail("expected a type (\(NativeType.allCases.map(\.rawValue).joined(separator: ", ")))") }
            guard let type = NativeType(rawValue: name) else {
                index = start
                throw fail("unknown type '\(name)' (expected one of \(NativeType.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            if role == "parameter" && type == .void { index = start; throw fail("void is only a result type") }
            if role == "result" && type == .bytes { index = start; throw fail("bytes is only a parameter type (a result needs its length: return u64 and fill a buffer instead)") }
            return type
        }
        let result = try type("result")
        skipSpace()
        guard index < characters.count, characters[index] == "(" else { throw fail("expected '(' after the result type") }
        index += 1
        var parameters: [NativeType] = []
        skipSpace()
        if index < characters.count, characters[index] == ")" {
            index += 1
        } else {
            while true {
                parameters.append(try type("parameter"))
                skipSpace()
                guard index < characters.count else { throw fail("expected ',' or ')'") }
                if characters[index] == "," { index += 1; continue }
                if characters[index] == ")" { index += 1; break }
                throw fail("expected ',' or ')'")
            }
        }
        skipSpace()
        guard index == characters.count else { throw fail("unexpected text after ')'") }
        guard parameters.count <= 32 else { index = 0; throw fail("more than 32 parameters") }
        self.init(result: result, parameters: parameters)
    }
}

/// Why a signature does not parse: the message, and where.
public struct NativeSignatureError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The signature as written.
    public let text: String
    /// The offending character's offset (0-based; `text.count` for "at the end").
    public let offset: Int
    /// What is wrong.
    public let message: String

    /// "column N: message", then the signature and a caret under the offending character.
    public var description: String {
        "column \(offset + 1): \(message)\n  \(text)\n  \(String(repeating: " ", count: offset))^"
    }
}
