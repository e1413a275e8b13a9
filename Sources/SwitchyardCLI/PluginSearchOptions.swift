import ArgumentParser
import CSwitchyard
import Foundation
import Logging
import SwitchyardAdmin
import SwitchyardConfig
import SwitchyardHost
import SwitchyardLoader
import SwitchyardRuntime

/// Directories to search for plugins first: shared by every command that loads plugins.
struct PluginDirectoryOptions: ParsableArguments {
    @Option(
        name: [.customLong("plugins-dir"), .customLong("dir")],
        help: ArgumentHelp("A directory to search first (repeatable).", valueName: "dir"))
    var directories: [String] = []

    /// Discovery as the config asks, these directories first, always behind a probe process (a
    /// file whose loading crashes or hangs is refused, not fatal to the command).
    func discovery(_ config: SwitchyardConfig) -> PluginDiscovery {
        let configured = PluginDiscovery(config: config, commandLine: directories)
        return PluginDiscovery(directories: configured.directories, loader: configured.loader, probe: configured.probe ?? ProcessIsolation())
    }
}

/// Where to look for plugins and which files to trust, for commands that may read a config file
/// (`switchyard dlq`, which needs one, declares its own required `--config`).
struct PluginSearchOptions: ParsableArguments {
    @OptionGroup var pluginDirectories: PluginDirectoryOptions

    @Option(name: .long, help: ArgumentHelp("The config file: the transports it declares, and its plugins section (directory, pins).", valueName: "file"))
    var config: String?

    /// The config file's plugins section, or the defaults when no file was named.
    func loadConfig() throws -> SwitchyardConfig {
        guard let config else { return SwitchyardConfig() }
        // As it is (file, line, key and what to do), not as a usage error: the command line was
        // right, and a usage summary under the message only hid it.
        return try SwitchyardConfig.load(path: config)
    }

    /// Discovery as the config asks, these options' directories first, always behind a probe.
    func discovery(_ config: SwitchyardConfig) -> PluginDiscovery { pluginDirectories.discovery(config) }

    /// "no plugin named NAME" with where it looked, and the files it found there that are not
    /// plugins or were refused (the plugin meant is often one of them).
    static func notFound(_ name: String, in catalog: PluginCatalog) -> String {
        if let refusal = catalog.rejected.first(where: { $0.plugin == name }) {
            return "plugin '\(name)' was found but refused: \(refusal.path): \(refusal.reason)"
        }
        // A file refused before its name was known (it crashed or hung while loading), named as
        // the plugin's file would be: most likely the plugin meant.
        let fileNames = ["libswitchyard-\(name).so", "\(name).so"]
        if let refusal = catalog.rejected.first(where: { $0.plugin == nil && fileNames.contains(URL(fileURLWithPath: $0.path).lastPathComponent) }) {
            return "plugin '\(name)' was not loaded: its file \(refusal.path) was refused: \(refusal.reason)"
        }
        var message = "no plugin named '\(name)' on the search path (\(catalog.searched.map(\.path).joined(separator: ", ")))"
        if !catalog.rejected.isEmpty {
            message += "; refused: " + catalog.rejected.map { "\($0.path): \($0.reason)" }.joined(separator: "; ")
        }
        if !catalog.notPlugins.isEmpty {
            message += "; not plugins (no \(SY_PLUGIN_ENTRY_SYMBOL) exported): " + catalog.notPlugins.joined(separator: ", ")
        }
        return message + ". " + TransportSet.unknownPluginAdvice(name, found: catalog.plugins.map(\.name), notPlugins: catalog.notPlugins)
    }

    /// Every plugin in the search path, found behind a discovery probe; unprobed if no probe can
    /// run. Warns on standard error of each named directory that does not exist: a mistyped one
    /// must show, not let a plugin of the same name load from elsewhere.
    func discover(_ config: SwitchyardConfig) -> PluginCatalog {
        var quiet = Logger(label: "switchyard.plugins")
        quiet.logLevel = .critical  // the commands print refusals themselves
        let catalog = discovery(config).catalogOrUnprobed(logger: quiet)
        for warning in catalog.unsearchableDirectoryWarnings { printError("warning: \(warning)") }
        return catalog
    }
}

/// JSON forms of loader results, as printed by `--json`.
struct PluginJSON: Encodable {
    let name: String
    let version: String
    let abi: String
    let capabilities: [String]
    let path: String
    let description: String

    init(_ plugin: LoadedPlugin) {
        name = plugin.name
        version = plugin.version.description
        abi = plugin.abiVersion
        capabilities = plugin.capabilities.names
        path = plugin.path
        description = plugin.summary
    }
}

struct RejectionJSON: Encodable {
    let path: String
    let reason: String
    let kind: String

    init(_ rejection: Rejection) {
        path = rejection.path
        reason = rejection.reason
        kind = rejection.kind.description
    }
}

/// Prints `value` as pretty JSON on standard output, its keys in snake_case as the admin API
/// writes them (`not_plugins`, `load_microseconds`).
func printJSON(_ value: some Encodable) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    encoder.keyEncodingStrategy = .convertToSnakeCase
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// Where a command serves the admin endpoint: the config's `admin:` section (its address, token
/// and the rest), else 127.0.0.1:9464, with `--admin`'s address (`admin`) in place of either's.
/// Refused before anything opens, as `run` refuses it: an endpoint that cannot serve (beyond
/// loopback without a token; blamed on `--admin` where the address came from there, else on the
/// config `file`'s section), or an address it cannot listen on.
func adminSettings(_ loaded: SwitchyardConfig, admin: String?, file: String) throws -> SwitchyardConfig.AdminSection {
    var settings = loaded.admin ?? SwitchyardConfig.AdminSection()
    if let admin, case .success(let address) = SwitchyardConfig.AdminSection.parseListen(admin) {
        (settings.host, settings.port) = address
        settings.listenLine = nil  // the address is the command line's, not the file's
    }
    if var problem = settings.servingProblem() {
        if let admin {
            printError("error: --admin \(admin): a token \(problem.message)")
        } else {
            problem.file = file
            printError("error: \(problem) (or pass --admin 127.0.0.1:PORT)")
        }
        throw ExitCode(1)
    }
    try requireAdminAddress(settings)
    return settings
}

/// Stops the command before anything opens when the admin endpoint could not listen where
/// `settings` say (a port in use, an address it cannot bind): the error, then exit 1.
func requireAdminAddress(_ settings: SwitchyardConfig.AdminSection) throws {
    do { try AdminServer.checkCanListen(settings) } catch let error as AdminError {
        printError("error: \(error)")
        throw ExitCode(1)
    }
}

/// Writes one line to standard error.
func printError(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}

/// Lays out rows as left-aligned columns.
func table(_ header: [String], _ rows: [[String]]) -> String {
    let all = [header] + rows
    let widths = header.indices.map { column in all.map { $0[column].count }.max() ?? 0 }
    return all.map { row in
        row.enumerated().map { index, cell in
            index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
        }.joined(separator: "  ")
    }.joined(separator: "\n")
}

extension SwitchyardConfig {
    /// The transports among `names` (or one they wrap) whose configured `path` does not exist,
    /// with that path: a durable store creates its file when opened, so opening one only to look
    /// would read a mistyped path (or an unset `SWITCHYARD_DATA`) as an empty store and leave a
    /// new one behind.
    func missingStores(of names: [String]) -> [(transport: String, path: String)] {
        names.compactMap { name in
            configuredStores(of: name).first { !FileManager.default.fileExists(atPath: $0.path) }.map { (name, $0.path) }
        }
    }

    /// The `path` each link of `name`'s chain configures, outermost first, with the link's name.
    func configuredStores(of name: String) -> [(transport: String, path: String)] {
        var stores: [(transport: String, path: String)] = []
        var entry = transport(named: name)
        while let current = entry {
            if let path = Self.configuredPath(current.configJSON) { stores.append((current.name, path)) }
            entry = current.inner.flatMap { transport(named: $0) }
        }
        return stores
    }

    /// Throws, naming the path, when a transport among `names` has no store file yet.
    func requireExistingStores(of names: [String]) throws {
        guard let (name, path) = missingStores(of: names).first else { return }
        throw CommandFailure(Self.noStore(path, transport: name))
    }

    /// "no store at PATH …", with where a relative path was looked for.
    static func noStore(_ path: String, transport: String) -> String {
        let relative = path.hasPrefix("/") ? "" : " (relative to the working directory, \(FileManager.default.currentDirectoryPath))"
        return
            "no store at \(path)\(relative) (transport '\(transport)', config.path): nothing was ever written there, so there is nothing to look at; check that the path (and SWITCHYARD_DATA, when it uses it) is the one the running system uses"
    }

    /// The `path` a transport's config names, if any.
    static func configuredPath(_ configJSON: String) -> String? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(configJSON.utf8)) as? [String: Any] else { return nil }
        return object["path"] as? String
    }
}

/// What the command line names is not there — a store, a transport of the config — although the
/// command line itself is well formed: said as it is (exit 1), not as a usage error with the
/// command's usage after it (exit 64).
struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
