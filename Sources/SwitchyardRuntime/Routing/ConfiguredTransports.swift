import Logging
import SwitchyardABI
import SwitchyardConfig
import SwitchyardHost
import SwitchyardLoader

// A config file's transports, started: the mapping from the config's model to the host's
// (discovery, specs, isolation) and its errors back to config keys and lines. The actor system,
// `switchyard dlq` and the soak start their transports this one way.

extension TransportSpec {
    /// The spec for a `transports:` entry of a config file, isolation included.
    package init(_ entry: SwitchyardConfig.TransportEntry) {
        self.init(
            name: entry.name, plugin: entry.plugin, inner: entry.inner, configJSON: entry.configJSON,
            isolation: entry.isolation.map(ProcessIsolation.init))
    }
}

extension ProcessIsolation {
    /// The host's isolation options for a config entry; unset fields keep the defaults.
    package init(_ config: SwitchyardConfig.Isolation) {
        self.init()
        if let value = config.callTimeoutNanos { callTimeoutNanos = value }
        if let value = config.restartBackoffNanos { restartBackoffNanos = value }
        // Unset, the maximum is the default or the first wait, whichever is longer.
        maxRestartBackoffNanos = config.maxRestartBackoffNanos ?? max(maxRestartBackoffNanos, restartBackoffNanos)
        hostExecutable = config.host
    }
}

extension PluginDiscovery {
    /// Discovery as `config` asks: `commandLine` directories first, then the environment's, the
    /// config's `plugins.directory` and the standard ones; the config's pins; and a probe process
    /// when `plugins.probe` is set or, unset, when a transport is isolated (discovery must not
    /// run an isolated plugin's code here first).
    package init(config: SwitchyardConfig, commandLine: [String] = []) {
        let isolation = config.transports.lazy.compactMap(\.isolation).first.map(ProcessIsolation.init)
        self.init(
            commandLine: commandLine, configDirectory: config.plugins.directory,
            trust: TrustPolicy(pins: config.plugins.pins, requirePins: config.plugins.requirePins),
            probe: config.plugins.probe ?? (isolation != nil) ? isolation ?? ProcessIsolation() : nil)
    }
}

extension TransportSet {
    /// Discovers the plugins and creates the transports `only` (every configured one when nil)
    /// with the inner transports they need. Refused plugin files are logged; errors name the
    /// config key and line: the first isolated transport's `transports.NAME.isolation` (whose
    /// settings the probe runs with) or else `plugins.probe` when the probe cannot run, `transports.NAME` (or
    /// `transports.NAME.config.KEY` for a plugin's refusal of its config) when a transport
    /// cannot be created.
    package static func start(
        _ config: SwitchyardConfig, discovery: PluginDiscovery, only names: [String]? = nil, logger: Logger
    ) throws(ConfigError) -> TransportSet {
        let catalog: PluginCatalog
        do {
            catalog = try discovery.catalog(logger: logger)
        } catch {
            // The probe runs with the first isolated transport's settings (its `host` above all):
            // then the error is that transport's to fix.
            if let isolated = config.transports.first(where: { $0.isolation != nil }) {
                throw ConfigError(key: "transports.\(isolated.name).isolation", line: isolated.line, message: error.message, file: config.file)
            }
            throw ConfigError(key: "plugins.probe", line: config.plugins.probeLine, message: error.message, file: config.file)
        }
        for rejection in catalog.rejected where rejection.kind != .crashedWhileLoading {  // the probe logged those
            logger.warning("plugin file refused", metadata: ["path": "\(rejection.path)", "reason": "\(rejection.reason)"])
        }
        // A pin under a name no plugin has (a typo) checks nothing, and the plugin meant runs
        // unpinned: said, not refused (a config may pin plugins another machine has). Only where
        // the pin cannot be a refused file's, whose name was never read (a changed file under
        // require_pins, one that crashed the probe), unless a plugin found has a near name.
        let pluginNames = Set(catalog.plugins.map(\.name) + catalog.rejected.compactMap(\.plugin))
        let unnamedRefusals = catalog.rejected.contains { $0.plugin == nil }
        for pinned in config.plugins.pins.keys.sorted() where !pluginNames.contains(pinned) {
            let nearest = NearestName.nearest(to: pinned, among: pluginNames.sorted())
            guard nearest != nil || !unnamedRefusals else { continue }
            let near = nearest.map { " Did you mean '\($0)'?" } ?? ""
            logger.warning(
                "a pin names no plugin found here, so it checks nothing",
                metadata: [
                    "key": "plugins.pins.\(pinned)",
                    "found": "\(pluginNames.sorted().joined(separator: ", "))",
                    "fix": "name the plugin as 'switchyard plugins list' shows it.\(near)",
                ])
        }
        do {
            return try TransportSet(
                specs: config.transports.map(TransportSpec.init), catalog: catalog, only: names, pinned: Set(config.plugins.pins.keys),
                slowCallWarningNanos: config.plugins.slowCallWarningNanos, logger: logger)
        } catch {
            let entry = error.transport.flatMap(config.transport(named:))
            var key = entry.map { "transports.\($0.name)" } ?? "transports"
            var line = entry?.line
            if let named = error.configKey {
                key += ".config.\(named)"
                line = entry?.configLines[named] ?? line
            }
            throw ConfigError(key: key, line: line, message: error.message, file: config.file)
        }
    }
}
