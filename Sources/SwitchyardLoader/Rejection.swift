/// Why the loader refused a plugin file: the file's path and a one-line reason.
///
/// Rejections are values, not failures of the host: a catalog lists them next to the plugins that
/// loaded, and the host keeps going with the good ones.
public struct Rejection: Error, Hashable, Sendable, CustomStringConvertible {
    /// The kind of problem, for code that reacts to it (tests, `--json` output).
    public struct Kind: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { name }

        /// The path does not exist or cannot be read.
        public static let unreadable = Kind("unreadable")
        /// The path is not a regular file (a directory, a device…).
        public static let notARegularFile = Kind("not-a-regular-file")
        /// The file is empty.
        public static let empty = Kind("empty")
        /// The file is not ELF (a text file, another format).
        public static let notELF = Kind("not-elf")
        /// An ELF file for another architecture, word size or byte order.
        public static let foreignArchitecture = Kind("foreign-architecture")
        /// An ELF file that is not a shared library (an executable, an object file).
        public static let notASharedLibrary = Kind("not-a-shared-library")
        /// The file or its directory is writable by others, or owned by another non-root user.
        public static let untrusted = Kind("untrusted")
        /// The file's sha256 does not match its pin, or pins are required and it has none.
        public static let pinMismatch = Kind("pin-mismatch")
        /// The dynamic loader refused it (missing dependency, bad relocation…).
        public static let loadFailed = Kind("load-failed")
        /// No `switchyard_plugin_entry` function is exported.
        public static let missingEntry = Kind("missing-entry")
        /// The entry returned NULL: the plugin refused this host.
        public static let entryRefused = Kind("entry-refused")
        /// The descriptor is for another ABI major.
        public static let abiMismatch = Kind("abi-mismatch")
        /// The descriptor's `struct_size` is too small for the fields it claims.
        public static let descriptorTooSmall = Kind("descriptor-too-small")
        /// A required function pointer is NULL.
        public static let missingFunction = Kind("missing-function")
        /// The name is missing or not `[a-z0-9-]`.
        public static let invalidName = Kind("invalid-name")
        /// The version is missing or not a semantic version.
        public static let invalidVersion = Kind("invalid-version")
        /// Another plugin with the same name was loaded first.
        public static let duplicateName = Kind("duplicate-name")
        /// Loading it killed a probe process (its initialisers or entry crashed or hung), so this
        /// process never loads it (see `isolation: process`).
        public static let crashedWhileLoading = Kind("crashed-while-loading")
    }

    /// The file (or directory) that was refused.
    public let path: String
    /// What kind of problem.
    public let kind: Kind
    /// One line for a person: what is wrong and, where it helps, what to do.
    public let reason: String
    /// The name the plugin gives itself, where the file was refused after it was read (a pin
    /// that does not match): a config naming that plugin is told it was found and refused,
    /// rather than that it is unknown.
    public let plugin: String?

    /// A refusal of `path` (of the plugin named `plugin`, when it was read that far).
    public init(path: String, kind: Kind, reason: String, plugin: String? = nil) {
        self.path = path
        self.kind = kind
        self.reason = reason
        self.plugin = plugin
    }

    public var description: String { "\(path): \(reason)" }
}
