import CSwitchyard
import SwitchyardABI

/// A plugin that passed every check: its identity, where it came from, and its function table.
public struct LoadedPlugin: @unchecked Sendable, CustomStringConvertible {
    // @unchecked: `descriptor` points at an immutable table that lives as long as the process.

    /// Unique name that config selects the plugin by.
    public let name: String
    /// The plugin's semantic version.
    public let version: SemanticVersion
    /// One line saying what it is.
    public let summary: String
    /// What it declares it can do.
    public let capabilities: Capabilities
    /// The ABI version the plugin was built for.
    public let abi: (major: UInt16, minor: UInt16)
    /// The file it was loaded from, as found (not resolved through links).
    public let path: String
    /// Lowercase hex sha256 of the file, when pins asked for it to be computed.
    public let sha256: String?
    /// How long finding the entry, calling it and validating took, in nanoseconds.
    public let loadNanos: UInt64
    /// The descriptor as this host reads it: a host-sized copy whose fields past the plugin's
    /// `struct_size` are zero, so newer hosts never read past an older plugin's table.
    /// Lives as long as the process.
    public let descriptor: UnsafePointer<sy_plugin_descriptor>

    /// "MAJOR.MINOR" of the plugin's ABI.
    public var abiVersion: String { "\(abi.major).\(abi.minor)" }

    public var description: String { "\(name) \(version) (ABI \(abiVersion)) from \(path)" }
}
