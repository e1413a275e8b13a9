import CSwitchyard
import Dispatch
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

    /// A message's fields live in one object its copies share until one changes (copy on write):
    /// a change to a copy — a field, a part, or a packed copy's parts — never shows in another, and
    /// a copy that still points at another's packed bytes keeps them alive.
    @Test("copies of a message share its fields until one changes, and never see each other's changes")
    func copyOnWrite() throws {
        let original = Message(id: "m-1", channel: "orders", orderingKey: "c1", headers: [Header("k", "v")], body: [1, 2], deliverAtNanos: 5)
        var changed = original
        changed.channel = "invoices"
        changed.orderingKey = nil
        changed.deliverAtNanos = 6
        changed.enqueuedAtNanos = 7
        changed.expiresAtNanos = 8
        changed.flags = .dropWhenExpired
        changed.attempt = 3
        #expect(original == Message(id: "m-1", channel: "orders", orderingKey: "c1", headers: [Header("k", "v")], body: [1, 2], deliverAtNanos: 5))
        #expect(changed.channel == "invoices" && changed.orderingKey == nil && changed.deliverAtNanos == 6 && changed.enqueuedAtNanos == 7)
        #expect(changed.expiresAtNanos == 8 && changed.flags == .dropWhenExpired && changed.attempt == 3)
        #expect(changed.id == "m-1" && changed.headers == [Header("k", "v")] && changed.body == [1, 2])

        // The attempt alone differs: not equal, though every other field is shared.
        var counted = original
        counted.attempt += 1
        #expect(counted != original)
        #expect(original.attempt == 0 && counted.attempt == 1)

        // A copy of a message copied from C: its fields change on their own, its parts stay the
        // packed ones (lent again without a copy), and they outlive the message they came from.
        var fromC: Message? = try original.withCMessage { try MessageView(validating: $0).copy() }
        var stamped = fromC!
        stamped.enqueuedAtNanos = 42
        var relabeled = fromC!
        relabeled.headers.append(Header("extra", "1"))
        fromC = nil
        #expect(stamped.enqueuedAtNanos == 42 && stamped.headers == [Header("k", "v")] && stamped.id == "m-1" && stamped.body == [1, 2])
        #expect(relabeled.headers == [Header("k", "v"), Header("extra", "1")] && relabeled.enqueuedAtNanos == 0)
        try stamped.withCMessage { pointer in
            let view = try MessageView(validating: pointer)
            #expect(view.id == "m-1" && view.headers == [Header("k", "v")] && Array(view.body) == [1, 2] && view.enqueuedAtNanos == 42)
        }

        // Copies changed on other threads at once each change their own.
        let shared = stamped
        let results = Guarded([Message]())
        DispatchQueue.concurrentPerform(iterations: 8) { index in
            var mine = shared
            mine.attempt = UInt32(index)
            mine.channel = "c\(index)"
            results.withLock { $0.append(mine) }
        }
        let made = results.withLock { $0 }
        #expect(Set(made.map(\.channel)) == Set((0..<8).map { "c\($0)" }))
        #expect(made.allSatisfy { $0.channel == "c\($0.attempt)" && $0.id == "m-1" && $0.enqueuedAtNanos == 42 })
        #expect(shared.channel == "orders" && shared.attempt == 0)

        // Printed, it shows its fields, not the object that holds them.
        let printed = String(describing: original)
        #expect(printed.hasPrefix("Message(id: \"m-1\", channel: \"orders\""), "\(printed)")
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
