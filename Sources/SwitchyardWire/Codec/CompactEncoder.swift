import Foundation

/// Encodes `Encodable` values in the compact argument format (see CompactFormat.swift).
///
/// Values stream into one buffer: a container's contents are written as they are encoded and its
/// end marker once the value's `encode(to:)` returns. Only nested containers and super encoders,
/// which live alongside their parent, get a buffer of their own, spliced in at the end.
public struct CompactEncoder: Sendable {
    /// An encoder.
    public init() {}

    /// The compact form of `value`.
    public func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let sink = CompactSink()
        try sink.encodeValue(value, codingPath: [])
        return sink.finished()
    }

    /// Appends the compact form of `value` to `bytes`.
    public func encode<T: Encodable>(_ value: T, appendingTo bytes: inout [UInt8]) throws {
        // A primitive (most arguments and results) is written straight into `bytes`: no sink, a
        // class allocated per value, whose every write was also an exclusivity check (callgrind).
        var writer = CompactWriter(reservingCapacity: 0)
        swap(&writer.bytes, &bytes)
        let written = writer.writePrimitive(value)
        swap(&writer.bytes, &bytes)
        if written { return }
        // A sink with no buffer of its own: it writes into `bytes` (a reserved one was allocated
        // only to be swapped out and freed, an allocation per argument and per result).
        let sink = CompactSink(reservingCapacity: 0)
        swap(&sink.writer.bytes, &bytes)
        defer { swap(&sink.writer.bytes, &bytes) }
        try sink.encodeValue(value, codingPath: [])
        if !sink.inserts.isEmpty { sink.writer.bytes = sink.finished() }
    }
}

/// A buffer being written, plus nested encoders to splice in at given positions.
final class CompactSink {
    var writer: CompactWriter
    var inserts: [(at: Int, encoder: CompactValueEncoder)] = []

    /// A sink whose buffer starts with room for `capacity` bytes.
    init(reservingCapacity capacity: Int = 64) { writer = CompactWriter(reservingCapacity: capacity) }

    /// Writes one value: primitives directly, anything else through its `encode(to:)`.
    func encodeValue<T: Encodable>(_ value: T, codingPath: [any CodingKey]) throws {
        if writer.writePrimitive(value) { return }
        let encoder = CompactValueEncoder(sink: self, codingPath: codingPath)
        try value.encode(to: encoder)
        encoder.close()
    }

    /// The buffer with every nested encoder's bytes spliced in.
    func finished() -> [UInt8] {
        guard !inserts.isEmpty else { return writer.bytes }
        var result: [UInt8] = []
        result.reserveCapacity(writer.bytes.count + 64)
        var copied = 0
        for (position, encoder) in inserts {
            result.append(contentsOf: writer.bytes[copied..<position])
            encoder.close()
            result.append(contentsOf: encoder.sink.finished())
            copied = position
        }
        result.append(contentsOf: writer.bytes[copied...])
        return result
    }

    /// A fresh encoder whose bytes appear here, at the current position, once finished.
    func deferredEncoder(codingPath: [any CodingKey]) -> CompactValueEncoder {
        let nested = CompactValueEncoder(sink: CompactSink(), codingPath: codingPath)
        inserts.append((writer.bytes.count, nested))
        return nested
    }
}

/// The `Encoder` for one value.
final class CompactValueEncoder: Encoder {
    enum Opened { case none, map, list, single, closed }
    let sink: CompactSink
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }
    var opened = Opened.none

    init(sink: CompactSink, codingPath: [any CodingKey]) {
        self.sink = sink
        self.codingPath = codingPath
    }

    /// Ends the value: closes its container, or writes nil for a value that wrote nothing.
    func close() {
        switch opened {
        case .map, .list: sink.writer.tag(.end)
        case .none: sink.writer.tag(.null)
        case .single, .closed: break
        }
        opened = .closed
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        if opened == .none {
            sink.writer.tag(.map)
            opened = .map
        }
        return KeyedEncodingContainer(CompactKeyedEncoder<Key>(sink: sink, codingPath: codingPath))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        if opened == .none {
            sink.writer.tag(.list)
            opened = .list
        }
        return CompactUnkeyedEncoder(sink: sink, codingPath: codingPath)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer {
        opened = .single
        return CompactSingleEncoder(sink: sink, codingPath: codingPath)
    }
}

struct CompactKeyedEncoder<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let sink: CompactSink
    let codingPath: [any CodingKey]

    private func key(_ key: Key) { sink.writer.tag(.string); sink.writer.rawString(key.stringValue) }

    mutating func encodeNil(forKey key: Key) throws { self.key(key); sink.writer.tag(.null) }
    mutating func encode(_ value: Bool, forKey key: Key) throws { self.key(key); sink.writer.tag(value ? .true : .false) }
    mutating func encode(_ value: String, forKey key: Key) throws { self.key(key); sink.writer.string(value) }
    mutating func encode(_ value: Double, forKey key: Key) throws { self.key(key); sink.writer.tag(.double); sink.writer.raw(value.bitPattern.littleEndian) }
    mutating func encode(_ value: Float, forKey key: Key) throws { self.key(key); sink.writer.tag(.float); sink.writer.raw(value.bitPattern.littleEndian) }
    mutating func encode(_ value: Int, forKey key: Key) throws { self.key(key); sink.writer.int(Int64(value)) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { self.key(key); sink.writer.int(Int64(value)) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { self.key(key); sink.writer.int(Int64(value)) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { self.key(key); sink.writer.int(Int64(value)) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { self.key(key); sink.writer.int(value) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { self.key(key); sink.writer.uint(UInt64(value)) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { self.key(key); sink.writer.uint(UInt64(value)) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { self.key(key); sink.writer.uint(UInt64(value)) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { self.key(key); sink.writer.uint(UInt64(value)) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { self.key(key); sink.writer.uint(value) }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        self.key(key)
        try sink.encodeValue(value, codingPath: codingPath + [key])
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        self.key(key)
        return sink.deferredEncoder(codingPath: codingPath + [key]).container(keyedBy: keyType)
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        self.key(key)
        return sink.deferredEncoder(codingPath: codingPath + [key]).unkeyedContainer()
    }

    mutating func superEncoder() -> any Encoder {
        sink.writer.tag(.string)
        sink.writer.rawString("super")
        return sink.deferredEncoder(codingPath: codingPath)
    }

    mutating func superEncoder(forKey key: Key) -> any Encoder {
        self.key(key)
        return sink.deferredEncoder(codingPath: codingPath + [key])
    }
}

struct CompactUnkeyedEncoder: UnkeyedEncodingContainer {
    let sink: CompactSink
    let codingPath: [any CodingKey]
    private(set) var count = 0

    init(sink: CompactSink, codingPath: [any CodingKey]) {
        self.sink = sink
        self.codingPath = codingPath
    }

    mutating func encodeNil() throws { count += 1; sink.writer.tag(.null) }
    mutating func encode(_ value: Bool) throws { count += 1; sink.writer.tag(value ? .true : .false) }
    mutating func encode(_ value: String) throws { count += 1; sink.writer.string(value) }
    mutating func encode(_ value: Double) throws { count += 1; sink.writer.tag(.double); sink.writer.raw(value.bitPattern.littleEndian) }
    mutating func encode(_ value: Float) throws { count += 1; sink.writer.tag(.float); sink.writer.raw(value.bitPattern.littleEndian) }
    mutating func encode(_ value: Int) throws { count += 1; sink.writer.int(Int64(value)) }
    mutating func encode(_ value: Int64) throws { count += 1; sink.writer.int(value) }
    mutating func encode(_ value: UInt8) throws { count += 1; sink.writer.uint(UInt64(value)) }
    mutating func encode(_ value: UInt64) throws { count += 1; sink.writer.uint(value) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        count += 1
        try sink.encodeValue(value, codingPath: codingPath)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        count += 1
        return sink.deferredEncoder(codingPath: codingPath).container(keyedBy: keyType)
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        count += 1
        return sink.deferredEncoder(codingPath: codingPath).unkeyedContainer()
    }

    mutating func superEncoder() -> any Encoder {
        count += 1
        return sink.deferredEncoder(codingPath: codingPath)
    }
}

struct CompactSingleEncoder: SingleValueEncodingContainer {
    let sink: CompactSink
    let codingPath: [any CodingKey]

    mutating func encodeNil() throws { sink.writer.tag(.null) }
    mutating func encode(_ value: Bool) throws { sink.writer.tag(value ? .true : .false) }
    mutating func encode(_ value: String) throws { sink.writer.string(value) }
    mutating func encode(_ value: Double) throws { sink.writer.tag(.double); sink.writer.raw(value.bitPattern.littleEndian) }
    mutating func encode(_ value: Float) throws { sink.writer.tag(.float); sink.writer.raw(value.bitPattern.littleEndian) }
    mutating func encode(_ value: Int) throws { sink.writer.int(Int64(value)) }
    mutating func encode(_ value: Int8) throws { sink.writer.int(Int64(value)) }
    mutating func encode(_ value: Int16) throws { sink.writer.int(Int64(value)) }
    mutating func encode(_ value: Int32) throws { sink.writer.int(Int64(value)) }
    mutating func encode(_ value: Int64) throws { sink.writer.int(value) }
    mutating func encode(_ value: UInt) throws { sink.writer.uint(UInt64(value)) }
    mutating func encode(_ value: UInt8) throws { sink.writer.uint(UInt64(value)) }
    mutating func encode(_ value: UInt16) throws { sink.writer.uint(UInt64(value)) }
    mutating func encode(_ value: UInt32) throws { sink.writer.uint(UInt64(value)) }
    mutating func encode(_ value: UInt64) throws { sink.writer.uint(value) }
    mutating func encode<T: Encodable>(_ value: T) throws { try sink.encodeValue(value, codingPath: codingPath) }
}

extension CompactWriter {
    /// Writes `value` when it is one of the primitives written directly (an exact type match:
    /// a metatype comparison, no dynamic cast); false for anything else.
    @inline(__always)
    mutating func writePrimitive<T>(_ value: T) -> Bool {
        let type = ObjectIdentifier(T.self)
        switch type {
        case ObjectIdentifier(String.self): string(unsafeBitCast(value, to: String.self))
        case ObjectIdentifier(Int.self): int(Int64(unsafeBitCast(value, to: Int.self)))
        case ObjectIdentifier(Bool.self): tag(unsafeBitCast(value, to: Bool.self) ? .true : .false)
        case ObjectIdentifier(Double.self): tag(.double); raw(unsafeBitCast(value, to: Double.self).bitPattern.littleEndian)
        case ObjectIdentifier(Int64.self): int(unsafeBitCast(value, to: Int64.self))
        case ObjectIdentifier(UInt64.self): uint(unsafeBitCast(value, to: UInt64.self))
        case ObjectIdentifier([UInt8].self): byteString(unsafeBitCast(value, to: [UInt8].self))
        case ObjectIdentifier(Data.self): byteString(value as! Data)
        default: return false
        }
        return true
    }
}
