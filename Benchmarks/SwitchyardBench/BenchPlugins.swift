import SwitchyardHost
import SwitchyardLoader

/// Finds the bundled plugins a suite needs, or explains which are missing.
struct BenchPlugins {
    let catalog: PluginCatalog

    init(_ context: BenchContext) {
        catalog = PluginLoader().discover(in: context.pluginDirectories.map { SearchDirectory(path: $0, source: .commandLine) })
    }

    func plugin(_ name: String) throws -> LoadedPlugin {
        guard let plugin = catalog.plugin(named: name) else {
            throw BenchUnavailable("plugin '\(name)' not found next to the switchyard executable")
        }
        return plugin
    }

    /// A transport of `name` with `config`, over `inner` for decorators.
    func transport(_ name: String, config: String = "{}", inner: Transport? = nil) throws -> Transport {
        try Transport(name: "bench-\(name)", plugin: try plugin(name), configJSON: config, inner: inner)
    }
}

/// Percentile of sorted `values` (0...1).
func percentile(_ sorted: [Double], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return .nan }
    return sorted[min(sorted.count - 1, Int((Double(sorted.count - 1) * p).rounded()))]
}
