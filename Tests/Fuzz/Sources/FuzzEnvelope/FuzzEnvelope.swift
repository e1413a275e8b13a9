// libFuzzer target: envelope and argument decoding, fed arbitrary bytes. A crash, leak or hang
// here is a receiver that a hostile message could take down. Run: scripts/fuzz envelope.
import SwitchyardABI
import SwitchyardWire

/// The input is split into a header block and a body: the first byte says how many headers
/// follow, each as two NUL-terminated strings; the rest is the body (the arguments).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    var headers: [Header] = []
    var cursor = 0
    if !bytes.isEmpty {
        let count = Int(bytes[0] % 16)
        cursor = 1
        func string() -> String {
            let start = cursor
            while cursor < bytes.count, bytes[cursor] != 0 { cursor += 1 }
            defer { cursor = min(bytes.count, cursor + 1) }
            return String(decoding: bytes[start..<cursor], as: UTF8.self)
        }
        for _ in 0..<count where cursor < bytes.count { headers.append(Header(string(), string())) }
    }
    let body = Array(bytes[min(cursor, bytes.count)...])
    let message = Message(id: "fuzz", channel: "fuzz", headers: headers, body: body)
    _ = message.withCMessage { pointer -> Envelope? in
        guard let view = try? MessageView(validating: pointer) else { return nil }
        return try? Envelope(view)
    }
    // The arguments as the receiver reads them, for a few argument shapes.
    _ = try? CompactDecoder().decode(FuzzOrder.self, from: body)
    _ = try? CompactDecoder().decode([String: [Int]].self, from: body)
    _ = try? CompactDecoder().decode([FuzzOrder].self, from: body)
    _ = try? CompactDecoder().decode(Int8.self, from: body)
    _ = RFC3339.parse(String(decoding: body, as: UTF8.self))
    return 0
}

struct FuzzOrder: Codable {
    var id: Int
    var customer: String
    var amount: Double?
    var items: [String]
    var flags: [String: Bool]
}
