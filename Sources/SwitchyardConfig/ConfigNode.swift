import Foundation
import Yams

/// A YAML node with its key path, for reading config with errors that name the key and line.
///
/// Every accessor throws a ``ConfigError`` pointing at this node when the value has the wrong
/// shape, so config types read fields in a few lines and never report a problem without its place.
public struct ConfigNode {
    /// Dotted key path from the root.
    public let path: String
    let node: Node
    /// The line of the key this node is the value of, where there is one.
    let keyLine: Int?

    init(_ node: Node, path: String, keyLine: Int? = nil) {
        self.node = node
        self.path = path
        self.keyLine = keyLine
    }

    /// Whether the node is YAML's null: a key with nothing after it, `~` or `null`.
    var isNull: Bool { node.null != nil }

    /// 1-based line of this node in the file: its key's, where it has one. A block mapping's
    /// value starts on the line after its key, and an error about the entry (its name, a key it
    /// lacks) belongs on the line that names it.
    public var line: Int? { keyLine ?? node.mark?.line }

    /// An error about this node.
    public func error(_ message: String) -> ConfigError { ConfigError(key: path, line: line, message: message) }

    /// The node's entries as a mapping, refusing keys outside `allowed`. Keys keep file order.
    public func mapping(allowed: [String]) throws(ConfigError) -> [(key: String, value: ConfigNode)] {
        guard case .mapping(let mapping) = node else {
            // A key with nothing after it: name the keys it takes.
            let keys = allowed.isEmpty ? "" : " (keys: \(allowed.joined(separator: ", ")))"
            let name = path.split(separator: ".").last.map(String.init) ?? path
            throw error(
                isNull
                    ? "has no value: expected a mapping of keys to values\(keys); write \(name): {} for an empty one, or leave the key out where it is optional"
                    : "expected a mapping of keys to values")
        }
        var result: [(key: String, value: ConfigNode)] = []
        for (keyNode, valueNode) in mapping {
            guard let key = keyNode.string else { throw error("keys must be strings") }
            let child = ConfigNode(valueNode, path: path.isEmpty ? key : "\(path).\(key)", keyLine: keyNode.mark?.line)
            if !allowed.isEmpty && !allowed.contains(key) {
                throw ConfigError(
                    key: child.path, line: keyNode.mark?.line,
                    message: "unknown key (expected one of: \(allowed.joined(separator: ", ")))")
            }
            result.append((key, child))
        }
        return result
    }

    /// Entries of a mapping whose keys are free-form (e.g. plugin names → pins).
    public func entries() throws(ConfigError) -> [(key: String, value: ConfigNode)] {
        try mapping(allowed: [])
    }

    /// A non-empty string scalar.
    public func string() throws(ConfigError) -> String { try string(allowingEmpty: false) }

    /// A string scalar: non-empty unless `allowingEmpty` (for a value whose empty form means
    /// something, e.g. a libpq `conninfo` that leaves everything to libpq's environment).
    public func string(allowingEmpty: Bool) throws(ConfigError) -> String {
        guard case .scalar(let scalar) = node else { throw error("expected a string") }
        guard allowingEmpty || !scalar.string.isEmpty else { throw error("must not be empty") }
        return scalar.string
    }

    /// A list of non-empty strings (`[a, b]`, or one `- a` per line).
    public func strings() throws(ConfigError) -> [String] {
        guard case .sequence(let sequence) = node else { throw error("expected a list of strings, e.g. [a, b]") }
        var result: [String] = []
        for (index, item) in sequence.enumerated() { result.append(try ConfigNode(item, path: "\(path)[\(index)]").string()) }
        return result
    }

    /// A boolean scalar (`true`/`false`).
    public func bool() throws(ConfigError) -> Bool {
        guard case .scalar = node, let value = node.bool else { throw error("expected true or false") }
        return value
    }

    /// An integer scalar within `range`.
    public func int(in range: ClosedRange<Int> = Int.min...Int.max) throws(ConfigError) -> Int {
        let text = node.scalar?.string ?? ""
        let allDigits = decimalDigits(text) != nil
        if readsAsOctal(text) {
            throw error("'\(text)' starts with 0, which YAML reads as octal: write it without the leading zeros")
        }
        // YAML 1.1 reads more than decimal digits as an integer: 1:00 is 60 (base 60), 0x40 is 64,
        // 1_000 is 1000. A count or a size is written as a plain number, and a time is not one.
        if !allDigits, node.scalar?.style == .plain, let value = node.int {
            throw error("'\(text)' is not a plain decimal number (YAML reads it as \(value)): write \(value) if that is what you mean")
        }
        guard case .scalar = node, let value = node.int else {
            if allDigits, node.scalar?.style != .plain {
                throw error("'\(text)' is quoted, so YAML reads it as text: write the number without quotes")
            }
            // An integer too large for one: say the range, not that it is no integer.
            if allDigits { throw error("'\(text)' must be between \(range.lowerBound) and \(range.upperBound)") }
            // 1.5, 1e6: a number, but not a whole one written out.
            if let number = Double(text), number.isFinite {
                let whole = number == number.rounded() && abs(number) < 1e18 ? ": write \(Int(number))" : ""
                throw error("expected a whole number written out, not '\(text)'\(whole)")
            }
            // "1MB", "10k": a count or a size is written as a plain number.
            if let first = text.first, first.isNumber, text.contains(where: \.isLetter) {
                throw error("expected an integer, not '\(text)': write a plain number, without a unit (1048576, not 1MB)")
            }
            throw error("expected an integer")
        }
        guard range.contains(value) else { throw error("must be between \(range.lowerBound) and \(range.upperBound)") }
        return value
    }
}

extension ConfigNode {
    /// This node as JSON text (mappings → objects, sequences → arrays, scalars by their YAML
    /// type), for handing a plugin its own config. `expecting` says what the mapping is, for the
    /// error when the node is not one.
    public func json(expecting what: String = "a mapping of the plugin's config keys") throws(ConfigError) -> String {
        func convert(_ node: Node, _ path: String) throws(ConfigError) -> Any {
            switch node {
            case .scalar(let scalar):
                if scalar.style == .plain {
                    if node.null != nil { return NSNull() }
                    if let value = node.bool { return value }
                    if let value = node.int {
                        // As the host's own keys refuse them (``int(in:)``): 010 would reach the
                        // plugin as 8, and 1:00 as 60.
                        let text = scalar.string
                        if readsAsOctal(text) {
                            throw ConfigError(
                                key: path, line: node.mark?.line,
                                message: "'\(text)' starts with 0, which YAML reads as octal (\(value)): write it without the leading zeros, or quote it for text")
                        }
                        if text.contains(":") {
                            throw ConfigError(
                                key: path, line: node.mark?.line,
                                message: "'\(text)' is a number in base 60 to YAML (\(value)): quote it for text (\"\(text)\"), or write \(value)")
                        }
                        return value
                    }
                    if let value = node.float { return value }
                }
                return scalar.string
            case .mapping(let mapping):
                var object: [String: Any] = [:]
                for (key, value) in mapping {
                    guard let name = key.string else { throw ConfigError(key: path, line: key.mark?.line, message: "keys must be strings") }
                    object[name] = try convert(value, path + "." + name)
                }
                return object
            case .sequence(let sequence):
                var array: [Any] = []
                for (index, element) in sequence.enumerated() { array.append(try convert(element, "\(path)[\(index)]")) }
                return array
            case .alias:
                throw ConfigError(key: path, line: node.mark?.line, message: "YAML aliases are not supported here")
            }
        }
        let object = try convert(node, path)
        guard object is [String: Any] else { throw error("expected \(what)") }
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else {
            throw error("cannot be expressed as JSON")
        }
        return String(decoding: data, as: UTF8.self)
    }
}

/// Parses YAML text into the root ``ConfigNode``; syntax errors become ``ConfigError``s with the line.
public func parseConfigYAML(_ text: String) throws(ConfigError) -> ConfigNode? {
    do {
        return try Yams.compose(yaml: text).map { ConfigNode($0, path: "") }
    } catch let error as YamlError {
        switch error {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _), .composer(_, let problem, let mark, _):
            // The scanner's words for a tab in the indentation say nothing of tabs.
            let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
            let indentation = mark.line >= 1 && mark.line <= lines.count ? lines[mark.line - 1].prefix { $0 == " " || $0 == "\t" } : ""
            let tab = indentation.contains("\t") ? " (a tab in the indentation: YAML indents with spaces only)" : ""
            // `listen: [::1]:9464`: a value that starts with [ is a YAML list to the parser.
            let lineText = mark.line >= 1 && mark.line <= lines.count ? lines[mark.line - 1] : ""
            let bracket =
                tab.isEmpty && lineText.contains(": [") && lineText.contains("]:")
                ? " (a value that starts with [ is a YAML list: quote an address such as \"[::1]:9464\")" : ""
            throw ConfigError(key: "", line: mark.line, message: "YAML syntax error: \(problem)\(tab)\(bracket)")
        case .duplicatedKeysInMapping(let duplicates, let context):
            // Yams' own text is several lines of context; the key and what to do fit in one.
            let keys = duplicates.sorted().map { "'\($0)'" }.joined(separator: ", ")
            let subject = duplicates.count == 1 ? "the key \(keys) appears" : "the keys \(keys) appear"
            // Yams marks the key's first appearance: the repeat is the line to point at.
            let first = context.mark.line
            let repeated = duplicates.sorted().first.flatMap { repeatLine(of: $0, after: first, column: context.mark.column, in: text) }
            throw ConfigError(
                key: "", line: repeated ?? first,
                message:
                    "\(subject) more than once in the same mapping\(repeated.map { _ in " (first on line \(first))" } ?? ""): keep one of each (for a section, merge its entries into one)"
            )
        default:
            throw ConfigError(key: "", line: nil, message: "YAML error: \(error)")
        }
    } catch {
        throw ConfigError(key: "", line: nil, message: "YAML error: \(error)")
    }
}

/// `text` without its sign, when it is nothing but decimal digits; nil otherwise.
private func decimalDigits(_ text: String) -> Substring? {
    let digits = text.hasPrefix("-") || text.hasPrefix("+") ? text.dropFirst() : Substring(text)
    return !digits.isEmpty && digits.allSatisfy { $0.isASCII && $0.isNumber } ? digits : nil
}

/// Decimal digits with a leading 0, which YAML reads as octal: 010 would silently be 8 (and 08
/// no number at all).
private func readsAsOctal(_ text: String) -> Bool { decimalDigits(text).map { $0.count > 1 && $0.first == "0" } ?? false }

/// The line after `line` where `key` appears again at the same column (a block mapping's key),
/// or nil: the duplicate's line for an error that would otherwise point at the first one.
private func repeatLine(of key: String, after line: Int, column: Int, in text: String) -> Int? {
    let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
    guard line >= 1, column >= 1 else { return nil }
    let indentation = column - 1
    for index in line..<lines.count {
        let candidate = lines[index]
        let leading = candidate.prefix { $0 == " " }
        guard leading.count == indentation else { continue }
        let rest = candidate.dropFirst(indentation)
        for spelling in [key, "\"\(key)\"", "'\(key)'"] where rest.hasPrefix(spelling + ":") { return index + 1 }
    }
    return nil
}
