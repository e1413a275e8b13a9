import CSwitchyard
import Foundation
import SwitchyardABI
import SwitchyardHost
import SwitchyardTestSupport
import Synchronization
import Testing

@testable import SwitchyardLoader

@Suite("Swift forms of ABI values")
struct ABIValueTests {
    /// The header tells a C decorator to check `plugin->struct_size` before reading a later
    /// minor's function; the Swift kit's client of the inner transport read them unchecked, past
    /// the end of an older host's shorter copy.
    @Test("a decorator's client of its inner transport, from an older host, reads the shorter descriptor's later functions as NULL")
    func shortInnerDescriptor() throws {
        let size = MemoryLayout<sy_plugin_descriptor>.size
        let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: MemoryLayout<sy_plugin_descriptor>.alignment)
        defer { raw.deallocate() }
        raw.initializeMemory(as: UInt8.self, repeating: 0xAB, count: size)  // what lies past the 1.0 descriptor
        raw.storeBytes(of: UInt32(SizedStruct.descriptorV1_0), as: UInt32.self)
        let instance = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
        defer { instance.deallocate() }
        let descriptor = UnsafePointer(raw.assumingMemoryBound(to: sy_plugin_descriptor.self))
        let client = try #require(TransportClient(sy_transport_ref(plugin: descriptor, instance: instance)))
        #expect(client.descriptor != descriptor, "a zeroed copy, not the short original")
        #expect(client.descriptor.pointee.publish_batch == nil)
        #expect(client.descriptor.pointee.settle_batch == nil)
        #expect(client.descriptor.pointee.extend == nil)
        #expect(client.descriptor.pointee.publish_async == nil)
        #expect(!client.publishesAsynchronously)
        // Smaller than ABI 1.0's: no client.
        raw.storeBytes(of: UInt32(SizedStruct.descriptorV1_0 - 8), as: UInt32.self)
        #expect(TransportClient(sy_transport_ref(plugin: descriptor, instance: instance)) == nil)
    }

    @Test("error messages are truncated on a UTF-8 boundary")
    func errorTruncation() {
        var error = sy_error()
        let long = String(repeating: "é", count: 600)  // 1200 bytes
        TransportError(.io, long).write(to: &error)
        let read = TransportError(status: error.code, error: error)
        #expect(read.code == .io)
        #expect(read.message.utf8.count <= 511)
        #expect(read.message.allSatisfy { $0 == "é" })
    }

    /// The C SDK's switchyard_config.h rounds; this truncated, so one config read 1 ns apart in a
    /// Swift and a C plugin ("1.001s": 1000999999 against 1001000000).
    @Test("durations are rounded to the nanosecond, as the C SDK reads them")
    func durationsRound() {
        #expect(ConfigDuration.parse("1.001s")?.nanoseconds == 1_001_000_000)
        #expect(ConfigDuration.parse("1.005s")?.nanoseconds == 1_005_000_000)
        #expect(ConfigDuration.parse("2.3h")?.nanoseconds == 8_280_000_000_000)
        #expect(ConfigDuration.parse("250ms")?.nanoseconds == 250_000_000)
        #expect(ConfigDuration.parse("-1s") == nil && ConfigDuration.parse("5") == nil)
    }

    @Test("plugin names and versions")
    func namesAndVersions() {
        #expect(PluginName.problem(with: "queue") == nil)
        #expect(PluginName.problem(with: "nats-jetstream2") == nil)
        #expect(PluginName.problem(with: "2fast") != nil)
        #expect(PluginName.problem(with: "trailing-") != nil)
        #expect(PluginName.problem(with: "UPPER") != nil)
        #expect(SemanticVersion("1.2.3")?.minor == 2)
        #expect(SemanticVersion("1.2.3-beta.1+exp")?.suffix == "-beta.1+exp")
        #expect(SemanticVersion("1.2") == nil)
        #expect(SemanticVersion("01.2.3") == nil)
        #expect(SemanticVersion("1.2.3-") == nil)
    }

    @Test("capabilities have stable names and keep unknown bits")
    func capabilities() {
        let caps: Capabilities = [.queue, .durable, Capabilities(rawValue: 1 << 50)]
        #expect(caps.names == ["queue", "durable", "bit-50"])
        #expect(Capabilities(name: "fan-out") == .fanOut)
        #expect(Capabilities(name: "private-wire") == .privateWire)
        #expect(Capabilities(name: "teleport") == nil)
    }

    @Test("a struct from a newer writer is read as this build knows it, its struct_size brought down: a copy passed on never tells the next reader to read past it")
    func newerWriterStructSize() throws {
        // A newer host's sy_subscriber: this build's fields, then 16 bytes this build does not know.
        let size = MemoryLayout<sy_subscriber>.size
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: size + 16, alignment: 16)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0xAB, count: size + 16)
        buffer.storeBytes(of: UInt32(size + 16), as: UInt32.self)
        let read = try #require(SizedStruct.read(buffer.assumingMemoryBound(to: sy_subscriber.self), minimum: 8))
        #expect(Int(read.struct_size) == size)
        // An older writer's smaller struct: what it wrote, the rest zeroed, its own size kept.
        buffer.storeBytes(of: UInt32(8), as: UInt32.self)
        let older = try #require(SizedStruct.read(buffer.assumingMemoryBound(to: sy_subscriber.self), minimum: 8))
        #expect(older.struct_size == 8 && older.deliver == nil)
    }

    @Test("a message lent to C and copied back is unchanged")
    func messageRoundTrip() throws {
        let message = Message(
            id: "id", channel: "ch", orderingKey: nil, headers: [Header("a", "b")], body: [],
            attempt: 3, deliverAtNanos: 5, enqueuedAtNanos: 7)
        let copy = try message.withCMessage { try Message(copying: $0) }
        #expect(copy == message)
    }
}
