import SwitchyardABI
import Testing

@testable import SwitchyardTransportKit

/// The stored form of a message: one encoding, whatever form the message was in when it was
/// stored (built in Swift, copied from C, lent as a view, appended to a batch's buffer).
@Suite("Message codec")
struct MessageCodecTests {
    static let messages = [
        Message(
            id: "m-1", channel: "orders", orderingKey: "customer-7", headers: [Header("k", "v"), Header("k", "again"), Header("empty", "")],
            body: Array("hello".utf8), attempt: 3, deliverAtNanos: 1_700_000_000_000_000_000, enqueuedAtNanos: 1_700_000_000_000_000_001),
        // Expiry and flags make it the SYM2 form.
        Message(
            id: "m-2", channel: "replies", body: [0, 1, 2, 255], expiresAtNanos: 1_800_000_000_000_000_000, flags: [.dropWhenExpired]),
        // Nothing optional: no key, headers or body.
        Message(id: "m-3", channel: "c"),
    ]

    @Test("a message encodes to the same bytes built in Swift, copied from C, lent as a view and appended to a buffer, and decodes back", arguments: messages)
    func oneEncoding(_ message: Message) throws {
        let encoded = MessageCodec.encode(message)
        #expect(try MessageCodec.decode(encoded) == message)
        let (copied, viewed) = try message.withCMessage { pointer throws(TransportError) in
            let view = try MessageView(validating: pointer)
            return (view.copy(), MessageCodec.encode(view))
        }
        #expect(MessageCodec.encode(copied) == encoded, "a message copied from C is encoded from its packed bytes")
        #expect(viewed == encoded)
        var arena = ByteArena()
        _ = [UInt8]([7, 7, 7]).withUnsafeBytes { arena.append($0) }
        let range = MessageCodec.encode(copied, appendingTo: &arena)
        #expect(range == 3..<3 + encoded.count)
        #expect(Array(arena.bytes[range]) == encoded && Array(arena.bytes.prefix(3)) == [7, 7, 7], "appended after what the arena held, which stays")
    }

    @Test("every truncation of an encoding, and one byte too many, is refused with a reason, never a crash")
    func truncated() throws {
        let encoded = MessageCodec.encode(Self.messages[0])
        for length in 0..<encoded.count {
            #expect(throws: TransportError.self, "\(length) of \(encoded.count) bytes") { try MessageCodec.decode(Array(encoded.prefix(length))) }
        }
        let error = #expect(throws: TransportError.self) { try MessageCodec.decode(encoded + [0]) }
        #expect(error?.message.contains("1 trailing bytes") == true, "\(String(describing: error))")
    }
}
