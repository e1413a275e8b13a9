import SwitchyardABI
import SwitchyardPluginKit
import Testing

/// What the Swift plugin kit does for a plugin that does not override a call.
@Suite("Plugin kit defaults")
struct PluginKitDefaultsTests {
    /// A transport that stores two messages, then fails: an engine that takes one at a time.
    private final class FailsOnThird: TransportInstance, @unchecked Sendable {
        // @unchecked: one test's thread only.
        var stored: [String] = []
        func publish(_ message: MessageView) throws(TransportError) {
            if stored.count == 2 { throw TransportError(.unavailable, "the engine went away") }
            stored.append(message.id)
        }
        func subscribe(_ options: SubscribeOptions, _ subscriber: Subscriber) throws(TransportError) -> SubscriptionID { 1 }
        func unsubscribe(_ id: SubscriptionID) throws(TransportError) {}
        func settle(_ delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {}
    }

    /// The default `publish(batch:)` publishes one message at a time, so it is not all or
    /// nothing: failing midway, its error says how much was stored (the header's rule for
    /// `publish_batch`), with the failure's own code.
    @Test("the default publish(batch:) failing midway says how many messages before it were stored")
    func partialBatchSaysSo() throws {
        let transport = FailsOnThird()
        let batch = (0..<4).map { Message(id: "m-\($0)", channel: "c", body: [UInt8($0)]) }
        let error = batch.withCMessages { first, count in
            #expect(throws: TransportError.self) {
                let views = try (0..<count).map { index throws(TransportError) in try MessageView(validating: SizedStruct.element(first, index)) }
                try transport.publish(batch: views)
            }
        }
        #expect(transport.stored == ["m-0", "m-1"])
        #expect(error?.code == .unavailable)
        #expect(error?.message.contains("the engine went away (message 3 of 4: the 2 before it were stored") == true, "\(String(describing: error))")
    }
}
