import Testing

@testable import NATSTransport

/// The NATS plugin's guard against a message JetStream sends again as new (delivery count 1 a
/// second time: nats-server before 2.10.14, nats-io/nats-server#5305), which would otherwise read
/// as a first attempt.
@Suite("NATS: first deliveries sent again")
struct NATSFirstDeliveriesTests {
    @Test("a first delivery of a sequence the subscription already had is one sent again; any other is a first delivery")
    func sentAgain() {
        var seen = NATSTransport.FirstDeliveries()
        // Gaps allowed (other members took 7 and 8); then 9 again, 6 again, 7 (which another
        // process's request missed: a first delivery here), 10.
        let answers = [5, 6, 9, 9, 6, 7, 10].map { seen.isFirst(UInt64($0), storedAt: Int64($0) * 1000) }
        #expect(answers == [true, true, true, false, false, true, true])
        // The same number stored at another time: a stream made again, a new message.
        let renumbered = seen.isFirst(5, storedAt: 1)
        let again = seen.isFirst(5, storedAt: 1)
        #expect(renumbered && !again)
    }

    @Test("only the latest 4,096 are kept")
    func bounded() {
        var seen = NATSTransport.FirstDeliveries()
        let last = UInt64(NATSTransport.FirstDeliveries.capacity + 10)
        for sequence in UInt64(1)...last { _ = seen.isFirst(sequence, storedAt: 0) }
        let oldest = seen.isFirst(3, storedAt: 0)
        let latest = seen.isFirst(last, storedAt: 0)
        #expect(oldest, "forgotten: among the oldest")
        #expect(!latest, "the latest is kept")
    }
}
