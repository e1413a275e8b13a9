import Foundation
import SwitchyardABI
import SwitchyardHost
import SwitchyardLoader
import SwitchyardRuntime
import SwitchyardTestSupport
import Testing

/// ABI 1.8 `instance_capabilities`: what one configured instance keeps, as the host reads it.
@Suite("capabilities of an instance")
struct InstanceCapabilitiesTests {
    @Test("the bundled queue, topic and delay are durable with a path and not without one")
    func bundledStoresByConfig() throws {
        let directory = try TemporaryDirectory()
        for name in ["queue", "topic"] {
            let plugin = try BuildProducts.plugin(name)
            #expect(plugin.capabilities.contains(.durable), "\(name) declares durable: it can be")
            let memory = try Transport(name: "m", plugin: plugin)
            let file = try Transport(name: "f", plugin: plugin, configJSON: #"{"path": "\#(directory.file("\(name).db"))"}"#)
            defer {
                memory.close()
                file.close()
            }
            #expect(memory.capabilities == plugin.capabilities.subtracting(.durable), "\(name) in memory keeps [\(memory.capabilities)]")
            #expect(file.capabilities == plugin.capabilities, "\(name) with a path keeps [\(file.capabilities)]")
            // What the runtime does with it: no meter, every call inline, for the one in memory.
            #expect(CallCost.of(memory) == nil && CallCost.of(file) != nil)
        }
        let queue = try Transport(name: "q", plugin: try BuildProducts.plugin("queue"))
        let inMemory = try Transport(name: "d", plugin: try BuildProducts.plugin("delay"), inner: queue)
        let held = try Transport(
            name: "dp", plugin: try BuildProducts.plugin("delay"), configJSON: #"{"path": "\#(directory.file("delay.db"))"}"#, inner: queue)
        let retry = try Transport(name: "r", plugin: try BuildProducts.plugin("retry"), inner: queue)
        defer {
            for transport in [inMemory, held, retry, queue] { transport.close() }
        }
        #expect(!inMemory.capabilities.contains(.durable) && !inMemory.chainCapabilities.contains(.durable), "delay without a path over a queue in memory")
        #expect(held.capabilities.contains(.durable) && held.chainCapabilities.contains(.durable), "delay with a path holds messages in a file")
        // A decorator answers for itself; the chain is the union.
        #expect(retry.chainCapabilities.isSuperset(of: [.retry, .deadLetter, .queue]) && !retry.chainCapabilities.contains(.durable))
    }

    @Test("under isolation: process the child's instance answers through the wire")
    func isolated() throws {
        let isolation = ProcessIsolation(
            callTimeoutNanos: 5_000_000_000, restartBackoffNanos: 50_000_000, maxRestartBackoffNanos: 500_000_000,
            hostExecutable: BuildProducts.switchyard)
        let directory = try TemporaryDirectory()
        let plugin = try BuildProducts.plugin("queue")
        let memory = try Transport(name: "m", plugin: plugin, isolation: isolation)
        let file = try Transport(name: "f", plugin: plugin, configJSON: #"{"path": "\#(directory.file("q.db"))"}"#, isolation: isolation)
        defer {
            memory.close()
            file.close()
        }
        #expect(!memory.capabilities.contains(.durable) && memory.capabilities.contains(.queue), "[\(memory.capabilities)]")
        #expect(file.capabilities == plugin.capabilities, "[\(file.capabilities)]")
    }

    @Test("a C plugin's answer is read, and a bit its descriptor lacks is ignored; a plugin without the function keeps everything")
    func cPlugin() async throws {
        let directory = try TemporaryDirectory()
        let saying = try await CCompiler.fixture(
            "says.so", in: directory.path, defines: ["FIXTURE_NAME=\"says\"", "FIXTURE_INSTANCE_CAPABILITIES"])
        let silent = try await CCompiler.fixture("silent.so", in: directory.path, defines: ["FIXTURE_NAME=\"silent\""])
        let says = try PluginLoader().load(path: saying)
        #expect(says.capabilities == [.queue, .durable])
        let instance = try Transport(name: "s", plugin: says)
        defer { instance.close() }
        #expect(instance.capabilities == [.queue], "kept [\(instance.capabilities)]: durable turned off, bit 41 ignored")
        #expect(!instance.chainCapabilities.contains(.durable))
        let old = try Transport(name: "o", plugin: try PluginLoader().load(path: silent))
        defer { old.close() }
        #expect(old.capabilities == old.plugin.capabilities)
    }
}
