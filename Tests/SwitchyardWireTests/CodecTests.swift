import Foundation
import SwitchyardABI
import SwitchyardConfig
import SwitchyardTestSupport
import SwitchyardWire
import Testing

@testable import SwitchyardRuntime

@Suite("Compact codec and envelope")
struct CodecTests {
    enum Shape: Codable, Hashable {
        case circle(radius: Double)
        case polygon(sides: [Int], name: String?)
        case empty
    }

    struct Everything: Codable, Hashable {
        var int = -42
        var uint: UInt64 = .max
        var int8: Int8 = -8
        var float: Float = 1.5
        var double = -2.25
        var bool = true
        var string = "héllo, wörld"
        var bytes: [UInt8] = [0, 1, 255]
        var data = Data([9, 8, 7])
        var optional: String? = nil
        var present: Int? = 3
        var list = [1, 2, 3]
        var nested = [["a": 1], ["b": 2]]
        var shapes: [Shape] = [.circle(radius: 2), .polygon(sides: [3, 4], name: nil), .empty]
        var date = Date(timeIntervalSince1970: 1_700_000_000)
        var set: Set<String> = ["x"]
        var uuid = UUID(uuidString: "01937F4C-5E2A-7B3D-9C1E-2F4A6B8C0D1E")!
    }

    @Test("values round-trip, including enums with payloads, nesting, optionals and bytes")
    func roundTrip() throws {
        let value = Everything()
        let bytes = try CompactEncoder().encode(value)
        #expect(try CompactDecoder().decode(Everything.self, from: bytes) == value)
        #expect(bytes.count < (try JSONEncoder().encode(value)).count)
    }

    @Test("appending a value writes what encoding it alone writes, after what was there: primitives (written directly) and composites")
    func appending() throws {
        let values: [any Codable] = [
            "text", -7, true, 2.5, Int64.min, UInt64.max, [UInt8]([1, 2]), Data([3]), Int8(4), [5, 6], Everything(), Shape.empty,
        ]
        var appended: [UInt8] = [0xAB]
        var expected: [UInt8] = [0xAB]
        for value in values {
            try CompactEncoder().encode(value, appendingTo: &appended)
            expected += try CompactEncoder().encode(value)
        }
        #expect(appended == expected)
        // And each primitive written directly reads back as itself.
        var appendedAlone: [UInt8] = []
        try CompactEncoder().encode("text", appendingTo: &appendedAlone)
        #expect(try CompactDecoder().decode(String.self, from: appendedAlone) == "text")
        for number in [0, -7, Int.max, Int.min] {
            var bytes: [UInt8] = []
            try CompactEncoder().encode(number, appendingTo: &bytes)
            #expect(try CompactDecoder().decode(Int.self, from: bytes) == number)
        }
        var flag: [UInt8] = []
        try CompactEncoder().encode(false, appendingTo: &flag)
        #expect(try CompactDecoder().decode(Bool.self, from: flag) == false)
        var real: [UInt8] = []
        try CompactEncoder().encode(-0.125, appendingTo: &real)
        #expect(try CompactDecoder().decode(Double.self, from: real) == -0.125)
        var data: [UInt8] = []
        try CompactEncoder().encode(Data([1, 2, 3]), appendingTo: &data)
        #expect(try CompactDecoder().decode(Data.self, from: data) == Data([1, 2, 3]))
        var wide: [UInt8] = []
        try CompactEncoder().encode(Int64.min, appendingTo: &wide)
        #expect(try CompactDecoder().decode(Int64.self, from: wide) == .min)
        var unsigned: [UInt8] = []
        try CompactEncoder().encode(UInt64.max, appendingTo: &unsigned)
        #expect(try CompactDecoder().decode(UInt64.self, from: unsigned) == .max)
        var raw: [UInt8] = []
        try CompactEncoder().encode([UInt8]([0, 255]), appendingTo: &raw)
        #expect(try CompactDecoder().decode([UInt8].self, from: raw) == [0, 255])
    }

    @Test("malformed input throws, never traps")
    func malformed() throws {
        let good = try CompactEncoder().encode(Everything())
        var rng = SystemRandomNumberGenerator()
        for length in stride(from: 0, to: good.count, by: 3) {
            #expect(throws: (any Error).self) { try CompactDecoder().decode(Everything.self, from: Array(good.prefix(length))) }
        }
        for _ in 0..<2000 {
            var mutated = good
            for _ in 0..<3 { mutated[Int.random(in: 0..<mutated.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
            _ = try? CompactDecoder().decode(Everything.self, from: mutated)
        }
        let deep = [UInt8](repeating: 0x08, count: 100_000)
        #expect(throws: (any Error).self) { try CompactDecoder().decode([[[[Int]]]].self, from: deep) }
        #expect(throws: (any Error).self) { try CompactDecoder().decode(Int8.self, from: try CompactEncoder().encode(300)) }
        #expect(throws: (any Error).self) { try CompactDecoder().decode(Int.self, from: [0x03, 0x02, 0x00]) }
    }

    @Test("envelope ids are UUIDv7, unique and time-ordered")
    func ids() {
        let ids = (0..<10_000).map { _ in EnvelopeID.make() }
        #expect(Set(ids).count == ids.count)
        for id in ids.prefix(10) {
            #expect(id.count == 36)
            // The text is the 128 bits in order: Foundation reads it back to the same text.
            #expect(UUID(uuidString: id)?.uuidString.lowercased() == id)
            #expect(Array(id)[14] == "7")
            #expect("89ab".contains(Array(id)[19]))
        }
        let later = EnvelopeID.make()
        usleep(2000)
        #expect(EnvelopeID.make() > later)
    }

    @Test("an id's text is its 128 bits as 8-4-4-4-12 lowercase hex digits")
    func idText() {
        func reference(_ high: UInt64, _ low: UInt64) -> String {
            func hex(_ value: UInt64, _ digits: Int) -> String {
                let text = String(value, radix: 16)
                return String(repeating: "0", count: digits - text.count) + text
            }
            return [hex(high >> 32, 8), hex(high >> 16 & 0xFFFF, 4), hex(high & 0xFFFF, 4), hex(low >> 48, 4), hex(low & 0xFFFF_FFFF_FFFF, 12)]
                .joined(separator: "-")
        }
        var rng = SplitMix(seed: 7)
        let edges: [(UInt64, UInt64)] = [(0, 0), (.max, .max), (0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210), (0xA0A0_A0A0_9F9F_9F9F, 0x0909_0A0A_F0F0_0F0F)]
        for (high, low) in edges + (0..<1_000).map({ _ in (rng.next(), rng.next()) }) {
            #expect(EnvelopeID.format(high: high, low: low) == reference(high, low))
        }
    }

    @Test(
        "RFC 3339 times round-trip and parse offsets",
        arguments: [
            Int64(0), 1_700_000_000_123_456_789, -86_400_000_000_001, 4_102_444_800_000_000_000,
        ])
    func times(_ nanos: Int64) {
        let text = RFC3339.format(nanos: nanos)
        #expect(RFC3339.parse(text) == nanos, "\(text)")
    }

    @Test("RFC 3339 offsets and rejects, times an Int64 of nanoseconds cannot hold included")
    func timeOffsets() {
        #expect(RFC3339.parse("2026-11-27T10:00:00+02:00") == RFC3339.parse("2026-11-27T08:00:00Z"))
        #expect(RFC3339.format(nanos: 0) == "1970-01-01T00:00:00.000000000Z")
        #expect(RFC3339.format(nanos: 1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z")
        #expect(RFC3339.format(nanos: 951_825_599_000_000_009) == "2000-02-29T11:59:59.000000009Z")
        // Every digit position, through formatting and parsing, against Foundation's calendar.
        var rng = SplitMix(seed: 3339)
        let utc = {
            var calendar = Calendar(identifier: .gregorian); calendar.timeZone = TimeZone(identifier: "UTC")!; return calendar
        }()
        for _ in 0..<1_000 {
            let nanos = Int64.random(in: -5_000_000_000_000_000_000...9_000_000_000_000_000_000, using: &rng)
            let text = RFC3339.format(nanos: nanos)
            #expect(RFC3339.parse(text) == nanos, "\(text)")
            let seconds = nanos >= 0 ? nanos / 1_000_000_000 : (nanos - 999_999_999) / 1_000_000_000
            let parts = utc.dateComponents([.year, .month, .day, .hour, .minute, .second], from: Date(timeIntervalSince1970: TimeInterval(seconds)))
            let expected = String(
                format: "%04d-%02d-%02dT%02d:%02d:%02d.%09lldZ", parts.year!, parts.month!, parts.day!, parts.hour!, parts.minute!, parts.second!,
                nanos - seconds * 1_000_000_000)
            #expect(text == expected)
        }
        for bad in ["", "2026-11-27", "2026-13-01T00:00:00Z", "2026-11-27T25:00:00Z", "2026-11-27T10:00:00", "2026-11-27T10:00:00.Z"] {
            #expect(RFC3339.parse(bad) == nil, "\(bad)")
        }
        // Well-formed, but outside what nanoseconds in an Int64 hold (1677–2262): refused, not a
        // trap (found by fuzz-envelope: a ce-time in year 6478 crashed the receiver).
        for unrepresentable in ["6478-11-27T08:00:00.000000000Z", "9999-12-31T23:59:59Z", "0000-01-01T00:00:00Z", "2262-04-11T23:47:16.854775808Z"] {
            #expect(RFC3339.parse(unrepresentable) == nil, "\(unrepresentable)")
        }
        #expect(RFC3339.parse("2262-04-11T23:47:16.854775807Z") == Int64.max)
    }

    @Test("an envelope survives the trip through a message; bad ones say why")
    func envelopeRoundTrip() throws {
        let envelope = Envelope(
            target: .init(name: "Orders.place(_:)", identifier: "$s7Example7$OrdersP5placeyyFTE"), arguments: [1, 2, 3],
            replyTo: "_switchyard.reply.x", traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            idempotencyKey: "k1", deadlineNanos: 1_800_000_000_000_000_000)
        let message = envelope.message(channel: "orders", orderingKey: "c1")
        let decoded = try message.withCMessage { try Envelope(try MessageView(validating: $0)) }
        #expect(decoded == envelope)
        // Without `sytarget` it is a call by readable name (any CloudEvents producer's): the
        // target's identifier is left for the receiver to map, which only routes with
        // readable_targets do; `syversion` and `time` may be left out then.
        var readable = message
        readable.headers.removeAll { [EnvelopeHeader.target, EnvelopeHeader.version, EnvelopeHeader.time].contains($0.key) }
        let byName = try readable.withCMessage { try Envelope(try MessageView(validating: $0)) }
        #expect(byName.target == .init(name: "Orders.place(_:)", identifier: ""))
        #expect(byName.version == Envelope.currentVersion)
        var broken = message
        broken.headers.removeAll { $0.key == EnvelopeHeader.type }
        let error = #expect(throws: EnvelopeError.self) { try broken.withCMessage { try Envelope(try MessageView(validating: $0)) } }
        #expect(error?.description.contains("ce-type") == true)
        var noVersion = message
        noVersion.headers.removeAll { $0.key == EnvelopeHeader.version }
        #expect(throws: EnvelopeError.self, "a call by identifier still says which version of the format it is") {
            try noVersion.withCMessage { try Envelope(try MessageView(validating: $0)) }
        }
        var badType = message
        badType.headers = badType.headers.map { $0.key == EnvelopeHeader.contentType ? .init($0.key, "text/xml") : $0 }
        #expect(throws: EnvelopeError.self) { try badType.withCMessage { try Envelope(try MessageView(validating: $0)) } }
        // A content type with parameters or spaces around it, as other CloudEvents producers
        // write it, is the same media type.
        for written in ["application/x-switchyard-compact; charset=binary", " application/x-switchyard-compact\t", "application/x-switchyard-compact;"] {
            var parameters = message
            parameters.headers = parameters.headers.map { $0.key == EnvelopeHeader.contentType ? .init($0.key, written) : $0 }
            let read = try parameters.withCMessage { try Envelope(try MessageView(validating: $0)) }
            #expect(read.contentType == envelope.contentType, "\(written)")
        }
    }
}

@Suite("The envelope's compact form")
struct CompactEnvelopeTests {
    static func read(_ message: Message) throws -> Envelope { try message.withCMessage { try Envelope(try MessageView(validating: $0)) } }

    @Test("every field survives the compact form; the caller's headers and trace context stay headers")
    func roundTrip() throws {
        let full = Envelope(
            target: .init(name: "Orders.place(_:)", identifier: "$s7Example7$OrdersP5placeyyFTE"), arguments: [1, 2, 3], contentType: .json,
            replyTo: "_switchyard.reply.x", traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", tracestate: "v=1",
            traceContext: "k=v", idempotencyKey: "k1", deadlineNanos: 1_800_000_000_000_000_000, headers: ["tenant": "acme"])
        let bare = Envelope(target: .init(name: "Tally.add(_:)", identifier: "$sTally"), arguments: [])
        // Only version 1 has a compact form: another version goes as CloudEvents, and is refused.
        let other = Envelope(target: .init(name: "Tally.add(_:)", identifier: "$sTally"), arguments: [], version: 2)
        #expect(other.message(channel: "t", form: .compact).header(EnvelopeHeader.version) == "2")
        let long = Envelope(target: .init(name: String(repeating: "n", count: 300), identifier: String(repeating: "i", count: 20_000)), arguments: [9])
        for envelope in [full, bare, long] {
            let message = envelope.message(channel: "orders", orderingKey: "c1", form: .compact)
            #expect(message.id == envelope.id)
            let fields = [
                EnvelopeHeader.specVersion, EnvelopeHeader.id, EnvelopeHeader.source, EnvelopeHeader.type, EnvelopeHeader.time, EnvelopeHeader.contentType,
                EnvelopeHeader.version, EnvelopeHeader.target, EnvelopeHeader.replyTo, EnvelopeHeader.idempotencyKey, EnvelopeHeader.deadline,
            ]
            #expect(message.headers.allSatisfy { !fields.contains($0.key) })
            #expect(try Self.read(message) == envelope)
            #expect(message.expiresAtNanos == envelope.deadlineNanos)
        }
        let headers = Dictionary(full.message(channel: "orders", form: .compact).headers.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
        #expect(headers == ["ce-traceparent": full.traceparent!, "ce-tracestate": "v=1", "ce-sytracecontext": "k=v", "ce-tenant": "acme"])
    }

    @Test("a call packed without an envelope is the message its envelope would make, in either form")
    func packedWithoutEnvelope() throws {
        let full = Envelope(
            target: .init(name: "Orders.place(_:)", identifier: "$s7Example7$OrdersP5placeyyFTE"), arguments: [1, 2, 3], contentType: .json,
            replyTo: "_switchyard.reply.x", traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", tracestate: "v=1",
            traceContext: "k=v", idempotencyKey: "k1", deadlineNanos: 1_800_000_000_000_000_000, headers: ["tenant": "acme", "a": "b"])
        let bare = Envelope(target: .init(name: "Tally.add(_:)", identifier: "$sTally"), arguments: [])
        let byName = Envelope(target: .init(name: "Tally.add(_:)", identifier: ""), arguments: [4])
        for envelope in [full, bare, byName] {
            for form in [Envelope.Form.compact, .cloudEvents] {
                let packed = Envelope.message(
                    id: envelope.id, target: envelope.target, arguments: envelope.arguments, contentType: envelope.contentType,
                    replyTo: envelope.replyTo, traceparent: envelope.traceparent, tracestate: envelope.tracestate,
                    traceContext: envelope.traceContext, idempotencyKey: envelope.idempotencyKey, deadlineNanos: envelope.deadlineNanos,
                    createdAtNanos: envelope.createdAtNanos, headers: envelope.headers, channel: "orders", orderingKey: "c1",
                    deliverAtNanos: 42, form: form)
                #expect(packed == envelope.message(channel: "orders", orderingKey: "c1", deliverAtNanos: 42, form: form), "\(form)")
                #expect(try Self.read(packed) == envelope, "\(form)")
            }
        }
    }

    @Test("a damaged compact prefix is refused with the reason, never a trap; a foreign message is still 'not an envelope'")
    func damaged() throws {
        let envelope = Envelope(
            target: .init(name: "Orders.place(_:)", identifier: "$s7Example7$OrdersP5placeyyFTE"), arguments: [7], replyTo: "r",
            idempotencyKey: "k", deadlineNanos: 5)
        let body = envelope.message(channel: "orders", form: .compact).body
        // Cut short at every length, it fails with a reason (the full body reads).
        for length in 4..<body.count - 1 {
            let cut = Message(id: envelope.id, channel: "orders", body: Array(body.prefix(length)))
            let error = #expect(throws: EnvelopeError.self, "\(length) bytes") { try Self.read(cut) }
            #expect(error?.description.contains("compact envelope") == true || error?.description.contains("empty") == true, "\(error!)")
        }
        var future = body
        future[3] = 2
        let versionError = #expect(throws: EnvelopeError.self) { try Self.read(Message(id: "x", channel: "orders", body: future)) }
        #expect(versionError?.description.contains("envelope version 2 is not supported") == true, "\(versionError!)")
        var unknownFlag = body
        unknownFlag[4] |= 0x80
        let flagError = #expect(throws: EnvelopeError.self) { try Self.read(Message(id: "x", channel: "orders", body: unknownFlag)) }
        #expect(flagError?.description.contains("unknown flags") == true)
        let foreign = #expect(throws: EnvelopeError.self) { try Self.read(Message(id: "plain", channel: "orders", body: [1, 2, 3])) }
        #expect(foreign?.description.contains("not a Switchyard envelope") == true)
        // Random damage anywhere in the prefix: an error or a call, never a crash.
        var rng = SplitMix(seed: 11)
        for _ in 0..<2_000 {
            var mutated = body
            for _ in 0..<3 { mutated[Int.random(in: 4..<mutated.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
            _ = try? Self.read(Message(id: "m", channel: "orders", body: mutated))
        }
    }

    @Test("the compact reader's rules: a ce-specversion header means CloudEvents; other field headers on a compact call are ignored; a negative deadline is refused")
    func readerRules() throws {
        // A CloudEvents call whose arguments happen to start like a compact body stays CloudEvents.
        let lookalike = Envelope(target: .init(name: "Tally.add(_:)", identifier: "$sTally"), arguments: Array("SYE\u{1}\u{0}abc".utf8))
        #expect(try Self.read(lookalike.message(channel: "t", form: .cloudEvents)) == lookalike)
        // Field headers beside a compact body change nothing: the body says what the call is.
        let envelope = Envelope(target: .init(name: "Tally.add(_:)", identifier: "$sTally"), arguments: [4], deadlineNanos: 5)
        var stray = envelope.message(channel: "t", form: .compact)
        stray.headers += [Header(EnvelopeHeader.replyTo, "elsewhere"), Header(EnvelopeHeader.target, "$sOther"), Header(EnvelopeHeader.type, "Other.x()")]
        #expect(try Self.read(stray) == envelope)
        // The deadline is bytes 13..<21 (magic 3, version 1, flags 1, created 8): made negative.
        var body = envelope.message(channel: "t", form: .compact).body
        withUnsafeBytes(of: Int64(-5).littleEndian) { body.replaceSubrange(13..<21, with: $0) }
        let negative = #expect(throws: EnvelopeError.self) { try Self.read(Message(id: envelope.id, channel: "t", body: body)) }
        #expect(negative?.description.contains("a negative deadline") == true, "\(String(describing: negative))")
    }

    @Test(
        "an oversized idempotency key is refused in either form, an empty one read as none from CloudEvents (it filed every call under one inbox record); a deadline before 1970 is refused"
    )
    func keyAndDeadlineRules() throws {
        let keyless = Envelope(target: .init(name: "Tally.add(_:)", identifier: "$sTally"), arguments: [4], idempotencyKey: "")
        let read = try Self.read(keyless.message(channel: "t", form: .cloudEvents)).idempotencyKey
        #expect(read == nil || read == keyless.id, "\(String(describing: read))")
        for form in [Envelope.Form.compact, .cloudEvents] {
            for key in form == .compact ? ["", String(repeating: "k", count: 201)] : [String(repeating: "k", count: 201)] {
                let envelope = Envelope(target: .init(name: "Tally.add(_:)", identifier: "$sTally"), arguments: [4], idempotencyKey: key)
                let error = #expect(throws: EnvelopeError.self, "\(form) '\(key.prefix(3))'") { try Self.read(envelope.message(channel: "t", form: form)) }
                #expect(error?.description.contains("1 to 200 bytes") == true, "\(String(describing: error))")
            }
            let fine = Envelope(target: .init(name: "Tally.add(_:)", identifier: "$sTally"), arguments: [4], idempotencyKey: "order-7")
            #expect(try Self.read(fine.message(channel: "t", form: form)) == fine)
        }
        let envelope = Envelope(target: .init(name: "Tally.add(_:)", identifier: "$sTally"), arguments: [4], deadlineNanos: 5_000_000_000)
        var message = envelope.message(channel: "t", form: .cloudEvents)
        message.headers = message.headers.map { $0.key == EnvelopeHeader.deadline ? Header(EnvelopeHeader.deadline, "1969-12-31T23:59:59Z") : $0 }
        let early = #expect(throws: EnvelopeError.self) { try Self.read(message) }
        #expect(early?.description.contains("before 1970") == true, "\(String(describing: early))")
    }

    @Test("what the host reads off an unreadable or dead-lettered call, and a replay without its reply, work in both forms")
    func summaryAndReplay() throws {
        let envelope = Envelope(
            target: .init(name: "Orders.place(_:)", identifier: "$sOrders"), arguments: [4], contentType: .json, replyTo: "_switchyard.reply.y",
            deadlineNanos: 1_800_000_000_123_456_789)
        for form in [Envelope.Form.cloudEvents, .compact] {
            var message = envelope.message(channel: "orders", form: form)
            message.headers.append(Header("x-kept", "yes"))
            let summary = CallSummary(message)
            #expect(summary.id == envelope.id)
            #expect(summary.type == "Orders.place(_:)")
            #expect(summary.identifier == "$sOrders")
            #expect(summary.replyTo == "_switchyard.reply.y")
            #expect(summary.deadlineNanos == envelope.deadlineNanos)
            #expect(summary.contentType == .json)
            #expect(summary.form == form)
            #expect(message.withCMessage { Envelope.Form(of: try! MessageView(validating: $0)) } == form)
            let replay = Envelope.withoutReply(message)
            let read = try Self.read(replay)
            #expect(read.replyTo == nil && read.deadlineNanos == 0)
            #expect(read.id == envelope.id && read.target == envelope.target && read.arguments == envelope.arguments)
            #expect(CallSummary(replay).replyTo == nil)
            #expect(replay.expiresAtNanos == 0 && replay.header("x-kept") == "yes")
        }
        // Another system's producer says JSON with a plain Content-Type (CloudEvents' HTTP binary
        // mode): a call refused unread is answered in JSON, which it reads.
        var foreign = envelope.message(channel: "orders", form: .cloudEvents)
        foreign.headers = foreign.headers.filter { $0.key != EnvelopeHeader.contentType } + [Header("Content-Type", "application/json; charset=utf-8")]
        #expect(CallSummary(foreign).contentType == .json)
        // A message that is not an envelope at all: only its id.
        let plain = CallSummary(Message(id: "plain", channel: "orders", body: [1]))
        #expect(plain.replyTo == nil && plain.type == nil)
    }

    static func readReply(_ message: Message) throws -> Reply { try message.withCMessage { try Reply(try MessageView(validating: $0)) } }

    @Test("a reply survives both forms; a damaged compact reply is refused with the reason, never a trap")
    func replies() throws {
        let correlation = EnvelopeID.make()
        for form in [Envelope.Form.cloudEvents, .compact] {
            for (outcome, encoding, body) in [("return", ArgumentEncoding.compact, [UInt8]()), ("throw", .json, Array(#"{"type":"E","message":"no"}"#.utf8))] {
                let reply = Reply(correlationID: correlation, outcome: outcome, body: body, encoding: encoding)
                let message = reply.message(id: EnvelopeID.make(), channel: "_switchyard.reply.x", deadlineNanos: 42, form: form)
                #expect(try Self.readReply(message) == reply, "\(form) \(outcome)")
                #expect(message.expiresAtNanos == 42 && message.flags.contains(.dropWhenExpired))
                #expect(message.headers.isEmpty == (form == .compact))
            }
        }
        // A CloudEvents reply whose value happens to start with the compact magic is CloudEvents.
        let lookalike = Reply(correlationID: correlation, outcome: "return", body: Array("SYR\u{1}\u{0}\u{3}abc".utf8), encoding: .compact)
        #expect(try Self.readReply(lookalike.message(id: "r", channel: "c", deadlineNanos: 0, form: .cloudEvents)) == lookalike)
        // A reply another CloudEvents producer wrote: Content-Type with parameters is read; an
        // unknown content type or outcome is refused rather than misread.
        func foreign(_ headers: [Header]) throws -> Reply {
            try Self.readReply(Message(id: "r", channel: "c", headers: [Header(EnvelopeHeader.correlationID, correlation)] + headers, body: Array("1".utf8)))
        }
        #expect(try foreign([Header("content-type", "application/json; charset=utf-8")]).encoding == .json)
        #expect(try foreign([]).encoding == .compact)
        let badType = #expect(throws: EnvelopeError.self) { try foreign([Header(EnvelopeHeader.contentType, "text/plain")]) }
        #expect(badType?.description.contains("content type 'text/plain' is not supported") == true)
        let badOutcome = #expect(throws: EnvelopeError.self) { try foreign([Header(EnvelopeHeader.outcome, "maybe")]) }
        #expect(badOutcome?.description.contains("expected return or throw") == true)
        let body = Reply(correlationID: correlation, outcome: "throw", body: [1, 2, 3], encoding: .json)
            .message(id: "r", channel: "c", deadlineNanos: 0, form: .compact).body
        for length in 4..<body.count - 3 {
            let error = #expect(throws: EnvelopeError.self, "\(length) bytes") { try Self.readReply(Message(id: "r", channel: "c", body: Array(body.prefix(length)))) }
            #expect(error?.description.contains("malformed compact reply") == true, "\(error!)")
        }
        var future = body
        future[3] = 2
        let versionError = #expect(throws: EnvelopeError.self) { try Self.readReply(Message(id: "r", channel: "c", body: future)) }
        #expect(versionError?.description.contains("reply version 2 is not supported") == true)
        var unknownFlag = body
        unknownFlag[4] |= 0x80
        let flagError = #expect(throws: EnvelopeError.self) { try Self.readReply(Message(id: "r", channel: "c", body: unknownFlag)) }
        #expect(flagError?.description.contains("unknown flags") == true)
        // Neither form: no correlation id to answer.
        let foreign = #expect(throws: EnvelopeError.self) { try Self.readReply(Message(id: "plain", channel: "c", body: [1, 2, 3])) }
        #expect(foreign?.description.contains("not a Switchyard reply") == true)
        var rng = SplitMix(seed: 12)
        for _ in 0..<2_000 {
            var mutated = body
            for _ in 0..<2 { mutated[Int.random(in: 3..<mutated.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
            _ = try? Self.readReply(Message(id: "m", channel: "c", body: mutated))
        }
    }
}

@Suite("Envelope reading with strings kept between calls")
struct EnvelopeStringsTests {
    /// A receiver keeps the strings it made for the last call's source, type, target and reply
    /// channel and hands them out again for the same bytes: a call with other values must never
    /// get stale ones, in either form.
    @Test("the strings kept from the last call are reused only for the same bytes", arguments: [Envelope.Form.cloudEvents, .compact])
    func reuse(form: Envelope.Form) throws {
        func envelope(_ n: Int, source: String, replyTo: String? = nil) -> Envelope {
            Envelope(
                target: .init(name: "Orders.m\(n)(_:)", identifier: "$s7Example7$OrdersP2m\(n)yyFTE"), arguments: [UInt8(n)],
                replyTo: replyTo, source: source)
        }
        let strings = EnvelopeStrings()
        let calls = [
            envelope(1, source: "switchyard://a/1", replyTo: "_reply.caller-one.0123456789"), envelope(2, source: "switchyard://a/1", replyTo: "_reply.caller-one.0123456789"),
            envelope(1, source: "switchyard://b/2"), envelope(1, source: "switchyard://b/2", replyTo: "_reply.caller-two.0123456789"),
            envelope(3, source: "switchyard://c/3", replyTo: "_reply.caller-one.0123456789"),
        ]
        for call in calls + calls.reversed() {
            let read = try call.message(channel: "orders", form: form).withCMessage { try Envelope(try MessageView(validating: $0), reusing: strings) }
            #expect(read == call)
        }
        // A call by readable name (no target identifier) between two by identifier.
        var readable = calls[0].message(channel: "orders")
        readable.headers.removeAll { $0.key == EnvelopeHeader.target }
        let byName = try readable.withCMessage { try Envelope(try MessageView(validating: $0), reusing: strings) }
        #expect(byName.target.identifier.isEmpty)
        let again = try calls[0].message(channel: "orders").withCMessage { try Envelope(try MessageView(validating: $0), reusing: strings) }
        #expect(again == calls[0])
    }
}
