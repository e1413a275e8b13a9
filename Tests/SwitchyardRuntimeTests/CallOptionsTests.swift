import Distributed
import Foundation
import SwitchyardABI
import SwitchyardTestSupport
import Synchronization
import Testing

@testable import SwitchyardRuntime

@Resolvable
protocol Till: DistributedActor where ActorSystem == SwitchyardActorSystem {
    distributed func charge(_ cents: Int) async throws -> Int
    distributed func refund(_ cents: Int) async throws -> Int
    distributed func note(_ text: String) async throws
    distributed func wait(milliseconds: Int) async throws -> Int
    distributed func hold() async throws -> Int
    distributed func context() async throws -> [String]
}

/// Counts what ran; `context()` answers what the handler saw of its call.
distributed actor TillService: Till {
    typealias ActorSystem = SwitchyardActorSystem
    let runs: Runs

    final class Runs: Sendable {
        private let counts = Guarded<[String: Int]>([:])  // a lock ThreadSanitizer sees (Mutex is a bare futex)
        func add(_ name: String) -> Int {
            counts.withLock {
                $0[name, default: 0] += 1; return $0[name]!
            }
        }
        func count(_ name: String) -> Int { counts.withLock { $0[name, default: 0] } }
        /// `hold()` returns once this is set.
        let released = Atomic<Bool>(false)
    }

    init(actorSystem: ActorSystem, runs: Runs) {
        self.actorSystem = actorSystem
        self.runs = runs
    }

    distributed func charge(_ cents: Int) -> Int { runs.add("charge") }
    distributed func refund(_ cents: Int) -> Int { runs.add("refund") }
    distributed func note(_ text: String) { _ = runs.add("note") }
    distributed func wait(milliseconds: Int) async throws -> Int {
        try await Task.sleep(for: .milliseconds(milliseconds))
        return runs.add("wait")
    }
    distributed func hold() async throws -> Int {
        while !runs.released.load(ordering: .acquiring) { try await Task.sleep(for: .milliseconds(5)) }
        return runs.add("hold")
    }
    distributed func context() -> [String] {
        let call = Switchyard.currentCall
        return [
            call?.headers.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",") ?? "no call",
            call?.idempotencyKey ?? "-", String(call?.attempt ?? 0), call?.deadlineNanos == nil ? "no deadline" : "deadline",
            call?.target ?? "-",
        ]
    }
}

@Resolvable
protocol Forwarder: DistributedActor where ActorSystem == SwitchyardActorSystem {
    /// What a call the handler makes itself (to `Till.context()`) sees of its options.
    distributed func forward() async throws -> [String]
}

/// A handler that calls another service: its calls carry none of its own caller's options.
distributed actor ForwarderService: Forwarder {
    typealias ActorSystem = SwitchyardActorSystem
    let till: any Till
    init(actorSystem: ActorSystem, till: any Till) {
        self.actorSystem = actorSystem
        self.till = till
    }
    distributed func forward() async throws -> [String] { try await till.context() }
}

@Suite("Per-call options")
struct CallOptionsTests {
    static let queue = """
        transports:
          memq: { plugin: queue }
        routes:
          Till.note: { transport: memq, mode: fire-and-forget }
          Till.*: { transport: memq, deadline: 60s }
        """

    /// `isEmpty` lists the fields by hand (a direct call asks it instead of comparing): a field
    /// added to `CallOptions` and not to `isEmpty` fails here.
    @Test("options are empty only when nothing is set")
    func emptiness() {
        #expect(CallOptions().isEmpty)
        let each = [
            CallOptions(deadline: .seconds(1)), CallOptions(delay: .zero), CallOptions(idempotencyKey: "k"), CallOptions(headers: ["h": "v"]),
        ]
        for options in each { #expect(!options.isEmpty, "\(options)") }
        #expect(Mirror(reflecting: CallOptions()).children.count == each.count, "a new field: add it to isEmpty and to this list")
    }

    @Test("a call's deadline overrides its route's: the caller stops waiting then")
    func deadline() async throws {
        let system = try await makeSystem(Self.queue)
        let runs = TillService.Runs()
        try system.host("till", as: $Till.self) { TillService(actorSystem: $0, runs: runs) }
        let till = try $Till.resolve(id: "till", using: system)
        do {
            // The handler holds until the test lets it go: only the call's deadline can end the wait.
            _ = try await Switchyard.withCallOptions(CallOptions(deadline: .milliseconds(100))) { try await till.hold() }
            Issue.record("expected a timeout")
        } catch let error as SwitchyardError where error.code == .timeout {
            let target = error.target
            let deadline = error.deadline!
            #expect(target == "Till.hold()")
            #expect(deadline == .milliseconds(100))
        }
        #expect(runs.count("hold") == 0)
        runs.released.store(true, ordering: .releasing)
        // Outside the scope the route's 60 s applies (a deadline, not a stopwatch: a CI run under
        // AddressSanitizer took more than 10 s to answer a call at the start of its phase).
        #expect(try await till.wait(milliseconds: 150) >= 1)
        await system.shutdown()
    }

    @Test("a request-reply call whose deadline passed before it came to wait times out; one from a cancelled task ends as cancelled, not at its deadline")
    func deadlinePassedAndCancelledBeforeWaiting() async throws {
        let system = try await makeSystem(Self.queue)
        let runs = TillService.Runs()
        try system.host("till", as: $Till.self) { TillService(actorSystem: $0, runs: runs) }
        let till = try $Till.resolve(id: "till", using: system)
        // A deadline of a nanosecond has passed by the time the call is published: it must still
        // time out (its timer fires at once), never wait for good.
        for _ in 0..<50 {
            await #expect {
                _ = try await Switchyard.withCallOptions(CallOptions(deadline: .nanoseconds(1))) { try await till.hold() }
            } throws: { error in
                (error as? SwitchyardError)?.code == .timeout
            }
        }
        // Cancelled before the call: its cancellation handler ran before there was a waiter. It
        // ends as cancelled; before the fix it waited out the route's deadline and ended as
        // a time-out (the error's type tells them apart: no timing, which a loaded CI stretches).
        let cancelled = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await till.hold()
        }
        await #expect(throws: CancellationError.self) { _ = try await cancelled.value }
        runs.released.store(true, ordering: .releasing)
        await system.shutdown()
    }

    @Test("an idempotency key runs a repeated call once per target and answers the repeat with the first outcome")
    func idempotencyKey() async throws {
        let directory = try TemporaryDirectory()
        let system = try await makeSystem(
            """
            transports:
              memq: { plugin: queue }
            routes:
              Till.*: { transport: memq, inbox: { window: 1h, path: "\(directory.file("inbox.db"))" } }
            """)
        let runs = TillService.Runs()
        try system.host("till", as: $Till.self) { TillService(actorSystem: $0, runs: runs) }
        let till = try $Till.resolve(id: "till", using: system)
        let options = CallOptions(idempotencyKey: "order-42")
        // A caller retrying after it lost the answer: the same key, a new envelope each time.
        #expect(try await Switchyard.withCallOptions(options) { try await till.charge(500) } == 1)
        #expect(try await Switchyard.withCallOptions(options) { try await till.charge(500) } == 1)
        #expect(runs.count("charge") == 1)
        // The key names a call to one target: another method with it runs.
        #expect(try await Switchyard.withCallOptions(options) { try await till.refund(500) } == 1)
        #expect(runs.count("refund") == 1)
        // Without a key every call is its own.
        #expect(try await till.charge(500) == 2)
        #expect(runs.count("charge") == 2)
        await system.shutdown()
    }

    @Test(
        "headers, the key and the deadline reach the handler in Switchyard.currentCall, through a queue and on a direct route",
        arguments: [queue, "routes:\n  Till.*: { transport: direct }\n"])
    func handlerSeesItsCall(_ yaml: String) async throws {
        let system = try await makeSystem(yaml)
        try system.host("till", as: $Till.self) { TillService(actorSystem: $0, runs: TillService.Runs()) }
        let till = try $Till.resolve(id: "till", using: system)
        let seen = try await Switchyard.withCallOptions(CallOptions(headers: ["tenant": "acme", "region": "eu1"])) {
            // An inner scope adds to the outer one and wins where both set something. (The
            // deadline only has to reach the handler: 30 s, not a stopwatch for a loaded machine.)
            try await Switchyard.withCallOptions(CallOptions(deadline: .seconds(30), idempotencyKey: "k1", headers: ["region": "eu2"])) {
                try await till.context()
            }
        }
        let direct = yaml.contains("direct")
        #expect(seen == ["region=eu2,tenant=acme", "k1", "1", "deadline", "Till.context()"])
        let plain = try await till.context()
        #expect(plain == ["", "-", "1", direct ? "no deadline" : "deadline", "Till.context()"])
        await system.shutdown()
    }

    @Test(
        "options a call cannot carry fail it with the option named, and nothing is sent",
        arguments: [
            (CallOptions(headers: ["Tenant": "x"]), "header 'Tenant'"),
            (CallOptions(headers: ["syreplyto": "x"]), "'syreplyto' is reserved"),
            (CallOptions(headers: ["type": "x"]), "'type' is reserved"),
            (CallOptions(deadline: .zero), "deadline must be positive"),
            (CallOptions(idempotencyKey: ""), "idempotencyKey must be 1 to 200 bytes"),
        ])
    func refused(_ options: CallOptions, _ expected: String) async throws {
        for yaml in [Self.queue, "routes:\n  Till.*: { transport: direct }\n"] {
            let system = try await makeSystem(yaml)
            let runs = TillService.Runs()
            try system.host("till", as: $Till.self) { TillService(actorSystem: $0, runs: runs) }
            let till = try $Till.resolve(id: "till", using: system)
            do {
                _ = try await Switchyard.withCallOptions(options) { try await till.charge(1) }
                Issue.record("expected the call to be refused")
            } catch let error as SwitchyardError where error.code == .routing {
                let target = error.target
                let reason = error.reason
                #expect(target == "Till.charge(_:)")
                #expect(reason.contains(expected), "\(reason)")
            }
            try await Task.sleep(for: .milliseconds(50))
            #expect(runs.count("charge") == 0)
            await system.shutdown()
        }
    }

    @Test("a fire-and-forget call still queued past its deadline is dead-lettered as expired, not run")
    func expiredFireAndForget() async throws {
        let system = try await makeSystem(Self.queue)
        let dlq = try TypedCallTests.Tap(system, transport: "memq", channel: "till.dlq")
        let till = try $Till.resolve(id: "till", using: system)
        try await Switchyard.withCallOptions(CallOptions(deadline: .milliseconds(50))) { try await till.note("stale") }
        try await till.note("fresh")
        try await Task.sleep(for: .milliseconds(150))
        // Served only now: the stale call is past its deadline.
        let runs = TillService.Runs()
        try system.host("till", as: $Till.self) { TillService(actorSystem: $0, runs: runs) }
        #expect(await eventually { runs.count("note") == 1 && dlq.all.count == 1 })
        #expect(dlq.all.first?.header("sy-dlq-reason")?.contains("expired") == true, "\(dlq.all.first?.headers ?? [])")
        try await Task.sleep(for: .milliseconds(100))
        #expect(runs.count("note") == 1)
        await system.shutdown()
    }

    /// services.md: the options are the caller's, for its calls; a handler's own calls start
    /// from none (they are other calls, with their own routes' deadlines).
    @Test(
        "a handler's own calls do not inherit its caller's headers, key or deadline, through a queue and on a direct route",
        arguments: [
            queue + "\n  Forwarder.*: { transport: memq }\n",
            "routes:\n  Till.*: { transport: direct }\n  Forwarder.*: { transport: direct }\n",
        ])
    func handlersDoNotInherit(_ yaml: String) async throws {
        let system = try await makeSystem(yaml)
        try system.host("till", as: $Till.self) { TillService(actorSystem: $0, runs: TillService.Runs()) }
        let till = try $Till.resolve(id: "till", using: system)
        try system.host("forwarder", as: $Forwarder.self) { ForwarderService(actorSystem: $0, till: till) }
        let forwarder = try $Forwarder.resolve(id: "forwarder", using: system)
        let plain = try await till.context()
        let inner = try await Switchyard.withCallOptions(CallOptions(deadline: .seconds(30), idempotencyKey: "outer", headers: ["tenant": "acme"])) {
            try await forwarder.forward()
        }
        #expect(inner == plain, "the inner call saw \(inner); a call made without options sees \(plain)")
        await system.shutdown()
    }

    @Test("a route's ordering naming a parameter the called method does not have fails that call with .routing, naming the route and the method; nothing is sent")
    func orderingByAMissingParameter() async throws {
        let system = try await makeSystem(
            """
            transports:
              memq: { plugin: queue }
            routes:
              Till.charge: { transport: memq, ordering: customer }
              Till.*: { transport: memq }
            """)
        let runs = TillService.Runs()
        try system.host("till", as: $Till.self) { TillService(actorSystem: $0, runs: runs) }
        let till = try $Till.resolve(id: "till", using: system)
        do {
            _ = try await till.charge(5)
            Issue.record("expected the call to be refused")
        } catch let error as SwitchyardError where error.code == .routing {
            let (target, reason) = (error.target, error.reason)
            #expect(target == "Till.charge(_:)")
            #expect(reason.contains("Till.charge") && reason.contains("customer"), "\(reason)")
        }
        #expect(try await till.refund(5) == 1, "the route's other methods work")
        try await Task.sleep(for: .milliseconds(50))
        #expect(runs.count("charge") == 0)
        await system.shutdown()
    }
}
