import Foundation

/// One benchmark figure: a metric, its value, and the baseline it is set against in the same run.
public struct BenchResult: Codable, Sendable {
    public var suite: String
    public var metric: String
    public var value: Double
    public var unit: String
    public var baselineMetric: String?
    public var baselineValue: Double?
    /// value / baseline_value, when there is a baseline.
    public var ratio: Double?

    enum CodingKeys: String, CodingKey {
        case suite, metric, value, unit, ratio
        case baselineMetric = "baseline_metric"
        case baselineValue = "baseline_value"
    }

    public init(suite: String, metric: String, value: Double, unit: String, baseline: (metric: String, value: Double)? = nil) {
        self.suite = suite
        self.metric = metric
        self.value = value
        self.unit = unit
        self.baselineMetric = baseline?.metric
        self.baselineValue = baseline?.value
        self.ratio = baseline.flatMap { $0.value > 0 ? value / $0.value : nil }
    }
}

/// What every suite gets: whether to run short, where to report progress, where plugins are.
public struct BenchContext: Sendable {
    /// Run fewer iterations and rounds (the whole `--quick` run stays under a minute).
    public var quick: Bool
    /// Directories to find the bench plugins in.
    public var pluginDirectories: [String]
    /// Prints one progress line.
    public var progress: @Sendable (String) -> Void

    public init(quick: Bool, pluginDirectories: [String], progress: @escaping @Sendable (String) -> Void) {
        self.quick = quick
        self.pluginDirectories = pluginDirectories
        self.progress = progress
    }

    /// Rounds per measurement: the median of these is reported.
    public var rounds: Int { quick ? 5 : 11 }
}

/// A group of related measurements. Each measures its metrics and the baselines they are judged
/// against in the same run, because the machine is shared and absolute numbers drift.
public protocol BenchSuite: Sendable {
    /// The suite's name on the command line and in results.
    var name: String { get }
    /// One line saying what it measures.
    var summary: String { get }
    /// Runs the suite. Throws when something it needs is missing (e.g. a plugin).
    func run(_ context: BenchContext) throws -> [BenchResult]
    /// Whether `switchyard bench` without suite names runs it (false: only when named).
    var runsByDefault: Bool { get }
}

extension BenchSuite {
    public var runsByDefault: Bool { true }
}

/// Why a suite could not run on this machine: something it needs is missing (a server, a tool, a
/// plugin). A run of every suite skips it; `bench` fails when the suite was asked for by name.
public struct BenchUnavailable: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Why a suite that could run failed (messages lost, a publish refused, a child process gone):
/// `bench` always exits 1 for it.
public struct BenchFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Every suite this build has, in the order `switchyard bench` runs them.
public let allBenchSuites: [any BenchSuite] = [
    ABISuite(), LoaderSuite(), MemoryQueueSuite(), DurableQueueSuite(), DurableRequestReplySuite(), DelaySuite(), RetrySuite(), TypedCallSuite(), NATSSuite(), PostgresSuite(),
    RabbitMQSuite(),
    FFISuite(),
    IsolationSuite(),
    InstructionsSuite(),
]
