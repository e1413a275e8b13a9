import Foundation
import SwitchyardABI
import SwitchyardHost
import SwitchyardLoader
import Synchronization

/// The contract every transport is held to, runnable against any plugin `.so` through the C ABI.
///
/// Each check creates fresh instances with `makeTransport` and skips itself when the plugin does
/// not declare the capability it tests. Third parties run it from their own tests:
///
/// ```swift
/// let plugin = try PluginLoader().load(path: "libswitchyard-mine.so")
/// let results = ConformanceSuite(plugin: plugin) { try Transport(name: "t", plugin: plugin) }.run()
/// #expect(results.allSatisfy { !$0.failed })
/// ```
///
/// or from the command line: `switchyard plugins test NAME|PATH`.
public struct ConformanceSuite: Sendable {
    /// The plugin under test.
    public let plugin: LoadedPlugin
    /// Makes a fresh, independent transport instance of the plugin (fresh storage for durable
    /// plugins), and, for `reopen`, the same storage again.
    public let makeTransport: @Sendable (_ reopen: Bool) throws -> Transport
    /// Whether instances are durable: enables the survives-restart check.
    public let durable: Bool
    /// What the instances under test can do: the plugin's capabilities, or for a decorator, those
    /// of the chain it forms with its inner transport.
    public let capabilities: Capabilities
    /// A check still running after this many seconds fails as timed out (default 60).
    public var checkTimeoutSeconds: Double = 60

    /// Runs one check and closes what it opened, on the thread that ran it.
    private static func runCheck(_ check: ConformanceCheck, _ context: ConformanceContext) -> ConformanceResult.Outcome {
        let outcome: ConformanceResult.Outcome
        do {
            try check.body(context)
            outcome = .passed
        } catch let skip as ConformanceSkip {
            outcome = .skipped(skip.reason)
        } catch let error as TransportError where error.code == .full {
            // A bounded plugin doing its job: the checks need room for their messages.
            outcome = .failed(
                "\(error) (the checks hold up to \(Self.messagesHeldAtOnce) messages at once: test a bounded plugin with room for them, "
                    + "switchyard plugins test NAME --plugin-config '{...}')")
        } catch {
            outcome = .failed("\(error)")
        }
        context.closeAll()
        return outcome
    }

    /// The most messages a check keeps stored at once (the batch checks): a plugin with a bounded
    /// capacity needs at least this much room to pass them.
    public static let messagesHeldAtOnce = 200

    static func format(_ seconds: Double) -> String {
        seconds == seconds.rounded() ? String(Int(seconds)) : String(format: "%.1f", seconds)
    }

    /// A suite for `plugin`; `capabilities` defaults to the plugin's own.
    /// `keysSetByKit`: the config keys `makeTransport` sets itself, each with the option that
    /// asked for it and what it holds (`path`: "for --durable: a file path for its store"): a
    /// plugin that refuses one is told so.
    public init(
        plugin: LoadedPlugin, capabilities: Capabilities? = nil, durable: Bool = false, keysSetByKit: [String: String] = [:],
        makeTransport: @escaping @Sendable (_ reopen: Bool) throws -> Transport
    ) {
        self.plugin = plugin
        self.capabilities = capabilities ?? plugin.capabilities
        self.durable = durable
        self.keysSetByKit = keysSetByKit
        self.makeTransport = makeTransport
    }

    /// The config keys the factory sets itself, with the option that asked for each and what it holds.
    let keysSetByKit: [String: String]

    /// How a check skipped because no instance could be created begins its reason (a command
    /// reporting the run says why nothing else ran).
    package static let notCreatedReason = "not run: no instance could be created"

    /// Every check, in order, with the capabilities it needs.
    public static let checks: [ConformanceCheck] = StandardChecks.all

    /// At most this many checks run at once in one process, across every suite running: suites
    /// run side by side (a test's cases) overlap their waits, without each check's timing windows
    /// (leases of 600 ms) competing with a dozen others for two cores.
    static let checkSlots = DispatchSemaphore(value: 2)

    /// Runs every check (or those named), reporting each result to `progress` as it finishes.
    ///
    /// Suites may run at the same time from several threads; at most two checks run at once in a
    /// process, and a check's time limit counts from when it starts.
    public func run(only names: Set<String> = [], progress: (ConformanceResult) -> Void = { _ in }) -> [ConformanceResult] {
        var results: [ConformanceResult] = []
        // Checks run one after another on a worker thread of this run's own, so that one stuck in
        // a plugin call that never returns fails as timed out and the suite goes on, on a fresh
        // worker (the stuck one is abandoned). One thread per run, not per check; never shared
        // between runs: a check's time limit must count its own time, not a queue behind another
        // suite's checks (several suites ran in one process, e.g. a test suite's cases, each
        // queued on one shared thread, and a check waiting its turn timed out).
        var worker = CheckWorker()
        defer { worker.finish() }
        // Once a check could not create its first instance (the plugin refused its config, the
        // host could not set it up — an isolation host that will not start — or create failed),
        // every check left would fail the same way: it is reported once, and the rest are skipped.
        var cannotCreate: String?
        for check in Self.checks where names.isEmpty || names.contains(check.name) {
            let result: ConformanceResult
            if let cannotCreate {
                // The reason is in the failure of the check that met it: said once, not per check.
                result = ConformanceResult(name: check.name, outcome: .skipped("\(Self.notCreatedReason) (\(cannotCreate))"), seconds: 0)
            } else if !capabilities.isSuperset(of: check.requires) {
                result = ConformanceResult(name: check.name, outcome: .skipped("needs \(check.requires.subtracting(capabilities))"), seconds: 0)
            } else if check.requiresDurable && !durable {
                result = ConformanceResult(
                    name: check.name,
                    outcome: .skipped(
                        "needs durable mode (plugins test --durable gives each check a fresh `path`; --isolation-key KEY a name of its own in KEY)"),
                    seconds: 0)
            } else {
                Self.checkSlots.wait()
                defer { Self.checkSlots.signal() }
                let started = Date()
                let context = ConformanceContext(suite: self)
                let outcome: ConformanceResult.Outcome
                if ThreadSanitizer.isActive {
                    // Inline, without a time limit, under ThreadSanitizer: a check on a worker
                    // while this thread waits for it reliably trips a bug in TSan's runtime
                    // (a signal during its slot attach: google/sanitizers#1541) in the NATS checks.
                    outcome = Self.runCheck(check, context)
                } else {
                    let finished = DispatchSemaphore(value: 0)
                    let outcomeBox = Guarded<ConformanceResult.Outcome?>(nil)
                    worker.run {
                        outcomeBox.withLock { $0 = Self.runCheck(check, context) }
                        finished.signal()
                    }
                    if finished.wait(timeout: .now() + checkTimeoutSeconds) == .timedOut {
                        worker.finish()  // ends its thread should the plugin call ever return
                        worker = CheckWorker()
                        // Its transports are left open: closing one while a call into it runs
                        // breaks the ABI's contract. They are abandoned with the stuck worker.
                        outcome = .failed(
                            "timed out after \(Self.format(checkTimeoutSeconds)) s (a call into the plugin did not return; every ABI function but drain must "
                                + "return promptly. The usual cause: the plugin holds its own lock while it calls deliver, and the subscriber "
                                + "settles (or publishes) from inside the delivery, which waits for that lock: call deliver with no lock held)")
                    } else {
                        outcome = outcomeBox.withLock { $0 } ?? .failed("the check ended without an outcome")
                    }
                }
                result = ConformanceResult(name: check.name, outcome: outcome, seconds: Date().timeIntervalSince(started), note: context.noted)
                if context.cannotCreate.withLock({ $0 }) != nil { cannotCreate = "see '\(check.name)' above" }
            }
            progress(result)
            results.append(result)
        }
        return results
    }
}

/// One check of the suite.
public struct ConformanceCheck: Sendable {
    /// Short name, e.g. `competing-consumers`.
    public let name: String
    /// What it proves, one line.
    public let summary: String
    /// Capabilities the plugin must declare for the check to apply.
    public let requires: Capabilities
    /// Applies only to durable instances.
    public let requiresDurable: Bool
    let body: @Sendable (ConformanceContext) throws -> Void
}

/// Thrown by a check that finds, once it runs, that it does not apply: the plugin lacks the
/// optional ABI function it tests. Reported as skipped with the reason.
struct ConformanceSkip: Error {
    let reason: String
}

/// How one check ended.
public struct ConformanceResult: Sendable, CustomStringConvertible {
    /// Passed, failed with why, or skipped with why.
    public enum Outcome: Sendable {
        case passed
        case failed(String)
        case skipped(String)
    }
    /// The check's name.
    public let name: String
    /// How it ended.
    public let outcome: Outcome
    /// How long it took.
    public let seconds: Double
    /// What a passing check found worth saying (for example whether an optional feature was used).
    public internal(set) var note: String? = nil

    /// Whether it failed.
    public var failed: Bool {
        if case .failed = outcome { return true }
        return false
    }

    /// Whether it was skipped (its capabilities or mode do not apply).
    public var skipped: Bool {
        if case .skipped = outcome { return true }
        return false
    }

    public var description: String {
        switch outcome {
        case .passed: "pass  \(name) (\(String(format: "%.2f", seconds)) s)" + (note.map { ": \($0)" } ?? "")
        case .failed(let why): "FAIL  \(name): \(why)"
        case .skipped(let why): "skip  \(name): \(why)"
        }
    }
}

/// A check's failure: what was expected and what happened.
public struct ConformanceFailure: Error, CustomStringConvertible {
    public let description: String
    /// A failure saying `description`.
    public init(_ description: String) { self.description = description }
}

/// What a check works with: fresh transports that are closed after it, and helpers.
public final class ConformanceContext: @unchecked Sendable {
    // @unchecked: `opened` is guarded by its Mutex; the rest is immutable.
    let suite: ConformanceSuite
    private let opened = Guarded<[Transport]>([])
    private let notes = Guarded<[String]>([])
    /// Why the check could not create its first instance (the plugin refused its config, the
    /// host could not set it up, or create failed otherwise): every check after it would fail
    /// the same way.
    let cannotCreate = Guarded<String?>(nil)

    init(suite: ConformanceSuite) { self.suite = suite }

    /// A fresh transport instance, closed when the check ends.
    public func transport(reopen: Bool = false) throws -> Transport {
        let transport: Transport
        do {
            transport = try suite.makeTransport(reopen)
        } catch var error as TransportError {
            // A key the kit set (a `path` for --durable) refused: say who set it and what it needs.
            if error.code == .config, let set = suite.keysSetByKit.first(where: { error.message.contains("'\($0.key)'") }) {
                error.message += " (the conformance kit sets config key '\(set.key)' itself \(set.value))"
            }
            // Only the check's first instance: a later one (a second instance beside the first,
            // a reopened store) can fail for what the check itself did. And not for what may pass
            // (an engine briefly unreachable, a timeout): the next check tries again.
            if !reopen && ![.unavailable, .timeout, .io].contains(error.code) && opened.withLock(\.isEmpty) {
                cannotCreate.withLock { $0 = "\(error)" }
            }
            throw error
        }
        opened.withLock { $0.append(transport) }
        return transport
    }

    /// Leaves `transport` open for good: a call into it never returned, and closing it would
    /// free what that call still uses (as a check that timed out leaves its transports).
    func abandon(_ transport: Transport) {
        opened.withLock { $0.removeAll { $0 === transport } }
    }

    /// Closes one instance now (e.g. to reopen its storage).
    public func close(_ transport: Transport) {
        opened.withLock { $0.removeAll { $0 === transport } }
        transport.close()
    }

    func closeAll() {
        for transport in opened.withLock({ all in
            defer { all.removeAll() }; return all
        }).reversed() { transport.close() }
    }

    /// Adds to what the check reports when it passes (``ConformanceResult/note``).
    public func note(_ text: String) { notes.withLock { $0.append(text) } }

    var noted: String? { notes.withLock { $0.isEmpty ? nil : $0.joined(separator: "; ") } }

    /// Fails the check with `message` unless `condition` holds.
    public func expect(_ condition: Bool, _ message: @autoclosure () -> String) throws {
        if !condition { throw ConformanceFailure(message()) }
    }
}

/// Collects deliveries on transport threads, with an optional settle policy.
public final class Collector: @unchecked Sendable {
    // @unchecked: all state is behind the Mutex.
    /// One delivery as it arrived.
    public struct Received: Sendable {
        /// The delivery's id.
        public let delivery: DeliveryID
        /// A copy of its message.
        public let message: Message
        /// When it arrived, ns since the Unix epoch.
        public let at: Int64
    }
    private let state = Guarded<[Received]>([])

    /// An empty collector.
    public init() {}

    /// All received so far, in arrival order.
    public var received: [Received] { state.withLock { $0 } }
    /// How many arrived so far.
    public var count: Int { state.withLock { $0.count } }

    /// A handler that records each delivery and then settles it with `settle` (nil: leave unsettled).
    public func handler(client: TransportClient, settle: (@Sendable (Message) -> Settlement?)? = { _ in .ack }) -> DeliveryHandler {
        { [self] delivery, view in
            let message = view.copy()
            state.withLock { $0.append(Received(delivery: delivery, message: message, at: wallClockNanoseconds())) }
            if let settlement = settle?(message) { try? client.settle(delivery, settlement) }
            return .ok
        }
    }

    /// How long checks wait for deliveries that should arrive, in seconds: 5, or
    /// `SWITCHYARD_CONFORMANCE_WAIT` from the environment (raise it where everything runs slower:
    /// a loaded CI machine, a sanitizer build; `scripts/sanitize` sets 30).
    public static let defaultWaitSeconds: Double = ProcessInfo.processInfo.environment["SWITCHYARD_CONFORMANCE_WAIT"].flatMap(Double.init) ?? 5

    /// Waits until at least `count` deliveries arrived, or `seconds` passed (by default
    /// ``defaultWaitSeconds``).
    @discardableResult
    public func wait(for count: Int, seconds: Double = Collector.defaultWaitSeconds) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while self.count < count && Date() < deadline { usleep(1000) }
        return self.count >= count
    }
}

/// A thread that runs one suite run's checks, one at a time, until ``finish()``.
final class CheckWorker: Sendable {
    /// Queued checks; `nil` ends the thread.
    private let jobs = Guarded<[(@Sendable () -> Void)?]>([])
    private let ready = DispatchSemaphore(value: 0)

    init() {
        let thread = Thread(named: "switchyard-checks") { [jobs, ready] in
            while true {
                ready.wait()
                let next: (@Sendable () -> Void)?? = jobs.withLock { $0.isEmpty ? .none : .some($0.removeFirst()) }
                switch next {
                case .none: continue
                case .some(.none): return
                case .some(.some(let job)): job()
                }
            }
        }
        thread.start()
    }

    /// Queues `job`.
    func run(_ job: @escaping @Sendable () -> Void) {
        jobs.withLock { $0.append(job) }
        ready.signal()
    }

    /// Ends the thread once the jobs queued before it have run (a stuck worker never gets there).
    func finish() {
        jobs.withLock { $0.append(nil) }
        ready.signal()
    }
}
