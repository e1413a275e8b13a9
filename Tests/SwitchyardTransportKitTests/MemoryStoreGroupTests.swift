import SwitchyardABI
import Testing

@testable import SwitchyardTransportKit

@Suite("MemoryStore: groups found again")
struct MemoryStoreGroupTests {
    /// The store remembers the last few groups it found (a dispatcher asks for the same ones over
    /// and over): with more groups than it remembers, asked in turns, each must still get exactly
    /// its own messages.
    @Test("more groups than the store remembers each get their own messages")
    func manyGroups() throws {
        let store = MemoryStore(fanOut: true)
        let channels = (0..<3).map { "_switchyard.reply.host-\($0)-0123456789ab" }
        let groups = ["g1", "g2", "a-much-longer-group-name-than-sixteen-bytes"]
        for channel in channels {
            for group in groups { try store.addGroup(channel: channel, group: group, start: .new) }
        }
        try store.append(channels.flatMap { channel in (0..<4).map { Message(id: "\(channel)#\($0)", channel: channel) } })
        var seen: [String: [String]] = [:]
        for round in 0..<5 {
            for channel in channels {
                for group in groups {
                    let leased = try store.lease(channel: channel, group: group, limit: 1, now: 0, leaseUntil: .max)
                    #expect(leased.count == (round < 4 ? 1 : 0), "\(channel) \(group) round \(round)")
                    for item in leased {
                        #expect(item.message.channel == channel)
                        seen["\(channel)/\(group)", default: []].append(item.message.id)
                        try store.ack(item.ref)
                    }
                }
            }
        }
        for channel in channels {
            for group in groups { #expect(seen["\(channel)/\(group)"] == (0..<4).map { "\(channel)#\($0)" }) }
        }
        #expect(store.counts().depth == 0)
    }
}
