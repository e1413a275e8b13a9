import Testing

@testable import SwitchyardTransportKit

/// The CPU quota a container sets (Docker's `--cpus`, Kubernetes' limits) counts with the
/// affinity: read from cgroup v2's `cpu.max` or v1's `cpu.cfs_quota_us`, the smallest on the way
/// from the process's cgroup to the root, rounded up to whole cores.
@Suite("Usable cores")
struct UsableCoresTests {
    /// Reads files from `files` (paths under /sys/fs/cgroup), nil for any other.
    private func reader(_ files: [String: String]) -> (String) -> String? { { files[$0] } }

    @Test("cgroup v2: the process's own cgroup and those above it; 'max' is no quota")
    func version2() {
        let cgroups = "0::/system.slice/app.service\n"
        #expect(UsableCores.quota(cgroups: cgroups, read: reader([:])) == nil)
        #expect(UsableCores.quota(cgroups: cgroups, read: reader(["/sys/fs/cgroup/system.slice/app.service/cpu.max": "max 100000"])) == nil)
        #expect(UsableCores.quota(cgroups: cgroups, read: reader(["/sys/fs/cgroup/system.slice/app.service/cpu.max": "150000 100000"])) == 2)
        let nested = reader([
            "/sys/fs/cgroup/system.slice/app.service/cpu.max": "400000 100000",
            "/sys/fs/cgroup/system.slice/cpu.max": "100000 100000",
        ])
        #expect(UsableCores.quota(cgroups: cgroups, read: nested) == 1, "a parent's quota limits its children")
        #expect(UsableCores.quota(cgroups: "0::/\n", read: reader(["/sys/fs/cgroup/cpu.max": "250000 100000"])) == 3)
    }

    @Test("cgroup v1: the cpu controller's quota over its period; -1 is no quota")
    func version1() {
        let cgroups = "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n"
        let limited = reader([
            "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000", "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
        ])
        #expect(UsableCores.quota(cgroups: cgroups, read: limited) == 2)
        let unlimited = reader(["/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000"])
        #expect(UsableCores.quota(cgroups: "1:cpu:/\n", read: unlimited) == nil)
    }

    @Test("the count is at least one and at most the affinity")
    func count() {
        #expect(UsableCores.count >= 1 && UsableCores.count <= UsableCores.affinity)
    }
}
