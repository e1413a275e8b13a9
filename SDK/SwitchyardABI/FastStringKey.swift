/// A string as a dictionary key on a hot path, hashed with one multiply per 8 bytes instead of
/// the standard library's SipHash over every byte.
///
/// Channel, group, target and correlation-id strings are long (a reply channel's name, a mangled
/// target name, a UUID), and they are looked up several times per message: hashing them was the
/// largest single cost of an in-memory request-reply call. The 64-bit hash of the whole string
/// is then fed to the `Hasher` (so a dictionary's seeding still applies); equality compares the
/// whole string. For names the application chooses, not for keys an attacker may pick.
package struct FastStringKey: Hashable, Sendable {
    /// The string.
    package let string: String

    /// The key for `string`.
    package init(_ string: String) { self.string = string }

    package static func == (a: FastStringKey, b: FastStringKey) -> Bool { a.string == b.string }

    package func hash(into hasher: inout Hasher) { hasher.combine(Self.hash(string)) }

    /// A 64-bit hash of `string`'s UTF-8 bytes (every byte counts).
    package static func hash(_ string: String) -> UInt64 { string.withUTF8Bytes { hash($0) } }

    /// A 64-bit hash of `bytes`: each 8-byte word xored in and mixed by a multiply and a shift.
    package static func hash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        let multiplier: UInt64 = 0x9E37_79B9_7F4A_7C15
        var hash: UInt64 = 0x243F_6A88_85A3_08D3 ^ UInt64(bytes.count)
        var offset = 0
        while offset + 8 <= bytes.count {
            hash = (hash ^ bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) &* multiplier
            hash ^= hash >> 29
            offset += 8
        }
        if offset < bytes.count {
            var tail: UInt64 = 0
            for index in offset..<bytes.count { tail |= UInt64(bytes[index]) << UInt64(8 * (index - offset)) }
            hash = (hash ^ tail) &* multiplier
            hash ^= hash >> 29
        }
        return hash
    }
}

extension String {
    /// Lends this string's UTF-8 bytes to `body`: in place for a native or literal string (no
    /// copy, and no mutable copy of the string as `withUTF8` needs), copied first otherwise.
    @inlinable @inline(__always)
    package func withUTF8Bytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        if let result = utf8.withContiguousStorageIfAvailable({ body(UnsafeRawBufferPointer($0)) }) { return result }
        var copy = self
        return copy.withUTF8 { body(UnsafeRawBufferPointer($0)) }
    }
}
