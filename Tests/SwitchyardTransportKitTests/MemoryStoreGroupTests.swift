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

    @Test("lease records number about the leases in flight, and leases of different lengths each expire on time")
    func leaseRecords() throws {
        let store = MemoryStore(fanOut: false)
        try store.addGroup(channel: "c", group: "", start: .new)
        // Settled leases with an hour to run: their records leave as the next leases are made.
        for round in 0..<100 {
            try store.append((0..<100).map { Message(id: "m\(round)-\($0)", channel: "c") })
            let leased = try store.lease(channel: "c", group: "", limit: 100, now: 0, leaseUntil: 3_600_000_000_000)
            #expect(leased.count == 100)
            _ = store.ack(batch: leased.map(\.ref))
        }
        #expect(store.leaseRecordCount <= 100, "\(store.leaseRecordCount) lease records for 0 leases in flight")
        // A long lease, then a short one made after it: the short one expires first.
        try store.append([Message(id: "long", channel: "c"), Message(id: "short", channel: "c")])
        let long = try store.lease(channel: "c", group: "", limit: 1, now: 0, leaseUntil: 1_000)
        let short = try store.lease(channel: "c", group: "", limit: 1, now: 0, leaseUntil: 100)
        #expect(long.map(\.message.id) == ["long"] && short.map(\.message.id) == ["short"])
        #expect(store.nextWakeup(channel: "c", group: "", now: 0) == 100)
        #expect(try store.lease(channel: "c", group: "", limit: 10, now: 99, leaseUntil: 2_000).isEmpty)
        #expect(try store.lease(channel: "c", group: "", limit: 10, now: 100, leaseUntil: 2_000).map(\.message.id) == ["short"])
        #expect(try store.lease(channel: "c", group: "", limit: 10, now: 1_000, leaseUntil: 3_000).map(\.message.id) == ["long"])
        #expect(store.counts().inFlight == 2)
    }

    @Test("an extended lease wakes the dispatcher at its new end, not its old one, and expires then; a stale ref cannot extend")
    func extendedLease() throws {
        let store = MemoryStore(fanOut: false)
        try store.addGroup(channel: "c", group: "", start: .new)
        try store.append([Message(id: "held", channel: "c"), Message(id: "early", channel: "c")])
        let held = try store.lease(channel: "c", group: "", limit: 1, now: 0, leaseUntil: 100)
        let early = try store.lease(channel: "c", group: "", limit: 1, now: 0, leaseUntil: 50)
        #expect(store.extend([(held[0].ref, 1_000)]) == [nil])
        // The old record (100) would wake the dispatcher at once from then on, over and over,
        // while the group had no room to lease: it is dropped, and the next wake-up is the new end.
        #expect(try store.lease(channel: "c", group: "", limit: 10, now: 60, leaseUntil: 5_000).map(\.message.id) == ["early"])
        #expect(store.nextWakeup(channel: "c", group: "", now: 150) == 1_000)
        #expect(try store.lease(channel: "c", group: "", limit: 10, now: 150, leaseUntil: 5_000).isEmpty, "extended: not due at its old end")
        #expect(try store.lease(channel: "c", group: "", limit: 10, now: 1_000, leaseUntil: 5_000).map(\.message.id) == ["held"])
        // The first lease's ref is stale now; so is one already settled.
        #expect(store.extend([(held[0].ref, 9_000)]).first??.code == .notFound)
        _ = early
    }
}
