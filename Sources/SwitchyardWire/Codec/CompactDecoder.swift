import Foundation

/// Decodes `Decodable` values from the compact argument format (see CompactFormat.swift).
///
/// Every read is bounds-checked and nesting is limited, so malformed or hostile input throws a
/// `DecodingError` naming what was wrong and where; it never traps.
public struct CompactDecoder: Sendable {
    /// A decoder.
    public init() {}

    /// Decodes one `T` from `bytes`; trailing bytes are an error.
    public func decode<T: Decodable>(_ type: T.Type, from bytes: some ContiguousBytes) throws -> T {
        try bytes.withUnsafeBytes { raw in
            var reader = CompactReader(raw)
            let value = try CompactDecoding.value(T.self, from: &reader, codingPath: [])
            guard reader.atEnd else {
                throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "\(raw.count - reader.offset) bytes left over after the value"))
            }
            return value
        }
    }
}

package enum CompactDecoding {
    /// Reads one value of type `T` at the reader's position and moves past it.
    package static func value<T: Decodable>(_ type: T.Type, from reader: inout CompactReader, codingPath: [any CodingKey], depth: Int = 0) throws -> T {
        if let kind = Primitive(T.self) {
            return try reading(codingPath) { () throws(CompactFormatError) in try primitive(kind, as: T.self, from: &reader) }
        }
        guard depth < 128 else { throw corrupted(CompactFormatError("values nested more than 128 deep"), codingPath) }
        let decoder = CompactValueDecoder(reader: reader, codingPath: codingPath, depth: depth + 1)
        let value = try T(from: decoder)
        do {
            try reader.skipValue()
        } catch {
            throw corrupted(error, codingPath)
        }
        return value
    }

    /// The types read by a fast path of their own (``primitive(_:as:from:)``), by exact type.
    package enum Primitive {
        case string, int, bool, double, int64, uint64, bytes, data

        /// `T`'s fast path; nil for any other type.
        @inline(__always)
        package init?<T>(_ type: T.Type) {
            switch ObjectIdentifier(T.self) {
            case ObjectIdentifier(String.self): self = .string
            case ObjectIdentifier(Int.self): self = .int
            case ObjectIdentifier(Bool.self): self = .bool
            case ObjectIdentifier(Double.self): self = .double
            case ObjectIdentifier(Int64.self): self = .int64
            case ObjectIdentifier(UInt64.self): self = .uint64
            case ObjectIdentifier([UInt8].self): self = .bytes
            case ObjectIdentifier(Data.self): self = .data
            default: return nil
            }
        }
    }

    /// Reads a `T` whose fast path is `kind` (``Primitive/init(_:)`` of `T`). It returns a `T`,
    /// not a `T?`: in code not specialized for `T` (a distributed call's argument, decoded
    /// through the runtime's generic entry), an Optional of `T` costs a metadata lookup on every
    /// call, about 330 instructions.
    @inline(__always)
    package static func primitive<T>(_ kind: Primitive, as type: T.Type, from reader: inout CompactReader) throws(CompactFormatError) -> T {
        switch kind {
        case .string:
            try reader.expect(.string, for: "a string")
            return unsafeBitCast(try reader.rawString(), to: T.self)
        case .int: return unsafeBitCast(try checked(Int.self, try reader.int()), to: T.self)
        case .bool: return unsafeBitCast(try bool(&reader), to: T.self)
        case .double: return unsafeBitCast(try double(&reader), to: T.self)
        case .int64: return unsafeBitCast(try reader.int(), to: T.self)
        case .uint64: return unsafeBitCast(try reader.uint(), to: T.self)
        case .bytes:
            try reader.expect(.bytes, for: "bytes")
            return unsafeBitCast([UInt8](try reader.byteString()), to: T.self)
        case .data:
            try reader.expect(.bytes, for: "bytes")
            return Data(try reader.byteString()) as! T
        }
    }

    package static func bool(_ reader: inout CompactReader) throws(CompactFormatError) -> Bool {
        switch try reader.tag() {
        case .true: return true
        case .false: return false
        case let other: throw CompactFormatError("expected a boolean, found \(other)")
        }
    }

    package static func double(_ reader: inout CompactReader) throws(CompactFormatError) -> Double {
        switch try reader.tag() {
        case .double: return Double(bitPattern: UInt64(littleEndian: try reader.fixed(UInt64.self)))
        case .float: return Double(Float(bitPattern: UInt32(littleEndian: try reader.fixed(UInt32.self))))
        case .int, .uint:
            reader.offset -= 1
            return Double(try reader.int())
        case let other: throw CompactFormatError("expected a number, found \(other)")
        }
    }

    package static func float(_ reader: inout CompactReader) throws(CompactFormatError) -> Float {
        switch try reader.tag() {
        case .float: return Float(bitPattern: UInt32(littleEndian: try reader.fixed(UInt32.self)))
        case .double: return Float(Double(bitPattern: UInt64(littleEndian: try reader.fixed(UInt64.self))))
        case .int, .uint:
            reader.offset -= 1
            return Float(try reader.int())
        case let other: throw CompactFormatError("expected a number, found \(other)")
        }
    }

    package static func checked<I: FixedWidthInteger>(_ type: I.Type, _ value: Int64) throws(CompactFormatError) -> I {
        guard let exact = I(exactly: value) else { throw CompactFormatError("\(value) does not fit \(I.self)") }
        return exact
    }

    package static func checked<I: FixedWidthInteger>(_ type: I.Type, _ value: UInt64) throws(CompactFormatError) -> I {
        guard let exact = I(exactly: value) else { throw CompactFormatError("\(value) does not fit \(I.self)") }
        return exact
    }

    package static func corrupted(_ error: CompactFormatError, _ codingPath: [any CodingKey]) -> DecodingError {
        .dataCorrupted(.init(codingPath: codingPath, debugDescription: error.description))
    }

    /// Runs a read, turning format errors into `DecodingError`s at `codingPath`.
    package static func reading<R>(_ codingPath: [any CodingKey], _ body: () throws(CompactFormatError) -> R) throws -> R {
        do {
            return try body()
        } catch {
            throw corrupted(error, codingPath)
        }
    }
}

/// The `Decoder` for one value, positioned at its first byte.
struct CompactValueDecoder: Decoder {
    let reader: CompactReader
    let codingPath: [any CodingKey]
    let depth: Int
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        KeyedDecodingContainer(try CompactKeyedDecoder<Key>(reader: reader, codingPath: codingPath, depth: depth))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        try CompactUnkeyedDecoder(reader: reader, codingPath: codingPath, depth: depth)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        CompactSingleDecoder(reader: reader, codingPath: codingPath, depth: depth)
    }
}

struct CompactKeyedDecoder<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let reader: CompactReader
    let codingPath: [any CodingKey]
    let depth: Int
    /// Each entry's key (a byte range) and the offset of its value.
    private let entries: [(key: Range<Int>, value: Int)]

    init(reader: CompactReader, codingPath: [any CodingKey], depth: Int) throws {
        var scan = reader
        self.reader = reader
        self.codingPath = codingPath
        self.depth = depth
        entries = try CompactDecoding.reading(codingPath) { () throws(CompactFormatError) in
            try scan.expect(.map, for: "a keyed value (map)")
            var entries: [(key: Range<Int>, value: Int)] = []
            while try scan.peekTag() != .end {
                let key = try scan.rawKey()
                entries.append((key, scan.offset))
                try scan.skipValue()
            }
            return entries
        }
    }

    private func offset(of key: Key) -> Int? {
        var name = key.stringValue
        return name.withUTF8 { utf8 in
            entries.first { entry in
                entry.key.count == utf8.count && memcmp(reader.base.baseAddress! + entry.key.lowerBound, utf8.baseAddress!, utf8.count) == 0
            }?.value
        }
    }

    private func reader(for key: Key) throws -> CompactReader {
        guard let offset = offset(of: key) else {
            throw DecodingError.keyNotFound(key, .init(codingPath: codingPath, debugDescription: "no value for key '\(key.stringValue)'"))
        }
        return CompactReader(reader.base, offset: offset)
    }

    var allKeys: [Key] {
        entries.compactMap { Key(stringValue: String(decoding: UnsafeRawBufferPointer(rebasing: reader.base[$0.key]), as: UTF8.self)) }
    }

    func contains(_ key: Key) -> Bool { offset(of: key) != nil }

    func decodeNil(forKey key: Key) throws -> Bool {
        let reader = try reader(for: key)
        return try CompactDecoding.reading(codingPath + [key]) { () throws(CompactFormatError) in try reader.peekTag() == .null }
    }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        var reader = try reader(for: key)
        return try CompactDecoding.value(T.self, from: &reader, codingPath: codingPath + [key], depth: depth)
    }

    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try decodeScalar(key) { r throws(CompactFormatError) in try CompactDecoding.bool(&r) } }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try decodeScalar(key) { r throws(CompactFormatError) in try CompactDecoding.double(&r) } }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { try decodeScalar(key) { r throws(CompactFormatError) in try CompactDecoding.float(&r) } }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try decodeInt(key) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try decodeInt(key) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try decodeInt(key) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try decodeInt(key) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try decodeInt(key) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try decodeUInt(key) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try decodeUInt(key) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try decodeUInt(key) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try decodeUInt(key) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try decodeUInt(key) }
    func decode(_ type: String.Type, forKey key: Key) throws -> String {
        try decodeScalar(key) { r throws(CompactFormatError) in
            try r.expect(.string, for: "a string")
            return try r.rawString()
        }
    }

    private func decodeScalar<R>(_ key: Key, _ read: (inout CompactReader) throws(CompactFormatError) -> R) throws -> R {
        var reader = try reader(for: key)
        return try CompactDecoding.reading(codingPath + [key]) { () throws(CompactFormatError) in try read(&reader) }
    }

    private func decodeInt<I: FixedWidthInteger & SignedInteger>(_ key: Key) throws -> I {
        try decodeScalar(key) { r throws(CompactFormatError) in try CompactDecoding.checked(I.self, try r.int()) }
    }

    private func decodeUInt<I: FixedWidthInteger & UnsignedInteger>(_ key: Key) throws -> I {
        try decodeScalar(key) { r throws(CompactFormatError) in try CompactDecoding.checked(I.self, try r.uint()) }
    }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        KeyedDecodingContainer(try CompactKeyedDecoder<NestedKey>(reader: try reader(for: key), codingPath: codingPath + [key], depth: depth + 1))
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try CompactUnkeyedDecoder(reader: try reader(for: key), codingPath: codingPath + [key], depth: depth + 1)
    }

    func superDecoder() throws -> any Decoder {
        guard let key = Key(stringValue: "super") else { throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "no super key")) }
        return try superDecoder(forKey: key)
    }

    func superDecoder(forKey key: Key) throws -> any Decoder {
        CompactValueDecoder(reader: try reader(for: key), codingPath: codingPath + [key], depth: depth + 1)
    }
}

struct CompactUnkeyedDecoder: UnkeyedDecodingContainer {
    var reader: CompactReader
    let codingPath: [any CodingKey]
    let depth: Int
    private(set) var currentIndex = 0
    var count: Int? { nil }

    init(reader: CompactReader, codingPath: [any CodingKey], depth: Int) throws {
        self.reader = reader
        self.codingPath = codingPath
        self.depth = depth
        try CompactDecoding.reading(codingPath) { () throws(CompactFormatError) in try self.reader.expect(.list, for: "a list") }
    }

    var isAtEnd: Bool { reader.atEnd || (try? reader.peekTag()) == .end }

    private var path: [any CodingKey] { codingPath + [IndexKey(currentIndex)] }

    private mutating func next<R>(_ read: (inout CompactReader) throws(CompactFormatError) -> R) throws -> R {
        guard !isAtEnd else {
            throw DecodingError.valueNotFound(R.self, .init(codingPath: path, debugDescription: "the list has no more elements"))
        }
        let path = self.path
        let value = try CompactDecoding.reading(path) { () throws(CompactFormatError) in try read(&reader) }
        currentIndex += 1
        return value
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd, (try? reader.peekTag()) == .null else { return false }
        reader.offset += 1
        currentIndex += 1
        return true
    }

    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        guard !isAtEnd else {
            throw DecodingError.valueNotFound(T.self, .init(codingPath: path, debugDescription: "the list has no more elements"))
        }
        let value = try CompactDecoding.value(T.self, from: &reader, codingPath: path, depth: depth)
        currentIndex += 1
        return value
    }

    mutating func decode(_ type: Bool.Type) throws -> Bool { try next { r throws(CompactFormatError) in try CompactDecoding.bool(&r) } }
    mutating func decode(_ type: Double.Type) throws -> Double { try next { r throws(CompactFormatError) in try CompactDecoding.double(&r) } }
    mutating func decode(_ type: Float.Type) throws -> Float { try next { r throws(CompactFormatError) in try CompactDecoding.float(&r) } }
    mutating func decode(_ type: String.Type) throws -> String {
        try next { r throws(CompactFormatError) in
            try r.expect(.string, for: "a string")
            return try r.rawString()
        }
    }
    mutating func decode(_ type: Int.Type) throws -> Int { try next { r throws(CompactFormatError) in try CompactDecoding.checked(Int.self, try r.int()) } }
    mutating func decode(_ type: Int64.Type) throws -> Int64 { try next { r throws(CompactFormatError) in try r.int() } }
    mutating func decode(_ type: UInt8.Type) throws -> UInt8 { try next { r throws(CompactFormatError) in try CompactDecoding.checked(UInt8.self, try r.uint()) } }
    mutating func decode(_ type: UInt64.Type) throws -> UInt64 { try next { r throws(CompactFormatError) in try r.uint() } }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        let container = try CompactKeyedDecoder<NestedKey>(reader: reader, codingPath: path, depth: depth + 1)
        try skip()
        return KeyedDecodingContainer(container)
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let container = try CompactUnkeyedDecoder(reader: reader, codingPath: path, depth: depth + 1)
        try skip()
        return container
    }

    mutating func superDecoder() throws -> any Decoder {
        let decoder = CompactValueDecoder(reader: reader, codingPath: path, depth: depth + 1)
        try skip()
        return decoder
    }

    private mutating func skip() throws {
        let path = self.path
        try CompactDecoding.reading(path) { () throws(CompactFormatError) in try reader.skipValue() }
        currentIndex += 1
    }
}

struct CompactSingleDecoder: SingleValueDecodingContainer {
    let reader: CompactReader
    let codingPath: [any CodingKey]
    let depth: Int

    private func read<R>(_ body: (inout CompactReader) throws(CompactFormatError) -> R) throws -> R {
        var reader = reader
        return try CompactDecoding.reading(codingPath) { () throws(CompactFormatError) in try body(&reader) }
    }

    func decodeNil() -> Bool { (try? reader.peekTag()) == .null }
    func decode(_ type: Bool.Type) throws -> Bool { try read { r throws(CompactFormatError) in try CompactDecoding.bool(&r) } }
    func decode(_ type: String.Type) throws -> String {
        try read { r throws(CompactFormatError) in
            try r.expect(.string, for: "a string")
            return try r.rawString()
        }
    }
    func decode(_ type: Double.Type) throws -> Double { try read { r throws(CompactFormatError) in try CompactDecoding.double(&r) } }
    func decode(_ type: Float.Type) throws -> Float { try read { r throws(CompactFormatError) in try CompactDecoding.float(&r) } }
    func decode(_ type: Int.Type) throws -> Int { try read { r throws(CompactFormatError) in try CompactDecoding.checked(Int.self, try r.int()) } }
    func decode(_ type: Int8.Type) throws -> Int8 { try read { r throws(CompactFormatError) in try CompactDecoding.checked(Int8.self, try r.int()) } }
    func decode(_ type: Int16.Type) throws -> Int16 { try read { r throws(CompactFormatError) in try CompactDecoding.checked(Int16.self, try r.int()) } }
    func decode(_ type: Int32.Type) throws -> Int32 { try read { r throws(CompactFormatError) in try CompactDecoding.checked(Int32.self, try r.int()) } }
    func decode(_ type: Int64.Type) throws -> Int64 { try read { r throws(CompactFormatError) in try r.int() } }
    func decode(_ type: UInt.Type) throws -> UInt { try read { r throws(CompactFormatError) in try CompactDecoding.checked(UInt.self, try r.uint()) } }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try read { r throws(CompactFormatError) in try CompactDecoding.checked(UInt8.self, try r.uint()) } }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try read { r throws(CompactFormatError) in try CompactDecoding.checked(UInt16.self, try r.uint()) } }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try read { r throws(CompactFormatError) in try CompactDecoding.checked(UInt32.self, try r.uint()) } }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try read { r throws(CompactFormatError) in try r.uint() } }
    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        var reader = reader
        // The value's own decoder sits at the same position; no extra nesting level is read.
        if let kind = CompactDecoding.Primitive(T.self) {
            return try CompactDecoding.reading(codingPath) { () throws(CompactFormatError) in try CompactDecoding.primitive(kind, as: T.self, from: &reader) }
        }
        guard depth < 128 else { throw CompactDecoding.corrupted(CompactFormatError("values nested more than 128 deep"), codingPath) }
        return try T(from: CompactValueDecoder(reader: reader, codingPath: codingPath, depth: depth + 1))
    }
}

/// A coding key for a position in a list.
struct IndexKey: CodingKey {
    let intValue: Int?
    var stringValue: String { "\(intValue ?? 0)" }
    init(_ index: Int) { intValue = index }
    init?(stringValue: String) { nil }
    init?(intValue: Int) { self.intValue = intValue }
}
