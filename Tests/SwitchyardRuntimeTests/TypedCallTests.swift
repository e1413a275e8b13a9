import Distributed
import Foundation
import SwitchyardABI
import SwitchyardConfig
import SwitchyardTestSupport
import SwitchyardWire
import Synchronization
import Testing

@testable import SwitchyardRuntime

// The services the typed-call tests host and call.

struct Order: Codable, Hashable, Sendable {
    var id: Int
    var customer: String
    var amount: Double
    var note: String?
}

struct OutOfStock: Error, Codable, Hashable {
    var item: String
}

@Resolvable
protocol Shop: DistributedActor where ActorSystem == SwitchyardActorSystem {
    distributed func place(_ order: Order) async throws -> String
    distributed func total(of orders: [Order]) async throws -> Double
    distributed func fail(_ item: String, registered: Bool) async throws -> Int
    distributed func record(_ order: Order) async throws
    distributed func flaky(_ key: String, failures: Int) async throws -> Int
    distributed func slow(_ milliseconds: Int) async throws -> Int
    distributed func pad(_ count: Int) async throws -> String
}

/// Counts what happened, across actors and tasks.
final class Ledger: @unchecked Sendable {
    private let lock = NSLock()
    private var events: [String] = []
    private var counts: [String: Int] = [:]

    func add(_ event: String) {
        lock.withLock {
            events.append(event)
            counts[event, default: 0] += 1
        }
    }
    func bump(_ key: String) -> Int {
        lock.withLock {
            counts[key, default: 0] += 1; return counts[key]!
        }
    }
    func count(_ event: String) -> Int { lock.withLock { counts[event] ?? 0 } }
    var all: [String] { lock.withLock { events } }
}

struct NotRegistered: Error, CustomStringConvertible {
    var description: String { "not registered" }
}

distributed actor ShopService: Shop {
    typealias ActorSystem = SwitchyardActorSystem
    let ledger: Ledger
    let label: String

    init(actorSystem: ActorSystem, ledger: Ledger, label: String = "shop") {
        self.actorSystem = actorSystem
        self.ledger = ledger
        self.label = label
    }

    distributed func place(_ order: Order) async throws -> String {
        ledger.add("\(label):place:\(order.id)")
        return "receipt-\(order.id)-\(order.customer)"
    }

    distributed func total(of orders: [Order]) async throws -> Double {
        orders.reduce(0) { $0 + $1.amount }
    }

    distributed func fail(_ item: String, registered: Bool) async throws -> Int {
        if registered { throw OutOfStock(item: item) }
        throw NotRegistered()
    }

    distributed func record(_ order: Order) async throws {
        ledger.add("\(label):record:\(order.id)")
        // A negative id fails its first two runs in the group "flaky": a group that fails for a while.
        if order.id < 0, label == "flaky", ledger.count("\(label):record:\(order.id)") <= 2 { throw OutOfStock(item: "record \(order.id)") }
    }

    distributed func flaky(_ key: String, failures: Int) async throws -> Int {
        let attempt = ledger.bump("flaky:\(key)")
        if attempt <= failures { throw OutOfStock(item: "\(key) attempt \(attempt)") }
        return attempt
    }

    distributed func pad(_ count: Int) async throws -> String { String(repeating: "z", count: count) }

    distributed func slow(_ milliseconds: Int) async throws -> Int {
        ledger.add("slow started")
        try await Task.sleep(for: .milliseconds(milliseconds))
        ledger.add("slow")
        return milliseconds
    }
}

@Resolvable
protocol Tally: DistributedActor where ActorSystem == SwitchyardActorSystem {
    distributed func add(_ amount: Int) async throws -> Int
    distributed func echo<Value: Codable & Sendable>(_ value: Value) async throws -> Value
}

distributed actor TallyService: Tally {
    typealias ActorSystem = SwitchyardActorSystem
    var total = 0
    distributed func add(_ amount: Int) async throws -> Int {
        total += amount
        return total
    }

    distributed func echo<Value: Codable & Sendable>(_ value: Value) async throws -> Value { value }
}

@Resolvable
protocol Relay: DistributedActor where ActorSystem == SwitchyardActorSystem {
    distributed func forward(_ amount: Int) async throws
}

/// Passes each amount on to a ``Tally`` of the same process, and notes when it starts and ends.
distributed actor RelayService: Relay {
    typealias ActorSystem = SwitchyardActorSystem
    let tally: any Tally
    let ledger: Ledger

    init(actorSystem: ActorSystem, tally: any Tally, ledger: Ledger) {
        self.actorSystem = actorSystem
        self.tally = tally
        self.ledger = ledger
    }

    distributed func forward(_ amount: Int) async throws {
        ledger.add("forward started")
        _ = try await tally.add(amount)
        ledger.add("forward done")
    }
}

/// A system over the bundled plugins (loaded from their .so files) with `yaml` as its config.
/// Started off the cooperative pool: starting loads plugin files, which takes seconds the first
/// time under a sanitizer, and a pool thread blocked that long starves every other test.
func makeSystem(_ yaml: String, directory: TemporaryDirectory? = nil) async throws -> SwitchyardActorSystem {
    try await offPool {
        let config = try SwitchyardConfig.parse(yaml: yaml, baseDirectory: directory?.path ?? NSTemporaryDirectory())
        return try SwitchyardActorSystem(config: config, pluginDirectories: [BuildProducts.directory])
    }
}

@Suite("Typed calls")
struct TypedCallTests {
    static let queueConfig = """
        transports:
          memq: { plugin: queue }
        routes:
          "*": { transport: memq, deadline: 30s }
        """

    /// Reads every message on `channel` of `transport` (a raw subscription through the ABI).
    final class Tap: @unchecked Sendable {
        private let lock = NSLock()
        private var messages: [Message] = []
        init(_ system: SwitchyardActorSystem, transport: String, channel: String, group: String = "tap") throws {
            let client = try #require(system.transports?[transport]?.client)
            _ = try client.subscribe(SubscribeOptions(channel: channel, group: group)) { [self] delivery, message in
                lock.withLock { messages.append(message.copy()) }
                try? client.settle(delivery, .ack)
                return .ok
            }
        }
        var all: [Message] { lock.withLock { messages } }
    }

    @Test("request-reply through an in-memory queue .so: values, collections, optionals")
    func requestReplyThroughQueue() async throws {
        let system = try await makeSystem(Self.queueConfig)
        let ledger = Ledger()
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        let shop = try $Shop.resolve(id: "shop", using: system)
        let receipt = try await shop.place(Order(id: 7, customer: "ada", amount: 12.5))
        #expect(receipt == "receipt-7-ada")
        let total = try await shop.total(of: [Order(id: 1, customer: "a", amount: 1.25, note: "x"), Order(id: 2, customer: "b", amount: 2)])
        #expect(total == 3.25)
        #expect(ledger.count("shop:place:7") == 1)
        await system.shutdown()
    }

    @Test("request-reply through a queue written in C (example-c .so), with JSON arguments")
    func requestReplyThroughCPluginAsJSON() async throws {
        let system = try await makeSystem(
            """
            transports:
              cq: { plugin: example-c }
            routes:
              Shop.*: { transport: cq, encoding: json }
            """)
        let ledger = Ledger()
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        let shop = try $Shop.resolve(id: "shop", using: system)
        #expect(try await shop.place(Order(id: 1, customer: "json", amount: 1)) == "receipt-1-json")
        await system.shutdown()
    }

    @Test("direct routes: resolve gives the local actor itself; a stub runs in-process")
    func directRoute() async throws {
        let system = try await makeSystem(
            """
            routes:
              "*": { transport: direct }
            """)
        let ledger = Ledger()
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        let local: any Shop = try system.resolve("shop", $Shop.self)
        #expect(local is ShopService)
        #expect(try await local.place(Order(id: 1, customer: "x", amount: 1)) == "receipt-1-x")
        let stub = try $Shop.resolve(id: "shop", using: system)
        #expect(!((stub as Any) is ShopService))
        #expect(try await stub.place(Order(id: 2, customer: "y", amount: 1)) == "receipt-2-y")
        await #expect(throws: OutOfStock.self) { try await stub.fail("z", registered: true) }
        await system.shutdown()
    }

    @Test("a direct call that throws an unregistered error type comes back as itself, and a warning says once that a transport would bring SwitchyardError.remote")
    func directRouteWarnsOfUnregisteredErrors() async throws {
        let (system, log) = try await loggedSystem(
            """
            routes:
              "*": { transport: direct }
            """)
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: Ledger()) }
        let stub = try $Shop.resolve(id: "shop", using: system)
        for _ in 0..<2 { await #expect(throws: NotRegistered.self) { _ = try await stub.fail("z", registered: false) } }
        let warnings = log.all.filter { $0.contains("not registered") }
        #expect(warnings.count == 1, "\(warnings)")
        #expect(warnings.first?.contains("NotRegistered") == true && warnings.first?.contains("registerError") == true, "\(warnings)")
        system.registerError(OutOfStock.self)
        await #expect(throws: OutOfStock.self) { _ = try await stub.fail("z", registered: true) }
        #expect(log.all.filter { $0.contains("not registered") }.count == 1, "a registered type is not warned of")
        await system.shutdown()
    }

    /// The hosted actor under the exact id is found first; the rest is the fallback: every group
    /// hosted under the name, an actor of the system that was never hosted, a name nobody hosts.
    @Test("a direct call reaches each group hosted under the name; an actor never hosted, or no actor, is refused with what to do")
    func directRouteGroupsAndUnhosted() async throws {
        let system = try await makeSystem(
            """
            routes:
              "*": { transport: direct }
            """)
        let ledger = Ledger()
        for group in ["email", "analytics"] {
            try system.host(SwitchyardActorID("shop", group: group), as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger, label: group) }
        }
        try await $Shop.resolve(id: "shop", using: system).record(Order(id: 7, customer: "c", amount: 1))
        #expect(ledger.all.sorted() == ["analytics:record:7", "email:record:7"])

        let loose = ShopService(actorSystem: system, ledger: ledger, label: "loose")
        let stub = try $Shop.resolve(id: loose.id, using: system)
        let refused = await #expect(throws: SwitchyardError.self) { _ = try await stub.place(Order(id: 8, customer: "c", amount: 1)) }
        #expect(refused?.code == .rejected)
        #expect(refused?.description.contains("is not hosted; host it as") == true, "\(String(describing: refused))")
        withExtendedLifetime(loose) {}  // found by id (weakly held) until here
        let nobody = await #expect(throws: SwitchyardError.self) {
            _ = try await $Shop.resolve(id: "nobody", using: system).place(Order(id: 9, customer: "c", amount: 1))
        }
        #expect(nobody?.code == .routing)
        #expect(nobody?.description.contains("no actor named 'nobody' is hosted in this process") == true, "\(String(describing: nobody))")
        #expect(!ledger.all.contains { $0.hasPrefix("loose:") })
        await system.shutdown()
    }

    @Test("a direct route honours its retry policy and its deadline, as a transport route does; resolve then gives a stub, not the actor")
    func directRouteRetriesAndDeadline() async throws {
        let system = try await makeSystem(
            """
            routes:
              Shop.flaky: { transport: direct, retry: { max_attempts: 3, initial_delay: 1ms, jitter: none } }
              Shop.slow: { transport: direct, deadline: 200ms }
              Shop.*: { transport: direct }
            """)
        system.registerError(OutOfStock.self)
        let ledger = Ledger()
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        let shop: any Shop = try system.resolve("shop", $Shop.self)
        #expect(!(shop is ShopService), "a plain local call would skip the retry policy and the deadline")
        #expect(try await shop.flaky("a", failures: 2) == 3)
        do {
            _ = try await shop.flaky("b", failures: 10)
            Issue.record("expected the call to give up")
        } catch let error as SwitchyardError where error.code == .deadLettered {
            let target = error.target
            let attempts = error.attempts!
            let reason = error.reason
            #expect(target == "Shop.flaky(_:failures:)")
            #expect(attempts == 3)
            #expect(reason.contains("OutOfStock"))
        }
        #expect(ledger.count("flaky:b") == 3)
        let started = ContinuousClock.now
        do {
            _ = try await shop.slow(20_000)
            Issue.record("expected a timeout")
        } catch let error as SwitchyardError where error.code == .timeout {
            let target = error.target
            let deadline = error.deadline!
            #expect(target == "Shop.slow(_:)")
            #expect(deadline == .milliseconds(200))
        }
        #expect(ContinuousClock.now - started < .seconds(10))
        // Without a retry policy, the implementation's own error comes back as itself.
        await #expect(throws: OutOfStock.self) { try await shop.fail("z", registered: true) }
        await system.shutdown(deadline: .milliseconds(100))
    }

    @Test("a direct route for one method leaves the others unrouted: they fail with .routing, not run in process")
    func directRouteDoesNotRouteOtherMethods() async throws {
        let system = try await makeSystem(
            """
            routes:
              Shop.place: { transport: direct }
            """)
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: Ledger()) }
        let shop: any Shop = try system.resolve("shop", $Shop.self)
        #expect(try await shop.place(Order(id: 1, customer: "x", amount: 1)) == "receipt-1-x")
        do {
            _ = try await shop.total(of: [])
            Issue.record("expected a routing error")
        } catch let error as SwitchyardError where error.code == .routing {
            let reason = error.reason
            #expect(reason.contains("no route matches Shop.total"))
        }
        await system.shutdown()
    }

    @Test("fire-and-forget returns once the queue has the call; the call runs later")
    func fireAndForget() async throws {
        let system = try await makeSystem(
            """
            transports:
              memq: { plugin: queue }
            routes:
              Shop.record: { transport: memq, mode: fire-and-forget }
              Shop.*: { transport: memq }
            """)
        let ledger = Ledger()
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        let shop = try $Shop.resolve(id: "shop", using: system)
        for id in 0..<50 { try await shop.record(Order(id: id, customer: "c", amount: 1)) }
        #expect(
            await eventually { ledger.all.filter { $0.hasPrefix("shop:record:") }.count == 50 },
            "ran \(ledger.all.filter { $0.hasPrefix("shop:record:") }.count); \(system.hostingDiagnosis)")
        await system.shutdown()
    }

    @Test("topic route: every subscriber group gets each call")
    func topicFanOut() async throws {
        let system = try await makeSystem(
            """
            transports:
              events: { plugin: topic }
            routes:
              Shop.record: { transport: events, mode: fire-and-forget }
            """)
        let ledger = Ledger()
        for group in ["email", "analytics"] {
            try system.host(SwitchyardActorID("shop", group: group), as: $Shop.self) {
                ShopService(actorSystem: $0, ledger: ledger, label: group)
            }
        }
        let shop = try $Shop.resolve(id: "shop", using: system)
        for id in 0..<20 { try await shop.record(Order(id: id, customer: "c", amount: 1)) }
        #expect(await eventually { ledger.all.count == 40 }, "ran \(ledger.all.count); \(system.hostingDiagnosis)")
        #expect(ledger.all.filter { $0.hasPrefix("email:record:") }.count == 20)
        #expect(ledger.all.filter { $0.hasPrefix("analytics:record:") }.count == 20)
        await #expect(throws: SwitchyardError.self) { _ = try await shop.place(Order(id: 1, customer: "x", amount: 1)) }
        await system.shutdown()
    }

    @Test("a direct route: a Void method runs in every group hosted under the name; one that returns a value is refused there, naming the groups")
    func directRouteGroups() async throws {
        let system = try await makeSystem(
            """
            routes:
              Shop.*: { transport: direct }
            """)
        let ledger = Ledger()
        for group in ["email", "analytics"] {
            try system.host(SwitchyardActorID("shop", group: group), as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger, label: group) }
        }
        let shop = try $Shop.resolve(id: "shop", using: system)
        try await shop.record(Order(id: 1, customer: "c", amount: 1))
        #expect(ledger.all.filter { $0.hasSuffix("record:1") }.count == 2, "\(ledger.all)")
        await #expect {
            _ = try await shop.place(Order(id: 2, customer: "c", amount: 1))
        } throws: { error in
            let error = error as? SwitchyardError
            return error?.code == .routing && error?.reason.contains("2 groups (analytics, email)") == true
        }
        #expect(!ledger.all.contains { $0.contains("place") }, "nothing ran: \(ledger.all)")
        let one = try $Shop.resolve(id: SwitchyardActorID("shop", group: "email"), using: system)
        #expect(try await one.place(Order(id: 3, customer: "c", amount: 1)).isEmpty == false)
        await system.shutdown()
    }

    @Test("a direct route with a retry policy: each group retries on its own, as on a topic; a group that succeeded is not called again")
    func directRouteGroupsRetryApart() async throws {
        let system = try await makeSystem(
            """
            routes:
              Shop.*: { transport: direct, retry: { max_attempts: 4, initial_delay: 1ms, jitter: none } }
            """)
        system.registerError(OutOfStock.self)
        let ledger = Ledger()
        for group in ["analytics", "flaky"] {
            try system.host(SwitchyardActorID("shop", group: group), as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger, label: group) }
        }
        let shop = try $Shop.resolve(id: "shop", using: system)
        try await shop.record(Order(id: -1, customer: "c", amount: 1))
        #expect(ledger.count("analytics:record:-1") == 1, "\(ledger.all)")
        #expect(ledger.count("flaky:record:-1") == 3, "\(ledger.all)")
        await system.shutdown()
    }

    @Test("delay: a route default and Switchyard.withDelay per call, through the delay .so")
    func delayedCalls() async throws {
        let system = try await makeSystem(
            """
            transports:
              memq: { plugin: queue }
              later: { plugin: delay, inner: memq }
            routes:
              Shop.record: { transport: later, mode: fire-and-forget }
              Shop.place: { transport: later, delay: 300ms }
            """)
        let ledger = Ledger()
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        let shop = try $Shop.resolve(id: "shop", using: system)
        var started = ContinuousClock.now
        _ = try await shop.place(Order(id: 1, customer: "c", amount: 1))
        #expect(ContinuousClock.now - started >= .milliseconds(280))
        started = ContinuousClock.now
        try await Switchyard.withDelay(.milliseconds(400)) {
            try await shop.record(Order(id: 2, customer: "c", amount: 1))
        }
        try await Task.sleep(for: .milliseconds(150))
        // Not run early: checked only if this look really came before the delay was up (a loaded
        // machine can wake this task late).
        let ranEarly = ledger.count("shop:record:2") > 0
        if ContinuousClock.now - started < .milliseconds(390) { #expect(!ranEarly) }
        #expect(await eventually { ledger.count("shop:record:2") == 1 })
        #expect(ContinuousClock.now - started >= .milliseconds(380))
        await system.shutdown()
    }

    @Test("a delay on a route whose transport cannot delay is refused at the call")
    func delayWithoutCapability() async throws {
        let system = try await makeSystem(Self.queueConfig)
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: Ledger()) }
        let shop = try $Shop.resolve(id: "shop", using: system)
        await #expect(throws: SwitchyardError.self) {
            try await Switchyard.withDelay(.seconds(1)) { try await shop.record(Order(id: 1, customer: "c", amount: 1)) }
        }
        await system.shutdown()
    }

    @Test(
        "retry: an error listed as non_retryable is not retried, and the caller gets it as thrown, not dead-lettered",
        arguments: ["memq", "direct"])
    func nonRetryableIsTheAnswer(transport: String) async throws {
        let system = try await makeSystem(
            """
            transports:
              memq: { plugin: queue }
            routes:
              Shop.*: { transport: \(transport), retry: { max_attempts: 4, initial_delay: 10ms, jitter: none, non_retryable: [OutOfStock] } }
            """)
        system.registerError(OutOfStock.self)
        let ledger = Ledger()
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        // A direct route has no dead-letter channel (its transport is not even opened).
        let dlq = transport == "memq" ? try Tap(system, transport: "memq", channel: "shop.dlq") : nil
        let shop = try $Shop.resolve(id: "shop", using: system)
        await #expect(throws: OutOfStock.self) { try await shop.flaky("c", failures: 10) }
        #expect(ledger.count("flaky:c") == 1)
        try await Task.sleep(for: .milliseconds(100))
        #expect(dlq?.all.isEmpty ?? true)
        #expect(ledger.count("flaky:c") == 1)
        await system.shutdown()
    }

    @Test("retry: a flaky call succeeds on a later attempt; one that keeps failing is dead-lettered")
    func retries() async throws {
        let system = try await makeSystem(
            """
            transports:
              memq: { plugin: queue }
            routes:
              Shop.*: { transport: memq, retry: { max_attempts: 4, initial_delay: 10ms, jitter: none } }
            """)
        system.registerError(OutOfStock.self)
        let ledger = Ledger()
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        let dlq = try Tap(system, transport: "memq", channel: "shop.dlq")
        let shop = try $Shop.resolve(id: "shop", using: system)
        #expect(try await shop.flaky("a", failures: 2) == 3)
        do {
            _ = try await shop.flaky("b", failures: 10)
            Issue.record("expected the call to be dead-lettered")
        } catch let error as SwitchyardError where error.code == .deadLettered {
            let attempts = error.attempts!
            let reason = error.reason
            #expect(attempts == 4)
            #expect(reason.contains("OutOfStock"))
        }
        #expect(ledger.count("flaky:b") == 4)
        #expect(await eventually { dlq.all.count == 1 })
        #expect(dlq.all.first?.header("sy-dlq-reason")?.contains("gave up after 4 attempts") == true)
        await system.shutdown()
    }

    @Test("retry through the retry .so decorator: the plugin's policy decides")
    func retryDecorator() async throws {
        let system = try await makeSystem(
            """
            transports:
              memq: { plugin: queue }
              retried: { plugin: retry, inner: memq, config: { max_attempts: 3, initial_delay: 5ms } }
            routes:
              Shop.record: { transport: retried, mode: fire-and-forget }
            """)
        let ledger = Ledger()
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        let dlq = try Tap(system, transport: "memq", channel: "shop.dlq")
        _ = dlq
        let shop = try $Shop.resolve(id: "shop", using: system)
        try await shop.record(Order(id: 1, customer: "c", amount: 1))
        #expect(await eventually { ledger.count("shop:record:1") == 1 })
        await system.shutdown()
    }

    @Test(
        "a request-reply call dead-lettered by a retry decorator is answered at once with .deadLettered, in process and with the queue in a child process",
        arguments: [false, true])
    func retryDecoratorDeadLetterAnswersTheCaller(_ isolated: Bool) async throws {
        let isolation = isolated ? ", isolation: { mode: process, call_timeout: 5s, host: \"\(BuildProducts.switchyard)\" }" : ""
        let system = try await makeSystem(
            """
            transports:
              base: { plugin: queue\(isolation) }
              work: { plugin: retry, inner: base, config: { max_attempts: 3, initial_delay: 5ms, max_delay: 20ms } }
            routes:
              Shop.*: { transport: work, deadline: 60s }
            """)
        let ledger = Ledger()
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        let shop = try $Shop.resolve(id: "shop", using: system)
        #expect(try await shop.flaky("a", failures: 1) == 2)
        let started = ContinuousClock.now
        do {
            _ = try await shop.flaky("b", failures: 10)
            Issue.record("expected the call to be dead-lettered")
        } catch let error as SwitchyardError where error.code == .deadLettered {
            let target = error.target
            let attempts = error.attempts!
            let reason = error.reason
            #expect(target == "Shop.flaky(_:failures:)")
            #expect(attempts == 3)
            #expect(reason.contains("gave up after 3 attempts") && reason.contains("OutOfStock"), "\(reason)")
        }
        // Told when it happened, not at the 60 s deadline.
        #expect(ContinuousClock.now - started < .seconds(20))
        #expect(ledger.count("flaky:b") == 3)
        await system.shutdown()
    }

    /// A system started from `yaml` whose runtime log (from info, or from debug) lands in `log`,
    /// returned with it.
    private func loggedSystem(_ yaml: String, debug: Bool = false, log: CapturedLog = CapturedLog()) async throws -> (SwitchyardActorSystem, CapturedLog) {
        let config = try SwitchyardConfig.parse(yaml: yaml, baseDirectory: NSTemporaryDirectory())
        var logger = log.logger("switchyard.runtime")
        if debug { logger.logLevel = .debug }
        let systemLogger = logger
        let system = try await offPool { try SwitchyardActorSystem(config: config, pluginDirectories: [BuildProducts.directory], logger: systemLogger) }
        return (system, log)
    }

    @Test(
        "a handler that outlasts its transport's visibility timeout with lease renewal off: the call is delivered again, the inbox answers it with the one run's outcome, and a warning says why and names the fix"
    )
    func handlerOutlastsVisibilityTimeout() async throws {
        let directory = try TemporaryDirectory()
        let (system, log) = try await loggedSystem(
            """
            transports:
              work: { plugin: queue, config: { visibility_timeout: 300ms } }
            routes:
              Shop.*: { transport: work, deadline: 60s, lease_renewal: 0s, inbox: { window: 1h, path: "\(directory.file("inbox.db"))" } }
            """)
        let ledger = Ledger()
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        let shop = try $Shop.resolve(id: "shop", using: system)
        // A deadline, not a stopwatch: a CI run under AddressSanitizer answered after more than 10 s.
        #expect(try await shop.slow(900) == 900)
        #expect(ledger.count("slow started") == 1, "the redeliveries waited for the running call, and its outcome answered them")
        #expect(
            await eventually {
                log.all.contains { $0.hasPrefix("warning a call finished after its delivery was gone") && $0.contains("visibility_timeout") }
            }, "\(log.all)")
        await system.shutdown()
    }

    @Test("a route's prefetch is how many calls its host takes ahead of running them (default twice concurrency, at least 16)", arguments: [nil, 1])
    func prefetchBoundsTakenCalls(prefetch: Int?) async throws {
        let system = try await makeSystem(
            """
            transports:
              work: { plugin: queue }
            routes:
              Shop.*: { transport: work, deadline: 20s, concurrency: 1\(prefetch.map { ", prefetch: \($0)" } ?? "") }
            """)
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: Ledger()) }
        let shop = try $Shop.resolve(id: "shop", using: system)
        let calls = Task {
            try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<6 { group.addTask { try await shop.slow(150) } }
                return try await group.reduce(0, +)
            }
        }
        // While the six calls run one at a time, how many the host holds unsettled at once: looked
        // at until they are done (a fixed 400 ms could end before a loaded machine sent them).
        let finished = Atomic<Bool>(false)
        let total = Task {
            defer { finished.store(true, ordering: .releasing) }
            return try await calls.value
        }
        var most: UInt64 = 0
        while !finished.load(ordering: .acquiring) {
            most = max(most, (try? system.transports?["work"]?.client.stats())??.inFlight ?? 0)
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(try await total.value == 900)
        if prefetch == nil {
            #expect(most >= 4, "the default prefetch (16) takes the waiting calls too: \(most)")
        } else {
            #expect(most == 1, "prefetch 1 takes one call at a time: \(most)")
        }
        await system.shutdown()
    }

    @Test("hosting an actor that no route reaches warns at once, saying which route to add; a routed one does not")
    func hostingWithoutARouteWarns() async throws {
        let (system, log) = try await loggedSystem(
            """
            transports:
              memq: { plugin: queue }
            routes:
              Other.*: { transport: memq }
            """)
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: Ledger()) }
        let warning = log.all.first { $0.hasPrefix("warning hosting an actor that no route reaches") }
        #expect(warning?.contains("fix=add 'Shop.*: { transport: NAME }' (or '*') under routes:") == true, "\(log.all)")
        #expect(warning?.contains("id=shop") == true)
        await system.shutdown()

        let (other, routed) = try await loggedSystem("routes:\n  Shop.*: { transport: direct }\n")
        try other.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: Ledger()) }
        #expect(!routed.all.contains { $0.contains("no route reaches") }, "\(routed.all)")
        await other.shutdown()
    }

    @Test("retries are logged at debug, dead letters and expired calls at notice, each with route, target, attempt and reason (also those a decorator made)")
    func retriesAndDeadLettersAreLogged() async throws {
        let (system, log) = try await loggedSystem(
            """
            transports:
              memq: { plugin: queue }
              work: { plugin: retry, inner: memq, config: { max_attempts: 2, initial_delay: 1ms } }
            routes:
              Shop.flaky: { transport: memq, retry: { max_attempts: 2, initial_delay: 1ms, jitter: none } }
              Shop.fail: { transport: work }
            """, debug: true)
        let ledger = Ledger()
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        let shop = try $Shop.resolve(id: "shop", using: system)
        await #expect(throws: SwitchyardError.self) { _ = try await shop.flaky("x", failures: 9) }
        await #expect(throws: SwitchyardError.self) { _ = try await shop.fail("y", registered: false) }
        let lines = log.all
        #expect(
            lines.contains {
                $0.hasPrefix("debug retrying a failed call") && $0.contains("attempt=1") && $0.contains("route=Shop.flaky")
                    && $0.contains("target=Shop.flaky(_:failures:)") && $0.contains("reason=")
            }, "\(lines)")
        #expect(lines.contains { $0.hasPrefix("notice dead-lettering a call") && $0.contains("attempt=2") && $0.contains("gave up after 2 attempts") }, "\(lines)")
        #expect(
            lines.contains {
                $0.hasPrefix("notice a transport dead-lettered a call") && $0.contains("target=Shop.fail(_:registered:)")
                    && $0.contains("transport=memq") && $0.contains("attempt=2")
            }, "\(lines)")
        await system.shutdown(deadline: .seconds(1))
        // An expired call: with one call at a time, the second waits behind the first and its
        // caller's deadline passes before it runs.
        let (serial, _) = try await loggedSystem(
            """
            transports:
              memq: { plugin: queue }
            routes:
              Shop.*: { transport: memq, deadline: 100ms, concurrency: 1 }
            """, debug: true, log: log)
        try serial.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        let serialShop = try $Shop.resolve(id: "shop", using: serial)
        // Whoever finds a call expired logs it at notice with its target: the receiver, when the
        // call was delivered in time and waited in its queue; the queue itself (expiry, ABI 1.3),
        // when a loaded machine delivered it only after the deadline — then as a transport's dead
        // letter.
        let expiredLogged = {
            log.all.contains {
                ($0.hasPrefix("notice dead-lettering an expired call") && $0.contains("target=Shop.slow(_:)"))
                    || ($0.hasPrefix("notice a transport dead-lettered a call") && $0.contains("target=Shop.slow(_:)") && $0.contains("reason=expired"))
            }
        }
        // The second is sent only once the first runs (or already expired): child tasks start in
        // no set order, and a loaded machine once ran the short call first, so nothing waited.
        // The first runs long: the second expires only if it is sent less than the first's run
        // time minus the deadline after the first started, and a loaded CI machine once took
        // more than 200 ms to notice the start.
        let startedBefore = ledger.count("slow started")
        async let first: Int? = try? serialShop.slow(1_500)
        #expect(await eventually { ledger.count("slow started") > startedBefore || expiredLogged() })
        async let second: Int? = try? serialShop.slow(1)
        _ = await (first, second)
        #expect(await eventually { expiredLogged() }, "\(log.all)")
        await serial.shutdown(deadline: .seconds(1))
    }

    @Test("timeout: no reply within the route's deadline throws a typed timeout")
    func timeout() async throws {
        let system = try await makeSystem(
            """
            transports:
              memq: { plugin: queue }
            routes:
              Shop.slow: { transport: memq, deadline: 200ms }
            """)
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: Ledger()) }
        let shop = try $Shop.resolve(id: "shop", using: system)
        let started = ContinuousClock.now
        do {
            _ = try await shop.slow(20_000)
            Issue.record("expected a timeout")
        } catch let error as SwitchyardError where error.code == .timeout {
            let target = error.target
            let deadline = error.deadline!
            #expect(target == "Shop.slow(_:)")
            #expect(deadline == .milliseconds(200))
        }
        // Before the call itself would have replied (20 s), even on a loaded machine (a CI run
        // under AddressSanitizer took 10.2 s at the start of its phase).
        #expect(ContinuousClock.now - started < .seconds(19))
        // The call still runs (for 20 s): the drain cancels it at its deadline instead of
        // waiting for it (it once waited: a task group cannot cancel awaiting a task's value).
        let stopping = ContinuousClock.now
        await system.shutdown(deadline: .milliseconds(100))
        #expect(ContinuousClock.now - stopping < .seconds(15), "shutdown took \(ContinuousClock.now - stopping) with a 100 ms deadline")
    }

    @Test("errors come back as themselves when registered, as remote errors otherwise")
    func remoteErrors() async throws {
        let system = try await makeSystem(Self.queueConfig)
        system.registerError(OutOfStock.self)
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: Ledger()) }
        let shop = try $Shop.resolve(id: "shop", using: system)
        await #expect(throws: OutOfStock(item: "socks")) { _ = try await shop.fail("socks", registered: true) }
        do {
            _ = try await shop.fail("x", registered: false)
            Issue.record("expected an error")
        } catch let error as SwitchyardError where error.code == .remote {
            let type = error.remoteType!
            let message = error.reason
            #expect(type.hasSuffix("NotRegistered"))
            #expect(message == "not registered")
        }
        await system.shutdown()
    }

    /// A call whose earlier deliveries took their host down (a crash in the handler or in a native
    /// function) comes back with its attempt count up; past the route's max_deliveries it is not run
    /// again. Simulated with an envelope published already on its fourth delivery.
    @Test("a call delivered more often than its route's max_deliveries is dead-lettered unrun: a poison message does not take host after host down")
    func poisonMessage() async throws {
        let system = try await makeSystem(
            """
            transports:
              memq: { plugin: queue }
            routes:
              "*": { transport: memq, deadline: 30s, max_deliveries: 3 }
            """)
        let ledger = Ledger()
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        let shop = try $Shop.resolve(id: "shop", using: system)
        try await shop.record(Order(id: 1, customer: "warm", amount: 1))
        let record = try #require(system.targets.withLock { $0.values.first { $0.call.name == "Shop.record(_:)" }?.call })
        let dlq = try Tap(system, transport: "memq", channel: "shop.dlq")
        var arguments: [UInt8] = []
        try ArgumentEncoding.compact.encode(Order(id: 2, customer: "poison", amount: 1), appendingTo: &arguments)
        var fourth = Envelope(target: .init(name: "Shop.record(_:)", identifier: record.identifier), arguments: arguments).message(channel: "shop")
        fourth.attempt = 4
        var third = Envelope(target: .init(name: "Shop.record(_:)", identifier: record.identifier), arguments: arguments).message(channel: "shop")
        third.attempt = 3  // still within the policy: it runs
        try system.transports!["memq"]!.client.publish(fourth)
        try system.transports!["memq"]!.client.publish(third)
        #expect(await eventually { dlq.all.count == 1 && ledger.all.filter { $0 == "shop:record:2" }.count == 1 })
        let reason = dlq.all.first?.header("sy-dlq-reason") ?? ""
        #expect(reason.contains("delivered 4 times, more than the route's max_deliveries (3)"), "\(reason)")
        #expect(dlq.all.first?.id == fourth.id)
        try await Task.sleep(for: .milliseconds(200))
        #expect(ledger.all.filter { $0 == "shop:record:2" }.count == 1, "the fourth delivery must not run")
        #expect(system.overview().routes.first?.maxDeliveries == 3, "operators see the limit (/api/routes)")
        await system.shutdown()
    }

    @Test("a forged envelope naming another type's method is dead-lettered, never run")
    func forgedEnvelope() async throws {
        let system = try await makeSystem(
            """
            transports:
              memq: { plugin: queue }
            routes:
              "*": { transport: memq, deadline: 30s }
            """)
        let ledger = Ledger()
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        try system.host("tally", as: $Tally.self) { TallyService(actorSystem: $0) }
        let tally = try $Tally.resolve(id: "tally", using: system)
        #expect(try await tally.add(2) == 2)
        let tallyTarget = try #require(system.targets.withLock { $0.values.first { $0.call.interface == "Tally" }?.call })
        let dlq = try Tap(system, transport: "memq", channel: "shop.dlq")
        // Tally.add on the shop actor: the same argument shape, the wrong actor.
        var arguments: [UInt8] = []
        try ArgumentEncoding.compact.encode(5, appendingTo: &arguments)
        let forged = Envelope(target: .init(name: "Shop.place(_:)", identifier: tallyTarget.identifier), arguments: arguments)
        try system.transports!["memq"]!.client.publish(forged.message(channel: "shop"))
        #expect(await eventually { dlq.all.count == 1 })
        #expect(dlq.all.first?.header("sy-dlq-reason")?.contains("is not a method of actor 'shop'") == true)
        // A target that is not a method at all, and an envelope of a future version.
        try system.transports!["memq"]!.client.publish(Envelope(target: .init(name: "x", identifier: "$sGarbage"), arguments: []).message(channel: "shop"))
        var future = Envelope(target: .init(name: "x", identifier: tallyTarget.identifier), arguments: []).message(channel: "shop")
        future.headers = future.headers.map { $0.key == EnvelopeHeader.version ? Header($0.key, "2") : $0 }
        // It asks for a reply: the caller is told why rather than left to time out.
        future.headers.append(Header(EnvelopeHeader.replyTo, "forger.replies"))
        let replies = try Tap(system, transport: "memq", channel: "forger.replies")
        try system.transports!["memq"]!.client.publish(future)
        try system.transports!["memq"]!.client.publish(Message(id: "plain", channel: "shop", body: [1, 2, 3]))
        #expect(await eventually { dlq.all.count == 4 })
        let reasons = dlq.all.compactMap { $0.header("sy-dlq-reason") }
        #expect(reasons.contains { $0.contains("unknown target") })
        #expect(reasons.contains { $0.contains("envelope version 2 is not supported") })
        #expect(reasons.contains { $0.contains("not a Switchyard envelope") })
        #expect(await eventually { replies.all.count == 1 })
        #expect(replies.all.first?.header(EnvelopeHeader.correlationID) == future.id)
        #expect(replies.all.first?.header(EnvelopeHeader.outcome) == "throw")
        let replyText = String(decoding: replies.all.first.map(\.body) ?? [], as: UTF8.self)
        #expect(replyText.contains("envelope version 2 is not supported"), "\(replyText)")
        #expect(ledger.all.isEmpty)
        // The host still serves.
        #expect(try await $Shop.resolve(id: "shop", using: system).place(Order(id: 3, customer: "ok", amount: 1)) == "receipt-3-ok")
        await system.shutdown()
    }

    @Test("a refused call is answered in its own encoding, whatever its route's: a JSON call to an unknown target gets a JSON reply")
    func refusalInTheCallsEncoding() async throws {
        let system = try await makeSystem(Self.queueConfig)  // the route's encoding: compact
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: Ledger()) }
        let replies = try Tap(system, transport: "memq", channel: "json.replies")
        let call = Envelope(
            target: .init(name: "Shop.gone()", identifier: "$sNoSuchTarget"), arguments: Array("[]".utf8), contentType: .json,
            replyTo: "json.replies")
        try system.transports!["memq"]!.client.publish(call.message(channel: "shop"))
        #expect(await eventually { replies.all.count == 1 })
        let reply = try #require(replies.all.first)
        #expect(reply.header(EnvelopeHeader.outcome) == "throw")
        #expect(reply.header(EnvelopeHeader.contentType) == ArgumentEncoding.json.rawValue, "\(reply.headers)")
        #expect(String(decoding: reply.body, as: UTF8.self).contains("unknown target"))
        await system.shutdown()
    }

    @Test("a call whose deadline has passed is dead-lettered as expired and not answered (its caller stopped waiting)")
    func expiredCallIsNotAnswered() async throws {
        let system = try await makeSystem(Self.queueConfig)
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: Ledger()) }
        let dlq = try Tap(system, transport: "memq", channel: "shop.dlq")
        let replies = try Tap(system, transport: "memq", channel: "late.replies")
        let client = system.transports!["memq"]!.client
        let expired = Envelope(
            target: .init(name: "Shop.gone()", identifier: "$sNoSuchTarget"), arguments: [], replyTo: "late.replies",
            deadlineNanos: WallClock.nowNanos() - 1_000_000_000)
        try client.publish(expired.message(channel: "shop"))
        #expect(await eventually { dlq.all.count == 1 })
        #expect(dlq.all.first?.header("sy-dlq-reason")?.contains("expired") == true, "\(dlq.all.first?.header("sy-dlq-reason") ?? "")")
        // A refused call that is still wanted is answered: its reply is the only one.
        let wanted = Envelope(target: .init(name: "Shop.gone()", identifier: "$sNoSuchTarget"), arguments: [], replyTo: "late.replies")
        try client.publish(wanted.message(channel: "shop"))
        #expect(await eventually { replies.all.count >= 1 })
        try await Task.sleep(for: .milliseconds(100))
        #expect(replies.all.map { $0.header(EnvelopeHeader.correlationID) } == [wanted.id])
        await system.shutdown()
    }

    @Test("corrupt or missing arguments are refused with the reason; the caller hears why")
    func corruptArguments() async throws {
        let system = try await makeSystem(Self.queueConfig)
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: Ledger()) }
        let shop = try $Shop.resolve(id: "shop", using: system)
        _ = try await shop.place(Order(id: 1, customer: "a", amount: 1))
        let place = try #require(system.targets.withLock { $0.values.first { $0.call.method == "place" }?.call })
        let dlq = try Tap(system, transport: "memq", channel: "shop.dlq")
        var bad: [UInt8] = []
        try ArgumentEncoding.compact.encode("not an order", appendingTo: &bad)
        let client = system.transports!["memq"]!.client
        try client.publish(Envelope(target: .init(name: "Shop.place(_:)", identifier: place.identifier), arguments: bad).message(channel: "shop"))
        try client.publish(Envelope(target: .init(name: "Shop.place(_:)", identifier: place.identifier), arguments: [0xFF, 0x07, 0x99]).message(channel: "shop"))
        try client.publish(Envelope(target: .init(name: "Shop.place(_:)", identifier: place.identifier), arguments: []).message(channel: "shop"))
        #expect(await eventually { dlq.all.count == 3 })
        for message in dlq.all { #expect(message.header("sy-dlq-reason")?.contains("cannot run Shop.place(_:)") == true, "\(message.header("sy-dlq-reason") ?? "")") }
        await system.shutdown()
    }

    @Test("a call still running when the drain's deadline passes is stopped and goes back to its transport: run again at the next start, not dead-lettered")
    func drainPastDeadlineReleases() async throws {
        let directory = try TemporaryDirectory()
        let yaml = """
            transports:
              work: { plugin: queue, config: { path: "\(directory.file("work.db"))" } }
            routes:
              Shop.slow: { transport: work, deadline: 60s }
            """
        let ledger = Ledger()
        let first = try await makeSystem(yaml, directory: directory)
        try first.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        let shop = try $Shop.resolve(id: "shop", using: first)
        let caller = Task { try await shop.slow(20_000) }
        #expect(await eventually { ledger.count("slow started") == 1 })
        let stopping = ContinuousClock.now
        await first.shutdown(deadline: .milliseconds(200))
        #expect(ContinuousClock.now - stopping < .seconds(15), "shutdown took \(ContinuousClock.now - stopping) with a 200 ms deadline")
        let failed = await caller.result
        #expect((try? failed.get()) == nil, "the waiting caller is failed by the shutdown")
        // Released, not dead-lettered or answered: the next start runs it again.
        let second = try await makeSystem(yaml, directory: directory)
        try second.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        #expect(await eventually { ledger.count("slow started") == 2 }, "the stopped call did not run again")
        await second.shutdown(deadline: .milliseconds(200))
    }

    @Test("a drain begun as a call is taken runs that call to its end: the calls it makes to this process are still served")
    func drainServesWhatItTook() async throws {
        // A race, so many rounds: the drain once found nothing running while a call sat in a
        // worker's queue, stopped taking calls, and the call then ran without its own calls being
        // served, waiting out its deadline (4 drains of 110 of the orders demo under load).
        for round in 0..<20 {
            let system = try await makeSystem(
                """
                transports:
                  memq: { plugin: queue }
                routes:
                  Relay.*: { transport: memq, mode: fire-and-forget }
                  Tally.*: { transport: memq, deadline: 120s }
                """)
            let ledger = Ledger()
            try system.host("tally", as: $Tally.self) { TallyService(actorSystem: $0) }
            let tally = try $Tally.resolve(id: "tally", using: system)
            try system.host("relay", as: $Relay.self) { RelayService(actorSystem: $0, tally: tally, ledger: ledger) }
            let relay = try $Relay.resolve(id: "relay", using: system)
            try await relay.forward(round)
            let stopping = ContinuousClock.now
            // A stalled call would hold the drain to its deadline and then be stopped, unfinished.
            // Well short of it otherwise, though seconds on a machine busy with the whole suite.
            await system.shutdown(deadline: .seconds(60))
            let took = ContinuousClock.now - stopping
            #expect(took < .seconds(30), "round \(round): shutdown took \(took)")
            #expect(ledger.count("forward started") == ledger.count("forward done"), "round \(round): \(ledger.all)")
            if took >= .seconds(30) { break }
        }
    }

    @Test("a drain gives back at once the calls it took but had not started (another host runs them); the call running finishes")
    func drainGivesBackUnstartedCalls() async throws {
        let directory = try TemporaryDirectory()
        let yaml = """
            transports:
              work: { plugin: queue, config: { path: "\(directory.file("work.db"))" } }
            routes:
              Shop.*: { transport: work, deadline: 60s, concurrency: 1 }
            """
        let ledger = Ledger()
        let first = try await makeSystem(yaml, directory: directory)
        try first.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        _ = try await $Shop.resolve(id: "shop", using: first).slow(1)
        let slow = try #require(first.targets.withLock { $0.values.first { $0.call.method == "slow" }?.call })
        var arguments: [UInt8] = []
        try ArgumentEncoding.compact.encode(1_000, appendingTo: &arguments)
        let client = first.transports!["work"]!.client
        for _ in 0..<3 {
            // Calls from another process: a drain keeps its own process's (a call running here may
            // be waiting for them).
            let call = Envelope(target: .init(name: "Shop.slow(_:)", identifier: slow.identifier), arguments: arguments, source: "switchyard://elsewhere/1")
            try client.publish(call.message(channel: "shop"))
        }
        // One runs (concurrency 1); the other two wait in the worker's queue, taken (prefetch 16).
        #expect(await eventually { ledger.count("slow started") == 2 })
        #expect(await eventually { ((try? client.stats()) ?? nil)?.inFlight == 3 })
        await first.shutdown(deadline: .seconds(30))
        #expect(ledger.count("slow") == 2, "the running call finished: \(ledger.all)")
        #expect(ledger.count("slow started") == 2, "the drain ran calls it had not started: \(ledger.all)")
        let second = try await makeSystem(yaml, directory: directory)
        try second.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        #expect(await eventually { ledger.count("slow") == 4 }, "the calls given back were not run by the next host: \(ledger.all)")
        await second.shutdown()
    }

    @Test("idempotent inbox: a redelivered call is answered from the inbox, not run again")
    func inbox() async throws {
        let directory = try TemporaryDirectory()
        let system = try await makeSystem(
            """
            transports:
              memq: { plugin: queue }
            routes:
              Shop.*: { transport: memq, mode: fire-and-forget, inbox: { window: 1m, path: inbox.db } }
            """, directory: directory)
        let ledger = Ledger()
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        let shop = try $Shop.resolve(id: "shop", using: system)
        try await shop.record(Order(id: 1, customer: "a", amount: 1))
        #expect(await eventually { ledger.count("shop:record:1") == 1 })
        let record = try #require(system.targets.withLock { $0.values.first { $0.call.method == "record" }?.call })
        var arguments: [UInt8] = []
        try ArgumentEncoding.compact.encode(Order(id: 2, customer: "b", amount: 1), appendingTo: &arguments)
        let envelope = Envelope(id: "dup-1", target: .init(name: "Shop.record(_:)", identifier: record.identifier), arguments: arguments)
        let client = system.transports!["memq"]!.client
        for _ in 0..<3 { try client.publish(envelope.message(channel: "shop")) }
        #expect(await eventually { ledger.count("shop:record:2") == 1 })
        try await Task.sleep(for: .milliseconds(200))
        #expect(ledger.count("shop:record:2") == 1)
        #expect(FileManager.default.fileExists(atPath: directory.file("inbox.db")))
        await system.shutdown()
    }

    @Test("ordering: the named argument's value becomes the message's ordering key")
    func orderingKey() async throws {
        let system = try await makeSystem(
            """
            transports:
              memq: { plugin: queue }
            routes:
              Shop.flaky: { transport: memq, ordering: key, mode: request-reply, deadline: 300ms }
            """)
        let tap = try Tap(system, transport: "memq", channel: "shop")
        let shop = try $Shop.resolve(id: "shop", using: system)
        await #expect(throws: SwitchyardError.self) { _ = try await shop.flaky("customer-42", failures: 0) }
        #expect(await eventually { tap.all.count == 1 })
        #expect(tap.all.first?.orderingKey == "customer-42")
        await system.shutdown()
    }

    @Test(
        "a call travels as CloudEvents headers on a transport others may read, in the compact form on one only Switchyard hosts read (private-wire)",
        arguments: [("queue", true), ("example-c", false)])
    func envelopeForm(plugin: String, compact: Bool) async throws {
        let system = try await makeSystem(
            """
            transports:
              t: { plugin: \(plugin) }
            routes:
              Shop.flaky: { transport: t, mode: request-reply, deadline: 300ms }
            """)
        let tap = try Tap(system, transport: "t", channel: "shop")
        let shop = try $Shop.resolve(id: "shop", using: system)
        await #expect(throws: SwitchyardError.self) {
            _ = try await Switchyard.withCallOptions(CallOptions(headers: ["tenant": "acme"])) { try await shop.flaky("customer-42", failures: 0) }
        }
        #expect(await eventually { tap.all.count == 1 })
        let message = try #require(tap.all.first)
        let headers = Dictionary(message.headers.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
        // The caller's own headers are headers in both forms.
        #expect(headers["ce-tenant"] == "acme")
        if compact {
            // (Trace context too, when a test elsewhere in the process bootstrapped a tracer.)
            #expect(Set(headers.keys).subtracting([EnvelopeHeader.traceparent, EnvelopeHeader.tracestate, EnvelopeHeader.traceContext]) == ["ce-tenant"])
        } else {
            #expect(headers["ce-specversion"] == "1.0")
            #expect(headers["ce-type"] == "Shop.flaky(_:failures:)")
            #expect(headers["ce-datacontenttype"] == "application/x-switchyard-compact")
            #expect(headers["ce-id"] == message.id)
            #expect(headers["ce-syreplyto"]?.hasPrefix("_switchyard.reply.") == true)
        }
        // Either way the receiver reads the same call.
        let envelope = try message.withCMessage { pointer in try Envelope(MessageView(validating: pointer)) }
        #expect(envelope.id == message.id)
        #expect(envelope.target.name == "Shop.flaky(_:failures:)")
        #expect(envelope.contentType == .compact)
        #expect(envelope.replyTo?.hasPrefix("_switchyard.reply.") == true)
        #expect(envelope.deadlineNanos > WallClock.nowNanos() - 10_000_000_000)
        #expect(envelope.headers == ["tenant": "acme"])
        #expect(try ArgumentEncoding.compact.decode(String.self, from: Array(envelope.arguments.prefix(13))) == "customer-42")
        await system.shutdown()
    }

    @Test("a reply takes the form of the call it answers: compact for a compact call, CloudEvents for a CloudEvents one")
    func replyForm() async throws {
        let system = try await makeSystem(Self.queueConfig)
        try system.host("tally", as: $Tally.self) { TallyService(actorSystem: $0) }
        let tally = try $Tally.resolve(id: "tally", using: system)
        #expect(try await tally.add(2) == 2)  // the typed path end to end
        let add = try #require(system.targets.withLock { $0.values.first { $0.call.interface == "Tally" && $0.call.method.hasPrefix("add") }?.call })
        let replies = try Tap(system, transport: "memq", channel: "forger.replies")
        var arguments: [UInt8] = []
        try ArgumentEncoding.compact.encode(5, appendingTo: &arguments)
        let calls = (0..<2).map { _ in Envelope(target: .init(name: add.name, identifier: add.identifier), arguments: arguments, replyTo: "forger.replies") }
        let client = try #require(system.transports?["memq"]?.client)
        try client.publish(calls[0].message(channel: "tally", form: .compact))
        #expect(await eventually { replies.all.count == 1 })
        try client.publish(calls[1].message(channel: "tally", form: .cloudEvents))
        #expect(await eventually { replies.all.count == 2 })
        let (compact, cloudEvents) = (replies.all[0], replies.all[1])
        // Compact: no headers at all, the fields in the body's prefix.
        #expect(compact.headers.isEmpty)
        #expect(Array(compact.body.prefix(3)) == Array("SYR".utf8))
        #expect(cloudEvents.header(EnvelopeHeader.specVersion) == "1.0")
        #expect(cloudEvents.header(EnvelopeHeader.correlationID) == calls[1].id)
        #expect(cloudEvents.header(EnvelopeHeader.outcome) == "return")
        // Both read back as what they answer: the total after adding 5 to 2, then 5 again.
        let read = try [compact, cloudEvents].map { message in try message.withCMessage { try Reply(MessageView(validating: $0)) } }
        #expect(read.map(\.correlationID) == calls.map(\.id))
        #expect(read.map(\.outcome) == ["return", "return"])
        #expect(try read.map { try $0.encoding.decode(Int.self, from: $0.body) } == [7, 12])
        // A compact call refused unread (no such method) is told why in a compact reply too.
        let unknown = Envelope(target: .init(name: "Tally.nope()", identifier: "$sGarbage"), arguments: [], replyTo: "forger.replies")
        try client.publish(unknown.message(channel: "tally", form: .compact))
        #expect(await eventually { replies.all.count == 3 })
        let refusal = replies.all[2]
        #expect(refusal.headers.isEmpty)
        let refused = try refusal.withCMessage { try Reply(MessageView(validating: $0)) }
        #expect(refused.correlationID == unknown.id && refused.outcome == "throw")
        #expect(String(decoding: refused.body, as: UTF8.self).contains("unknown target"), "\(String(decoding: refused.body, as: UTF8.self))")
        await system.shutdown()
    }

    @Test("a generic method is refused with a clear error before it is sent, never crashing the receiver")
    func genericMethod() async throws {
        let system = try await makeSystem(Self.queueConfig)
        try system.host("tally", as: $Tally.self) { TallyService(actorSystem: $0) }
        let tally = try $Tally.resolve(id: "tally", using: system)
        do {
            _ = try await tally.echo("hello")
            Issue.record("expected a routing error")
        } catch let error as SwitchyardError where error.code == .routing {
            let reason = error.reason
            #expect(reason.contains("generic distributed methods cannot be routed"))
        }
        #expect(try await tally.add(1) == 1)
        // A forged envelope for the generic method is refused by the receiver too, not run.
        let add = try #require(system.targets.withLock { $0.values.first { $0.call.method == "add" }?.call })
        let generic = add.identifier.replacingOccurrences(of: "3addyS2iYaKFTE", with: "4echoyqd__qd__YaKSeRd__SERd__lFTE")
        let dlq = try Tap(system, transport: "memq", channel: "tally.dlq")
        var arguments: [UInt8] = []
        try ArgumentEncoding.compact.encode("x", appendingTo: &arguments)
        try system.transports!["memq"]!.client.publish(Envelope(target: .init(name: "Tally.echo(_:)", identifier: generic), arguments: arguments).message(channel: "tally"))
        #expect(await eventually { dlq.all.count == 1 })
        #expect(dlq.all.first?.header("sy-dlq-reason")?.contains("generic distributed methods") == true)
        #expect(try await tally.add(1) == 2)
        await system.shutdown()
    }

    @Test("unrouted calls and fire-and-forget routes for methods with results are refused")
    func routingErrors() async throws {
        let system = try await makeSystem(
            """
            transports:
              memq: { plugin: queue }
            routes:
              Shop.place: { transport: memq, mode: fire-and-forget }
            """)
        let shop = try $Shop.resolve(id: "shop", using: system)
        do {
            _ = try await shop.total(of: [])
            Issue.record("expected a routing error")
        } catch let error as SwitchyardError where error.code == .routing {
            let reason = error.reason
            #expect(reason.contains("no route matches Shop.total"))
        }
        do {
            _ = try await shop.place(Order(id: 1, customer: "a", amount: 1))
            Issue.record("expected a routing error")
        } catch let error as SwitchyardError where error.code == .routing {
            let reason = error.reason
            #expect(reason.contains("only Void methods can be fire-and-forget"))
        }
        await system.shutdown()
    }
}
