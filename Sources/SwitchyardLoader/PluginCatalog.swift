#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A directory the loader searches, and why it is on the list.
public struct SearchDirectory: Hashable, Sendable, CustomStringConvertible {
    /// Where a search directory came from, in priority order.
    public enum Source: String, Sendable, CaseIterable {
        /// `--plugins-dir` on the command line.
        case commandLine = "--plugins-dir"
        /// `SWITCHYARD_PLUGINS_PATH` (colon-separated).
        case environment = "SWITCHYARD_PLUGINS_PATH"
        /// `plugins.directory` in the config file.
        case config = "config"
        /// `./plugins` under the working directory.
        case workingDirectory = "./plugins"
        /// The directory holding the `switchyard` executable (so a fresh `swift build` finds the
        /// bundled plugins next to it), then `../lib/switchyard/plugins` from it (where
        /// `scripts/install PREFIX` puts them, so an installed host under any prefix finds its own).
        case executableDirectory = "executable directory"
        /// The system-wide plugin directories, where packages and administrators install plugins
        /// for every host on the machine (as GStreamer and PAM have theirs).
        case system = "system-wide"
    }

    /// The system-wide plugin directories, searched last: `/usr/local/lib/switchyard/plugins`
    /// (installed by hand), then `/usr/lib/switchyard/plugins` (installed by a package).
    public static let systemDirectories = ["/usr/local/lib/switchyard/plugins", "/usr/lib/switchyard/plugins"]

    /// The directory.
    public let path: String
    /// Why it is searched.
    public let source: Source

    /// A directory to search.
    public init(path: String, source: Source) {
        self.path = path
        self.source = source
    }

    /// The path and why it is searched; for a directory a person named, what is wrong with it.
    public var description: String { "\(path) (\(source.rawValue)\((isNamed ? problem : nil).map { ": \($0)" } ?? ""))" }

    /// Whether a person named it (`--plugins-dir`, `SWITCHYARD_PLUGINS_PATH`, `plugins.directory`),
    /// so that its absence is news (a typo would load a plugin of the same name from elsewhere),
    /// unlike the default places, most of which do not exist on a given machine.
    public var isNamed: Bool { source == .commandLine || source == .environment || source == .config }

    /// Why it cannot be searched now ("no such directory", "not a directory"), or nil.
    public var problem: String? {
        var info = stat()
        guard stat(path, &info) == 0 else { return errno == ENOENT ? "no such directory" : String(cString: strerror(errno)) }
        return info.st_mode & S_IFMT == S_IFDIR ? nil : "not a directory"
    }

    /// The search path in priority order: command line, environment, config, `./plugins`, the
    /// executable's directory and the install prefix's plugin directory beside it, then the
    /// system-wide directories. A directory listed twice is
    /// searched once, at its first place.
    public static func searchPath(
        commandLine: [String] = [], environment: [String: String] = [:], configDirectory: String? = nil,
        workingDirectory: String? = nil, executableDirectory: String? = currentExecutableDirectory(),
        systemDirectories: [String] = SearchDirectory.systemDirectories
    ) -> [SearchDirectory] {
        var result: [SearchDirectory] = []
        var seen = Set<String>()
        func add(_ path: String, _ source: Source) {
            guard !path.isEmpty else { return }
            let key = PluginLoader.realPath(path) ?? path
            if seen.insert(key).inserted { result.append(SearchDirectory(path: path, source: source)) }
        }
        commandLine.forEach { add($0, .commandLine) }
        (environment["SWITCHYARD_PLUGINS_PATH"] ?? "").split(separator: ":").forEach { add(String($0), .environment) }
        configDirectory.map { add($0, .config) }
        add((workingDirectory.map { $0 + "/" } ?? "") + "plugins", .workingDirectory)
        if let executableDirectory {
            add(executableDirectory, .executableDirectory)
            add(PluginLoader.directory(of: executableDirectory) + "/lib/switchyard/plugins", .executableDirectory)
        }
        systemDirectories.forEach { add($0, .system) }
        return result
    }

    /// The directory of the running executable (from /proc/self/exe), or nil.
    public static func currentExecutableDirectory() -> String? {
        guard let exe = PluginLoader.realPath("/proc/self/exe") else { return nil }
        return PluginLoader.directory(of: exe)
    }
}

/// Everything a search found: the plugins that loaded, in priority order, and every file that was
/// refused, with its reason.
public struct PluginCatalog: Sendable {
    /// Loaded plugins, in search order; names are unique.
    public var plugins: [LoadedPlugin] = []
    /// Refused files (and unusable directories), in search order.
    public var rejected: [Rejection] = []
    /// The directories searched, in order (including ones that did not exist).
    public var searched: [SearchDirectory] = []
    /// Shared libraries on the search path that export no entry function: not plugins, skipped
    /// without being loaded.
    public var notPlugins: [String] = []

    /// An empty catalog.
    public init() {}

    /// The plugin called `name`, if one loaded.
    public func plugin(named name: String) -> LoadedPlugin? { plugins.first { $0.name == name } }

    /// The directories a person named that cannot be searched (see ``SearchDirectory/isNamed``),
    /// as of now: hosts warn of each, since the plugins meant may then load from elsewhere.
    public var unsearchableNamedDirectories: [SearchDirectory] { searched.filter { $0.isNamed && $0.problem != nil } }

    /// The warning a host gives for each of ``unsearchableNamedDirectories``.
    public var unsearchableDirectoryWarnings: [String] {
        searched.compactMap { directory in
            guard directory.isNamed, let problem = directory.problem else { return nil }
            return "plugin directory \(directory.path), named by \(directory.source.rawValue), is skipped: \(problem); check the path"
        }
    }
}

extension PluginLoader {
    /// Loads every plugin file (`*.so`) in `directories`, in order, files sorted by name. A missing
    /// directory is skipped; an untrusted one is refused as a whole. When two files declare the same
    /// name, the first one found wins and the later one is refused, naming both paths.
    ///
    /// - Parameters:
    ///   - excluding: files (as found or resolved) never to load; the caller accounts for them
    ///     (a discovery probe that saw them crash).
    ///   - willLoad: called with each file's path just before it is loaded (the probe reports
    ///     progress with it, so a crash points at its file).
    public func discover(
        in directories: [SearchDirectory], excluding: Set<String> = [],
        willLoad: ((String) -> Void)? = nil
    ) -> PluginCatalog {
        var catalog = PluginCatalog()
        catalog.searched = directories
        var seenFiles = Set<String>()
        for directory in directories {
            var info = stat()
            guard stat(directory.path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else { continue }
            do {
                try trust.checkOwnership(info, path: directory.path, what: "the plugins directory")
            } catch {
                catalog.rejected.append(error)
                continue
            }
            for file in Self.pluginFiles(in: directory.path) {
                let path = directory.path.hasSuffix("/") ? directory.path + file : directory.path + "/" + file
                let resolved = Self.realPath(path) ?? path
                guard seenFiles.insert(resolved).inserted, !excluding.contains(path), !excluding.contains(resolved) else { continue }
                do {
                    willLoad?(path)
                    let plugin = try load(path: path)
                    if let first = catalog.plugin(named: plugin.name) {
                        catalog.rejected.append(
                            Rejection(
                                path: path, kind: .duplicateName,
                                reason: "duplicate plugin name '\(plugin.name)': already loaded from \(first.path), which comes first in the search path"))
                    } else {
                        catalog.plugins.append(plugin)
                    }
                } catch  where error.kind == .missingEntry {
                    // A shared library that is not a plugin (one a plugin links, or a client
                    // library installed next to the binary): noted, never loaded, not an error.
                    catalog.notPlugins.append(path)
                } catch {
                    catalog.rejected.append(error)
                }
            }
        }
        return catalog
    }

    /// Names of the candidate plugin files in `directory`, sorted.
    static func pluginFiles(in directory: String) -> [String] {
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name.hasSuffix(".so") && !name.hasPrefix(".") { names.append(name) }
        }
        return names.sorted()
    }
}
