import Foundation

/// The machine a run happened on: absolute numbers mean little without it.
public struct MachineInfo: Codable, Sendable {
    public var cpu: String
    public var cores: Int
    public var memoryGiB: Double
    public var os: String
    public var build: String

    enum CodingKeys: String, CodingKey {
        case cpu, cores, os, build
        case memoryGiB = "memory_gib"
    }

    public static func current() -> MachineInfo {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let model =
            cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }?
            .split(separator: ":", maxSplits: 1).last?.trimmingCharacters(in: .whitespaces) ?? "unknown"
        #if DEBUG
            let build = "debug"
        #else
            let build = "release"
        #endif
        return MachineInfo(
            cpu: model, cores: ProcessInfo.processInfo.activeProcessorCount,
            memoryGiB: (Double(ProcessInfo.processInfo.physicalMemory) / 1_073_741_824 * 10).rounded() / 10,
            os: ProcessInfo.processInfo.operatingSystemVersionString, build: build)
    }
}

/// A whole run: the machine and every result, as `--json` writes it.
public struct BenchReport: Codable, Sendable {
    public var machine: MachineInfo
    public var results: [BenchResult]

    public init(machine: MachineInfo, results: [BenchResult]) {
        self.machine = machine
        self.results = results
    }

    /// The results as an aligned text table.
    public func table() -> String {
        func format(_ value: Double?) -> String {
            guard let value else { return "" }
            if value >= 1000 { return String(format: "%.0f", value) }
            if value >= 10 { return String(format: "%.1f", value) }
            return String(format: "%.3f", value)
        }
        let header = ["SUITE", "METRIC", "VALUE", "UNIT", "BASELINE", "BASELINE VALUE", "RATIO"]
        let rows = results.map {
            [
                $0.suite, $0.metric, format($0.value), $0.unit, $0.baselineMetric ?? "", format($0.baselineValue),
                $0.ratio.map { String(format: "%.2fx", $0) } ?? "",
            ]
        }
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
        return ([header] + rows).map { row in
            row.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
                .trimmingCharacters(in: .whitespaces)
        }.joined(separator: "\n")
    }
}
