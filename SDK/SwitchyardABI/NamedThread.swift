import Foundation

#if canImport(Glibc)
    import Glibc
#endif

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
            // Foundation's setter reaches the kernel only once `start()` has recorded the
            // thread, which a new thread can outrun (it did, under ThreadSanitizer in CI): the
            // kernel's copy is written directly.
            #if canImport(Glibc)
                let file = open("/proc/thread-self/comm", O_WRONLY)
                if file >= 0 {
                    _ = short.withCString { write(file, $0, strlen($0)) }
                    close(file)
                }
            #endif
            body()
        }
    }

    /// `name` as the kernel can keep it: `switchyard-` and `switchyard.` shortened to `sy-`, then
    /// cut to 15 bytes (`switchyard-sqlite-writer` is `sy-sqlite-write`), a trailing `-N` kept
    /// (`switchyard-notifications-3` is `sy-notificati-3`: shards and pool threads stay apart).
    package static func kernelName(for name: String) -> String {
        var short = Substring(name)
        for prefix in ["switchyard-", "switchyard."] where short.hasPrefix(prefix) {
            short = "sy-" + short.dropFirst(prefix.count)
        }
        let digits = short.reversed().prefix { $0.isASCII && $0.isNumber }.count
        let number = digits > 0 && short.dropLast(digits).hasSuffix("-") ? String(short.suffix(digits + 1)) : ""
        var bytes = Array(short.dropLast(number.count).utf8.prefix(max(0, 15 - number.utf8.count)))
        // Never end in the middle of a character.
        while !bytes.isEmpty, String(validating: bytes, as: UTF8.self) == nil { bytes.removeLast() }
        return String(decoding: bytes, as: UTF8.self) + number
    }
}
