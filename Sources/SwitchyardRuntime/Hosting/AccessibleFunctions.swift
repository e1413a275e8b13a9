import Foundation

/// The identifiers of every distributed method compiled into this process, read once from the
/// `swift5_accessible_functions` section of each loaded ELF image — the records the Swift runtime
/// itself looks targets up in. Receivers with `readable_targets` use them to map a readable name
/// (`Inventory.reserve(sku:qty:)`) to the hosted protocol's own method when it is hosted, so the
/// target run is always one compiled into this process for that protocol, never a name read off
/// the wire.
enum AccessibleFunctions {
    /// Every identifier found (mangled names such as `$s9Inventory01$A0C7reserve…TE`).
    static let identifiers: [String] = scan()

    /// Each record: relative pointers to the name, generic environment, function type and
    /// function, then 32 bits of flags (the Swift runtime's `AccessibleFunctionRecord`).
    private static let recordSize = 20

    private static func scan() -> [String] {
        var found: [String] = []
        for image in loadedImages() {
            guard let section = sectionAddress(named: "swift5_accessible_functions", in: image.path) else { continue }
            // Mapped at base = bias + the first segment's (page-aligned) address: 0 for shared
            // objects and position-independent executables.
            let start = image.base &- section.firstSegment &+ section.address
            for offset in stride(from: 0, to: Int(section.size) - recordSize + 1, by: recordSize) {
                guard let field = UnsafeRawPointer(bitPattern: start &+ UInt(offset)) else { continue }
                let relative = field.loadUnaligned(as: Int32.self)
                guard relative != 0 else { continue }
                let name = field.advanced(by: Int(relative)).assumingMemoryBound(to: CChar.self)
                found.append(String(cString: name))
            }
        }
        return found
    }

    /// Each loaded image's file and the address its first byte is mapped at, from
    /// `/proc/self/maps` (the mapping of file offset 0). Only files mapped executable and private
    /// count: every other file mapped at offset 0 — a SQLite store's `-shm`, mapped shared — was
    /// opened and closed here too, and on Linux closing any descriptor of a file drops every
    /// `fcntl` lock the process holds on it. SQLite's locks on its `-shm` and WAL went with it: the
    /// next process to open the store thought itself the first and truncated the `-shm` under this
    /// one's mapping (SIGBUS), or wrote the WAL beside it.
    static func loadedImages() -> [(path: String, base: UInt)] {
        // Read to the end: String(contentsOfFile:) stops at 4 KiB on procfs (whose files report
        // size 0), which under ThreadSanitizer — its shadow mappings come first — left out every image.
        guard let file = FileHandle(forReadingAtPath: "/proc/self/maps") else { return [] }
        defer { try? file.close() }
        let maps = String(decoding: file.readDataToEndOfFile(), as: UTF8.self)
        var images: [String: UInt] = [:]
        var executable: Set<String> = []
        for line in maps.split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
            // The path is padded with spaces after the inode; permissions are like "r-xp".
            guard fields.count == 6, case let path = fields[5].trimmingCharacters(in: .whitespaces), path.hasPrefix("/"),
                !fields[1].contains("s")
            else { continue }
            if fields[1].contains("x") { executable.insert(path) }
            guard UInt(fields[2], radix: 16) == 0, let start = UInt(fields[0].split(separator: "-").first ?? "", radix: 16) else { continue }
            images[path] = min(images[path] ?? .max, start)
        }
        return images.filter { executable.contains($0.key) }.map { ($0.key, $0.value) }
    }

    /// The address and size of section `name` in the ELF64 file at `path`, and the address of
    /// its first loadable segment, from its headers; nil when the file is not one or has no
    /// such section.
    private static func sectionAddress(named name: String, in path: String) -> (address: UInt, size: UInt, firstSegment: UInt)? {
        guard let file = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? file.close() }
        func read(_ offset: UInt64, _ count: Int) -> Data? {
            guard (try? file.seek(toOffset: offset)) != nil, let data = try? file.read(upToCount: count), data.count == count else { return nil }
            return data
        }
        guard let header = read(0, 64), header.starts(with: [0x7F, 0x45, 0x4C, 0x46]), header[4] == 2 else { return nil }  // ELFCLASS64
        func integer<T: FixedWidthInteger>(_ data: Data, _ offset: Int, _: T.Type) -> T {
            data.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: T.self) }
        }
        // The first loadable segment's address, page-aligned: where file offset 0 is mapped.
        let programHeaders = integer(header, 0x20, UInt64.self)
        let programEntrySize = Int(integer(header, 0x36, UInt16.self))
        let programCount = Int(integer(header, 0x38, UInt16.self))
        guard programEntrySize >= 56, let segments = read(programHeaders, programEntrySize * programCount) else { return nil }
        var firstSegment: UInt64?
        for index in 0..<programCount where integer(segments, index * programEntrySize, UInt32.self) == 1 {  // PT_LOAD
            firstSegment = integer(segments, index * programEntrySize + 0x10, UInt64.self) & ~0xFFF
            break
        }
        guard let firstSegment else { return nil }
        let sectionHeaders = integer(header, 0x28, UInt64.self)
        let entrySize = Int(integer(header, 0x3A, UInt16.self))
        let count = Int(integer(header, 0x3C, UInt16.self))
        let namesIndex = Int(integer(header, 0x3E, UInt16.self))
        guard entrySize >= 64, count > 0, namesIndex < count, let table = read(sectionHeaders, entrySize * count) else { return nil }
        func section(_ index: Int) -> (name: UInt32, address: UInt64, offset: UInt64, size: UInt64) {
            let base = index * entrySize
            return (
                integer(table, base, UInt32.self), integer(table, base + 0x10, UInt64.self), integer(table, base + 0x18, UInt64.self),
                integer(table, base + 0x20, UInt64.self)
            )
        }
        let names = section(namesIndex)
        guard names.size < 16 << 20, let strings = read(names.offset, Int(names.size)) else { return nil }
        let wanted = Array(name.utf8)
        for index in 0..<count {
            let candidate = section(index)
            let start = Int(candidate.name)
            guard start + wanted.count < strings.count, strings[start..<(start + wanted.count)].elementsEqual(wanted), strings[start + wanted.count] == 0
            else { continue }
            return candidate.address == 0 ? nil : (UInt(candidate.address), UInt(candidate.size), UInt(firstSegment))
        }
        return nil
    }
}

extension AccessibleFunctions {
    /// Readable name → identifier for the methods of the `@Resolvable` stub types named
    /// `stubTypes` (`Module.$Orders`): `Orders.place(_:)`, and the base name `Orders.place` where
    /// it is unique within its interface.
    static func readableTable(for stubTypes: Set<String>) -> [String: String] {
        var table: [String: String] = [:]
        var bases: [String: [String]] = [:]
        for identifier in identifiers {
            guard let target = CallTarget(identifier: identifier), stubTypes.contains(target.owningType), !target.isGeneric else { continue }
            table[target.name] = identifier
            bases[target.interface + "." + target.method, default: []].append(identifier)
        }
        for (base, candidates) in bases where candidates.count == 1 && table[base] == nil { table[base] = candidates[0] }
        return table
    }
}
