/// A duration in config (plugin config and the host's routes): a string with a unit (`"250ms"`, `"5s"`, `"1m"`, `"2h"`,
/// `"1.5s"`, `"0"`), decoded to nanoseconds. Negative or unit-less values are refused with the key.
public struct ConfigDuration: Decodable, Hashable, Sendable {
    /// The duration in nanoseconds.
    public let nanoseconds: Int64

    /// A duration of `nanoseconds`.
    public init(nanoseconds: Int64) { self.nanoseconds = nanoseconds }

    /// A duration from a string with a unit (`"250ms"`, `"5s"`); a bare 0 is zero as well, and any
    /// other bare number is refused with the unit to add, not as "expected a string".
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let number = try? container.decode(Double.self) {
            guard number == 0 else {
                let shown = number.rounded() == number && abs(number) < 1e15 ? String(Int64(number)) : String(number)
                let why = number < 0 ? Self.refusal(of: shown) : "\(shown) has no unit: write a duration as a string with one, like \"\(shown)s\" (or \"250ms\", \"1m\", \"2h\")"
                throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: why))
            }
            self.init(nanoseconds: 0)
            return
        }
        let text = try container.decode(String.self)
        guard let parsed = Self.parse(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: Self.refusal(of: text)))
        }
        self = parsed
    }

    /// Why `text` is not a duration, and how to write one: said the same way for the Swift SDK's
    /// plugin config and the host's own keys.
    public static func refusal(of text: String) -> String {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.hasPrefix("-"), let next = trimmed.dropFirst().first, next.isNumber || next == "." {
            let positive = String(trimmed.dropFirst())
            return "'\(text)' is negative: a duration must not be (write a positive one, such as \(parse(positive) != nil ? positive : "5s"))"
        }
        if let number = Double(trimmed), number.isFinite {
            return "'\(text)' has no unit: write it with one, like \"\(trimmed)s\" or \"\(trimmed)ms\""
        }
        for (unit, _) in units where trimmed.hasSuffix(unit) {
            if let number = Double(trimmed.dropLast(unit.count)), number.isFinite, number >= 0 {
                return "'\(text)' is too long: a duration is at most about 292 years (2^63 ns)"
            }
        }
        return "'\(text)' is not a duration: a number and a unit (ns, us, ms, s, m or h), like \"250ms\", \"1.5s\", \"5m\" or \"2h\""
    }

    /// The units a duration may have, with their length in nanoseconds; longer suffixes first
    /// where one ends another (`ms` before `s`).
    private static let units: [(String, Double)] = [("ns", 1), ("us", 1e3), ("µs", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9)]

    /// Parses `"<number><unit>"` with unit ns, us, ms, s, m or h; nil when malformed or negative.
    public static func parse(_ text: String) -> ConfigDuration? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed == "0" { return ConfigDuration(nanoseconds: 0) }
        for (unit, scale) in units where trimmed.hasSuffix(unit) {
            let number = trimmed.dropLast(unit.count)
            guard let value = Double(number), value >= 0, value.isFinite, value * scale < Double(Int64.max) else { continue }
            // Rounded, as the C SDK's switchyard_config.h does: truncating read "1.001s" as
            // 1000999999 ns (the decimal is not exact in binary).
            return ConfigDuration(nanoseconds: Int64((value * scale).rounded()))
        }
        return nil
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: Set<Character>) -> String {
        String(self.drop(while: { set.contains($0) }).reversed().drop(while: { set.contains($0) }).reversed())
    }
}

extension Set where Element == Character {
    fileprivate static let whitespaces: Set<Character> = [" ", "\t"]
}
