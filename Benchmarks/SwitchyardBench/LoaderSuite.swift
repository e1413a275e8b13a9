import Foundation
import SwitchyardLoader

#if canImport(Glibc)
    import Glibc
#endif

/// `loader`: how long finding, vetting, loading and validating one plugin file takes, against a
/// bare `dlopen` + `dlsym` of an identical file. Each load uses a fresh copy of the file, since
/// the dynamic loader would otherwise return the image it already has.
struct LoaderSuite: BenchSuite {
    let name = "loader"
    let summary = "load + validate one plugin file vs a bare dlopen of the same file"

    func run(_ context: BenchContext) throws -> [BenchResult] {
        let catalog = PluginLoader().discover(in: context.pluginDirectories.map { SearchDirectory(path: $0, source: .commandLine) })
        var results: [BenchResult] = []
        let copies = context.quick ? 5 : 15
        let scratch = NSTemporaryDirectory() + "/switchyard-bench-loader-\(getpid())"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        for (label, pluginName) in [("c", "bench-null-c"), ("swift", "bench-null-swift")] {
            guard let plugin = catalog.plugin(named: pluginName) else {
                throw BenchUnavailable("plugin \(pluginName) not found in \(context.pluginDirectories)")
            }
            context.progress("loader: \(pluginName) ×\(copies)")
            var loads: [Double] = []
            var raw: [Double] = []
            for index in 0..<copies {
                let loaded = "\(scratch)/\(label)-loader-\(index).so"
                let bare = "\(scratch)/\(label)-raw-\(index).so"
                try FileManager.default.copyItem(atPath: plugin.path, toPath: loaded)
                try FileManager.default.copyItem(atPath: plugin.path, toPath: bare)
                var start = Measure.now()
                _ = try PluginLoader().load(path: loaded)
                loads.append(Double(Measure.now() - start) / 1e6)
                start = Measure.now()
                let handle = dlopen(bare, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE)
                blackHole(dlsym(handle, "switchyard_plugin_entry"))
                raw.append(Double(Measure.now() - start) / 1e6)
            }
            let baseline = ("raw_dlopen_\(label)_ms", Measure.median(raw))
            results.append(BenchResult(suite: name, metric: baseline.0, value: baseline.1, unit: "ms"))
            results.append(BenchResult(suite: name, metric: "load_\(label)_plugin_ms", value: Measure.median(loads), unit: "ms", baseline: baseline))
        }
        return results
    }
}
