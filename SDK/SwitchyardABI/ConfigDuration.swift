/// A duration in config (plugin config and the host's routes): a string with a unit (`"250ms"`, `"5s"`, `"1m"`, `"2h"`,
/// `"1.5s"`, `"0"`), decoded to nanoseconds. Negative or unit-less values are refused with the key.
public struct ConfigDuration: Decodable, Hashable, Sendable {
    /// The duration in nanoseconds.
    public let nanoseconds: Int64

    /// A duration of `nanoseconds`.
    public init(nanoseconds: Int64) { self.nanoseconds = nanoseconds }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let parsed = Self.parse(text) else {
            throw DecodingError.dataCorrupted(
                .init(
                    codingPath: decoder.codingPath,
                    debugDescription: "'\(text)' is not a duration like \"250ms\", \"5s\", \"1m\" or \"2h\" (and it must not be negative)"))
        }
        self = parsed
    }

    /// Parses `"<number><unit>"` with unit ns, us, ms, s, m or h; nil when malformed or negative.
    public static func parse(_ text: String) -> ConfigDuration? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed == "0" { return ConfigDuration(nanoseconds: 0) }
        let units: [(String, Double)] = [("ns", 1), ("us", 1e3), ("µs", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9)]
        for (unit, scale) in units where trimmed.hasSuffix(unit) {
            let number = trimmed.dropLast(unit.count)
            guard let value = Double(number), value >= 0, value.isFinite, value * scale < Double(Int64.max) else { continue }
            return ConfigDuration(nanoseconds: Int64(value * scale))
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
