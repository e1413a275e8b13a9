import SwitchyardABI
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Names the plugin file when its initialisers or entry function crash the process as it loads.
///
/// A host that loads plugins in process (no discovery probe) cannot survive such a file: the
/// crash is the process's. Without this, what it printed was a backtrace through the dynamic
/// loader that named neither the file nor what to do. While ``around(path:_:)`` runs, a fatal
/// signal on the loading thread first writes one line — the file, and `plugins.probe: true`,
/// which refuses such a file before the host loads it — then goes to the handler that was there
/// before (Swift's backtracer, a sanitizer's, or the default action), as it would have.
///
/// A plugin may install signal handlers of its own as it loads (a Go or .NET runtime, a crash
/// reporter), keeping this one as the handler it passes signals on to. So afterwards this one
/// gives back only the signals it still holds, and whenever it is called, now or later, it passes
/// the signal on to the handler it found; it writes its line only during a load.
///
/// One load at a time runs inside it (the dynamic loader serialises `dlopen` anyway). Processes
/// whose parent reports a crash itself — the discovery probe, `plugins verify`'s child, a plugin
/// host under isolation — turn it off (``disable()``).
package enum LoadCrashHint {
    #if os(Linux)
        private static let signals: [Int32] = [SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP]
        /// Whether loads are watched; the lock also keeps one load at a time inside.
        private static let lock = Guarded(true)
        private static let capacity = 4096
        // Read by the handler, which can take no lock and must not allocate: fixed memory,
        // written before the handlers are installed (`line`, `lineLength`, `loadingThread`: under
        // `lock`, while `loading` is false) or once (`previous`).
        nonisolated(unsafe) private static let line = UnsafeMutablePointer<CChar>.allocate(capacity: capacity)
        nonisolated(unsafe) private static let lineLength = UnsafeMutablePointer<Int>.allocate(capacity: 1)
        nonisolated(unsafe) private static let loadingThread = UnsafeMutablePointer<pthread_t>.allocate(capacity: 1)
        /// What each signal's handler was before this one was first installed: where it passes
        /// every signal on.
        nonisolated(unsafe) private static let previous = UnsafeMutablePointer<sigaction>.allocate(capacity: signals.count)
        /// Set once `previous` holds what was there (the first armed load).
        private static let installedOnce = Atomic<Bool>(false)
        /// A load is running: a signal on its thread writes the line.
        private static let loading = Atomic<Bool>(false)
    #endif

    /// Loads in this process no longer say which file crashed it: its parent says so.
    package static func disable() {
        #if os(Linux)
            lock.withLock { $0 = false }
        #endif
    }

    /// Runs `body` while no load is watched: the handlers in place then are the process's own
    /// (tests read them between loads that other threads make).
    package static func betweenLoads<T>(_ body: () -> T) -> T {
        #if os(Linux)
            return lock.withLock { _ in body() }
        #else
            return body()
        #endif
    }

    /// Runs `body` (a `dlopen` of `path` and the call of its entry) with the hint armed.
    static func around<T>(path: String, _ body: () -> T) -> T {
        #if os(Linux)
            return lock.withLock { enabled in
                guard enabled else { return body() }
                let text =
                    "switchyard: the plugin file \(path) stopped this process with a fatal signal while loading (in its entry function or a static initialiser). "
                    + "Set plugins.probe: true in the config to refuse such a file before it loads, or remove it from the search path; "
                    + "'switchyard plugins verify \(path)' reports it without crashing."
                lineLength.pointee = text.utf8CString.withUnsafeBufferPointer { bytes in
                    let count = min(bytes.count - 1, capacity - 1)
                    UnsafeMutableRawPointer(line).copyMemory(from: bytes.baseAddress!, byteCount: count)
                    line[count] = 10  // "\n"
                    return count + 1
                }
                loadingThread.pointee = pthread_self()
                loading.store(false, ordering: .relaxed)  // initialised here, never first inside a handler
                install()
                loading.store(true, ordering: .releasing)
                defer {
                    loading.store(false, ordering: .releasing)
                    uninstall()
                }
                return body()
            }
        #else
            return body()
        #endif
    }

    #if os(Linux)
        /// Puts this handler in place for every signal, remembering (the first time) what was there.
        private static func install() {
            if !installedOnce.load(ordering: .acquiring) {
                // Every entry filled before any handler is ours: a signal in between finds them set.
                for index in 0..<signals.count { sigaction(signals[index], nil, previous + index) }
                installedOnce.store(true, ordering: .releasing)
            }
            for index in 0..<signals.count {
                var current = sigaction()
                sigaction(signals[index], nil, &current)
                // A handler installed since (a plugin's) that is not ours: it is the one to keep
                // in front; it passes signals on to whatever it found, which may be this one.
                guard isOurs(current) || isPrevious(current, index) else { continue }
                // With the mask and deferral the handler found asked for, so that calling it from
                // here gives it the signal mask the kernel would have (Swift's backtracer starts a
                // thread that must be able to take SIGSEGV itself).
                var action = sigaction()
                action.__sigaction_handler.sa_sigaction = handler
                action.sa_flags = SA_SIGINFO | SA_ONSTACK | (previous[index].sa_flags & Int32(truncatingIfNeeded: SA_NODEFER))
                action.sa_mask = previous[index].sa_mask
                sigaction(signals[index], &action, nil)
            }
        }

        /// Gives back each signal this handler still holds; one a plugin took over stays its.
        private static func uninstall() {
            for index in 0..<signals.count {
                var current = sigaction()
                sigaction(signals[index], nil, &current)
                if isOurs(current) { sigaction(signals[index], previous + index, nil) }
            }
        }

        private static func isOurs(_ action: sigaction) -> Bool {
            action.sa_flags & SA_SIGINFO != 0 && pointer(action) == unsafeBitCast(handler, to: UnsafeRawPointer.self)
        }

        private static func isPrevious(_ action: sigaction, _ index: Int) -> Bool {
            pointer(action) == pointer(previous[index])
        }

        /// The handler's address (nil for the default action; 1 for ignore).
        private static func pointer(_ action: sigaction) -> UnsafeRawPointer? {
            unsafeBitCast(action.__sigaction_handler.sa_handler, to: UnsafeRawPointer?.self)
        }

        /// Async-signal-safe: atomics, a write, and the handler found before. A handler of its own
        /// is called as the kernel would have (this one was installed with its mask and deferral;
        /// one that asked to be reset is reset first); for the default action (or ignore) that
        /// disposition is put back for this signal alone and the signal raised again: it is
        /// delivered once this returns (a fault would also come back by re-running its
        /// instruction, but a trap or a sent signal would not).
        private static let handler: @convention(c) (Int32, UnsafeMutablePointer<siginfo_t>?, UnsafeMutableRawPointer?) -> Void = {
            signal, info, context in
            let savedErrno = errno
            defer { errno = savedErrno }
            if loading.load(ordering: .acquiring), pthread_equal(pthread_self(), loadingThread.pointee) != 0 {
                _ = write(2, line, lineLength.pointee)
            }
            var index = 0
            while index < signals.count && signals[index] != signal { index += 1 }
            guard index < signals.count else { return }
            let before = previous[index]
            switch UInt(bitPattern: pointer(before)) {
            case 0, 1:  // the default action, or ignore: the kernel's, for this signal only
                sigaction(signal, previous + index, nil)
                raise(signal)
            default:
                if before.sa_flags & Int32(truncatingIfNeeded: SA_RESETHAND) != 0 {
                    var reset = sigaction()  // SIG_DFL
                    sigaction(signal, &reset, nil)
                }
                if before.sa_flags & SA_SIGINFO != 0 {
                    before.__sigaction_handler.sa_sigaction?(signal, info, context)
                } else {
                    before.__sigaction_handler.sa_handler?(signal)
                }
            }
        }
    #endif
}
