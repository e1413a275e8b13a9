#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A cheap look at a file's ELF header before handing it to the dynamic loader, so that the common
/// mistakes (a text file, an executable, a library for another machine) get a precise reason
/// instead of `dlopen`'s, and so that nothing clearly wrong is ever mapped into the process.
enum ELFCheck {
    private static let ELFCLASS64: UInt8 = 2, ELFDATA2LSB: UInt8 = 1, ELFDATA2MSB: UInt8 = 2
    private static let ET_REL: UInt16 = 1, ET_EXEC: UInt16 = 2, ET_DYN: UInt16 = 3, ET_CORE: UInt16 = 4
    private static let PT_INTERP: UInt32 = 3

    /// The machine this host runs on, as an ELF `e_machine` value and a name.
    static var hostMachine: (value: UInt16, name: String) {
        #if arch(x86_64)
            (62, "x86-64")
        #elseif arch(arm64)
            (183, "aarch64")
        #else
            (0, "unknown")
        #endif
    }

    /// Names for the `e_machine` values people are likely to meet.
    static func machineName(_ value: UInt16) -> String {
        switch value {
        case 3: "i386"
        case 8: "MIPS"
        case 20: "PowerPC"
        case 21: "PowerPC64"
        case 22: "s390"
        case 40: "ARM (32-bit)"
        case 62: "x86-64"
        case 183: "aarch64"
        case 243: "RISC-V"
        default: "machine \(value)"
        }
    }

    /// Checks the open file `fd` of `size` bytes; throws the first problem found.
    static func check(fd: Int32, size: Int, path: String) throws(Rejection) {
        var header = [UInt8](repeating: 0, count: 64)
        let got = header.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 64, 0) }
        guard got >= 4, header[0] == 0x7F, header[1] == UInt8(ascii: "E"), header[2] == UInt8(ascii: "L"), header[3] == UInt8(ascii: "F") else {
            // A static library starts "!<arch>\n", which is text to the check below.
            if got >= 8, header.prefix(8).elementsEqual("!<arch>\n".utf8) {
                throw Rejection(
                    path: path, kind: .notELF,
                    reason: "a static library (an ar archive), not a shared library: build the plugin's product as a dynamic "
                        + "library (SwiftPM: .library(name: …, type: .dynamic, …); C: cc -shared -fPIC)")
            }
            let looksLikeText = header.prefix(max(0, got)).allSatisfy { $0 == 9 || $0 == 10 || $0 == 13 || (32...126).contains($0) }
            throw Rejection(
                path: path, kind: .notELF,
                reason: looksLikeText ? "a text file, not a shared library" : "not an ELF file, so not a shared library for this system")
        }
        guard got >= 64 else { throw Rejection(path: path, kind: .notELF, reason: "truncated ELF header (\(got) bytes)") }

        let host = hostMachine
        let bigEndian = header[5] == ELFDATA2MSB
        func u16(_ at: Int) -> UInt16 {
            bigEndian ? UInt16(header[at]) << 8 | UInt16(header[at + 1]) : UInt16(header[at + 1]) << 8 | UInt16(header[at])
        }
        let machine = u16(18)
        guard header[4] == ELFCLASS64, header[5] == ELFDATA2LSB, machine == host.value else {
            let bits = header[4] == ELFCLASS64 ? "64-bit" : "32-bit"
            let order = header[5] == ELFDATA2LSB ? "little-endian" : "big-endian"
            throw Rejection(
                path: path, kind: .foreignArchitecture,
                reason: "built for \(machineName(machine)) (\(bits), \(order)); this host is \(host.name)")
        }
        switch u16(16) {
        case ET_DYN: break
        case ET_EXEC: throw Rejection(path: path, kind: .notASharedLibrary, reason: "an executable, not a shared library (build it with -shared, or as a .dynamic library product)")
        case ET_REL: throw Rejection(path: path, kind: .notASharedLibrary, reason: "an object file, not a shared library (link it with -shared)")
        case ET_CORE: throw Rejection(path: path, kind: .notASharedLibrary, reason: "a core dump, not a shared library")
        case let other: throw Rejection(path: path, kind: .notASharedLibrary, reason: "ELF type \(other) is not a shared library")
        }

        // A position-independent executable is ET_DYN too; it has a program interpreter.
        let phoff = header.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 32, as: UInt64.self) }
        let phentsize = Int(u16(54))
        let phnum = Int(u16(56))
        guard phentsize >= 4, phnum > 0, phnum < 4096, phoff > 0, Int(phoff) + phentsize * phnum <= size else { return }
        var table = [UInt8](repeating: 0, count: phentsize * phnum)
        let read = table.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(phoff)) }
        guard read == table.count else { return }
        for index in 0..<phnum {
            let type = table.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: index * phentsize, as: UInt32.self) }
            if type == PT_INTERP {
                throw Rejection(
                    path: path, kind: .notASharedLibrary,
                    reason: "a position-independent executable, not a shared library (build it with -shared, or as a .dynamic library product)")
            }
        }
    }

    /// Whether the shared library open as `fd` defines the dynamic symbol `name` (its `.dynsym`
    /// section, read without loading anything); nil when the section tables cannot be read, in
    /// which case the dynamic loader decides.
    static func definesDynamicSymbol(fd: Int32, size: Int, name: String) -> Bool? {
        func read(_ count: Int, at offset: UInt64) -> [UInt8]? {
            guard count >= 0, count < 64 << 20, offset <= UInt64(size), Int(offset) + count <= size else { return nil }
            var bytes = [UInt8](repeating: 0, count: count)
            let got = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
            return got == count ? bytes : nil
        }
        guard let header = read(64, at: 0) else { return nil }
        func load<T: FixedWidthInteger>(_ bytes: [UInt8], _ at: Int, _: T.Type) -> T {
            bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at, as: T.self) }
        }
        let sectionsAt = load(header, 40, UInt64.self)
        let entrySize = Int(load(header, 58, UInt16.self))
        let count = Int(load(header, 60, UInt16.self))
        guard entrySize >= 64, count > 0, let sections = read(entrySize * count, at: sectionsAt) else { return nil }
        let SHT_DYNSYM: UInt32 = 11
        for index in 0..<count where load(sections, index * entrySize + 4, UInt32.self) == SHT_DYNSYM {
            let base = index * entrySize
            let symbolsAt = load(sections, base + 24, UInt64.self)
            let symbolsSize = Int(load(sections, base + 32, UInt64.self))
            let link = Int(load(sections, base + 40, UInt32.self))
            let symbolSize = Int(load(sections, base + 56, UInt64.self))
            guard symbolSize >= 24, link < count else { return nil }
            let stringsAt = load(sections, link * entrySize + 24, UInt64.self)
            let stringsSize = Int(load(sections, link * entrySize + 32, UInt64.self))
            guard let symbols = read(symbolsSize, at: symbolsAt), let strings = read(stringsSize, at: stringsAt) else { return nil }
            // One pass over raw bytes: Swift libraries export tens of thousands of symbols, and a
            // per-symbol array or generic helper made this the slowest step of loading in debug builds.
            let wanted = Array(name.utf8)
            return symbols.withUnsafeBytes { table in
                strings.withUnsafeBytes { names in
                    var offset = 0
                    while offset + symbolSize <= table.count {
                        defer { offset += symbolSize }
                        let nameAt = Int(table.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
                        let definedIn = table.loadUnaligned(fromByteOffset: offset + 6, as: UInt16.self)  // st_shndx; 0 = undefined here
                        guard definedIn != 0, nameAt + wanted.count < names.count, names[nameAt + wanted.count] == 0,
                            memcmp(names.baseAddress! + nameAt, wanted, wanted.count) == 0
                        else { continue }
                        return true
                    }
                    return false
                }
            }
        }
        return nil
    }
}
