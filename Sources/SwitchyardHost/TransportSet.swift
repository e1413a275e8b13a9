import Logging
import SwitchyardABI
import SwitchyardLoader

/// What the host needs to create one transport: the config entry, without the file format.
public struct TransportSpec: Sendable {
    /// The transport's name.
    public var name: String
    /// The plugin it is an instance of.
    public var plugin: String
    /// For decorators, the transport it wraps.
    public var inner: String?
    /// The plugin's own config, as a JSON object.
    public var configJSON: String
    /// Run the plugin in a child process (`isolation: process`); nil runs it in this process.
    public var isolation: ProcessIsolation?

    /// A spec for one transport.
    public init(name: String, plugin: String, inner: String? = nil, configJSON: String = "{}", isolation: ProcessIsolation? = nil) {
        self.name = name
        self.plugin = plugin
        self.inner = inner
        self.configJSON = configJSON
        self.isolation = isolation
    }
}

/// Configured transports, created from loaded plugins in dependency order (inner before outer)
/// and closed in the reverse order.
public final class TransportSet: Sendable {
    /// Created transports by name.
    public let transports: [String: Transport]
    private let creationOrder: [String]

    /// Creates `names` (all of `specs` when nil) and the inner transports they need. Every error
    /// names the transport, in its message and in ``TransportError/transport``: an unknown plugin
    /// (with the names that were found), a decorator without an inner transport, or the plugin's
    /// own refusal of its config.
    /// Calls into a plugin taking `slowCallWarningNanos` or longer are logged (0: never).
    public init(
        specs: [TransportSpec], catalog: PluginCatalog, only names: [String]? = nil, pinned: Set<String> = [],
        slowCallWarningNanos: Int64 = Transport.defaultSlowCallWarningNanos,
        logger: Logger = Logger(label: "switchyard.transport")
    ) throws(TransportError) {
        // A directory named by hand that is not there: the plugin meant may load from elsewhere.
        for warning in catalog.unsearchableDirectoryWarnings { logger.warning("\(warning)") }
        let byName = Dictionary(specs.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        var created: [String: Transport] = [:]
        var order: [String] = []
        func create(_ name: String, chain: [String]) throws(TransportError) -> Transport {
            if let done = created[name] { return done }
            guard let spec = byName[name] else {
                throw TransportError(
                    .config, "no transport named '\(name)' (configured: \(specs.map(\.name).sorted().joined(separator: ", ")))", transport: chain.last ?? name)
            }
            guard !chain.contains(name) else {
                throw TransportError(.config, "inner transports form a cycle: \((chain + [name]).joined(separator: " → "))", transport: name)
            }
            guard let plugin = catalog.plugin(named: spec.plugin) else {
                if let refusal = catalog.rejected.first(where: { $0.plugin == spec.plugin }) {
                    // Found, and refused after it was read (a pin): that is the news, not "unknown".
                    throw TransportError(
                        .config, "transport '\(name)': plugin '\(spec.plugin)' was found but refused: \(refusal.path): \(refusal.reason)",
                        transport: name)
                }
                // A refused file may be the one meant: say which were refused, and why.
                let refused = catalog.rejected.prefix(3).map { "\($0.path): \($0.reason)" }
                let found = catalog.plugins.map(\.name).joined(separator: ", ")
                let unpinned = Self.unpinnedAdvice(spec.plugin, catalog: catalog, pinned: pinned)
                let advice = Self.unknownPluginAdvice(spec.plugin, found: catalog.plugins.map(\.name), notPlugins: catalog.notPlugins)
                throw TransportError(
                    .config,
                    "transport '\(name)': unknown plugin '\(spec.plugin)' (found: \(found.isEmpty ? "none" : found)"
                        + (refused.isEmpty ? "" : "; refused: \(refused.joined(separator: "; "))\(catalog.rejected.count > 3 ? "; …" : "")")
                        + "; searched, in order: \(catalog.searched.map(\.description).joined(separator: ", "))). "
                        + (unpinned.isEmpty ? advice : unpinned + advice.prefix(1).lowercased() + advice.dropFirst()),
                    transport: name)
            }
            let inner = try spec.inner.map { (innerName) throws(TransportError) in try create(innerName, chain: chain + [name]) }
            let transport: Transport
            do {
                transport =
                    if let isolation = spec.isolation {
                        try Transport(
                            name: name, plugin: plugin, configJSON: spec.configJSON, isolation: isolation,
                            slowCallWarningNanos: slowCallWarningNanos, logger: logger)
                    } else {
                        try Transport(
                            name: name, plugin: plugin, configJSON: spec.configJSON, inner: inner,
                            slowCallWarningNanos: slowCallWarningNanos, logger: logger)
                    }
            } catch {
                // The plugin's own refusal (or the isolation host's): say which transport it is about.
                throw error.transport != nil ? error : TransportError(error.code, "transport '\(name)' (plugin \(spec.plugin)): \(error.message)", transport: name)
            }
            created[name] = transport
            order.append(name)
            return transport
        }
        do {
            for name in names ?? specs.map(\.name) { _ = try create(name, chain: []) }
        } catch {
            for name in order.reversed() { created[name]?.close() }
            throw error
        }
        transports = created
        creationOrder = order
    }

    /// The transport called `name`.
    public subscript(name: String) -> Transport? { transports[name] }

    /// The names of the transports running, in the order they were created.
    public var names: [String] { creationOrder }

    /// Closes every transport, outermost first.
    public func close() {
        for name in creationOrder.reversed() { transports[name]?.close() }
    }
}

extension TransportSet {
    /// The plugins this package builds, as `plugin:` names them (each the product `switchyard-NAME`).
    static let bundledPlugins = [
        "queue", "topic", "delay", "retry", "nats", "nats-topic", "postgres", "postgres-topic", "rabbitmq", "rabbitmq-topic",
    ]

    /// What to do about `plugin:` naming no plugin found: a near name if it looks like a typo of
    /// one (`queues`), the build command for a bundled plugin not built yet, else where a
    /// plugin's file goes.
    package static func unknownPluginAdvice(_ plugin: String, found: [String], notPlugins: [String] = []) -> String {
        if let near = NearestName.nearest(to: plugin, among: Set(found + bundledPlugins).sorted()) {
            let build = found.contains(near) ? "" : " (build it with 'swift build --product switchyard-\(near)', see docs/services.md)"
            return "Did you mean '\(near)'?\(build)"
        }
        if bundledPlugins.contains(plugin) {
            return "It is a product of the switchyard package, built only when asked: build it next to your executable with "
                + "'swift build --product switchyard-\(plugin)' (one per plugin, see docs/services.md); if it is built elsewhere "
                + "(another build folder, an install), name that directory in SWITCHYARD_PLUGINS_PATH or plugins.directory"
        }
        let unexported =
            notPlugins.isEmpty
            ? ""
            : ". If your plugin's file is there among the files that are not plugins (\(notPlugins.map { $0.split(separator: "/").last.map(String.init) ?? $0 }.joined(separator: ", "))), "
                + "it exports no switchyard_plugin_entry: 'switchyard plugins verify FILE' says why (in Swift the @c entry must be public; "
                + "a debug build exports it anyway, a release build does not)"
        return "Put the plugin's .so file (any file name: the name inside it counts) in one of those directories "
            + "(e.g. \(SearchDirectory.systemDirectories[0])), or add the directory it is in: SWITCHYARD_PLUGINS_PATH, the config's "
            + "plugins.directory, or a command's --plugins-dir; the bundled plugins are \(bundledPlugins.joined(separator: ", "))" + unexported
    }

    /// With `plugins.require_pins`, files without a pin are refused unread, their names unknown:
    /// the plugin meant may be among them, and then a pin, not a build, is the fix. Said first,
    /// ending with what to do otherwise; nothing when no file was refused so, or when a plugin
    /// found has a near name (a typo, which ``unknownPluginAdvice(_:found:notPlugins:)`` names).
    /// `pinned`: the names the config pins (a pinned plugin refused so is one whose file changed).
    static func unpinnedAdvice(_ plugin: String, catalog: PluginCatalog, pinned: Set<String>) -> String {
        let unpinned = catalog.rejected.filter { $0.kind == .pinMismatch && $0.plugin == nil }
        guard !unpinned.isEmpty, NearestName.nearest(to: plugin, among: catalog.plugins.map(\.name)) == nil else { return "" }
        let files = unpinned.prefix(3).map(\.path).joined(separator: ", ") + (unpinned.count > 3 ? ", …" : "")
        let refused =
            unpinned.count == 1
            ? "1 file was refused unread because its sha256 is not pinned (\(files))"
            : "\(unpinned.count) files were refused unread, each because its sha256 is not pinned (\(files))"
        let fix =
            pinned.contains(plugin)
            ? "If '\(plugin)' is among them, its file changed since plugins.pins.\(plugin) was set: set that pin to the file's new "
                + "sha256 if you upgraded it on purpose ('switchyard plugins inspect FILE', run without this config, shows it), or "
                + "restore the file you pinned."
            : "If '\(plugin)' is among them, pin it: 'switchyard plugins inspect FILE', run without this config, shows a file's "
                + "plugin name and sha256; add plugins.pins.\(plugin): <that sha256> to the config."
        return "plugins.require_pins is on, and \(refused). \(fix) If it is not among them: "
    }
}
