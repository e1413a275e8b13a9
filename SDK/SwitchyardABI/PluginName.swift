import CSwitchyard

/// The rules for plugin names: `[a-z0-9-]`, starting with a letter, not ending with `-`, at most
/// `SY_PLUGIN_NAME_MAX` bytes. Config selects plugins by these names, so they must be plain.
public enum PluginName {
    /// Longest name, in bytes.
    public static let maxLength = Int(SY_PLUGIN_NAME_MAX)

    /// Why `name` is not a valid plugin name, or nil when it is.
    public static func problem(with name: String) -> String? {
        let bytes = Array(name.utf8)
        guard let first = bytes.first else { return "the name is empty" }
        guard bytes.count <= maxLength else { return "the name is \(bytes.count) bytes long; at most \(maxLength) are allowed" }
        guard (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(first) else {
            return "the name '\(name)' must start with a lowercase letter"
        }
        guard bytes.last != UInt8(ascii: "-") else { return "the name '\(name)' must not end with '-'" }
        for byte in bytes where !(isLowercaseLetter(byte) || isDigit(byte) || byte == UInt8(ascii: "-")) {
            return "the name '\(name)' may only contain a-z, 0-9 and '-'"
        }
        return nil
    }

    private static func isLowercaseLetter(_ b: UInt8) -> Bool { b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z") }
    private static func isDigit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }
}

/// A semantic version (`MAJOR.MINOR.PATCH`, optionally `-prerelease` and `+build`), as plugins
/// declare in their descriptor.
public struct SemanticVersion: Hashable, Sendable, CustomStringConvertible {
    /// Incompatible changes.
    public var major: Int
    /// Compatible additions.
    public var minor: Int
    /// Fixes.
    public var patch: Int
    /// The `-prerelease` and `+build` parts, kept verbatim.
    public var suffix: String

    /// Parses `text`, or returns nil when it is not a semantic version.
    public init?(_ text: String) {
        let end = text.firstIndex(where: { $0 == "-" || $0 == "+" }) ?? text.endIndex
        let core = text[..<end].split(separator: ".", omittingEmptySubsequences: false)
        guard core.count == 3 else { return nil }
        var numbers: [Int] = []
        for part in core {
            guard !part.isEmpty, part.allSatisfy(\.isASCII), let n = Int(part), n >= 0,
                part == "0" || !part.hasPrefix("0")
            else { return nil }
            numbers.append(n)
        }
        let suffix = String(text[end...])
        guard suffix.count != 1, suffix.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-+.".contains($0)) }) else {
            return nil
        }
        (major, minor, patch, self.suffix) = (numbers[0], numbers[1], numbers[2], suffix)
    }

    public var description: String { "\(major).\(minor).\(patch)\(suffix)" }
}
