import Distributed
import Foundation
import SwitchyardConfig
import SwitchyardRuntime

/// What the example system did, counted by its services.
public final class DemoStats: @unchecked Sendable {
    // @unchecked: every field is guarded by `lock`.
    private let lock = NSLock()
    private var attempts: [Int: Int] = [:]
    private var deliveries: [String: Set<Int>] = [:]
    private var duplicates = 0

    /// Counts a payment attempt for `orderID`; returns its number (1 for the first).
    func paymentAttempt(_ orderID: Int) -> Int {
        lock.withLock {
            attempts[orderID, default: 0] += 1
            return attempts[orderID]!
        }
    }

    /// Counts a delivery to `group` (a subscriber group or "reminders").
    func delivered(to group: String, orderID: Int) {
        lock.withLock {
            if !deliveries[group, default: []].insert(orderID).inserted { duplicates += 1 }
        }
    }

    /// Orders delivered to `group`.
    public func deliveredCount(_ group: String) -> Int { lock.withLock { deliveries[group]?.count ?? 0 } }
    /// Orders among `orders` delivered to `group`: a run on stores kept from an earlier one
    /// (`SWITCHYARD_DATA`) also receives that run's reminders still held, for orders of its own.
    public func deliveredCount(_ group: String, among orders: Set<Int>) -> Int {
        lock.withLock { deliveries[group]?.intersection(orders).count ?? 0 }
    }
    /// Payment attempts beyond each order's first.
    public var paymentRetries: Int { lock.withLock { attempts.values.reduce(0) { $0 + max(0, $1 - 1) } } }
    /// Deliveries of an order a group had already received (at-least-once redeliveries).
    public var duplicateDeliveries: Int { lock.withLock { duplicates } }
}

/// The summary `switchyard demo` prints.
public struct DemoSummary: Sendable {
    /// Orders placed.
    public var placed = 0
    /// Orders whose place call returned a receipt.
    public var succeeded = 0
    /// Orders declined: dead-lettered after their retries, or declined outright on routes without retries.
    public var declined = 0
    /// Calls that ended with any other error (a defect: the demo then exits 1).
    public var errors: [String] = []
    /// Payment attempts beyond each order's first.
    public var paymentRetries = 0
    /// Orders delivered per subscriber group / service.
    public var delivered: [(group: String, count: Int)] = []
    /// At-least-once redeliveries the services saw.
    public var duplicates = 0
    /// Place-call latency percentiles.
    public var p50 = Duration.zero, p99 = Duration.zero
    /// How long the whole run took.
    public var wallTime = Duration.zero
    /// Route → transport chain, as configured.
    public var routes: [(pattern: String, transport: String)] = []

    /// Every order accounted for, and every placed order announced and reminded exactly as often.
    public var isConsistent: Bool {
        errors.isEmpty && succeeded + declined == placed && delivered.allSatisfy { $0.count == succeeded }
    }

    /// The summary table.
    public var table: String {
        func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }
        func ms(_ d: Duration) -> String { String(format: "%.2f ms", seconds(d) * 1e3) }
        var rows: [(String, String)] = [
            ("orders placed", "\(placed)"),
            ("succeeded", "\(succeeded)"),
            ("declined (dead-lettered / refused)", "\(declined)"),
            ("payment retries", "\(paymentRetries)"),
        ]
        rows += delivered.map { ("delivered to \($0.group)", "\($0.count)") }
        rows += [
            ("redeliveries seen (at-least-once)", "\(duplicates)"),
            ("place latency p50 / p99", "\(ms(p50)) / \(ms(p99))"),
            ("wall time", String(format: "%.2f s", seconds(wallTime))),
        ]
        if !errors.isEmpty { rows.append(("unexpected errors", "\(errors.count): \(errors.prefix(3).joined(separator: "; "))")) }
        let width = rows.map(\.0.count).max() ?? 0
        var lines = rows.map { $0.0.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + $0.1 }
        lines.append("")
        lines.append("routes:")
        lines += routes.map { "  \($0.pattern.padding(toLength: 16, withPad: " ", startingAt: 0)) → \($0.transport)" }
        return lines.joined(separator: "\n")
    }
}

/// The orders example end to end: hosts every service, places orders concurrently, waits until
/// every event and reminder has arrived, and summarises.
public enum OrdersDemo {
    /// The default config, `switchyard.yaml` (durable SQLite transports under `$SWITCHYARD_DATA`):
    /// installed, `<prefix>/share/switchyard/examples/orders/` beside `<prefix>/bin/switchyard`
    /// (scripts/install puts every config of the example there); built from a checkout, the
    /// checkout's own `examples/orders/`. Nil when neither is there. (Not a SwiftPM resource:
    /// its accessor traps in a binary whose resource folder was not installed beside it.)
    public static var defaultConfigPath: String? { configPath("switchyard.yaml") }

    /// Where the example's config `file` is (`switchyard.yaml`, `nats.yaml`, …): see
    /// ``defaultConfigPath``.
    public static func configPath(_ file: String) -> String? {
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        let installed = executable.deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("share/switchyard/examples/orders/\(file)").path
        let checkout = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent(file).path
        return [installed, checkout].first { FileManager.default.isReadableFile(atPath: $0) }
    }

    /// Runs the example on `system` and returns its summary.
    ///
    /// - Parameters:
    ///   - orders: how many orders to place.
    ///   - concurrency: how many callers place orders at once.
    ///   - reminderDelay: how long after an order its reminder is due.
    ///   - progress: called with a progress line now and then.
    public static func run(
        system: SwitchyardActorSystem, orders: Int = 200, concurrency: Int = 16, reminderDelay: Duration = .milliseconds(300),
        timeout: Duration = .seconds(60), progress: @escaping @Sendable (String) -> Void = { _ in }
    ) async throws -> DemoSummary {
        let stats = DemoStats()
        let shop = try hostServices(on: system, stats: stats, reminderDelay: reminderDelay)

        let started = ContinuousClock.now
        let outcomes = Outcomes()
        let reporter = Task {
            while (try? await Task.sleep(for: .milliseconds(500))) != nil {
                progress(outcomes.line(total: orders, stats: stats))
            }
        }
        defer { reporter.cancel() }
        await withTaskGroup(of: Void.self) { group in
            let next = Counter()
            for _ in 0..<min(concurrency, orders) {
                group.addTask {
                    while let id = next.take(below: orders) {
                        _ = await place(id, at: shop, recordingIn: outcomes)
                    }
                }
            }
        }
        // Events and reminders travel on their own; wait until each succeeded order has them all.
        let groups = ["email", "analytics", "reminders"]
        // Counted among this run's orders: stores kept from an earlier run may still hold its
        // reminders, for order ids of the same numbers.
        let succeeded = outcomes.succeeded
        let waitUntil = ContinuousClock.now + timeout
        while groups.contains(where: { stats.deliveredCount($0, among: succeeded) < succeeded.count }) && ContinuousClock.now < waitUntil {
            try await Task.sleep(for: .milliseconds(20))
        }
        progress(outcomes.line(total: orders, stats: stats))
        var summary = outcomes.summary
        summary.wallTime = ContinuousClock.now - started
        summary.paymentRetries = stats.paymentRetries
        summary.delivered = groups.map { ($0, stats.deliveredCount($0, among: succeeded)) }
        summary.duplicates = stats.duplicateDeliveries
        summary.routes = system.routeDescriptions  // `package`: this example is built inside the switchyard package
        return summary
    }

    /// Hosts every service of the example on `system` and returns the shop's front door.
    static func hostServices(on system: SwitchyardActorSystem, stats: DemoStats, reminderDelay: Duration) throws -> any Orders {
        system.registerError(PaymentDeclined.self)
        for group in ["email", "analytics"] {
            try system.host(SwitchyardActorID("order-events", group: group), as: $OrderEvents.self) {
                OrderEventsSubscriber(actorSystem: $0, group: group, stats: stats)
            }
        }
        let events: any OrderEvents = try system.resolve("order-events", $OrderEvents.self)
        try system.host("payments", as: $Payments.self) { PaymentsService(actorSystem: $0, stats: stats, events: events) }
        try system.host("reminders", as: $Reminders.self) { ReminderService(actorSystem: $0, stats: stats) }
        let payments: any Payments = try system.resolve("payments", $Payments.self)
        let reminders: any Reminders = try system.resolve("reminders", $Reminders.self)
        try system.host("orders", as: $Orders.self) {
            OrdersService(actorSystem: $0, payments: payments, reminders: reminders, reminderDelay: reminderDelay)
        }
        return try system.resolve("orders", $Orders.self)
    }

    /// Hosts the example's services on `system` and places `perSecond` orders a second, one at a
    /// time, until the task is cancelled: live traffic for the admin console
    /// (`switchyard demo --serve`). Some payments are retried and a few end dead-lettered, as in
    /// ``run(system:orders:concurrency:reminderDelay:timeout:progress:)``.
    public static func serve(
        system: SwitchyardActorSystem, perSecond: Double = 5, reminderDelay: Duration = .seconds(2),
        progress: @escaping @Sendable (String) -> Void = { _ in }
    ) async throws {
        let stats = DemoStats()
        let shop = try hostServices(on: system, stats: stats, reminderDelay: reminderDelay)
        let outcomes = Outcomes()
        let pause = Duration.nanoseconds(Int64(1e9 / max(0.01, perSecond)))
        var id = 0
        var lastReport = ContinuousClock.now
        while !Task.isCancelled {
            let started = ContinuousClock.now
            guard await place(id, at: shop, recordingIn: outcomes) else { return }  // the system is shutting down
            id += 1
            if ContinuousClock.now - lastReport >= .seconds(10) {
                lastReport = ContinuousClock.now
                progress(outcomes.line(total: id, stats: stats))
            }
            try? await Task.sleep(until: started + pause)
        }
    }

    /// Places order `id` and records how it went; false once the system is shutting down.
    static func place(_ id: Int, at shop: any Orders, recordingIn outcomes: Outcomes) async -> Bool {
        let order = Order(id: id, customer: "customer-\(id % 37)", cents: 500 + id * 13 % 9000)
        let started = ContinuousClock.now
        do {
            _ = try await shop.place(order)
            outcomes.record(.succeeded, ContinuousClock.now - started, id: id)
        } catch is PaymentDeclined {
            outcomes.record(.declined, ContinuousClock.now - started, id: id)
        } catch SwitchyardError.Code.deadLettered {
            outcomes.record(.declined, ContinuousClock.now - started, id: id)
        } catch SwitchyardError.Code.shuttingDown {
            return false
        } catch {
            outcomes.record(.error("\(error)"), ContinuousClock.now - started, id: id)
        }
        return true
    }

    /// Hands out order numbers to the concurrent callers.
    final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var value = 0
        func take(below limit: Int) -> Int? {
            lock.withLock {
                guard value < limit else { return nil }
                defer { value += 1 }
                return value
            }
        }
    }

    /// Place-call outcomes and latencies.
    final class Outcomes: @unchecked Sendable {
        enum Kind {
            case succeeded, declined
            case error(String)
        }
        private let lock = NSLock()
        private var result = DemoSummary()
        private var latencies: [Duration] = []
        private var succeededIDs: Set<Int> = []

        func record(_ kind: Kind, _ latency: Duration, id: Int) {
            lock.withLock {
                result.placed += 1
                latencies.append(latency)
                switch kind {
                case .succeeded:
                    result.succeeded += 1
                    succeededIDs.insert(id)
                case .declined: result.declined += 1
                case .error(let text): result.errors.append(text)
                }
            }
        }

        /// The orders of this run that succeeded.
        var succeeded: Set<Int> { lock.withLock { succeededIDs } }

        var summary: DemoSummary {
            lock.withLock {
                var summary = result
                let sorted = latencies.sorted()
                if !sorted.isEmpty {
                    summary.p50 = sorted[sorted.count / 2]
                    summary.p99 = sorted[min(sorted.count - 1, sorted.count * 99 / 100)]
                }
                return summary
            }
        }

        func line(total: Int, stats: DemoStats) -> String {
            let now = summary
            return "placed \(now.placed)/\(total) · succeeded \(now.succeeded) · declined \(now.declined) · retries \(stats.paymentRetries)"
                + " · email \(stats.deliveredCount("email")) · analytics \(stats.deliveredCount("analytics")) · reminders \(stats.deliveredCount("reminders"))"
        }
    }
}
