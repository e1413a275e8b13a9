import CSwitchyard
import Foundation
import SwitchyardABI
import SwitchyardHost
import SwitchyardTestSupport
import Synchronization
import Testing

@testable import SwitchyardLoader

/// Collects deliveries from a subscription, thread-safely.
final class Inbox: Sendable {
    private let received = Guarded<[(DeliveryID, Message)]>([])
    var all: [(DeliveryID, Message)] { received.withLock { $0 } }
    var count: Int { received.withLock { $0.count } }
    func add(_ delivery: DeliveryID, _ message: MessageView) {
        let copy = message.copy()  // the view is only valid during the delivery
        received.withLock { $0.append((delivery, copy)) }
    }
}

/// The bundled example plugins, loaded from their .so files by the real loader, driven through
/// the C function table: publish → deliver → settle across the boundary.
@Suite("Bundled example plugins round-trip across the ABI")
struct RoundTripTests {
    static let plugins = ["libswitchyard-example-c.so", "libswitchyard-example-swift.so"]

    func transport(_ file: String) throws -> Transport {
        let plugin = try PluginLoader().load(path: BuildProducts.path(file))
        return try Transport(name: "test-\(plugin.name)", plugin: plugin)
    }

    /// A plugin that does not offer `publish_async` (the examples: built before it, or with no
    /// need) still takes `TransportClient.publish(_:done:)`: published through publish_batch or
    /// publish on the caller's thread, and told before the call returns, once, success or error.
    @Test("publish(_:done:) on a plugin without publish_async publishes on the caller's thread and tells once before returning", arguments: plugins)
    func publishDoneWithoutPublishAsync(_ file: String) async throws {
        let transport = try transport(file)
        defer { transport.close() }
        #expect(!transport.client.publishesAsynchronously)
        let told = Guarded<[TransportError?]>([])
        transport.client.publish([Message(id: "m-1", channel: "c")]) { error in told.withLock { $0.append(error) } }
        #expect(told.withLock { $0.count } == 1 && told.withLock { $0.first! } == nil, "told \(told.withLock { $0 }) before returning")
        transport.client.publish([Message(id: "", channel: "c")]) { error in told.withLock { $0.append(error) } }
        #expect(told.withLock { $0.count } == 2 && told.withLock { $0.last! } != nil, "a message without an id was accepted")
        #expect(try transport.client.stats()?.published == 1)
    }

    @Test("publish → deliver → ack keeps every field", arguments: plugins)
    func publishDeliverAck(_ file: String) async throws {
        let transport = try transport(file)
        defer { transport.close() }
        let inbox = Inbox()
        let client = transport.client
        _ = try client.subscribe(SubscribeOptions(channel: "orders")) { delivery, message in
            inbox.add(delivery, message)
            try? client.settle(delivery, .ack)
            return .ok
        }
        let body: [UInt8] = Array(0..<64) + [0, 255]
        let sent = Message(
            id: "m-1", channel: "orders", orderingKey: "customer-7",
            headers: [Header("traceparent", "00-abc-def-01"), Header("k", ""), Header("k", "ü✓")], body: body)
        try client.publish(sent)
        #expect(await eventually { inbox.count == 1 })
        let (_, got) = try #require(inbox.all.first)
        #expect(got.id == sent.id)
        #expect(got.channel == sent.channel)
        #expect(got.orderingKey == "customer-7")
        #expect(got.headers == sent.headers)
        #expect(got.body == body)
        #expect(got.attempt == 1)
        #expect(got.enqueuedAtNanos > 0)
        let stats = try #require(try client.stats())
        #expect(stats.published == 1)
        #expect(stats.delivered == 1)
        #expect(stats.acked == 1)
        #expect(stats.inFlight == 0)
    }

    @Test("retry counts an attempt, release does not", arguments: plugins)
    func retryAndRelease(_ file: String) async throws {
        let transport = try transport(file)
        defer { transport.close() }
        let inbox = Inbox()
        let client = transport.client
        _ = try client.subscribe(SubscribeOptions(channel: "work")) { delivery, message in
            inbox.add(delivery, message)
            // First delivery: retry; second: release; third: ack.
            let settlement: Settlement =
                switch inbox.count {
                case 1: .retry(afterNanos: 0, reason: "payment service down")
                case 2: .release
                default: .ack
                }
            try? client.settle(delivery, settlement)
            return .ok
        }
        try client.publish(Message(id: "job-1", channel: "work", body: [1, 2, 3]))
        #expect(await eventually { inbox.count == 3 })
        #expect(inbox.all.map(\.1.attempt) == [1, 2, 2])
        #expect(Set(inbox.all.map(\.0)).count == 3, "every delivery has its own id")
        let stats = try #require(try client.stats())
        #expect(stats.retried == 1)
        #expect(stats.released == 1)
        #expect(stats.acked == 1)
    }

    @Test("competing consumers each get distinct messages; unsubscribe releases unsettled ones", arguments: plugins)
    func competingConsumers(_ file: String) async throws {
        let transport = try transport(file)
        defer { transport.close() }
        let client = transport.client
        let first = Inbox()
        let second = Inbox()
        // The first consumer holds on to its deliveries without settling them.
        let holder = try client.subscribe(SubscribeOptions(channel: "jobs")) { delivery, message in
            first.add(delivery, message)
            return .ok
        }
        _ = try client.subscribe(SubscribeOptions(channel: "jobs")) { delivery, message in
            second.add(delivery, message)
            try? client.settle(delivery, .ack)
            return .ok
        }
        for index in 0..<10 { try client.publish(Message(id: "j\(index)", channel: "jobs", body: [UInt8(index)])) }
        #expect(await eventually { first.count + second.count == 10 })
        #expect(first.count > 0 && second.count > 0, "both members got work: \(first.count) + \(second.count)")
        #expect(Set(first.all.map(\.1.id)).isDisjoint(with: second.all.map(\.1.id)))
        // Leaving releases what the first consumer held; the second one gets it.
        let held = first.count
        try client.unsubscribe(holder)
        #expect(await eventually { second.count == 10 })
        #expect(Set(second.all.map(\.1.id)) == Set((0..<10).map { "j\($0)" }))
        #expect(try client.stats()?.released == UInt64(held))
    }

    @Test("a refused delivery stays queued and is delivered once a subscriber takes it", arguments: plugins)
    func refusedDelivery(_ file: String) async throws {
        let transport = try transport(file)
        defer { transport.close() }
        let client = transport.client
        let refusing = try client.subscribe(SubscribeOptions(channel: "c")) { _, _ in .closed }
        try client.publish(Message(id: "x", channel: "c"))
        try client.unsubscribe(refusing)
        let inbox = Inbox()
        _ = try client.subscribe(SubscribeOptions(channel: "c")) { delivery, message in
            inbox.add(delivery, message)
            try? client.settle(delivery, .ack)
            return .ok
        }
        #expect(await eventually { inbox.count == 1 })
        #expect(inbox.all.first?.1.attempt == 1, "a refused delivery does not count an attempt")
    }

    @Test("bad arguments come back as error codes, never crashes", arguments: plugins)
    func badArguments(_ file: String) throws {
        let transport = try transport(file)
        defer { transport.close() }
        let client = transport.client
        #expect(throws: TransportError.self) { try client.publish(Message(id: "", channel: "c")) }
        #expect(throws: TransportError.self) { try client.publish(Message(id: "x", channel: "")) }
        let unknown = #expect(throws: TransportError.self) { try client.settle(424242, .ack) }
        #expect(unknown?.code == .notFound)
        let unsubscribed = #expect(throws: TransportError.self) { try client.unsubscribe(999) }
        #expect(unsubscribed?.code == .notFound)
    }

    @Test(
        "config errors from create name the key",
        arguments: [
            ("libswitchyard-example-c.so", "{\"capacity\": 3}", "unknown config key 'capacity'"),
            ("libswitchyard-example-swift.so", "{\"capacity\": 3}", "unknown config key 'capacity'"),
            ("libswitchyard-example-swift.so", "{\"max_in_flight\": \"lots\"}", "config key 'max_in_flight'"),
            ("libswitchyard-example-swift.so", "{\"max_in_flight\": 0}", "config key 'max_in_flight': must be at least 1"),
            ("libswitchyard-example-swift.so", "[1, 2]", "config must be a JSON object"),
            // SQLite read "" as a temporary database, and a directory as a file it could not open.
            ("libswitchyard-queue.so", "{\"path\": \"\"}", "config key 'path': must not be empty"),
            ("libswitchyard-queue.so", "{\"path\": \"/tmp\"}", "config key 'path': /tmp is a directory; name a file in it, e.g. /tmp/store.db"),
            ("libswitchyard-queue.so", "{\"visibility_timeout\": \"500us\"}", "config key 'visibility_timeout': must be 1ms or more"),
            ("libswitchyard-topic.so", "{\"expiry_sweep\": \"1ns\"}", "config key 'expiry_sweep': must be 1ms or more"),
        ])
    func configErrors(_ file: String, _ config: String, _ expected: String) throws {
        let plugin = try PluginLoader().load(path: BuildProducts.path(file))
        let error = #expect(throws: TransportError.self) { _ = try Transport(name: "t", plugin: plugin, configJSON: config) }
        #expect(error?.code == .config)
        #expect(error?.message.contains(expected) == true, "\(error?.message ?? "")")
    }

    @Test("Switchyard's threads carry their names where top -H and ps -T read them: sy-…, 15 bytes at most")
    func threadNames() async throws {
        let transport = try Transport(name: "named", plugin: try BuildProducts.plugin("queue"), configJSON: "{}")
        defer { transport.close() }
        func kernelNames() -> Set<String> {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
            return Set(tasks.compactMap { try? String(contentsOfFile: "/proc/self/task/\($0)/comm", encoding: .utf8) }.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) })
        }
        // The queue's dispatcher, named after its transport.
        #expect(await eventually(30) { kernelNames().contains("sy-named") }, "\(kernelNames().sorted())")
        #expect(Thread.kernelName(for: "switchyard-sqlite-writer") == "sy-sqlite-write")
        #expect(Thread.kernelName(for: "switchyard-storage-12") == "sy-storage-12")
        #expect(Thread.kernelName(for: "switchyard-notifications-3") == "sy-notificati-3", "a shard's number is kept")
        #expect(Thread.kernelName(for: "switchyard-pid-4194303") == "sy-pid-4194303")
        #expect(Thread.kernelName(for: "switchyard-aéééééééé") == "sy-aééééé", "cut at a character's end, not inside it")
    }

    @Test("a decorator without 'inner' says to set it; with 'inner' inside its config, says where it goes")
    func decoratorWithoutInner() throws {
        let delay = try BuildProducts.plugin("delay")
        let missing = #expect(throws: TransportError.self) { _ = try Transport(name: "later", plugin: delay, configJSON: "{}") }
        #expect(missing?.message.contains("decorates another transport; set 'inner' (beside 'plugin:')") == true, "\(missing?.message ?? "")")
        let misplaced = #expect(throws: TransportError.self) { _ = try Transport(name: "later", plugin: delay, configJSON: #"{"inner": "work"}"#) }
        #expect(misplaced?.message.contains("'inner' goes beside 'plugin:', not inside 'config:'") == true, "\(misplaced?.message ?? "")")
    }

    @Test("a plugin whose create fails reports the error; the host carries on")
    func createFails() async throws {
        let dir = try TemporaryDirectory()
        let path = try await CCompiler.fixture("fails.so", in: dir.path, defines: ["FIXTURE_NAME=\"fails\"", "FIXTURE_CREATE_FAILS"])
        let plugin = try PluginLoader().load(path: path)
        let error = #expect(throws: TransportError.self) { _ = try Transport(name: "broken", plugin: plugin) }
        #expect(error?.code == .config)
        #expect(error?.message == "config key 'capacity': must be at least 1")
        // The host is unharmed: another transport still works.
        let working = try transport("libswitchyard-example-c.so")
        try working.client.publish(Message(id: "still", channel: "fine"))
        working.close()
    }

    @Test("a create that fails without a message is reported as such, with its status, not as an empty error")
    func createFailsSilently() async throws {
        let dir = try TemporaryDirectory()
        let path = try await CCompiler.fixture("silent.so", in: dir.path, defines: ["FIXTURE_NAME=\"silent\"", "FIXTURE_CREATE_FAILS_SILENT"])
        let plugin = try PluginLoader().load(path: path)
        let error = #expect(throws: TransportError.self) { _ = try Transport(name: "broken", plugin: plugin) }
        #expect(error?.code == .internalError)
        #expect(error?.message.contains("returned 'internal error' and gave no reason") == true, "\(error?.message ?? "")")
        #expect(error?.message.contains("sy_error_set") == true, "\(error?.message ?? "")")
    }

    @Test("a transport whose plugin was found but refused for its pin says so, not that the plugin is unknown")
    func pinRefusalNamed() async throws {
        let dir = try TemporaryDirectory()
        _ = try await CCompiler.fixture("libswitchyard-pinned.so", in: dir.path, defines: ["FIXTURE_NAME=\"pinned\""])
        let loader = PluginLoader(trust: TrustPolicy(pins: ["pinned": String(repeating: "0", count: 64)]))
        let catalog = loader.discover(in: [SearchDirectory(path: dir.path, source: .commandLine)])
        #expect(catalog.rejected.first?.plugin == "pinned")
        let error = #expect(throws: TransportError.self) {
            _ = try TransportSet(specs: [TransportSpec(name: "jobs", plugin: "pinned")], catalog: catalog)
        }
        #expect(error?.message.hasPrefix("transport 'jobs': plugin 'pinned' was found but refused: ") == true, "\(error?.message ?? "")")
        #expect(error?.message.contains("does not match the pin for 'pinned'") == true, "\(error?.message ?? "")")
    }

    @Test("an inner transport is refused for a plugin that does not wrap one")
    func innerRefused() throws {
        let plugin = try PluginLoader().load(path: BuildProducts.exampleC)
        let inner = try Transport(name: "inner", plugin: plugin)
        defer { inner.close() }
        let error = #expect(throws: TransportError.self) { _ = try Transport(name: "outer", plugin: plugin, inner: inner) }
        #expect(error?.message.contains("does not wrap an inner transport") == true)
    }

    /// The header lets a decorator keep the `sy_transport_ref` it was given at `create` until its
    /// `destroy`: the host used to build it on its stack for the call only, so a C decorator that
    /// kept the pointer read whatever the stack held later.
    @Test("a C decorator may keep the sy_transport_ref of its inner transport until its destroy")
    func decoratorKeepsInnerReference() async throws {
        let directory = try TemporaryDirectory()
        let path = try await CCompiler.fixture(
            "libkeeps-inner.so", in: directory.path, defines: ["FIXTURE_KEEPS_INNER", "FIXTURE_NAME=\"keeps-inner\""])
        let decorator = try PluginLoader().load(path: path)
        let queue = try Transport(name: "q", plugin: try BuildProducts.plugin("queue"))
        let kept = try Transport(name: "k", plugin: decorator, inner: queue)
        defer {
            kept.close()
            queue.close()
        }
        // Other transports made and closed meanwhile: the host's stack from that create is reused.
        for index in 0..<3 { try Transport(name: "other-\(index)", plugin: try BuildProducts.plugin("queue")).close() }
        try kept.client.publish(Message(id: "through", channel: "c", body: [1]))
        #expect(try queue.client.stats()?.published == 1)
    }
}
