import Foundation

/// The cores this process may run on, which sizes what should grow with them (the shards of an
/// in-memory transport; whether a lock is worth spinning on).
public enum UsableCores {
    /// The fewer of the process's CPU affinity and its cgroup's CPU quota, rounded up to whole
    /// cores. The affinity is `Cpus_allowed` in /proc/self/status, which `taskset` and cpusets set
    /// (`ProcessInfo.activeProcessorCount` counts the machine's, and Glibc's `sched_getaffinity`
    /// is not visible to Swift). The quota is what Docker's `--cpus` and Kubernetes' CPU limits
    /// set: `cpu.max` (cgroup v2) or `cpu.cfs_quota_us` over `cpu.cfs_period_us` (v1), the
    /// smallest on the way from the process's cgroup up to the root.
    public static let count: Int = max(1, min(affinity, quota(cgroups: read("/proc/self/cgroup") ?? "", read: read) ?? .max))

    /// Cores in the CPU affinity.
    static var affinity: Int {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed:") })
        else { return ProcessInfo.processInfo.activeProcessorCount }
        let count = line.dropFirst("Cpus_allowed:".count).reduce(0) { count, character in
            count + (character.hexDigitValue?.nonzeroBitCount ?? 0)
        }
        return count > 0 ? count : ProcessInfo.processInfo.activeProcessorCount
    }

    /// Whole cores the cgroup quota allows, rounded up; nil without one. `cgroups` is
    /// /proc/self/cgroup; `read` reads a file under /sys/fs/cgroup (nil: none).
    static func quota(cgroups: String, read: (String) -> String?) -> Int? {
        var smallest: Int?
        func consider(_ quota: Double, _ period: Double) {
            guard quota > 0, period > 0 else { return }
            let cores = Int((quota / period).rounded(.up))
            smallest = min(smallest ?? cores, cores)
        }
        for line in cgroups.split(separator: "\n") {
            // "0::/path" (v2), "4:cpu,cpuacct:/path" (v1).
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3 else { continue }
            let controllers = fields[1].split(separator: ",")
            if fields[0] == "0" && controllers.isEmpty {
                for directory in ancestors(of: String(fields[2]), under: "/sys/fs/cgroup") {
                    // "max 100000" (no quota) or "200000 100000".
                    let parts = read(directory + "/cpu.max")?.split(separator: " ") ?? []
                    if parts.count == 2, let quota = Double(parts[0]), let period = Double(parts[1]) { consider(quota, period) }
                }
            } else if controllers.contains("cpu") {
                for root in ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpuacct,cpu"] {
                    for directory in ancestors(of: String(fields[2]), under: root) {
                        if let quota = read(directory + "/cpu.cfs_quota_us").flatMap({ Double($0) }),
                            let period = read(directory + "/cpu.cfs_period_us").flatMap({ Double($0) })
                        {
                            consider(quota, period)  // -1: none
                        }
                    }
                }
            }
        }
        return smallest
    }

    /// `path` (a cgroup, "/a/b") and each cgroup above it, as directories under `root`.
    private static func ancestors(of path: String, under root: String) -> [String] {
        var components = path.split(separator: "/").map(String.init)
        var directories: [String] = []
        while true {
            directories.append(([root] + components).joined(separator: "/"))
            if components.isEmpty { return directories }
            components.removeLast()
        }
    }

    static func read(_ file: String) -> String? {
        (try? String(contentsOfFile: file, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
