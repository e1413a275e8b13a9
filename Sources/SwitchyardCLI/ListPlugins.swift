import ArgumentParser
import CSwitchyard
import SwitchyardLoader

/// `switchyard plugins list`: every plugin found, and every refused file with its reason.
struct ListPlugins: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List the plugins found on the search path, and the files refused with their reasons.",
        discussion: """
            Search order: --plugins-dir, SWITCHYARD_PLUGINS_PATH (colon-separated), the config's \
            plugins.directory, ./plugins, the directory of the switchyard executable and \
            ../lib/switchyard/plugins beside it, then /usr/local/lib/switchyard/plugins and \
            /usr/lib/switchyard/plugins. \
            Refused files do not make this command fail.
            """)

    @OptionGroup var search: PluginSearchOptions

    @Flag(help: "Print one JSON object: {\"plugins\":[...],\"rejected\":[...],\"not_plugins\":[...],\"searched\":[...]}.")
    var json = false

    func run() throws {
        let config = try search.loadConfig()
        let catalog = search.discover(config)
        if json {
            struct Output: Encodable {
                let plugins: [PluginJSON]
                let rejected: [RejectionJSON]
                let notPlugins: [String]
                let searched: [String]
            }
            try printJSON(
                Output(
                    plugins: catalog.plugins.map(PluginJSON.init), rejected: catalog.rejected.map(RejectionJSON.init),
                    notPlugins: catalog.notPlugins, searched: catalog.searched.map(\.path)))
            return
        }
        if catalog.plugins.isEmpty {
            print("No plugins found.")
        } else {
            print(
                table(
                    ["NAME", "VERSION", "ABI", "CAPABILITIES", "PATH"],
                    catalog.plugins.map {
                        [$0.name, $0.version.description, $0.abiVersion, $0.capabilities.isEmpty ? "none" : $0.capabilities.names.joined(separator: ","), $0.path]
                    }))
        }
        if !catalog.rejected.isEmpty {
            print("\nRefused (\(catalog.rejected.count)):")
            for rejection in catalog.rejected { print("  \(rejection.path): \(rejection.reason)") }
        }
        if !catalog.notPlugins.isEmpty {
            print("\nNot plugins (no \(SY_PLUGIN_ENTRY_SYMBOL), skipped unloaded): " + catalog.notPlugins.joined(separator: ", "))
        }
        print("\nSearched: " + catalog.searched.map(\.description).joined(separator: ", "))
    }
}
