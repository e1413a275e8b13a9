import Foundation

/// The cores this process may run on, which sizes what should grow with them (the shards of an
/// in-memory transport; whether a lock is worth spinning on).
public enum UsableCores {
    /// The process's CPU affinity (`Cpus_allowed` in /proc/self/status, which `taskset` and
    /// cpusets set), where `ProcessInfo.activeProcessorCount` counts the machine's (Glibc's
    /// `sched_getaffinity` is not visible to Swift). A CPU quota (cgroup `cpu.max`, Docker's
    /// `--cpus`) is not counted.
    public static let count: Int = {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed:") })
        else { return ProcessInfo.processInfo.activeProcessorCount }
        let count = line.dropFirst("Cpus_allowed:".count).reduce(0) { count, character in
            count + (character.hexDigitValue?.nonzeroBitCount ?? 0)
        }
        return count > 0 ? count : ProcessInfo.processInfo.activeProcessorCount
    }()
}
