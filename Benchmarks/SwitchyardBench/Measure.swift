import Foundation
import SwitchyardABI
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Timing helpers: monotonic nanoseconds and medians over rounds.
public enum Measure {
    /// Monotonic clock in nanoseconds.
    @inline(__always)
    public static func now() -> UInt64 { UInt64(monotonicNanoseconds()) }

    /// The median of `values`.
    public static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return .nan }
        return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }

    /// Median nanoseconds per operation: `body(iterations)` runs `iterations` operations, once per
    /// round, after one warm-up round.
    public static func nanosPerOperation(rounds: Int, iterations: Int, _ body: (Int) -> Void) -> Double {
        body(max(1, iterations / 10))
        var samples: [Double] = []
        for _ in 0..<rounds {
            let start = now()
            body(iterations)
            samples.append(Double(now() - start) / Double(iterations))
        }
        return median(samples)
    }

    /// Peak resident memory of this process so far, in MiB.
    public static func peakResidentMiB() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_maxrss) / 1024  // ru_maxrss is in KiB on Linux
    }
}

/// Keeps the optimizer from deleting work whose result is otherwise unused.
@inline(never)
public func blackHole<T>(_ value: T) {
    withExtendedLifetime(value) {}
}

/// Runs `body(thread)` on `threads` threads of their own and waits for all; rethrows the first
/// error (publishers of the broker suites).
func onThreads(_ threads: Int, _ body: @escaping @Sendable (Int) throws -> Void) throws {
    let done = DispatchGroup()
    let failure = Mutex<(any Error)?>(nil)
    for thread in 0..<threads {
        done.enter()
        Thread {
            do { try body(thread) } catch { failure.withLock { $0 = $0 ?? error } }
            done.leave()
        }.start()
    }
    done.wait()
    if let error = failure.withLock({ $0 }) { throw error }
}
