/// A problem with the configuration file: which key, on which line, and what is wrong.
public struct ConfigError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Dotted path of the offending key, e.g. `plugins.pins.queue`; empty for the whole file.
    public let key: String
    /// 1-based line in the file, when known.
    public let line: Int?
    /// What is wrong, for a person.
    public let message: String
    /// The file, when the config came from one.
    public var file: String?

    /// An error about `key` at `line`.
    public init(key: String, line: Int?, message: String, file: String? = nil) {
        self.key = key
        self.line = line
        self.message = message
        self.file = file
    }

    public var description: String {
        let place = [file, line.map { "line \($0)" }].compactMap { $0 }.joined(separator: ":")
        let subject = key.isEmpty ? "" : "'\(key)': "
        return (place.isEmpty ? "" : place + ": ") + subject + message
    }
}

extension ConfigError {
    /// This error naming `file`, unless it names one already.
    public func inFile(_ file: String?) -> ConfigError {
        var located = self
        if located.file == nil { located.file = file }
        return located
    }
}
