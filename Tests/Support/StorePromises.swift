import Foundation
import SwitchyardABI
import Synchronization
import Testing

/// What every store promises about a record that no longer decodes, checked on `client` (a
/// transport over a store holding `a`, `b`, `c` on `work`, `b`'s record corrupt): the others are
/// delivered in order — at once, one lease at a time — and the corrupt one is dead-lettered with
/// its raw bytes and a reason. For SQLite (`DurableQueueTests`) and PostgreSQL (`PostgresTests`).
package func expectCorruptRecordDeadLettered(_ client: TransportClient, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let live = Guarded<[String]>([])
    let dead = Guarded<[Message]>([])
    _ = try client.subscribe(SubscribeOptions(channel: "work.dlq")) { delivery, view in
        dead.withLock { $0.append(view.copy()) }
        try? client.settle(delivery, .ack)
        return .ok
    }
    // One at a time: the lease that meets the corrupt record has room for it alone.
    _ = try client.subscribe(SubscribeOptions(channel: "work", maxInFlight: 1)) { delivery, view in
        live.withLock { $0.append(view.id) }
        try? client.settle(delivery, .ack)
        return .ok
    }
    #expect(waitUntil(10) { live.withLock { $0.count } >= 2 && dead.withLock { !$0.isEmpty } }, sourceLocation: sourceLocation)
    #expect(live.withLock { $0 } == ["a", "c"], sourceLocation: sourceLocation)
    let letter = try #require(dead.withLock { $0.first }, sourceLocation: sourceLocation)
    #expect(letter.id.hasPrefix("corrupt-"), sourceLocation: sourceLocation)
    #expect(letter.body == [0xDE, 0xAD, 0xBE, 0xEF], sourceLocation: sourceLocation)
    #expect(letter.header("sy-dlq-reason")?.isEmpty == false, sourceLocation: sourceLocation)
}

/// What every transport's `max_message_bytes` promises, checked on `client` (a transport
/// configured with `max_message_bytes: 1000`): the whole message counts — a 200-byte body with
/// 900 bytes of headers is refused with `.tooLarge` naming the key, and the same body alone is
/// stored.
package func expectSizeLimitCountsWholeMessage(_ client: TransportClient, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let heavy = Message(id: "heavy", channel: "c", headers: [Header("x-note", String(repeating: "n", count: 900))], body: Array(repeating: 1, count: 200))
    let error = #expect(throws: TransportError.self, sourceLocation: sourceLocation) { try client.publish(heavy) }
    #expect(error?.code == .tooLarge, sourceLocation: sourceLocation)
    #expect(error?.message.contains("max_message_bytes is 1000") == true, "\(String(describing: error))", sourceLocation: sourceLocation)
    try client.publish(Message(id: "light", channel: "c", body: Array(repeating: 1, count: 200)))
}

/// What every durable topic promises about `retain` (3, on `client`): it keeps the last 3
/// messages of each channel, a quiet one beside a busy one too. Trimming by the table's id,
/// shared by every channel, left a quiet channel with 2 of its last 100. For SQLite
/// (`DurableQueueTests`) and PostgreSQL (`PostgresTests`).
package func expectRetainedPerChannel(_ client: TransportClient, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    for index in 0..<20 {
        try client.publish(Message(id: "quiet-\(index)", channel: "quiet"))
        try client.publish(batch: (0..<10).map { Message(id: "busy-\(index)-\($0)", channel: "busy") })
    }
    for (channel, expected) in [("quiet", ["quiet-17", "quiet-18", "quiet-19"]), ("busy", ["busy-19-7", "busy-19-8", "busy-19-9"])] {
        let late = Guarded<[String]>([])
        _ = try client.subscribe(SubscribeOptions(channel: channel, group: "late", start: .earliest)) { delivery, view in
            late.withLock { $0.append(view.id) }
            try? client.settle(delivery, .ack)
            return .ok
        }
        #expect(await eventually(30) { late.withLock { $0.count } >= 3 }, sourceLocation: sourceLocation)
        try await Task.sleep(for: .milliseconds(300))  // nothing more comes
        #expect(late.withLock { $0 } == expected, "\(channel)", sourceLocation: sourceLocation)
    }
}
