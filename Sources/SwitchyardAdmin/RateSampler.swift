import Foundation
import SwitchyardABI
import SwitchyardRuntime

/// Per-second rates of each transport's counters, from the last two looks at them (each page
/// load is a look; looks less than a second apart reuse the last rates).
final class RateSampler: Sendable {
    struct Rates: Sendable {
        var published = 0.0
        var acked = 0.0
        var deadLettered = 0.0
    }
    private struct Sample {
        var at: Date
        var stats: [String: TransportStats]
        var rates: [String: Rates]
    }
    private let last = Guarded<Sample?>(nil)

    /// The rates since the previous look, by transport; empty on the first look.
    func rates(_ transports: [SystemOverview.TransportInfo], now: Date = Date()) -> [String: Rates] {
        let current = Dictionary(transports.compactMap { info in info.stats.map { (info.name, $0) } }, uniquingKeysWith: { a, _ in a })
        return last.withLock { last in
            guard let previous = last else {
                last = Sample(at: now, stats: current, rates: [:])
                return [:]
            }
            let seconds = now.timeIntervalSince(previous.at)
            if seconds < 1 { return previous.rates }
            var rates: [String: Rates] = [:]
            for (name, stats) in current {
                guard let before = previous.stats[name] else { continue }
                func rate(_ value: KeyPath<TransportStats, UInt64>) -> Double {
                    stats[keyPath: value] >= before[keyPath: value] ? Double(stats[keyPath: value] - before[keyPath: value]) / seconds : 0
                }
                rates[name] = Rates(published: rate(\.published), acked: rate(\.acked), deadLettered: rate(\.deadLettered))
            }
            last = Sample(at: now, stats: current, rates: rates)
            return rates
        }
    }
}
