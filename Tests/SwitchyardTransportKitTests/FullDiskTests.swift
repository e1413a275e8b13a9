import Foundation
import SwitchyardABI
import SwitchyardConformance
import SwitchyardHost
import SwitchyardLoader
import SwitchyardRuntime
import SwitchyardTestSupport
import Testing

@Suite("Durable queue on a full disk")
struct FullDiskTests {
    /// A tiny tmpfs, mounted for the test (needs root and permission to mount; skipped otherwise).
    static let canMount: Bool = {
        guard geteuid() == 0, let dir = try? TemporaryDirectory() else { return false }
        let mounted = (try? run("/bin/mount", ["-t", "tmpfs", "-o", "size=64k", "tmpfs", dir.path]))?.status == 0
        if mounted { _ = try? run("/bin/umount", [dir.path]) }
        return mounted
    }()

    @Test(
        "publish fails with a clear error when the disk is full, and every acknowledged message is kept",
        .enabled(if: canMount, "needs root and tmpfs mounts"))
    func fullDisk() async throws {
        let mountPoint = try TemporaryDirectory()
        let rescue = try TemporaryDirectory()
        #expect(try await run("/bin/mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", mountPoint.path]).status == 0)
        defer { _ = try? run("/bin/umount", ["-l", mountPoint.path]) }
        let db = mountPoint.file("q.db")
        let queue = try Transport(name: "full", plugin: try BuildProducts.plugin("queue"), configJSON: #"{"path": "\#(db)"}"#)
        var acked: [String] = []
        var failure: TransportError?
        for index in 0..<2_000 {
            do {
                try queue.client.publish(Message(id: "m\(index)", channel: "c", body: [UInt8](repeating: UInt8(index % 251), count: 1_000)))
                acked.append("m\(index)")
            } catch {
                failure = error
                break
            }
        }
        let error = try #require(failure, "2 MB fitted in a 1 MB filesystem?")
        #expect(error.code == .io)
        #expect(error.message.contains("full"), "\(error.message)")
        #expect(acked.count > 20)
        // Stop the queue, take its files somewhere with room, and read them back: every acknowledged
        // message is there. Copied only after `close`, as an operator would: copying a database SQLite
        // still has open closes a descriptor of that file, which drops the process's POSIX locks on it
        // (SQLite's wal-index then rests on locks it no longer holds).
        queue.close()
        for suffix in ["", "-wal"] where FileManager.default.fileExists(atPath: db + suffix) {
            try FileManager.default.copyItem(atPath: db + suffix, toPath: rescue.file("q.db" + suffix))
        }
        let reopened = try Transport(name: "rescued", plugin: try BuildProducts.plugin("queue"), configJSON: #"{"path": "\#(rescue.file("q.db"))"}"#)
        defer { reopened.close() }
        let inbox = Collector()
        _ = try reopened.client.subscribe(SubscribeOptions(channel: "c", maxInFlight: 5_000), handler: inbox.handler(client: reopened.client))
        #expect(await eventually(20) { inbox.count >= acked.count })
        #expect(Set(acked).isSubset(of: Set(inbox.received.map(\.message.id))))
    }
}
