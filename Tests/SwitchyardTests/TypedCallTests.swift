import Distributed
import Foundation
import Testing
import SwitchyardConfig
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
    func bump(_ key: String) -> Int { lock.withLock { counts[key, default: 0] += 1; return counts[key]! } }
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
    }

    distributed func flaky(_ key: String, failures: Int) async throws -> Int {
        let attempt = ledger.bump("flaky:\(key)")
        if attempt <= failures { throw OutOfStock(item: "\(key) attempt \(attempt)") }
        return attempt
    }

    distributed func slow(_ milliseconds: Int) async throws -> Int {
        try await Task.sleep(for: .milliseconds(milliseconds))
        ledger.add("slow")
        return milliseconds
    }
}

/// A system over the bundled plugins (loaded from their .so files) with `yaml` as its config.
func makeSystem(_ yaml: String, directory: TemporaryDirectory? = nil) throws -> SwitchyardActorSystem {
    let config = try SwitchyardConfig.parse(yaml: yaml, baseDirectory: directory?.path ?? NSTemporaryDirectory())
    return try SwitchyardActorSystem(config: config, pluginDirectories: [BuildProducts.directory])
}

@Suite("Typed calls")
struct TypedCallTests {
    static let queueConfig = """
        transports:
          memq: { plugin: queue }
        routes:
          "*": { transport: memq, deadline: 5s }
        """

    @Test("request-reply through an in-memory queue .so: values, collections, optionals")
    func requestReplyThroughQueue() async throws {
        let system = try makeSystem(Self.queueConfig)
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
}
