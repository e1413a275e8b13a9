import CSwitchyard
import Foundation
import SwitchyardABI
import SwitchyardConformance
import SwitchyardHost
import SwitchyardLoader
import SwitchyardTestSupport
import Testing

/// Plugins and hosts of different ABI minors work together: plugins built from the 1.0 and 1.1
/// headers (frozen in Fixtures/abi-1.x) load and pass conformance with this host, and this SDK's
/// readers accept the smaller structs of older writers.
@Suite("ABI compatibility across minors")
struct ABICompatibilityTests {
    static let fixtures = Repository.fixtures

    /// Builds a fixture plugin from an old header and loads it.
    static func legacyPlugin(_ source: String, in dir: TemporaryDirectory, name: String) async throws -> LoadedPlugin {
        let output = dir.file(name)
        let built = try await CCompiler.compile(source, to: output, flags: ["-std=c99", "-O1", "-shared", "-fPIC", "-w", "-lpthread"])
        try #require(built.status == 0)
        return try PluginLoader().load(path: output)
    }

    @Test(
        "a plugin built from an older header loads and passes conformance",
        arguments: [
            ("abi-1.0/plugin.c", 0 as UInt16), ("abi-1.1/plugin.c", 1), ("abi-1.1/legacy_batch.c", 1),
        ])
    func olderPluginsPass(_ source: String, _ minor: UInt16) async throws {
        let dir = try TemporaryDirectory()
        let plugin = try await Self.legacyPlugin(Self.fixtures + "/" + source, in: dir, name: "libswitchyard-legacy.so")
        #expect(plugin.abi.major == 1 && plugin.abi.minor == minor)
        let results = try await offPool { ConformanceSuite.forPlugin(plugin).run() }
        for result in results where result.failed { Issue.record("\(source): \(result)") }
        // publish-batch goes through the plugin's own publish_batch in legacy_batch.c: the host
        // must lay the batch out at the 1.1 message size for it.
        #expect(results.contains { $0.name == "publish-batch" && !$0.failed && !$0.skipped })
        #expect(results.contains { $0.name == "deliver-batch" && !$0.failed && !$0.skipped })
        #expect(results.contains { $0.name == "settle-batch" && !$0.failed && !$0.skipped })
        #expect(results.contains { $0.name == "publish-and-settle" && !$0.failed && !$0.skipped })
        // The C template of those days re-offered a message given back inside its own deliver on
        // the same stack: the check ends the loop and passes it, with a note that says so.
        let givenBack = results.first { $0.name == "give-back-inside-deliver" }
        #expect(givenBack?.note?.contains("publish did not return") == true, "\(source): \(givenBack.map { "\($0)" } ?? "no check")")
    }

    @Test("a message from an older writer reads its new fields as zero, never past its struct_size")
    func olderMessageReadsZero() throws {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<sy_message>.size, alignment: 8)
        defer { raw.deallocate() }
        // A 1.0 message followed by bytes that are not part of it.
        raw.initializeMemory(as: UInt8.self, repeating: 0xFF, count: MemoryLayout<sy_message>.size)
        try Message(id: "old", channel: "c", body: [1]).withCMessage { message in
            raw.copyMemory(from: message, byteCount: SizedStruct.messageV1_0)
            raw.storeBytes(of: UInt32(SizedStruct.messageV1_0), as: UInt32.self)
            let view = try MessageView(validating: raw.assumingMemoryBound(to: sy_message.self))
            #expect(view.expiresAtNanos == 0 && view.flags.isEmpty, "read \(view.expiresAtNanos), \(view.flags) past struct_size")
            #expect(view.copy() == Message(id: "old", channel: "c", body: [1]))
        }
        raw.storeBytes(of: UInt32(SizedStruct.messageV1_0 - 8), as: UInt32.self)
        let tooSmall = #expect(throws: TransportError.self) { _ = try MessageView(validating: raw.assumingMemoryBound(to: sy_message.self)) }
        #expect(tooSmall?.message.contains("smaller than ABI 1.0") == true)
    }

    @Test("an older host's subscribe options never ask to settle on delivery, whatever their padding holds")
    func olderOptionsNeverSettleOnDelivery() throws {
        let size = MemoryLayout<sy_subscribe_options>.size
        let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { raw.deallocate() }
        try SubscribeOptions(channel: "c", settleOnDelivery: true).withCOptions { options in
            raw.copyMemory(from: options, byteCount: size)
            #expect(try SubscribeOptions(copying: raw.assumingMemoryBound(to: sy_subscribe_options.self)).settleOnDelivery)
            // A 1.3 writer: struct_size 56 (the 1.0 fields and their padding), the padding not
            // zeroed, and what follows not its own.
            raw.storeBytes(of: UInt32(56), as: UInt32.self)
            for offset in SizedStruct.subscribeOptionsV1_0..<size { raw.storeBytes(of: 0xFF, toByteOffset: offset, as: UInt8.self) }
            let old = try SubscribeOptions(copying: raw.assumingMemoryBound(to: sy_subscribe_options.self))
            #expect(!old.settleOnDelivery && old.channel == "c")
        }
    }

    /// `count` messages published on `channel` and delivered to a subscriber that leaves them
    /// unsettled: their delivery ids.
    static func unsettledDeliveries(_ count: Int, on channel: String, of transport: Transport) async throws -> [DeliveryID] {
        let inbox = Collector()
        _ = try transport.client.subscribe(SubscribeOptions(channel: channel, maxInFlight: 10), handler: inbox.handler(client: transport.client, settle: nil))
        for index in 0..<count { try transport.client.publish(Message(id: "\(channel)-\(index)", channel: channel)) }
        #expect(await eventually { inbox.count == count }, "got \(inbox.count) of \(count)")
        return inbox.received.map(\.delivery)
    }

    @Test("settle_batch refuses settlements smaller than ABI 1.0's, one by one, and settles none of them")
    func undersizedSettlementsRefused() async throws {
        let plugin = try BuildProducts.plugin("queue")
        let transport = try Transport(name: "q", plugin: plugin, configJSON: "{}")
        defer { transport.close() }
        let deliveries = try await Self.unsettledDeliveries(2, on: "small", of: transport)
        // Zeroed settlements read as acknowledgements past their size: a reader that looked
        // there would settle both. Sizes 0 (every element at the same address) and 16.
        for size in [0, 16] as [UInt32] {
            let raw = UnsafeMutableRawPointer.allocate(byteCount: 2 * MemoryLayout<sy_settlement>.size, alignment: 8)
            defer { raw.deallocate() }
            raw.initializeMemory(as: UInt8.self, repeating: 0, count: 2 * MemoryLayout<sy_settlement>.size)
            raw.storeBytes(of: size, as: UInt32.self)
            raw.storeBytes(of: size, toByteOffset: Int(size), as: UInt32.self)
            var statuses = [sy_status](repeating: SY_OK, count: 2)
            var error = sy_error()
            let status = plugin.descriptor.pointee.settle_batch!(
                transport.client.instance, deliveries, raw.assumingMemoryBound(to: sy_settlement.self), 2, &statuses, &error)
            #expect(status == SY_ERR_INVALID_ARGUMENT && statuses == [SY_ERR_INVALID_ARGUMENT, SY_ERR_INVALID_ARGUMENT], "size \(size): \(status), \(statuses)")
        }
        // Neither was settled: both acknowledge now.
        for delivery in deliveries { try transport.client.settle(delivery, .ack) }
    }

    @Test("a settle_batch that fails without a status for any delivery reports none of them settled")
    func settleBatchFailingWhole() async throws {
        let plugin = try BuildProducts.plugin("queue")
        let transport = try Transport(name: "q", plugin: plugin, configJSON: "{}")
        defer { transport.close() }
        let deliveries = try await Self.unsettledDeliveries(3, on: "whole", of: transport)
        // The same plugin, but its settle_batch fails as a whole and writes no status.
        let failing = UnsafeMutablePointer<sy_plugin_descriptor>.allocate(capacity: 1)
        defer { failing.deallocate() }
        failing.initialize(to: plugin.descriptor.pointee)
        failing.pointee.settle_batch = { _, _, _, _, _, _ in SY_ERR_INTERNAL }
        let client = TransportClient(descriptor: failing, instance: transport.client.instance)
        let paired = try client.settle(batch: deliveries.map { ($0, Settlement.ack) })
        let same = try client.settle(batch: deliveries, .ack)
        for results in [paired, same] {
            #expect(results.count == 3 && results.allSatisfy { $0?.code == .internalError }, "\(results)")
        }
        // Nothing was settled: all three acknowledge now.
        for delivery in deliveries { try transport.client.settle(delivery, .ack) }
    }

    @Test("sizes the Swift SDK reads by match the header's ABI 1.0 sizes")
    func sizes() {
        #expect(SizedStruct.messageV1_0 == 104 && SizedStruct.messageV1_3 == 120)
        #expect(SizedStruct.subscriberV1_0 == 24 && SizedStruct.subscriberV1_3 == 32)
        #expect(SizedStruct.settlementV1_0 == 32 && SizedStruct.subscribeOptionsV1_0 == 52 && SizedStruct.subscribeOptionsV1_4 == 64)
        #expect(SizedStruct.createArgsV1_0 == 56 && SizedStruct.statsV1_0 == 72)
        #expect(SizedStruct.hostServicesV1_0 == 48 && SizedStruct.hostServicesV1_2 == 56)
    }

    @Test("a 1.3 plugin reads an older host's batch strided at the 1.0 message size, and its 1.0 subscriber")
    func olderHostBatch() async throws {
        let plugin = try BuildProducts.plugin("queue")
        let transport = try Transport(name: "q", plugin: plugin, configJSON: "{}")
        defer { transport.close() }
        let inbox = Collector()
        // A 1.0 subscriber: 24 bytes, no deliver_batch. The plugin must not read past it.
        let handler = inbox.handler(client: transport.client)
        let context = Unmanaged.passRetained(HandlerBox(handler)).toOpaque()
        let subscriberMemory = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<sy_subscriber>.size, alignment: 8)
        defer { subscriberMemory.deallocate() }
        subscriberMemory.initializeMemory(as: UInt8.self, repeating: 0xAB, count: MemoryLayout<sy_subscriber>.size)
        var subscriber = sy_subscriber(struct_size: UInt32(SizedStruct.subscriberV1_0), context: context, deliver: HandlerBox.deliver, deliver_batch: nil)
        subscriberMemory.copyMemory(from: &subscriber, byteCount: SizedStruct.subscriberV1_0)
        var id: sy_subscription_id = 0
        var error = sy_error()
        let status = SubscribeOptions(channel: "old-host", maxInFlight: 100).withCOptions { options in
            plugin.descriptor.pointee.subscribe!(transport.client.instance, options, subscriberMemory.assumingMemoryBound(to: sy_subscriber.self), &id, &error)
        }
        #expect(status == SY_OK)
        let batch = (0..<20).map { Message(id: "old-\($0)", channel: "old-host", body: [UInt8($0)]) }
        batch.withCMessages(structSize: SizedStruct.messageV1_0) { first, count in
            var error = sy_error()
            #expect(plugin.descriptor.pointee.publish_batch!(transport.client.instance, first, count, &error) == SY_OK)
        }
        #expect(await eventually { inbox.count == 20 }, "got \(inbox.count) of 20")
        #expect(inbox.received.map(\.message.id).sorted() == batch.map(\.id).sorted())
        #expect(inbox.received.allSatisfy { $0.message.body == [UInt8($0.message.id.dropFirst(4))!] })
        _ = plugin.descriptor.pointee.unsubscribe!(transport.client.instance, id, &error)
        Unmanaged<HandlerBox>.fromOpaque(context).release()
    }

    @Test("a batch that breaks the stride rule (elements of different struct_size, or one not a multiple of 8) is refused whole with invalid-argument")
    func strideRuleEnforced() throws {
        let plugin = try BuildProducts.plugin("queue")
        let transport = try Transport(name: "q", plugin: plugin, configJSON: "{}")
        defer { transport.close() }
        let batch = (0..<3).map { Message(id: "s-\($0)", channel: "strided", body: [UInt8($0)]) }
        for (element, size) in [(1, MemoryLayout<sy_message>.size - 8), (0, MemoryLayout<sy_message>.size + 4)] {
            batch.withCMessages { first, count in
                let raw = UnsafeMutableRawPointer(mutating: first)
                (raw + element * MemoryLayout<sy_message>.size).storeBytes(of: UInt32(size), as: UInt32.self)
                var error = sy_error()
                let status = plugin.descriptor.pointee.publish_batch!(transport.client.instance, first, count, &error)
                #expect(status == SY_ERR_INVALID_ARGUMENT, "element \(element) at \(size) bytes: \(status)")
                #expect(TransportError(status: status, error: error).message.contains("struct_size"), "\(TransportError(status: status, error: error))")
            }
        }
        #expect(try transport.client.stats()?.published == 0, "nothing of a refused batch is stored")
    }
}

/// A C subscriber context around a delivery handler, for driving a plugin the way an older host
/// would (with its own, smaller sy_subscriber).
private final class HandlerBox: Sendable {
    let handler: DeliveryHandler
    init(_ handler: @escaping DeliveryHandler) { self.handler = handler }

    static let deliver: @convention(c) (UnsafeMutableRawPointer?, sy_delivery_id, UnsafePointer<sy_message>?) -> Int32 = { context, delivery, message in
        guard let context, let message, let view = try? MessageView(validating: message) else { return SY_ERR_INVALID_ARGUMENT }
        return Unmanaged<HandlerBox>.fromOpaque(context).takeUnretainedValue().handler(delivery, view).rawValue
    }
}
