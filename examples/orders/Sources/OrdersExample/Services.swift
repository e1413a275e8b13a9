import Distributed
import Foundation
import SwitchyardPostgres
import SwitchyardRuntime

// The orders example: four service protocols. Nothing here knows how calls travel; the config
// file's routes decide (switchyard.yaml: durable queues, a topic, a delay; direct.yaml: in process).

/// An order to place.
public struct Order: Codable, Hashable, Sendable {
    /// Order number.
    public var id: Int
    /// Who ordered.
    public var customer: String
    /// Amount in cents.
    public var cents: Int

    /// An order.
    public init(id: Int, customer: String, cents: Int) {
        self.id = id
        self.customer = customer
        self.cents = cents
    }
}

/// What placing an order returns.
public struct Receipt: Codable, Hashable, Sendable {
    /// The order.
    public var orderID: Int
    /// The payment provider's reference.
    public var payment: String
}

/// The payment provider said no; comes back to callers as itself (it is registered).
public struct PaymentDeclined: Error, Codable, Hashable, CustomStringConvertible {
    /// The order.
    public var orderID: Int
    /// Why.
    public var reason: String
    public var description: String { "payment for order \(orderID) declined: \(reason)" }
}

/// Places orders: charges the payment (which announces the order), schedules a reminder.
@Resolvable
public protocol Orders: DistributedActor where ActorSystem == SwitchyardActorSystem {
    /// Places an order and returns its receipt.
    distributed func place(_ order: Order) async throws -> Receipt
}

/// Charges customers through a flaky provider.
@Resolvable
public protocol Payments: DistributedActor where ActorSystem == SwitchyardActorSystem {
    /// Charges an order; throws ``PaymentDeclined`` when the provider refuses.
    distributed func charge(_ order: Order) async throws -> String
}

/// Events about orders, for every subscriber group.
@Resolvable
public protocol OrderEvents: DistributedActor where ActorSystem == SwitchyardActorSystem {
    /// An order was placed.
    distributed func orderPlaced(_ order: Order, receipt: Receipt) async throws
}

/// Reminders, sent later.
@Resolvable
public protocol Reminders: DistributedActor where ActorSystem == SwitchyardActorSystem {
    /// Reminds the customer about the order.
    distributed func remind(orderID: Int, customer: String) async throws
}

distributed actor OrdersService: Orders {
    typealias ActorSystem = SwitchyardActorSystem
    let payments: any Payments
    let reminders: any Reminders
    let reminderDelay: Duration

    init(actorSystem: ActorSystem, payments: any Payments, reminders: any Reminders, reminderDelay: Duration) {
        self.actorSystem = actorSystem
        self.payments = payments
        self.reminders = reminders
        self.reminderDelay = reminderDelay
    }

    distributed func place(_ order: Order) async throws -> Receipt {
        // The payment handler announces the order (through its outbox, where the route has one).
        let payment = try await payments.charge(order)
        let receipt = Receipt(orderID: order.id, payment: payment)
        try await Switchyard.withDelay(reminderDelay) {
            try await reminders.remind(orderID: order.id, customer: order.customer)
        }
        return receipt
    }
}

/// A payment provider that is flaky on purpose: some orders are declined on their first attempts
/// and go through on a later one; a few are declined on every attempt the route retries (blocked
/// cards) and end dead-lettered. A successful charge is recorded in
/// the payments table and announced as ``OrderEvents/orderPlaced(_:receipt:)``: with the route's
/// durable inbox and `outbox: true`, the row, the announcement and the record that the charge was
/// handled commit together, so a charge redelivered after a crash is neither recorded nor
/// announced twice, and a declined one is never announced.
distributed actor PaymentsService: Payments {
    typealias ActorSystem = SwitchyardActorSystem
    let stats: DemoStats
    let events: any OrderEvents

    init(actorSystem: ActorSystem, stats: DemoStats, events: any OrderEvents) {
        self.actorSystem = actorSystem
        self.stats = stats
        self.events = events
    }

    distributed func charge(_ order: Order) async throws -> String {
        let attempt = stats.paymentAttempt(order.id)
        if FlakyProvider.blocked(order.id, attempt: attempt) {
            throw PaymentDeclined(
                orderID: order.id,
                reason: "card blocked (the bank lifts the block after \(FlakyProvider.blockedAttempts) attempts: replay it from the dead letters)")
        }
        if attempt <= FlakyProvider.failuresBeforeSuccess(order.id) {
            throw PaymentDeclined(orderID: order.id, reason: "provider busy (attempt \(attempt))")
        }
        let payment = "pay-\(order.id)-\(attempt)"
        try PaymentLedger.record(order, payment: payment)
        try await events.orderPlaced(order, receipt: Receipt(orderID: order.id, payment: payment))
        return payment
    }
}

/// The payments table, written in the transaction of the payments route's inbox — in SQLite or
/// PostgreSQL, whichever the config puts the inbox in; nothing to write without a durable inbox
/// (direct.yaml).
enum PaymentLedger {
    static func record(_ order: Order, payment: String) throws {
        switch Switchyard.inboxDatabase {
        case .sqlite?:
            try Switchyard.inboxTransaction { db in
                try db.execute("CREATE TABLE IF NOT EXISTS payments (order_id INTEGER NOT NULL, cents INTEGER NOT NULL, reference TEXT NOT NULL)")
                try db.run("INSERT INTO payments VALUES (?, ?, ?)", [.int(Int64(order.id)), .int(Int64(order.cents)), .text(payment)])
            }
        case .postgres?:
            try Switchyard.inboxTransaction(PostgresDatabase.self) { db in
                // Created by the first charge; concurrent CREATE TABLEs in PostgreSQL collide,
                // so the creation is serialized (the check costs one round trip).
                var missing = false
                try db.run("SELECT 1 WHERE to_regclass('orders_payments') IS NULL") { _ in missing = true }
                if missing {
                    try db.run("SELECT pg_advisory_xact_lock(hashtext('switchyard orders example'))")
                    try db.execute(
                        "CREATE TABLE IF NOT EXISTS orders_payments (order_id bigint NOT NULL, cents bigint NOT NULL, reference text NOT NULL, at timestamptz NOT NULL DEFAULT now())"
                    )
                }
                try db.run("INSERT INTO orders_payments VALUES ($1, $2, $3)", [.int(Int64(order.id)), .int(Int64(order.cents)), .text(payment)])
            }
        case nil:
            break
        }
    }
}

/// Which orders the flaky provider declines, and how often.
public enum FlakyProvider {
    /// Attempts a blocked card is declined: as many as the payments route retries, so its call
    /// ends dead-lettered, and replaying it (as fire-and-forget: its caller stopped waiting) goes
    /// through — which `switchyard demo --serve`'s console shows.
    public static let blockedAttempts = 4
    /// Whether the card of order `id` is blocked at its `attempt`-th charge (counted across
    /// deliveries and replays): one order in 50, for its first ``blockedAttempts`` attempts.
    public static func blocked(_ id: Int, attempt: Int) -> Bool { id % 50 == 17 && attempt <= blockedAttempts }
    /// Declined this many times before going through: one order in 10 twice, one in 7 once.
    public static func failuresBeforeSuccess(_ id: Int) -> Int { id % 10 == 3 ? 2 : (id % 7 == 5 ? 1 : 0) }
}

/// One subscriber group of ``OrderEvents``: counts what it receives under its group name.
distributed actor OrderEventsSubscriber: OrderEvents {
    typealias ActorSystem = SwitchyardActorSystem
    let group: String
    let stats: DemoStats

    init(actorSystem: ActorSystem, group: String, stats: DemoStats) {
        self.actorSystem = actorSystem
        self.group = group
        self.stats = stats
    }

    distributed func orderPlaced(_ order: Order, receipt: Receipt) async throws {
        stats.delivered(to: group, orderID: order.id)
    }
}

distributed actor ReminderService: Reminders {
    typealias ActorSystem = SwitchyardActorSystem
    let stats: DemoStats

    init(actorSystem: ActorSystem, stats: DemoStats) {
        self.actorSystem = actorSystem
        self.stats = stats
    }

    distributed func remind(orderID: Int, customer: String) async throws {
        stats.delivered(to: "reminders", orderID: orderID)
    }
}
