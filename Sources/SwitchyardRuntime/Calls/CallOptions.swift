import SwitchyardWire

/// Options for the calls made inside ``Switchyard/withCallOptions(_:isolation:_:)``: what a
/// route sets for all of its calls, set for some calls.
///
/// ```swift
/// let receipt = try await Switchyard.withCallOptions(
///     CallOptions(deadline: .seconds(2), idempotencyKey: "charge-\(order.id)", headers: ["tenant": "acme"])
/// ) {
///     try await payments.charge(order)
/// }
/// ```
public struct CallOptions: Sendable, Hashable {
    /// How long the call is worth waiting for, overriding the route's `deadline`. A request-reply
    /// caller stops waiting then (``SwitchyardError/timeout(target:deadline:)``); a call still
    /// queued then is dead-lettered as expired instead of run, by a transport that can expire
    /// messages and by the receiver — fire-and-forget calls included, which have no deadline
    /// otherwise.
    public var deadline: Duration?
    /// Delivered no earlier than this from now, overriding the route's `delay`. The route's
    /// transport must be able to delay (a `delay` transport in its chain).
    public var delay: Duration?
    /// Names one logical call, so that sending it again is safe: a receiver whose route has an
    /// `inbox` runs each key at most once per target within the inbox's window and answers a
    /// repeat with the first outcome. Use it when a caller retries a call whose outcome it did
    /// not see (a timeout, a lost connection). Without it, each call is its own (its envelope id).
    /// At most 200 bytes.
    public var idempotencyKey: String?
    /// Attributes carried with the call and readable by its handler in
    /// ``Switchyard/currentCall``. On the wire they are CloudEvents extension attributes
    /// (`ce-<name>` headers), so a name is 1–20 lowercase letters or digits and not one of
    /// CloudEvents' own attributes nor start with `sy` (Switchyard's).
    public var headers: [String: String]

    /// Options; every one left out keeps the route's (or an enclosing scope's) setting.
    public init(deadline: Duration? = nil, delay: Duration? = nil, idempotencyKey: String? = nil, headers: [String: String] = [:]) {
        self.deadline = deadline
        self.delay = delay
        self.idempotencyKey = idempotencyKey
        self.headers = headers
    }

    /// Whether nothing is set: what a call made outside any options scope sees. Cheaper than
    /// comparing with `CallOptions()`, which builds one to compare with (a direct call asks).
    var isEmpty: Bool { deadline == nil && delay == nil && idempotencyKey == nil && headers.isEmpty }

    /// These options with `inner`'s on top: what `inner` sets wins, headers are merged.
    func overridden(by inner: CallOptions) -> CallOptions {
        CallOptions(
            deadline: inner.deadline ?? deadline, delay: inner.delay ?? delay,
            idempotencyKey: inner.idempotencyKey ?? idempotencyKey,
            headers: headers.merging(inner.headers) { _, innermost in innermost })
    }

    /// CloudEvents 1.0 context attributes a header may not shadow.
    static let reservedNames: Set<String> = [
        "id", "source", "specversion", "type", "datacontenttype", "dataschema", "subject", "time", "data", "data_base64",
        "traceparent", "tracestate",
    ]

    /// What is wrong with these options, for a person; nil when nothing is.
    package var problem: String? {
        if let deadline, deadline <= .zero { return "call option deadline must be positive (got \(deadline))" }
        if let delay, delay < .zero { return "call option delay must not be negative (got \(delay))" }
        if let key = idempotencyKey, let problem = Envelope.idempotencyKeyProblem(byteCount: key.utf8.count) {
            return "call option idempotencyKey \(problem)"
        }
        guard !headers.isEmpty else { return nil }  // checked on every call: sorting nothing still costs
        for name in headers.keys.sorted() {
            guard (1...20).contains(name.utf8.count), name.utf8.allSatisfy({ (0x61...0x7A).contains($0) || (0x30...0x39).contains($0) }) else {
                return "call option header '\(name)' is not a CloudEvents extension name: use 1 to 20 lowercase letters or digits"
            }
            if name.hasPrefix("sy") || Self.reservedNames.contains(name) {
                return "call option header '\(name)' is reserved (CloudEvents attributes and names starting with 'sy' are the envelope's own): choose another name"
            }
        }
        return nil
    }
}

/// What a handler can know about the call it is running: ``Switchyard/currentCall``.
public struct CallContext: Sendable, Hashable {
    /// The call's id (its envelope id; for a call on a direct route, one made for it).
    public var id: String
    /// The readable target, `Interface.method(labels:)`.
    public var target: String
    /// Which delivery of the call this is, 1 for the first.
    public var attempt: Int
    /// The caller's ``CallOptions/headers``.
    public var headers: [String: String]
    /// The caller's ``CallOptions/idempotencyKey``; nil when it set none.
    public var idempotencyKey: String?
    /// When the caller stops waiting or the call expires, ns since the Unix epoch; nil for none.
    public var deadlineNanos: Int64?
    /// Who made the call (the CloudEvents `source`).
    public var source: String
}

/// Call-scoped options of the typed-call runtime.
public enum Switchyard {
    /// The options `withCallOptions` and `withDelay` put on calls made inside them.
    @TaskLocal static var callOptions = CallOptions()

    /// The call the current task is handling, inside a hosted actor's distributed method (also
    /// for calls on a direct route); nil elsewhere.
    @TaskLocal public static var currentCall: CallContext?

    /// Runs `body` with `options` on every Switchyard call made inside it, on top of the options
    /// of any enclosing scope (see ``CallOptions``). Options that cannot be carried — a header
    /// name CloudEvents does not allow, a deadline of zero — fail each call with
    /// ``SwitchyardError/routing(target:reason:)`` naming the option; nothing is sent.
    public static func withCallOptions<R>(
        _ options: CallOptions, isolation: isolated (any Actor)? = #isolation, _ body: () async throws -> R
    ) async rethrows -> R {
        try await $callOptions.withValue(callOptions.overridden(by: options), operation: body, isolation: isolation)
    }

    /// Runs `body` with every Switchyard call made inside it delivered no earlier than `delay`
    /// from now, overriding the route's default delay — `withCallOptions(CallOptions(delay:))`:
    ///
    /// ```swift
    /// try await Switchyard.withDelay(.seconds(5)) { try await reminders.remind(id) }
    /// ```
    ///
    /// The route's transport must be able to delay (a `delay` transport in its chain); otherwise
    /// the call throws ``SwitchyardError/routing(target:reason:)``. Calls on a local actor
    /// obtained through a direct route run at once.
    public static func withDelay<R>(
        _ delay: Duration, isolation: isolated (any Actor)? = #isolation, _ body: () async throws -> R
    ) async rethrows -> R {
        try await withCallOptions(CallOptions(delay: delay), isolation: isolation, body)
    }
}

extension Duration {
    /// The duration in whole nanoseconds (saturating).
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        return overflow ? (seconds < 0 ? .min : .max) : scaled + attoseconds / 1_000_000_000
    }
}
