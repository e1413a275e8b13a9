import Foundation

extension Thread {
    /// A thread, not yet started, that runs `body` under `name` as ``kernelName(for:)`` shortens
    /// it. The name is set from inside the thread: on Linux, Foundation hands a name given before
    /// `start()` to nobody, and the kernel keeps at most 15 bytes of one (a longer one is refused
    /// whole), so `top -H`, `ps -T` and `/proc/PID/task/*/comm` showed every Switchyard thread
    /// under the process's own name.
    package convenience init(named name: String, _ body: @escaping @Sendable () -> Void) {
        let short = Thread.kernelName(for: name)
        self.init {
            Thread.current.name = short
            body()
        }
    }

    /// `name` as the kernel can keep it: `switchyard-` and `switchyard.` shortened to `sy-`, then
    /// cut to 15 bytes (`switchyard-sqlite-writer` is `sy-sqlite-write`).
    package static func kernelName(for name: String) -> String {
        var short = Substring(name)
        for prefix in ["switchyard-", "switchyard."] where short.hasPrefix(prefix) {
            short = "sy-" + short.dropFirst(prefix.count)
        }
        var bytes = Array(short.utf8.prefix(15))
        // Never end in the middle of a character.
        while !bytes.isEmpty, String(validating: bytes, as: UTF8.self) == nil { bytes.removeLast() }
        return String(decoding: bytes, as: UTF8.self)
    }
}
