import Foundation

/// The host's configuration file (YAML). Everything is validated when it is read: a file that
/// loads is complete, and a file that does not names the key and line of its first problem.
///
/// ```yaml
/// plugins:
///   directory: ./plugins        # relative to this file
///   require_pins: false
///   pins:
///     queue: 3f1c…              # sha256 of the plugin file, hex
/// ```
public struct SwitchyardConfig: Sendable {
    /// Where plugins come from and which files to trust.
    public var plugins = PluginsSection()

    public init() {}

    /// The `plugins:` section.
    public struct PluginsSection: Sendable {
        /// A directory to search for plugins, already resolved against the config file's directory.
        public var directory: String?
        /// Plugin name → lowercase hex sha256 of its file.
        public var pins: [String: String] = [:]
        /// Refuse, before loading, every file whose sha256 is not pinned.
        public var requirePins = false

        public init() {}
    }

    /// Reads and validates the config file at `path`.
    public static func load(path: String) throws(ConfigError) -> SwitchyardConfig {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigError(key: "", line: nil, message: "cannot read the config file: \((error as NSError).localizedDescription)", file: path)
        }
        let base = URL(fileURLWithPath: path).deletingLastPathComponent().path
        do {
            return try parse(yaml: text, baseDirectory: base)
        } catch {
            var located = error
            located.file = path
            throw located
        }
    }

    /// Parses and validates config text; relative paths resolve against `baseDirectory`.
    public static func parse(yaml: String, baseDirectory: String) throws(ConfigError) -> SwitchyardConfig {
        var config = SwitchyardConfig()
        guard let root = try parseConfigYAML(yaml) else { return config }
        for (key, value) in try root.mapping(allowed: ["plugins"]) {
            switch key {
            case "plugins": config.plugins = try PluginsSection(value, baseDirectory: baseDirectory)
            default: break
            }
        }
        return config
    }
}

extension SwitchyardConfig.PluginsSection {
    init(_ node: ConfigNode, baseDirectory: String) throws(ConfigError) {
        self.init()
        for (key, value) in try node.mapping(allowed: ["directory", "pins", "require_pins"]) {
            switch key {
            case "directory":
                let path = try value.string()
                directory = path.hasPrefix("/") ? path : URL(fileURLWithPath: baseDirectory).appendingPathComponent(path).standardized.path
            case "require_pins":
                requirePins = try value.bool()
            case "pins":
                for (name, pin) in try value.entries() {
                    let hex = try pin.string().lowercased()
                    guard hex.count == 64, hex.allSatisfy(\.isHexDigit) else {
                        throw pin.error("expected a sha256 as 64 hex digits (see `switchyard plugins inspect`)")
                    }
                    pins[name] = hex
                }
            default: break
            }
        }
    }
}
