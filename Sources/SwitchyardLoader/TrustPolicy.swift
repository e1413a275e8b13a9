#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// What the loader demands of a plugin file before it maps it into the process. Loading a shared
/// object runs its code, so these checks come before `dlopen`, never after.
///
/// - Ownership and permissions, as sshd's StrictModes: the file and its directory must be owned
///   by root or by the user running the host, and must not be writable by everyone.
/// - Pins: config may pin a plugin name to the sha256 of its file. A pinned plugin whose file has
///   another hash is refused. With `requirePins`, a file whose hash is not pinned at all is
///   refused before it is loaded.
public struct TrustPolicy: Sendable {
    /// Refuse files and directories that are world-writable or owned by another non-root user.
    public var strictPermissions: Bool
    /// Plugin name → lowercase hex sha256 of its file.
    public var pins: [String: String]
    /// Refuse, before loading, every file whose sha256 is not among `pins`.
    public var requirePins: Bool

    /// A policy; pins are normalised to lowercase hex.
    public init(strictPermissions: Bool = true, pins: [String: String] = [:], requirePins: Bool = false) {
        self.strictPermissions = strictPermissions
        self.pins = pins.mapValues { $0.lowercased() }
        self.requirePins = requirePins
    }

    /// The default: strict permissions, no pins.
    public static let standard = TrustPolicy()

    /// Whether file hashes are needed at all (hashing costs time on every load).
    var needsHashes: Bool { requirePins || !pins.isEmpty }

    /// Checks ownership and mode of the file or directory `checked` (already `stat`ed as `info`;
    /// `path` when nil), refusing `path`: a plugin file is refused for its directory's mode, which
    /// the remedy names.
    func checkOwnership(_ info: stat, path: String, checking checked: String? = nil, what: String) throws(Rejection) {
        guard strictPermissions else { return }
        if info.st_mode & S_IWOTH != 0 {
            // A shared directory such as /tmp (sticky: world-writable on purpose) is not one to
            // make private: the plugin belongs somewhere else.
            let remedy =
                info.st_mode & S_ISVTX != 0
                ? "a shared directory such as /tmp: move the plugin into a directory only you or root can write, e.g. a plugins/ directory of your own"
                : "chmod o-w \(checked ?? path), or move the plugin into a directory only you or root can write"
            throw Rejection(path: path, kind: .untrusted, reason: "\(what) is world-writable, so anyone could replace it (\(remedy))")
        }
        let me = geteuid()
        if info.st_uid != 0 && info.st_uid != me {
            throw Rejection(
                path: path, kind: .untrusted,
                reason: "\(what) is owned by uid \(info.st_uid), neither root nor the user running the host (uid \(me)): give it to one of them (chown)")
        }
    }

    /// Checks a file's hash against the pins before loading: only `requirePins` can refuse here,
    /// since the plugin's name is not known until it is loaded.
    func checkBeforeLoad(sha256: String, path: String) throws(Rejection) {
        if requirePins && !pins.values.contains(sha256) {
            throw Rejection(
                path: path, kind: .pinMismatch,
                reason: "sha256 \(sha256) is not pinned, and plugins.require_pins is on: if you trust this file, add "
                    + "plugins.pins.<its name>: \(sha256) to the config (switchyard plugins inspect FILE, run without this config, "
                    + "shows its name; this config's require_pins refuses it there too)")
        }
    }

    /// Checks a loaded plugin's name against the pins.
    func checkAfterLoad(name: String, sha256: String, path: String) throws(Rejection) {
        if let expected = pins[name], expected != sha256 {
            throw Rejection(
                path: path, kind: .pinMismatch,
                reason: "sha256 \(sha256) does not match the pin for '\(name)' (\(expected)): if you upgraded the plugin "
                    + "on purpose, set plugins.pins.\(name) to the new hash; otherwise restore the file you pinned",
                plugin: name)
        }
        if requirePins, let owner = pins.first(where: { $0.value == sha256 })?.key, owner != name {
            throw Rejection(
                path: path, kind: .pinMismatch,
                reason: "sha256 is pinned for '\(owner)', but the plugin calls itself '\(name)'", plugin: name)
        }
    }
}
