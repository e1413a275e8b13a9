import Foundation
import SwitchyardABI
import SwitchyardHost
import SwitchyardTestSupport
import Testing

@testable import SwitchyardRuntime

/// What every external engine's suite (NATS, RabbitMQ) checks the same way: typed calls over a
/// queue-like and a topic-like transport of the engine, and the orders demo over it.
enum EngineChecks {
    /// Request-reply, retries, dead-lettering and fan-out through `transportsYAML`, which defines
    /// the transports `jobs` (a queue) and `events` (a topic).
    static func typedCalls(transportsYAML: String) async throws {
        let system = try await makeSystem(
            """
            transports:
            \(transportsYAML)
            routes:
              Shop.record: { transport: events, mode: fire-and-forget }
              Shop.*: { transport: jobs, deadline: 20s, retry: { max_attempts: 3, initial_delay: 10ms } }
            """)
        system.registerError(OutOfStock.self)
        let ledger = Ledger()
        for group in ["email", "analytics"] {
            try system.host(SwitchyardActorID("shop", group: group), as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger, label: group) }
        }
        let shop = try $Shop.resolve(id: "shop", using: system)
        #expect(try await shop.place(Order(id: 5, customer: "engine", amount: 2)).hasPrefix("receipt-5-engine"))
        #expect(try await shop.flaky("n", failures: 2) == 3)
        do {
            _ = try await shop.fail("x", registered: true)
            Issue.record("expected the call to be dead-lettered")
        } catch let error as SwitchyardError where error.code == .deadLettered {
            let attempts = error.attempts!
            #expect(attempts == 3)
        }
        for id in 0..<10 { try await shop.record(Order(id: id, customer: "c", amount: 1)) }
        #expect(await eventually { ledger.all.filter { $0.contains(":record:") }.count == 20 })
        #expect(ledger.all.filter { $0.hasPrefix("email:record:") }.count == 10)
        await system.shutdown()
    }

    /// `switchyard demo --config CONFIG` with `environment` gives the embedded run's summary, with
    /// `Payments.charge` routed through `transport`. `brokerFault`, asked only when the reminders
    /// (the delayed calls) did not all arrive, describes a fault of the engine itself that explains
    /// it (messages the engine held past their delay); that case is recorded as a known issue of
    /// the engine, with the evidence, and every other line of the summary is still checked.
    /// `brokerState` describes the engine's queues for a failure's message.
    static func demo(
        config: String, environment extra: [String: String], transport: String, brokerFault: () -> String? = { nil },
        brokerState: () -> String = { "" }
    ) async throws {
        var environment = ProcessInfo.processInfo.environment
        for (key, value) in extra { environment[key] = value }
        let result = try await run(BuildProducts.switchyard, ["demo", "--orders", "60", "--config", Repository.root + "/examples/orders/" + config], environment: environment)
        #expect(result.stdout.contains("route    Payments.charge → work (\(transport))"), "\(result.stdout)")
        #expect(result.stdout.contains("succeeded                           59"))
        #expect(result.stdout.contains("declined (dead-lettered / refused)  1"))
        #expect(result.stdout.contains("delivered to analytics              59"))
        let remindersArrived = result.stdout.contains("delivered to reminders              59")
        if !remindersArrived, let fault = brokerFault() {
            withKnownIssue("the engine held delayed messages past their delay: \(fault)", isIntermittent: true) {
                Issue.record("reminders missing:\n\(result.stdout)\(result.stderr)")
            }
            return
        }
        #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        #expect(remindersArrived, "\(brokerState())")
    }
}
