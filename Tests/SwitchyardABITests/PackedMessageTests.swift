import CSwitchyard
import SwitchyardABI
import Testing

@Suite("Packed messages: written in place, read as any message")
struct PackedMessageTests {
    /// What a producer writes through the packing initializer must read, compare, hash, lend and
    /// check against limits exactly as the same message made from Swift values.
    @Test("a message packed as it is written equals the same message made from values")
    func packedEqualsValues() throws {
        let headers = [Header("ce-id", "id-7"), Header("k", ""), Header("", "empty key"), Header("k", "second"), Header("ce-time", "2026-12-02T10:00:00.000000001Z")]
        let values = Message(
            id: "id-7", channel: "orders", orderingKey: "c1", headers: headers, body: [1, 2, 3], deliverAtNanos: 5, expiresAtNanos: 9,
            flags: .dropWhenExpired)
        let packed = Message(packing: "id-7", channel: "orders", orderingKey: "c1", body: [1, 2, 3], deliverAtNanos: 5, expiresAtNanos: 9, flags: .dropWhenExpired) {
            writer in
            for header in headers.prefix(4) { writer.add(header.key, header.value) }
            // A value written in place, as the envelope writes its times.
            writer.add("ce-time", byteCount: 30) { buffer in
                buffer.copyBytes(from: Array("2026-12-02T10:00:00.000000001Z".utf8))
            }
        }
        #expect(packed == values)
        #expect(packed.hashValue == values.hashValue)
        #expect(packed.id == "id-7")
        #expect(packed.headers == headers)
        #expect(packed.header("k") == "")
        #expect(packed.header("missing") == nil)
        #expect(packed.body == [1, 2, 3])
        // Lent to C, it reads as the values do; a copy of the view is the same message again.
        try packed.withCMessage { pointer in
            let view = try MessageView(validating: pointer)
            #expect(view.id == "id-7")
            #expect(view.channel == "orders")
            #expect(view.orderingKey == "c1")
            #expect(view.headers == headers)
            #expect(Array(view.body) == [1, 2, 3])
            #expect(view.expiresAtNanos == 9)
            #expect(view.copy() == values)
        }
        // The limits read the same sizes, packed or not.
        let tight = MessageLimits(maxMessageBytes: 1 << 20, maxHeaders: 4, maxHeaderBytes: 1 << 14)
        #expect(tight.violation(of: packed) == tight.violation(of: values))
        #expect(tight.violation(of: packed)?.contains("5 headers") == true)
        // Changing a part unpacks it; the rest is kept.
        var changed = packed
        changed.headers.removeAll { $0.key == "k" }
        #expect(changed.headers.count == 3)
        #expect(changed.id == "id-7" && changed.body == [1, 2, 3])
    }

    @Test("a packed message with nothing but an id")
    func emptyParts() throws {
        let packed = Message(packing: "only-id", channel: "c", body: []) { _ in }
        #expect(packed == Message(id: "only-id", channel: "c"))
        try packed.withCMessage { pointer in
            let view = try MessageView(validating: pointer)
            #expect(view.headerCount == 0)
            #expect(view.body.isEmpty)
            #expect(view.id == "only-id")
        }
    }

    /// The hash of hot-path dictionary keys: equal strings hash alike however they were made,
    /// and keys that differ anywhere — first byte, last byte, length — are told apart.
    @Test("FastStringKey hashes every byte and agrees with string equality")
    func fastKeys() {
        let long = "_switchyard.reply.host-1234-0123456789ab"
        let built = String(long.utf8.map { Character(Unicode.Scalar($0)) })  // same text, another string object
        #expect(FastStringKey(long) == FastStringKey(built))
        #expect(FastStringKey.hash(long) == FastStringKey.hash(built))
        var table: [FastStringKey: Int] = [:]
        var names: [String] = []
        for length in 0..<40 {
            for last in ["a", "b"] { names.append(String(repeating: "x", count: length) + last) }
        }
        names.append("b" + String(repeating: "x", count: 20))
        names.append("c" + String(repeating: "x", count: 20))
        for (index, name) in names.enumerated() { table[FastStringKey(name)] = index }
        #expect(table.count == names.count)
        for (index, name) in names.enumerated() { #expect(table[FastStringKey(String(name.utf8.map { Character(Unicode.Scalar($0)) }))] == index) }
        #expect(Set(names.map { FastStringKey.hash($0) }).count == names.count)
    }
}
