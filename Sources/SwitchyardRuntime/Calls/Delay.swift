/// Call-scoped options of the typed-call runtime.
public enum Switchyard {
    /// The delay `withDelay` puts on calls made inside it.
    @TaskLocal static var callDelay: Duration?

    /// Runs `body` with every Switchyard call made inside it delivered no earlier than `delay`
    /// from now, overriding the route's default delay:
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
        try await $callDelay.withValue(delay, operation: body, isolation: isolation)
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
