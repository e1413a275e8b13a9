/// Environment-variable overrides: `${NAME}` and `${NAME:-default}` anywhere in the file are
/// replaced by the variable's value before the YAML is read, the way Docker Compose and
/// Kubernetes manifests do it. `$${` writes a literal `${`. Expansion never adds lines, so every
/// error still points at the right line.
public enum EnvironmentExpansion {
    /// `text` with every reference replaced from `environment`; an unset variable without a
    /// default is an error naming it and its line.
    public static func expand(_ text: String, environment: [String: String]) throws(ConfigError) -> String {
        guard text.contains("${") else { return text }
        var output = ""
        var line = 1
        var rest = Substring(text)
        while let dollar = rest.firstIndex(of: "$") {
            let before = rest[..<dollar]
            line += before.reduce(0) { $0 + ($1 == "\n" ? 1 : 0) }
            output += before
            let afterDollar = rest[rest.index(after: dollar)...]
            if afterDollar.hasPrefix("${") {  // $${ → literal ${
                output += "${"
                rest = afterDollar.dropFirst(2)
                continue
            }
            guard afterDollar.hasPrefix("{") else {
                output += "$"
                rest = afterDollar
                continue
            }
            // A reference ends on its own line (a default with a line break would shift every
            // later error's line, and a value with one is refused below).
            let endOfLine = afterDollar.firstIndex(of: "\n") ?? afterDollar.endIndex
            guard let close = afterDollar[..<endOfLine].firstIndex(of: "}") else {
                throw ConfigError(
                    key: "", line: line, message: "'${' without a closing '}' on its line: close the reference (${NAME}), or write $${ for a literal '${'")
            }
            let reference = afterDollar[afterDollar.index(after: afterDollar.startIndex)..<close]
            let name: Substring
            let fallback: Substring?
            if let separator = reference.range(of: ":-") {
                name = reference[..<separator.lowerBound]
                fallback = reference[separator.upperBound...]
            } else {
                name = reference
                fallback = nil
            }
            guard !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }) else {
                throw ConfigError(key: "", line: line, message: "'${\(reference)}' is not a variable reference (write ${NAME} or ${NAME:-default})")
            }
            if let value = environment[String(name)], !value.isEmpty {
                guard !value.contains("\n") else {
                    throw ConfigError(
                        key: "", line: line,
                        message:
                            "environment variable \(name) contains a line break: a value fills one line; set it without the line break (e.g. from a file: \"$(tr -d '\\n' < FILE)\")"
                    )
                }
                output += value
            } else if let fallback {
                output += fallback
            } else if environment[String(name)] != nil {
                throw ConfigError(
                    key: "", line: line,
                    message: "environment variable \(name) is empty (write ${\(name):-default} to give a default, or ${\(name):-} to allow empty)")
            } else {
                throw ConfigError(
                    key: "", line: line,
                    message:
                        "environment variable \(name) is not set: export it (for a command that reads a running system's file, the value that system uses), "
                        + "or write ${\(name):-default} to give a default")
            }
            rest = afterDollar[afterDollar.index(after: close)...]
        }
        output += rest
        return output
    }
}
