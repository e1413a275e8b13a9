import CSwitchyard
import SwitchyardABI

/// Checks a descriptor returned by a plugin's entry, in the order the ABI prescribes: size and
/// version first, then everything else.
enum DescriptorValidation {
    /// Bytes needed to read `struct_size`, `abi_major` and `abi_minor`.
    private static let versionPrefix = MemoryLayout<UInt32>.size + 2 * MemoryLayout<UInt16>.size

    /// The smallest descriptor each ABI 1 minor may have: every field that minor defines.
    /// Minors newer than this host's need what this host reads. Add a case per new minor.
    private static func minimumSize(minor: UInt16) -> Int {
        // SY_DESCRIPTOR_SIZE_V1_x in the header (offsetof expressions Swift cannot import).
        let lastField: PartialKeyPath<sy_plugin_descriptor> =
            switch minor {
            case 0: \sy_plugin_descriptor.stats
            case 1, 2: \sy_plugin_descriptor.publish_batch
            case 3, 4, 5: \sy_plugin_descriptor.publish_and_settle
            case 6: \sy_plugin_descriptor.extend
            case 7: \sy_plugin_descriptor.publish_async
            case 8: \sy_plugin_descriptor.instance_capabilities
            default: \sy_plugin_descriptor.channel_stats
            }
        return MemoryLayout<sy_plugin_descriptor>.offset(of: lastField)! + MemoryLayout<UnsafeRawPointer>.size
    }

    /// Validates `raw` and returns a host-sized copy (tail fields the plugin does not have are
    /// zero) that lives forever, with the plugin's ABI version.
    static func normalize(_ raw: UnsafePointer<sy_plugin_descriptor>, path: String) throws(Rejection)
        -> (UnsafePointer<sy_plugin_descriptor>, (major: UInt16, minor: UInt16))
    {
        // Read only the version prefix until it checks out.
        let base = UnsafeRawPointer(raw)
        let size = Int(base.load(as: UInt32.self))
        guard size >= versionPrefix else {
            throw Rejection(
                path: path, kind: .descriptorTooSmall,
                reason: "descriptor struct_size is \(size) bytes, too small to hold even its ABI version")
        }
        let major = base.load(fromByteOffset: 4, as: UInt16.self)
        let minor = base.load(fromByteOffset: 6, as: UInt16.self)
        guard major == UInt16(SY_ABI_MAJOR) else {
            throw Rejection(
                path: path, kind: .abiMismatch,
                reason: "built for ABI \(major).\(minor); this host speaks ABI \(SY_ABI_MAJOR).x (rebuild the plugin against this SDK)")
        }
        let needed = minimumSize(minor: minor)
        guard size >= needed else {
            throw Rejection(
                path: path, kind: .descriptorTooSmall,
                reason: "descriptor struct_size is \(size) bytes; ABI \(major).\(minor) needs at least \(needed) (set "
                    + ".struct_size = sizeof(sy_plugin_descriptor), with .abi_minor = SY_ABI_MINOR, and build against the header the "
                    + "minor comes from)")
        }

        // Copy what the plugin has into a zeroed, host-sized descriptor: absent tail fields read as
        // zero, and a newer plugin's extra fields are simply not copied.
        let copy = UnsafeMutablePointer<sy_plugin_descriptor>.allocate(capacity: 1)
        UnsafeMutableRawPointer(copy).initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<sy_plugin_descriptor>.size)
        UnsafeMutableRawPointer(copy).copyMemory(from: base, byteCount: min(size, MemoryLayout<sy_plugin_descriptor>.size))
        copy.pointee.struct_size = UInt32(MemoryLayout<sy_plugin_descriptor>.size)
        do {
            try validateFields(copy.pointee, path: path)
        } catch {
            copy.deallocate()
            throw error
        }
        return (UnsafePointer(copy), (major, minor))
    }

    private static func validateFields(_ d: sy_plugin_descriptor, path: String) throws(Rejection) {
        guard let namePointer = d.name else {
            throw Rejection(path: path, kind: .invalidName, reason: "the descriptor has no name (NULL)")
        }
        // Bound the read: a name longer than the maximum is refused without scanning further.
        let length = strnlen(namePointer, PluginName.maxLength + 1)
        let name = String(decoding: UnsafeRawBufferPointer(start: namePointer, count: length), as: UTF8.self)
        if length > PluginName.maxLength {
            throw Rejection(path: path, kind: .invalidName, reason: "invalid plugin name: longer than \(PluginName.maxLength) bytes")
        }
        if let problem = PluginName.problem(with: name) {
            throw Rejection(path: path, kind: .invalidName, reason: "invalid plugin name: \(problem)")
        }
        guard let versionPointer = d.version, SemanticVersion(String(cString: versionPointer)) != nil else {
            let shown = d.version.map { "'\(String(cString: $0))'" } ?? "NULL"
            throw Rejection(
                path: path, kind: .invalidVersion,
                reason: "plugin '\(name)' has version \(shown), not a semantic version like 1.2.0")
        }
        let required: [(String, Bool)] = [
            ("create", d.create != nil), ("destroy", d.destroy != nil), ("publish", d.publish != nil),
            ("subscribe", d.subscribe != nil), ("unsubscribe", d.unsubscribe != nil), ("settle", d.settle != nil),
        ]
        let missing = required.filter { !$0.1 }.map(\.0)
        if !missing.isEmpty {
            throw Rejection(
                path: path, kind: .missingFunction,
                reason: "plugin '\(name)' leaves required function\(missing.count > 1 ? "s" : "") \(missing.joined(separator: ", ")) NULL")
        }
    }
}
