import Foundation
import SwitchyardABI

/// The host's configuration file (YAML). Everything is validated when it is read: a file that
/// loads is complete, and a file that does not names the key and line of its first problem.
///
/// ```yaml
/// plugins:
///   directory: ./plugins        # relative to this file
///   require_pins: false
///   probe: true                 # load plugin files in a child first (default: when a transport is isolated)
///   pins:
///     queue: 3f1c…              # sha256 of the plugin file, hex
/// ```
public struct SwitchyardConfig: Sendable {
    /// The file it was read from (``load(path:)``), for errors found later — a transport a plugin
    /// refuses, a route its transport cannot carry — to name it as the parser's do.
    public var file: String?
    /// Where plugins come from and which files to trust.
    public var plugins = PluginsSection()
    /// Configured transports by name, in file order.
    public var transports: [TransportEntry] = []
    /// Routes, in file order (the most specific match wins, not the first).
    public var routes: [RouteEntry] = []
    /// Native modules served as interfaces.
    public var native: [NativeModuleEntry] = []
    /// `limits:` — message size and header bounds the runtime enforces when it sends a call or
    /// reply (refusing it with the key) and when it receives one (dead-lettering it).
    public var limits = MessageLimits()
    /// `outboxes:` — the application's databases that ``SwitchyardActorSystem/transaction(on:_:)``
    /// commits calls in, by name, in file order.
    public var outboxes: [OutboxEntry] = []
    /// The operator's HTTP endpoint (`admin:`), or nil: not served.
    public var admin: AdminSection?

    /// One application database with an outbox: calls made inside a transaction on it are
    /// written to its `switchyard_outbox` table with the application's own rows and relayed
    /// after the commit (docs/transactions.md).
    ///
    /// ```yaml
    /// outboxes:
    ///   shop: { path: "${SWITCHYARD_DATA}/shop.db" }              # SQLite, relative to this file
    ///   ledger: { postgres: { conninfo: "", schema: switchyard } } # PostgreSQL (PG* variables)
    /// ```
    public struct OutboxEntry: Sendable {
        /// The name `transaction(on:)` takes.
        public var name: String
        /// The SQLite database file, or nil for PostgreSQL.
        public var path: String?
        /// The PostgreSQL database, or nil for SQLite.
        public var postgres: PostgresLocation?
        /// The entry's line in the file.
        public var line: Int?
        /// The line of its `path` or `postgres`, for an error about the database.
        public var locationLine: Int?
    }

    /// One configured transport: an instance of a plugin, maybe decorating another transport.
    public struct TransportEntry: Sendable {
        /// The name routes and commands refer to it by.
        public var name: String
        /// The plugin it is an instance of.
        public var plugin: String
        /// For decorators: the transport it wraps.
        public var inner: String?
        /// The plugin's own config, as JSON.
        public var configJSON: String
        /// `isolation: process`: run the plugin in a child process; nil runs it in the host.
        public var isolation: Isolation? = nil
        /// Line of its entry in the file.
        public var line: Int?
        /// Line of each top-level key of the plugin's `config`, for errors that name one.
        public var configLines: [String: Int] = [:]
    }

    /// `transports.NAME.isolation`: either the word `process` (or `in-process`, the default), or a
    /// mapping `{ mode: process, call_timeout: 30s, restart_backoff: 100ms, max_restart_backoff:
    /// 10s, host: /path/to/switchyard }`. Unset durations keep the host's defaults.
    public struct Isolation: Sendable, Hashable {
        /// Longest wait for the child to answer one call before it counts as hung.
        public var callTimeoutNanos: Int64?
        /// First wait before a restart.
        public var restartBackoffNanos: Int64?
        /// Longest wait between restarts.
        public var maxRestartBackoffNanos: Int64?
        /// The `switchyard` executable that serves as plugin host.
        public var host: String?

        /// The host's first wait before a restart when `restart_backoff` is unset (the default of
        /// `ProcessIsolation`, which a test holds equal): a maximum below it is refused too.
        public static let defaultRestartBackoffNanos: Int64 = 100_000_000

        /// Isolation with every option at the host's default.
        public init(
            callTimeoutNanos: Int64? = nil, restartBackoffNanos: Int64? = nil,
            maxRestartBackoffNanos: Int64? = nil, host: String? = nil
        ) {
            self.callTimeoutNanos = callTimeoutNanos
            self.restartBackoffNanos = restartBackoffNanos
            self.maxRestartBackoffNanos = maxRestartBackoffNanos
            self.host = host
        }

        /// `nanos` in milliseconds, as the errors say it ("50 ms", "0.5 ms").
        static func millis(_ nanos: Int64) -> String {
            nanos % 1_000_000 == 0 ? "\(nanos / 1_000_000) ms" : "\(Double(nanos) / 1_000_000) ms"
        }

        /// The `isolation` value: a word or a mapping; `host` made absolute against `baseDirectory`
        /// as every other path of the file, and the backoffs checked against each other.
        static func parse(_ node: ConfigNode, baseDirectory: String) throws(ConfigError) -> Isolation? {
            if let word = try? node.string() {
                switch word {
                case "process": return Isolation()
                case "in-process": return nil
                default: throw node.error("expected 'process' or 'in-process', or a mapping with 'mode'")
                }
            }
            var isolation = Isolation()
            var process = true
            var maxLine: Int?
            var settings: [ConfigNode] = []
            for (key, field) in try node.mapping(allowed: ["mode", "call_timeout", "restart_backoff", "max_restart_backoff", "host"]) {
                if key != "mode" { settings.append(field) }
                switch key {
                case "mode":
                    let mode = try field.string()
                    guard ["process", "in-process"].contains(mode) else { throw field.error("expected 'process' or 'in-process'") }
                    process = mode == "process"
                case "call_timeout":
                    isolation.callTimeoutNanos = try field.duration()
                    if isolation.callTimeoutNanos == 0 { throw field.error("must be more than 0 (e.g. 10s; leave it out for the default)") }
                case "restart_backoff":
                    isolation.restartBackoffNanos = try field.duration()
                    if isolation.restartBackoffNanos == 0 { throw field.error("must be more than 0 (a dead child would be restarted in a tight loop)") }
                case "max_restart_backoff":
                    isolation.maxRestartBackoffNanos = try field.duration()
                    maxLine = field.line
                    if isolation.maxRestartBackoffNanos == 0 { throw field.error("must be more than 0 (e.g. 30s; leave it out for the default)") }
                case "host": isolation.host = SwitchyardConfig.resolve(path: try field.string(), against: baseDirectory)
                default: break
                }
            }
            // A setting that would silently do nothing: the plugin runs in this process.
            if !process, let first = settings.first {
                throw first.error("has no effect with mode: in-process (the plugin runs in this process): remove it, or set mode: process")
            }
            // Unset, the maximum follows a longer first wait (as a retry policy's max_delay does).
            // A maximum below the first wait, set or default, would shrink the waits instead of
            // doubling them.
            if let most = isolation.maxRestartBackoffNanos, most < isolation.restartBackoffNanos ?? defaultRestartBackoffNanos {
                let first = isolation.restartBackoffNanos ?? defaultRestartBackoffNanos
                let set = isolation.restartBackoffNanos == nil ? "restart_backoff's default" : "restart_backoff"
                throw ConfigError(
                    key: node.path + ".max_restart_backoff", line: maxLine ?? node.line,
                    message: "\(Self.millis(most)) must not be less than \(set) (\(Self.millis(first))): raise it, or lower restart_backoff")
            }
            return process ? isolation : nil
        }
    }

    /// The transport called `name`, if configured.
    public func transport(named name: String) -> TransportEntry? { transports.first { $0.name == name } }

    /// The defaults: no plugins directory, no pins, no transports.
    public init() {}

    /// The `plugins:` section.
    public struct PluginsSection: Sendable {
        /// A directory to search for plugins, already resolved against the config file's directory.
        public var directory: String?
        /// Plugin name → lowercase hex sha256 of its file.
        public var pins: [String: String] = [:]
        /// Refuse, before loading, every file whose sha256 is not pinned.
        public var requirePins = false
        /// Load every plugin file in a probe process first and never load one that crashes or
        /// hangs it here; nil leaves it to the runtime (on when a transport is isolated).
        public var probe: Bool?
        /// The line of `probe`, for an error of the probe it asked for.
        public var probeLine: Int?
        /// Calls into a plugin that take this long or longer are logged as warnings (0: never).
        public var slowCallWarningNanos: Int64 = 1_000_000_000

        /// No directory, no pins.
        public init() {}
    }

    /// Reads and validates the config file at `path`.
    public static func load(path: String) throws(ConfigError) -> SwitchyardConfig {
        let regular = isRegularFile(path)
        // A pipe (`--config <(…)`, /dev/stdin from a pipe) can be read once, and a command may
        // load its config more than once: what it gave is kept for the process's later loads.
        let text = try regular ? readText(path) : PipedConfigs.shared.text(path) { () throws(ConfigError) in try readText(path) }
        // Relative paths resolve beside the file; in a pipe, or a file reached through a
        // descriptor's name (/dev/stdin < switchyard.yaml, whose "directory" is /dev), against
        // the working directory.
        let base =
            !regular || isDescriptorName(path)
            ? FileManager.default.currentDirectoryPath : URL(fileURLWithPath: path).deletingLastPathComponent().path
        do {
            var config = try parse(yaml: text, baseDirectory: base)
            config.file = path
            return config
        } catch {
            throw error.inFile(path)
        }
    }

    /// Whether `path` is a regular file (following links).
    static func isRegularFile(_ path: String) -> Bool {
        var status = stat()
        return stat(path, &status) == 0 && (status.st_mode & S_IFMT) == S_IFREG
    }

    /// Whether `path` names one of this process's open descriptors rather than a file of its
    /// own: /dev/stdin, /dev/fd/N, /proc/self/fd/N (or /proc/PID/fd/N).
    static func isDescriptorName(_ path: String) -> Bool {
        if path == "/dev/stdin" || path.hasPrefix("/dev/fd/") { return true }
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        // "", "proc", self | thread-self | PID, "fd", N
        return parts.count == 5 && parts[0].isEmpty && parts[1] == "proc" && parts[3] == "fd"
            && (parts[2] == "self" || parts[2] == "thread-self" || parts[2].allSatisfy(\.isNumber))
    }

    /// Whether a command that hands `path` to a child process must not: a pipe can be read once,
    /// by this process (see ``load(path:)``), and a descriptor's name means another file there.
    public static func isStream(_ path: String) -> Bool { !isRegularFile(path) || isDescriptorName(path) }

    /// The text of the config file at `path`. Read through a file handle, not
    /// `String(contentsOfFile:)`: that refuses what is not a regular file (a pipe such as
    /// `--config <(envsubst < switchyard.yaml)`, `/dev/stdin`) and names the wrong cause ("no
    /// permission"); the system's own reason is given instead.
    static func readText(_ path: String) throws(ConfigError) -> String {
        func refuse(_ message: String) -> ConfigError { ConfigError(key: "", line: nil, message: message, file: path) }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            let relative = path.hasPrefix("/") ? "" : " (relative to \(FileManager.default.currentDirectoryPath))"
            throw refuse("no config file at \(path)\(relative): check the path")
        }
        if isDirectory.boolValue { throw refuse("it is a directory: pass the config file itself (e.g. \(path)/switchyard.yaml)") }
        let descriptor = open(path, O_RDONLY)
        guard descriptor >= 0 else { throw refuse("cannot read the config file: \(String(cString: strerror(errno)))") }
        let handle = FileHandle(fileDescriptor: descriptor, closeOnDealloc: true)
        let data: Data
        do {
            data = try handle.readToEnd() ?? Data()
        } catch {
            throw refuse("cannot read the config file: \((error as NSError).localizedDescription)")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw refuse("cannot read the config file: it is not UTF-8 text") }
        return text
    }

    /// Parses and validates config text; relative paths resolve against `baseDirectory`, and
    /// `${NAME}` references are taken from `environment` (see ``EnvironmentExpansion``).
    public static func parse(
        yaml: String, baseDirectory: String, environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(ConfigError) -> SwitchyardConfig {
        var config = SwitchyardConfig()
        guard let root = try parseConfigYAML(try EnvironmentExpansion.expand(yaml, environment: environment)) else { return config }
        var routesNode: ConfigNode?
        for (key, value) in try root.mapping(allowed: ["plugins", "transports", "routes", "native", "limits", "outboxes", "admin"]) {
            switch key {
            case "admin": config.admin = try parseAdmin(value, environment: environment)
            case "outboxes": config.outboxes = try parseOutboxes(value, baseDirectory: baseDirectory)
            case "limits": config.limits = try parseLimits(value)
            case "native": config.native = try parseNative(value, baseDirectory: baseDirectory)
            case "plugins": config.plugins = try PluginsSection(value, baseDirectory: baseDirectory)
            case "transports": config.transports = try parseTransports(value, baseDirectory: baseDirectory)
            case "routes": routesNode = value
            default: break
            }
        }
        // Routes name transports, which may come later in the file.
        if let routesNode {
            config.routes = try parseRoutes(routesNode, transports: config.transports, baseDirectory: baseDirectory)
        }
        try checkNativeRoutes(config)
        return config
    }

    /// A route to one method of a native module (`Math.coss`) must name one of its functions: the
    /// only methods a config knows (a Swift interface's are in the code, checked when called).
    static func checkNativeRoutes(_ config: SwitchyardConfig) throws(ConfigError) {
        for route in config.routes {
            let parts = route.pattern.split(separator: ".", maxSplits: 1).map(String.init)
            guard parts.count == 2, parts[1] != "*", let module = config.native.first(where: { $0.interface == parts[0] }) else { continue }
            let names = module.functions.map(\.name)
            guard !names.contains(parts[1]) else { continue }
            let guess = NearestName.suggestion(for: parts[1], among: names) { "\(parts[0]).\($0)" }
            throw ConfigError(
                key: "routes.\(route.pattern)", line: route.lines[""],
                message: "native module \(parts[0]) has no function \(parts[1]) (its functions: \(names.joined(separator: ", ")))\(guess)")
        }
    }
}

extension SwitchyardConfig {
    /// `outboxes:` — name → `{ path: FILE }`.
    static func parseOutboxes(_ node: ConfigNode, baseDirectory: String) throws(ConfigError) -> [OutboxEntry] {
        var outboxes: [OutboxEntry] = []
        for (name, value) in try node.entries() {
            var entry = OutboxEntry(name: name, path: nil, postgres: nil, line: value.line)
            for (key, field) in try value.mapping(allowed: ["path", "postgres"]) {
                switch key {
                case "path": entry.path = resolve(path: try field.string(), against: baseDirectory)
                case "postgres": entry.postgres = try PostgresLocation(field, defaultSchema: "switchyard")
                default: break
                }
                entry.locationLine = field.line
            }
            guard (entry.path == nil) != (entry.postgres == nil) else {
                throw ConfigError(
                    key: value.path + (entry.path == nil ? ".path" : ".postgres"), line: value.line,
                    message: entry.path == nil
                        ? "is required: the application's SQLite database the outbox table lives in (or postgres: { conninfo, schema } for PostgreSQL)"
                        : "names a second database: an outbox lives in one (path for SQLite, postgres for PostgreSQL)")
            }
            outboxes.append(entry)
        }
        return outboxes
    }

    /// `limits:` — what the runtime sends and accepts, on every route and transport.
    static func parseLimits(_ node: ConfigNode) throws(ConfigError) -> MessageLimits {
        var limits = MessageLimits()
        for (key, field) in try node.mapping(allowed: ["max_message_bytes", "max_headers", "max_header_bytes"]) {
            switch key {
            case "max_message_bytes": limits.maxMessageBytes = try field.int(in: 1...Int(Int32.max))
            case "max_headers": limits.maxHeaders = try field.int(in: 0...65_536)
            case "max_header_bytes": limits.maxHeaderBytes = try field.int(in: 0...Int(Int32.max))
            default: break
            }
        }
        return limits
    }

    static func parseTransports(_ node: ConfigNode, baseDirectory: String) throws(ConfigError) -> [TransportEntry] {
        var entries: [TransportEntry] = []
        for (name, value) in try node.entries() {
            if let problem = transportNameProblem(name) { throw ConfigError(key: value.path, line: value.line, message: problem) }
            var plugin: String?
            var inner: String?
            var configJSON = "{}"
            var isolation: Isolation?
            var configLines: [String: Int] = [:]
            for (key, field) in try value.mapping(allowed: ["plugin", "inner", "config", "isolation"]) {
                switch key {
                case "plugin": plugin = try field.string()
                case "inner": inner = try field.string()
                case "config":
                    configJSON = try field.json()
                    for (configKey, configValue) in (try? field.entries()) ?? [] { configLines[configKey] = configValue.line ?? field.line }
                case "isolation": isolation = try Isolation.parse(field, baseDirectory: baseDirectory)
                default: break
                }
            }
            guard let plugin else { throw ConfigError(key: value.path + ".plugin", line: value.line, message: "is required (the plugin's name)") }
            if isolation != nil, inner != nil {
                throw ConfigError(
                    key: value.path + ".isolation", line: value.line,
                    message: "a decorator (a transport with 'inner') cannot run with isolation: process; isolate the transport it wraps")
            }
            var entry = TransportEntry(name: name, plugin: plugin, inner: inner, configJSON: configJSON, isolation: isolation, line: value.line)
            entry.configLines = configLines
            entries.append(entry)
        }
        // Inner references must exist and must not form a cycle.
        let names = Set(entries.map(\.name))
        for entry in entries {
            guard let inner = entry.inner else { continue }
            guard names.contains(inner) else {
                throw ConfigError(
                    key: "transports.\(entry.name).inner", line: entry.line,
                    message: "no transport named '\(inner)' (configured: \(entries.map(\.name).joined(separator: ", ")))")
            }
            var seen = [entry.name]
            var next: String? = inner
            while let current = next {
                if seen.contains(current) {
                    throw ConfigError(
                        key: "transports.\(entry.name).inner", line: entry.line,
                        message:
                            "inner transports form a cycle: \((seen + [current]).joined(separator: " → ")): a chain of decorators must end at a transport without inner (a queue, a topic, an engine); point one of them at such a transport"
                    )
                }
                seen.append(current)
                next = entries.first { $0.name == current }?.inner
            }
        }
        return entries
    }

    /// `path` made absolute against `base` (the config file's directory).
    static func resolve(path: String, against base: String) -> String {
        path.hasPrefix("/") ? path : URL(fileURLWithPath: base).appendingPathComponent(path).standardized.path
    }

    static func transportNameProblem(_ name: String) -> String? {
        let allowed = name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == ".") }
        if name == RouteEntry.direct { return "'direct' is reserved: routes use it for calls that need no transport" }
        return !name.isEmpty && allowed ? nil : "transport names use letters, digits, '-', '_' and '.'"
    }
}

extension SwitchyardConfig.PluginsSection {
    init(_ node: ConfigNode, baseDirectory: String) throws(ConfigError) {
        self.init()
        for (key, value) in try node.mapping(allowed: ["directory", "pins", "require_pins", "probe", "slow_call_warning"]) {
            switch key {
            case "probe":
                probe = try value.bool()
                probeLine = value.line
            case "slow_call_warning":
                slowCallWarningNanos = try value.duration()
            case "directory":
                directory = SwitchyardConfig.resolve(path: try value.string(), against: baseDirectory)
            case "require_pins":
                requirePins = try value.bool()
            case "pins":
                for (name, pin) in try value.entries() {
                    let hex = try pin.string().lowercased()
                    guard hex.count == 64, hex.allSatisfy({ $0.isASCII && $0.isHexDigit }) else {
                        throw pin.error("expected a sha256 as 64 hex digits (see `switchyard plugins inspect`)")
                    }
                    pins[name] = hex
                }
            default: break
            }
        }
    }
}

/// The texts read from config paths that are not regular files (pipes), kept for the process.
private final class PipedConfigs: @unchecked Sendable {
    // @unchecked: `texts` is guarded by `lock`.
    static let shared = PipedConfigs()
    private let lock = NSLock()
    private var texts: [String: String] = [:]

    /// The text read from `path` before, or `read()`'s, kept. Read under the lock: two loads at
    /// once must not both read the pipe.
    func text(_ path: String, _ read: () throws(ConfigError) -> String) throws(ConfigError) -> String {
        lock.lock()
        defer { lock.unlock() }
        if let text = texts[path] { return text }
        let text = try read()
        texts[path] = text
        return text
    }
}
