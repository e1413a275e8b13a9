import Foundation
import Logging
import SwitchyardABI
import SwitchyardLoader

/// How a host finds its plugins: the search path, the loader with its trust policy, and whether a
/// probe process loads every file first. The one way the actor system and the CLI's commands
/// discover plugins.
public struct PluginDiscovery: Sendable {
    /// The directories searched, in order.
    public let directories: [SearchDirectory]
    /// The loader, with the trust policy applied to every file.
    public let loader: PluginLoader
    /// Set: a probe process loads every file first, so that a file whose loading crashes or
    /// hangs is refused instead of taking the host down. Nil: files load in this process.
    public let probe: ProcessIsolation?

    /// Discovery over `directories` with `loader`.
    public init(directories: [SearchDirectory], loader: PluginLoader, probe: ProcessIsolation? = nil) {
        self.directories = directories
        self.loader = loader
        self.probe = probe
    }

    /// Discovery over the standard search path (``SearchDirectory/searchPath(commandLine:environment:configDirectory:workingDirectory:executableDirectory:systemDirectories:)``
    /// with this process's environment and working directory).
    public init(commandLine: [String] = [], configDirectory: String? = nil, trust: TrustPolicy = .standard, probe: ProcessIsolation? = nil) {
        self.init(
            directories: SearchDirectory.searchPath(
                commandLine: commandLine, environment: ProcessInfo.processInfo.environment, configDirectory: configDirectory,
                workingDirectory: FileManager.default.currentDirectoryPath),
            loader: PluginLoader(trust: trust), probe: probe)
    }

    /// The plugins found, and the files refused with their reasons. Throws only when the probe
    /// process cannot run (`probe` set).
    public func catalog(logger: Logger) throws(TransportError) -> PluginCatalog {
        guard let probe else { return loader.discover(in: directories) }
        return try DiscoveryProbe.discover(in: directories, loader: loader, options: probe, logger: logger)
    }

    /// ``catalog(logger:)``, falling back to loading in this process when no probe can run (for
    /// tools that list plugins: better an unprobed list than none), leaving out the files a probe
    /// saw crash or hang before it failed.
    public func catalogOrUnprobed(logger: Logger) -> PluginCatalog {
        guard let probe else { return loader.discover(in: directories) }
        return (try? DiscoveryProbe.discover(in: directories, loader: loader, options: probe, logger: logger, unprobedIfFailing: true))
            ?? loader.discover(in: directories)
    }
}
