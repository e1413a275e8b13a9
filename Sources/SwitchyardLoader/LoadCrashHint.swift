import SwitchyardABI

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Names the plugin file when its initialisers or entry function crash the process as it loads.
///
/// A host that loads plugins in process (no discovery probe) cannot survive such a file: the
/// crash is the process's. Without this, what it printed was a backtrace through the dynamic
/// loader that named neither the file nor what to do. While ``around(path:_:)`` runs, a fatal
/// signal on the loading thread first writes one line — the file, and `plugins.probe: true`,
/// which refuses such a file before the host loads it — then the previous handler (Swift's
/// backtracer, a sanitizer's, or the default) takes the signal as it would have.
///
/// One load at a time runs inside it (the dynamic loader serialises `dlopen` anyway). Processes
/// whose parent reports a crash itself — the discovery probe, `plugins verify`'s child, a plugin
/// host under isolation — turn it off (``disable()``).
package enum LoadCrashHint {
    private static let signals: [Int32] = [SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT]
    /// Whether loads are watched (the lock also keeps one load at a time inside).
    private static let lock = Guarded(true)

    /// Loads in this process no longer say which file crashed it: its parent says so.
    package static func disable() { lock.withLock { $0 = false } }
    private static let capacity = 4096
    // Read by the signal handler, which can take no lock and must not allocate: fixed memory,
    // written only under `lock` before the handlers are installed, left alone until restored.
    nonisolated(unsafe) private static let line = UnsafeMutablePointer<CChar>.allocate(capacity: capacity)
    nonisolated(unsafe) private static let lineLength = UnsafeMutablePointer<Int>.allocate(capacity: 1)
    nonisolated(unsafe) private static let loadingThread = UnsafeMutablePointer<pthread_t>.allocate(capacity: 1)
    nonisolated(unsafe) private static let previous = UnsafeMutablePointer<sigaction>.allocate(capacity: 5)

    /// Runs `body` (a `dlopen` of `path` and the call of its entry) with the hint armed.
    static func around<T>(path: String, _ body: () -> T) -> T {
        lock.withLock { enabled in
            guard enabled else { return body() }
            let text =
                "switchyard: the plugin file \(path) crashed this process while loading (in its entry function or a static initialiser). "
                + "Set plugins.probe: true in the config to refuse such a file before it loads, or remove it from the search path; "
                + "'switchyard plugins verify \(path)' reports it without crashing.\n"
            lineLength.pointee = text.utf8CString.withUnsafeBufferPointer { bytes in
                let count = min(bytes.count - 1, capacity)
                UnsafeMutableRawPointer(line).copyMemory(from: bytes.baseAddress!, byteCount: count)
                return count
            }
            loadingThread.pointee = pthread_self()
            var action = sigaction()
            action.__sigaction_handler.sa_sigaction = handler
            action.sa_flags = SA_SIGINFO | SA_ONSTACK
            sigemptyset(&action.sa_mask)
            for index in 0..<signals.count { sigaction(signals[index], &action, previous + index) }
            defer { restore() }
            return body()
        }
    }

    private static func restore() {
        for index in 0..<signals.count { sigaction(signals[index], previous + index, nil) }
    }

    /// Async-signal-safe: a write, then the previous handlers back. Returning re-runs the faulting
    /// instruction under them; a signal that was sent rather than caused by a fault (abort(),
    /// kill) is sent again, since it would not come back by itself.
    private static let handler: @convention(c) (Int32, UnsafeMutablePointer<siginfo_t>?, UnsafeMutableRawPointer?) -> Void = { signal, info, _ in
        if pthread_equal(pthread_self(), loadingThread.pointee) != 0 { _ = write(2, line, lineLength.pointee) }
        restore()
        if let info, info.pointee.si_code <= 0 { raise(signal) }
    }
}
