import ArgumentParser
import CSwitchyard
import SwitchyardLoader

/// `switchyard plugins inspect NAME|PATH`: one plugin's descriptor in full.
struct InspectPlugin: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Show one plugin's descriptor in full, with the sha256 to pin it by.")

    @Argument(help: "A plugin name on the search path, or the path of a plugin file.")
    var plugin: String

    @OptionGroup var search: PluginSearchOptions

    @Flag(help: "Print one JSON object.")
    var json = false

    func run() throws {
        let config = try search.loadConfig()
        let loader = search.discovery(config).loader
        let loaded: LoadedPlugin
        if plugin.contains("/") || plugin.hasSuffix(".so") {
            do {
                loaded = try loader.load(path: plugin)
            } catch {
                printError("\(error.path): \(error.reason)")
                throw ExitCode.failure
            }
        } else {
            let catalog = search.discover(config)
            guard let found = catalog.plugin(named: plugin) else {
                printError(PluginSearchOptions.notFound(plugin, in: catalog))
                throw ExitCode.failure
            }
            loaded = found
        }
        let sha256 = try? PluginLoader.sha256(ofFileAt: loaded.path)
        let d = loaded.descriptor.pointee
        let functions = [
            ("create", d.create != nil), ("destroy", d.destroy != nil), ("publish", d.publish != nil),
            ("subscribe", d.subscribe != nil), ("unsubscribe", d.unsubscribe != nil), ("settle", d.settle != nil),
            ("drain", d.drain != nil), ("stats", d.stats != nil), ("publish_batch", d.publish_batch != nil),
            ("settle_batch", d.settle_batch != nil), ("publish_and_settle", d.publish_and_settle != nil), ("extend", d.extend != nil),
            ("publish_async", d.publish_async != nil), ("instance_capabilities", d.instance_capabilities != nil),
            ("channel_stats", d.channel_stats != nil),
        ].filter(\.1).map(\.0)
        if json {
            struct Output: Encodable {
                let name, version, abi, description, path: String
                let capabilities, functions: [String]
                let capabilityBits: UInt64
                let sha256: String?
                let loadMicroseconds: Double
            }
            try printJSON(
                Output(
                    name: loaded.name, version: loaded.version.description, abi: loaded.abiVersion,
                    description: loaded.summary, path: loaded.path, capabilities: loaded.capabilities.names,
                    functions: functions, capabilityBits: loaded.capabilities.rawValue, sha256: sha256,
                    loadMicroseconds: Double(loaded.loadNanos) / 1000))
            return
        }
        print(
            """
            name:          \(loaded.name)
            version:       \(loaded.version)
            description:   \(loaded.summary)
            abi:           \(loaded.abiVersion) (host speaks \(SY_ABI_MAJOR).\(SY_ABI_MINOR))
            capabilities:  \(loaded.capabilities)
            functions:     \(functions.joined(separator: ", "))
            path:          \(loaded.path)
            sha256:        \(sha256 ?? "(unreadable)")
            load time:     \(String(format: "%.1f", Double(loaded.loadNanos) / 1000)) µs
            """)
    }
}
