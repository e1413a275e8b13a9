import CLibCrypto
import CSwitchyard
import SwitchyardABI

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Loads plugin files and validates what they declare.
///
/// Each file goes through, in order: `stat` and trust checks (ownership, permissions, pins), an
/// ELF header check, `dlopen(RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE)`, the entry symbol, the entry's
/// descriptor and its validation. The first failing step gives the file's one-line rejection
/// reason. Plugins are never unloaded: unmapping a Swift image leaves the runtime with dangling
/// pointers into its metadata, so `dlclose` is never called.
///
/// Thread-safe. Loading one file twice returns the first result.
public final class PluginLoader: Sendable {
    /// What the loader demands of files before loading them.
    public let trust: TrustPolicy
    private let cache = Guarded<[String: Result<LoadedPlugin, Rejection>]>([:])

    /// A loader applying `trust` to every file.
    public init(trust: TrustPolicy = .standard) {
        self.trust = trust
    }

    /// Debian's runtime packages of the libraries the bundled plugins link, by file name prefix.
    static let libraryPackages: [(prefix: String, package: String)] = [
        ("libnats.so", "libnats3.4"), ("librabbitmq.so", "librabbitmq4"), ("libpq.so", "libpq5"), ("libffi.so", "libffi8"),
        ("libsqlite3.so", "libsqlite3-0"), ("libcrypto.so", "libssl3"), ("libswift", "the Swift runtime (the toolchain's usr/lib/swift/linux, or a bundle's lib/)"),
    ]

    /// What to do when the dynamic loader could not find a library the plugin needs ("libnats.so.3.4:
    /// cannot open shared object file"): install it, or say where it is. Empty for other failures.
    static func missingLibraryHint(_ message: String) -> String {
        // "[the file that needs it: ]libnats.so.3.4: cannot open shared object file: …"
        // Missing, not unreadable: "…: Permission denied" is no matter of installing anything.
        guard let found = message.firstRange(of: ": cannot open shared object file: No such file or directory") else { return "" }
        let before = message[..<found.lowerBound]
        let name = before.split(separator: ": ").last.map(String.init) ?? String(before)
        let package = libraryPackages.first { name.hasPrefix($0.prefix) }?.package
        let install =
            package.map { $0.hasPrefix("the ") ? "install \($0)" : "install it (apt-get install \($0))" }
            ?? "install the package that provides it (apt-file search \(name))"
        return " (the plugin needs \(name): \(install), or add its directory to LD_LIBRARY_PATH)"
    }

    /// The refusal of a file that exports no entry point, with how to export one.
    static func missingEntry(_ path: String) -> Rejection {
        Rejection(
            path: path, kind: .missingEntry,
            reason:
                "no \(SY_PLUGIN_ENTRY_SYMBOL) function: not a Switchyard plugin (in C and C++, define it with SY_PLUGIN_EXPORT and not static: "
                + "it exports the name under -fvisibility=hidden, and in C++ makes it extern \"C\" (a mangled name such as "
                + "_Z23\(SY_PLUGIN_ENTRY_SYMBOL)j is not found); a linker version script must list it too; "
                + "`nm -D --defined-only FILE` must show it as is; in Swift the @c entry function must be public)")
    }

    /// Loads and validates the plugin file at `path` (once: later calls for the same file get
    /// the same plugin, or the same refusal).
    public func load(path: String) throws(Rejection) -> LoadedPlugin {
        let key = Self.realPath(path) ?? path
        if let known = cache.withLock({ $0[key] }) { return try known.get() }
        let result = Result { () throws(Rejection) in try loadUncached(path: path) }
        cache.withLock { $0[key] = result }
        return try result.get()
    }

    /// Hex sha256 of the file at `path`, for pinning (`switchyard plugins inspect` shows it).
    public static func sha256(ofFileAt path: String) throws(Rejection) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Rejection(path: path, kind: .unreadable, reason: "cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        // OpenSSL's EVP digest (libcrypto): a well-kept sha256 without a crypto package in
        // every application's build.
        guard let context = EVP_MD_CTX_new() else { throw Rejection(path: path, kind: .unreadable, reason: "cannot hash: out of memory") }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestInit_ex(context, EVP_sha256(), nil) == 1 else {
            throw Rejection(path: path, kind: .unreadable, reason: "cannot hash: libcrypto's sha256 is unavailable")
        }
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 { throw Rejection(path: path, kind: .unreadable, reason: "read failed: \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            _ = buffer.withUnsafeBytes { EVP_DigestUpdate(context, $0.baseAddress, n) }
        }
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        guard EVP_DigestFinal_ex(context, &digest, &length) == 1 else {
            throw Rejection(path: path, kind: .unreadable, reason: "cannot hash: sha256 failed")
        }
        return digest[..<Int(length)].map { byte in
            let hex = String(byte, radix: 16)
            return byte < 16 ? "0" + hex : hex
        }.joined()
    }

    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    private func loadUncached(path: String) throws(Rejection) -> LoadedPlugin {
        // 1. The file itself: exists, regular, trusted, non-empty, a shared library for this machine.
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw Rejection(path: path, kind: .unreadable, reason: "cannot read: \(String(cString: strerror(errno)))")
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            throw Rejection(path: path, kind: .notARegularFile, reason: "not a regular file")
        }
        try trust.checkOwnership(info, path: path, what: "the file")
        let directory = Self.directory(of: Self.realPath(path) ?? path)
        var directoryInfo = stat()
        if stat(directory, &directoryInfo) == 0 {
            try trust.checkOwnership(directoryInfo, path: path, checking: directory, what: "its directory \(directory)")
        }
        guard info.st_size > 0 else { throw Rejection(path: path, kind: .empty, reason: "an empty file") }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw Rejection(path: path, kind: .unreadable, reason: "cannot open: \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        try ELFCheck.check(fd: fd, size: Int(info.st_size), path: path)
        // A shared library without the entry is not a plugin: refuse it before any of its code
        // (initialisers included) runs.
        if ELFCheck.definesDynamicSymbol(fd: fd, size: Int(info.st_size), name: SY_PLUGIN_ENTRY_SYMBOL) == false {
            throw Self.missingEntry(path)
        }

        // 2. Pins, before any of its code can run.
        let hash = trust.needsHashes ? try Self.sha256(ofFileAt: path) : nil
        if let hash { try trust.checkBeforeLoad(sha256: hash, path: path) }

        // 3. Map it and find the entry.
        let started = monotonicNanoseconds()
        // A name without a slash is, to dlopen, a library to search for (LD_LIBRARY_PATH, the
        // system's directories), not the file checked above: "q.so" in the working directory
        // would be refused as missing.
        // Its initialisers run inside dlopen, its entry below: a crash in either is this process's,
        // and says which file it was.
        enum Loaded {
            case refused(String)
            case noEntry
            case entered(UnsafePointer<sy_plugin_descriptor>?)
        }
        let loaded = LoadCrashHint.around(path: path) { () -> Loaded in
            guard let handle = dlopen(path.contains("/") ? path : "./" + path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE) else {
                return .refused(dlerror().map { String(cString: $0) } ?? "unknown error")
            }
            // Never dlclose: see the type's documentation. RTLD_NODELETE keeps it mapped regardless.
            guard let symbol = dlsym(handle, SY_PLUGIN_ENTRY_SYMBOL) else { return .noEntry }
            return .entered(unsafeBitCast(symbol, to: sy_plugin_entry_fn.self)(UInt32(SY_ABI_MAJOR)))
        }
        let entered: UnsafePointer<sy_plugin_descriptor>?
        switch loaded {
        case .refused(let message):
            throw Rejection(path: path, kind: .loadFailed, reason: "the dynamic loader refused it: \(message)\(Self.missingLibraryHint(message))")
        case .noEntry: throw Self.missingEntry(path)
        case .entered(let descriptor): entered = descriptor
        }
        guard let raw = entered else {
            throw Rejection(
                path: path, kind: .entryRefused,
                reason: "the entry returned NULL: the plugin refused a host of ABI major \(SY_ABI_MAJOR) (an entry returns NULL for a "
                    + "major it was not built for: rebuild the plugin against this SDK's switchyard_plugin.h, or check its entry function)")
        }

        // 4. The descriptor.
        let (descriptor, abi) = try DescriptorValidation.normalize(raw, path: path)
        let name = String(cString: descriptor.pointee.name)
        if let hash { try trust.checkAfterLoad(name: name, sha256: hash, path: path) }
        return LoadedPlugin(
            name: name, version: SemanticVersion(String(cString: descriptor.pointee.version))!,
            summary: descriptor.pointee.description.map { String(cString: $0) } ?? "",
            capabilities: Capabilities(rawValue: descriptor.pointee.capabilities), abi: abi, path: path,
            sha256: hash, loadNanos: UInt64(monotonicNanoseconds() - started), descriptor: descriptor)
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}
