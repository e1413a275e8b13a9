// The compact argument format: a small self-describing binary form of Codable values, so typed
// calls do not pay for JSON (JSON stays available per route for interop: docs/envelope.md).
//
// Every value starts with a one-byte tag:
//   0x00 nil · 0x01 false · 0x02 true
//   0x03 signed integer, zigzag LEB128 · 0x04 unsigned integer, LEB128
//   0x05 Float (4 bytes LE) · 0x06 Double (8 bytes LE)
//   0x07 string: LEB128 byte count, UTF-8
//   0x08 list: values, then 0x0B · 0x09 map: (key as a string, value)…, then 0x0B
//   0x0A bytes: LEB128 count, raw bytes ([UInt8] and Data)
// Keys travel with map values, so fields may be added, omitted (`encodeIfPresent`) or reordered.

/// Tags of the compact argument format.
package enum CompactTag: UInt8 {
    case null = 0x00
    case `false` = 0x01
    case `true` = 0x02
    case int = 0x03
    case uint = 0x04
    case float = 0x05
    case double = 0x06
    case string = 0x07
    case list = 0x08
    case map = 0x09
    case bytes = 0x0A
    case end = 0x0B
}

/// Why compact data could not be decoded.
package struct CompactFormatError: Error, CustomStringConvertible {
    package let description: String
    package init(_ description: String) { self.description = description }
}

/// Appends compact values to a growing byte buffer.
package struct CompactWriter {
    package var bytes: [UInt8] = []

    package init(reservingCapacity capacity: Int = 64) { if capacity > 0 { bytes.reserveCapacity(capacity) } }

    package mutating func tag(_ tag: CompactTag) { bytes.append(tag.rawValue) }

    package mutating func varint(_ value: UInt64) {
        var value = value
        while value >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        bytes.append(UInt8(value))
    }

    package mutating func int(_ value: Int64) {
        tag(.int)
        varint(UInt64(bitPattern: (value << 1) ^ (value >> 63)))
    }

    package mutating func uint(_ value: UInt64) {
        tag(.uint)
        varint(value)
    }

    package mutating func string(_ value: String) {
        tag(.string)
        rawString(value)
    }

    /// A length-prefixed string without its tag.
    package mutating func rawString(_ value: String) {
        var value = value
        value.withUTF8 { utf8 in
            varint(UInt64(utf8.count))
            bytes.append(contentsOf: utf8)
        }
    }

    package mutating func raw<T>(_ value: T) {
        withUnsafeBytes(of: value) { bytes.append(contentsOf: $0) }
    }

    package mutating func byteString(_ value: some Collection<UInt8>) {
        tag(.bytes)
        varint(UInt64(value.count))
        bytes.append(contentsOf: value)
    }
}

/// Reads compact values from a borrowed byte buffer, bounds-checked: malformed input throws,
/// it never traps.
package struct CompactReader {
    package let base: UnsafeRawBufferPointer
    package var offset: Int

    package init(_ base: UnsafeRawBufferPointer, offset: Int = 0) {
        self.base = base
        self.offset = offset
    }

    package var atEnd: Bool { offset >= base.count }

    package func peekTag() throws(CompactFormatError) -> CompactTag {
        guard offset < base.count else { throw CompactFormatError("unexpected end of data") }
        guard let tag = CompactTag(rawValue: base[offset]) else {
            throw CompactFormatError("unknown tag 0x\(String(base[offset], radix: 16)) at byte \(offset)")
        }
        return tag
    }

    package mutating func tag() throws(CompactFormatError) -> CompactTag {
        let tag = try peekTag()
        offset += 1
        return tag
    }

    package mutating func expect(_ expected: CompactTag, for type: String) throws(CompactFormatError) {
        let found = try tag()
        guard found == expected else { throw CompactFormatError("expected \(type), found \(found) at byte \(offset - 1)") }
    }

    package mutating func varint() throws(CompactFormatError) -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard offset < base.count else { throw CompactFormatError("unexpected end of data in an integer") }
            let byte = base[offset]
            offset += 1
            guard shift < 64 else { throw CompactFormatError("integer longer than 64 bits") }
            result |= UInt64(byte & 0x7F) << shift
            if byte < 0x80 { return result }
            shift += 7
        }
    }

    package mutating func length() throws(CompactFormatError) -> Int {
        let count = try varint()
        guard count <= UInt64(base.count - offset) else { throw CompactFormatError("length \(count) runs past the end of the data") }
        return Int(count)
    }

    package mutating func int() throws(CompactFormatError) -> Int64 {
        switch try tag() {
        case .int:
            let zigzag = try varint()
            return Int64(bitPattern: zigzag >> 1) ^ -Int64(bitPattern: zigzag & 1)
        case .uint:
            let value = try varint()
            guard value <= UInt64(Int64.max) else { throw CompactFormatError("\(value) does not fit a signed integer") }
            return Int64(value)
        case let other: throw CompactFormatError("expected an integer, found \(other)")
        }
    }

    package mutating func uint() throws(CompactFormatError) -> UInt64 {
        switch try tag() {
        case .uint: return try varint()
        case .int:
            let zigzag = try varint()
            let value = Int64(bitPattern: zigzag >> 1) ^ -Int64(bitPattern: zigzag & 1)
            guard value >= 0 else { throw CompactFormatError("\(value) does not fit an unsigned integer") }
            return UInt64(value)
        case let other: throw CompactFormatError("expected an unsigned integer, found \(other)")
        }
    }

    package mutating func rawString() throws(CompactFormatError) -> String {
        let count = try length()
        defer { offset += count }
        return String(decoding: UnsafeRawBufferPointer(rebasing: base[offset..<offset + count]), as: UTF8.self)
    }

    /// A map key (a string), located in place without making a String.
    package mutating func rawKey() throws(CompactFormatError) -> Range<Int> {
        try expect(.string, for: "a map key")
        let count = try length()
        defer { offset += count }
        return offset..<offset + count
    }

    package mutating func fixed<T: BitwiseCopyable>(_ type: T.Type) throws(CompactFormatError) -> T {
        let size = MemoryLayout<T>.size
        guard base.count - offset >= size else { throw CompactFormatError("unexpected end of data in a number") }
        defer { offset += size }
        return base.loadUnaligned(fromByteOffset: offset, as: T.self)
    }

    package mutating func byteString() throws(CompactFormatError) -> UnsafeRawBufferPointer {
        let count = try length()
        defer { offset += count }
        return UnsafeRawBufferPointer(rebasing: base[offset..<offset + count])
    }

    /// Skips one whole value (containers included), bounded in depth.
    package mutating func skipValue(depth: Int = 0) throws(CompactFormatError) {
        guard depth < 256 else { throw CompactFormatError("values nested more than 256 deep") }
        switch try tag() {
        case .null, .false, .true: return
        case .int, .uint: _ = try varint()
        case .float: _ = try fixed(UInt32.self)
        case .double: _ = try fixed(UInt64.self)
        case .string, .bytes: offset += try length()
        case .list:
            while try peekTag() != .end { try skipValue(depth: depth + 1) }
            offset += 1
        case .map:
            while try peekTag() != .end {
                _ = try rawKey()
                try skipValue(depth: depth + 1)
            }
            offset += 1
        case .end: throw CompactFormatError("unexpected end marker at byte \(offset - 1)")
        }
    }
}
