import Foundation
import Logging
import SwitchyardABI
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// One running `switchyard plugin-host` child and the parent's end of its socket: requests with
/// replies, a reader thread, and how the child ended.
///
/// A request waits at most its timeout; a child that does not answer in time is considered hung
/// and killed. When the socket reaches end of stream (the child exited, crashed or was killed)
/// every waiting request fails with `.unavailable` and the reason, and `onEnd` runs once.
final class PluginProcess: @unchecked Sendable {
    // @unchecked: immutable after init except what is behind locks and atomics.
    let pid: pid_t
    let fd: Int32
    /// Monotonic time it was started, for resetting the restart backoff.
    let startedNanos: Int64

    /// The answer to a request: waited for, or (a request made on the reader thread, which cannot
    /// wait for what it alone reads) handed to `onReply` there when it comes.
    private final class Pending: @unchecked Sendable {
        let done = DispatchSemaphore(value: 0)
        /// Set with `result`, for a waiter that spins before it waits on `done`.
        let answered = Atomic<Bool>(false)
        var result: Result<WireReader, TransportError>?  // written before `done` is signalled
        let onReply: (@Sendable (Result<WireReader, TransportError>) -> Void)?
        /// The request's name (`publish`, `settle`…), for the error when the child dies under it.
        let operation: String
        init(operation: String, onReply: (@Sendable (Result<WireReader, TransportError>) -> Void)? = nil) {
            self.operation = operation
            self.onReply = onReply
        }
    }

    /// Frames not written yet, and whether a thread is writing. A frame is appended here and
    /// written by whichever thread holds the writing (the first to find none does, until the
    /// queue is empty), outside the lock: frames reach the child in the order they were queued,
    /// and a thread that queues one never waits for another's blocked write.
    private struct Output {
        var queued: [UInt8] = []
        var writing = false
    }
    private let output = Guarded(Output())
    private let pending = Guarded<[UInt64: Pending]>([:])
    private let nextSequence = Atomic<UInt64>(1)
    private let ended = Atomic<Bool>(false)
    private let killed = Atomic<Bool>(false)
    private let readerThread = Atomic<UInt>(0)
    /// Why it ended, once it has.
    private let endReason = Guarded<String?>(nil)

    private init(pid: pid_t, fd: Int32) {
        self.pid = pid
        self.fd = fd
        self.startedNanos = monotonicNanoseconds()
    }

    /// Starts `executable plugin-host --fd 3` with the child's end of a new socket pair as fd 3.
    static func spawn(executable: String) throws(TransportError) -> PluginProcess {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw TransportError(.io, "socketpair failed: \(String(cString: strerror(errno)))")
        }
        let (parentEnd, childEnd) = (pair[0], pair[1])
        defer { close(childEnd) }
        do throws(TransportError) {
            let pid = try spawnChild(
                executable: executable, arguments: ["plugin-host", "--fd", "3"], giving: childEnd, as: 3, ownProcessGroup: false, what: "the plugin host")
            return PluginProcess(pid: pid, fd: parentEnd)
        } catch {
            close(parentEnd)
            throw error
        }
    }

    /// Starts `executable` with `arguments` and ``childEnvironment``, with `descriptor` as the
    /// child's `target` (1: its stdout; 3 and up: an extra one) and otherwise only stdin, stdout
    /// and stderr open; returns its pid, which the caller reaps with `waitpid`. With
    /// `ownProcessGroup` it gets a process group of its own, so a terminal's Ctrl-C reaches the
    /// host alone. (Foundation's `Process` was used for the discovery probe until a test run hung
    /// for good in its `waitUntilExit` with the child already a zombie: nothing reaped it.)
    /// `what` names the child in errors.
    static func spawnChild(
        executable: String, arguments: [String], giving descriptor: Int32, as target: Int32, ownProcessGroup: Bool, what: String
    ) throws(TransportError) -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        if ownProcessGroup {
            posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP))
            posix_spawnattr_setpgroup(&attributes, 0)
        }
        // dup2 onto the target clears close-on-exec there; a descriptor already there is moved first.
        var source = descriptor
        if source == target { source = fcntl(descriptor, F_DUPFD_CLOEXEC, 10) }
        posix_spawn_file_actions_adddup2(&actions, source, target)
        // The child gets stdin/out/err and its descriptor, nothing else. Without this it would
        // inherit every descriptor another thread opened without close-on-exec (pipes of
        // concurrently started programs, sockets, database files) and hold them open for its whole
        // life: a reader waiting for such a pipe's EOF waits until the child exits.
        _ = addCloseFrom?(&actions, max(3, target + 1))
        var argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var envp: [UnsafeMutablePointer<CChar>?] = childEnvironment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for pointer in envp { free(pointer) } }
        var pid: pid_t = 0
        let status = posix_spawn(&pid, executable, &actions, &attributes, &argv, &envp)
        if source != descriptor { close(source) }
        guard status == 0 else {
            throw TransportError(.unavailable, "cannot start \(what) '\(executable)': \(String(cString: strerror(status)))")
        }
        return pid
    }

    /// The environment of the host's children: this process's, with Swift's crash backtracer
    /// off unless the user set it. The host reports how a child ended; the backtracer would hold
    /// a crashed child (and the stderr it inherited) for many seconds first.
    static var childEnvironment: [String: String] {
        var environment = ProcessInfo.processInfo.environment
        if environment["SWIFT_BACKTRACE"] == nil { environment["SWIFT_BACKTRACE"] = "enable=no" }
        return environment
    }

    /// Starts the reader thread: `onFrame` for every unasked frame (deliveries), `onEnd` once
    /// with the reason when the stream ends.
    func startReading(
        onFrame: @escaping @Sendable (PluginProcess, Frame) -> Void,
        onEnd: @escaping @Sendable (PluginProcess, String) -> Void
    ) {
        let thread = Thread(named: "switchyard-pid-\(pid)") { [self] in
            readerThread.store(UInt(bitPattern: Int(bitPattern: UInt(pthread_self()))), ordering: .releasing)
            var failure: String?
            let reader = FrameReader(fd: fd)
            reader.beforeWaiting = { [self] in flushQueued() }
            while true {
                do throws(TransportError) {
                    guard let frame = try reader.next() else { break }
                    if frame.kind == .reply {
                        complete(frame)
                    } else {
                        onFrame(self, frame)
                    }
                } catch {
                    failure = error.message
                    break
                }
            }
            let reason = finish(protocolError: failure)
            onEnd(self, reason)
        }
        thread.start()
    }

    /// True on this process's reader thread (where deliveries run): requests made from there
    /// must not wait for a reply the same thread would have to read.
    var onReaderThread: Bool {
        readerThread.load(ordering: .acquiring) == UInt(bitPattern: Int(bitPattern: UInt(pthread_self())))
    }

    /// Whether the child has gone (its socket reached end of stream).
    var hasEnded: Bool { ended.load(ordering: .acquiring) }

    /// False once it has ended or been killed (its end of stream may not have been read yet):
    /// new requests must wait for the next child.
    var isUsable: Bool { !ended.load(ordering: .acquiring) && !killed.load(ordering: .acquiring) }

    /// Sends a request and waits up to `timeoutNanos` for its reply; returns the reply data
    /// after a successful status. `operation` names the request in errors.
    ///
    /// On the reader thread (a subscriber's publish or settlement from inside its delivery) it
    /// cannot wait for a reply only that thread would read: the request is queued (see
    /// ``post(_:_:)``), it returns empty reply data at once, and the reply goes to `ifQueued`
    /// when the reader reads it (a failure included; nil: ignored).
    func request(
        _ kind: WireKind, _ payload: [UInt8], timeoutNanos: Int64, operation: String,
        ifQueued: (@Sendable (Result<WireReader, TransportError>) -> Void)? = nil
    ) throws(TransportError) -> WireReader {
        if onReaderThread {
            guard let ifQueued else {
                try post(kind, payload)
                return WireReader([])
            }
            guard !hasEnded else { throw TransportError(.unavailable, "the plugin process \(endReasonText)") }
            let sequence = nextSequence.add(1, ordering: .relaxed).oldValue
            pending.withLock { $0[sequence] = Pending(operation: operation, onReply: ifQueued) }
            try send(Frame(kind: kind, sequence: sequence, payload: payload), queueOnly: true)
            return WireReader([])
        }
        let sequence = nextSequence.add(1, ordering: .relaxed).oldValue
        let waiter = Pending(operation: operation)
        pending.withLock { $0[sequence] = waiter }
        if hasEnded {
            pending.withLock { _ = $0.removeValue(forKey: sequence) }
            throw TransportError(.unavailable, "the plugin process \(endReasonText)")
        }
        do throws(TransportError) {
            try send(Frame(kind: kind, sequence: sequence, payload: payload), queueOnly: false)
        } catch {
            pending.withLock { _ = $0.removeValue(forKey: sequence) }
            throw TransportError(.unavailable, "the plugin process cannot be reached (\(error.message))")
        }
        // The answer usually comes within microseconds: spin for it before sleeping.
        if SpinBeforeSleeping.poll({ waiter.answered.load(ordering: .acquiring) ? true : nil }) == nil,
            waiter.done.wait(timeout: .now() + .nanoseconds(Int(clamping: max(0, timeoutNanos)))) == .timedOut
        {
            if pending.withLock({ $0.removeValue(forKey: sequence) }) != nil {
                kill(reason: "did not answer \(operation) within \(timeoutNanos / 1_000_000) ms")
                throw TransportError(
                    .timeout,
                    "the plugin process (pid \(pid)) did not answer \(operation) within \(timeoutNanos / 1_000_000) ms (the transport's isolation.call_timeout); it was killed and is restarting (whether the \(operation) took effect is unknown)"
                )
            }
            waiter.done.wait()  // the reply raced the timeout; it is already there
        }
        ThreadSanitizer.acquire(waiter)  // the reader thread wrote `result` before signalling
        return try waiter.result!.get()
    }

    /// Sends a request without waiting for its reply (sequence 0: the reply is ignored). On the
    /// reader thread (a subscriber's publish and settle from inside its delivery) the frame is
    /// queued, and goes out with everything else queued there once the reader has handled every
    /// frame it has received and is about to wait — one write, and one wake-up of the child, for a
    /// burst of deliveries' replies and settlements — or before any frame sent after it by another
    /// thread. A queued frame that cannot be written is not reported: the child has gone, and its
    /// end is.
    func post(_ kind: WireKind, _ payload: [UInt8]) throws(TransportError) {
        guard !hasEnded else { throw TransportError(.unavailable, "the plugin process \(endReasonText)") }
        try send(Frame(kind: kind, sequence: 0, payload: payload), queueOnly: onReaderThread)
    }

    /// Queues `frame` after every frame queued before it and, unless `queueOnly` (and under 64 KiB
    /// queued) or another thread is writing, writes the queue. A write error is thrown to the
    /// thread that wrote; frames written by another thread are not reported (the child has gone,
    /// and its end is).
    private func send(_ frame: Frame, queueOnly: Bool) throws(TransportError) {
        let write = output.withLock { output -> Bool in
            FrameIO.append(frame, to: &output.queued)
            guard !output.writing, !queueOnly || output.queued.count >= 64 << 10 else { return false }
            output.writing = true
            return true
        }
        if write { try writeQueued() }
    }

    /// Writes what the reader thread queued (on the reader thread, before it waits), unless
    /// another thread is writing (it writes it too).
    private func flushQueued() {
        let write = output.withLock { output -> Bool in
            guard !output.writing, !output.queued.isEmpty else { return false }
            output.writing = true
            return true
        }
        if write { try? writeQueued() }
    }

    /// Holding the writing: writes the queue until it is empty, then lets the writing go.
    private func writeQueued() throws(TransportError) {
        var failure: TransportError?
        while true {
            let bytes = output.withLock { output -> [UInt8]? in
                guard !output.queued.isEmpty, failure == nil else {
                    output.writing = false
                    if failure != nil { output.queued = [] }  // nobody reads them any more
                    return nil
                }
                defer { output.queued = [] }
                return output.queued
            }
            guard let bytes else { break }
            do throws(TransportError) {
                try FrameIO.writeAll(bytes, to: fd)
            } catch {
                failure = error
            }
        }
        if let failure { throw failure }
    }

    /// Kills the child (SIGKILL): a hung plugin gets no chance to finish.
    func kill(reason: String) {
        endReason.withLock { if $0 == nil { $0 = reason } }
        killed.store(true, ordering: .releasing)
        _ = Glibc.kill(pid, SIGKILL)
    }

    private var endReasonText: String { endReason.withLock { $0 } ?? "has exited" }

    private func complete(_ frame: Frame) {
        guard frame.sequence != 0, let waiter = pending.withLock({ $0.removeValue(forKey: frame.sequence) }) else { return }
        var reader = WireReader(frame.payload)
        do throws(TransportError) {
            let status = StatusCode(rawValue: try reader.integer("status"))
            let message = try reader.string("message")
            waiter.result = status == .ok ? .success(reader) : .failure(TransportError(status, message))
        } catch {
            waiter.result = .failure(error)
        }
        if let onReply = waiter.onReply {
            onReply(waiter.result!)
            return
        }
        ThreadSanitizer.release(waiter)
        waiter.answered.store(true, ordering: .releasing)
        waiter.done.signal()
    }

    /// After end of stream: reaps the child (waiting briefly for a clean exit before killing
    /// it), fails every waiting request with the reason, and returns the reason.
    private func finish(protocolError: String?) -> String {
        ended.store(true, ordering: .releasing)
        let status = Self.reap(pid, deadlineNanos: monotonicNanoseconds() + 2_000_000_000) ?? 0
        close(fd)
        let exit = Self.describe(status: status)
        let reason = endReason.withLock { stored in
            var text = stored.map { "\($0) and was killed" } ?? exit
            if let protocolError, stored == nil { text += " (after a protocol error: \(protocolError))" }
            text += " (pid \(pid))"
            stored = text
            return text
        }
        let waiters = pending.withLock { all in
            defer { all.removeAll() }
            return Array(all.values)
        }
        for waiter in waiters {
            waiter.result = .failure(
                TransportError(.unavailable, "the plugin process \(reason) during \(waiter.operation); whether the \(waiter.operation) took effect is unknown"))
            if let onReply = waiter.onReply {
                onReply(waiter.result!)
                continue
            }
            ThreadSanitizer.release(waiter)
            waiter.answered.store(true, ordering: .releasing)
            waiter.done.signal()
        }
        return reason
    }

    /// Waits for child `pid` to exit until `deadlineNanos` (monotonic), then kills it (SIGKILL)
    /// and waits for that: never an unbounded wait on a child that might hang. Returns its wait
    /// status, or nil when it was reaped elsewhere (a plugin that ignores SIGCHLD, say).
    static func reap(_ pid: pid_t, deadlineNanos: Int64) -> Int32? {
        var status: Int32 = 0
        var killed = false
        while true {
            let result = waitpid(pid, &status, killed ? 0 : WNOHANG)
            if result == pid { return status }
            if result < 0 && errno != EINTR { return nil }
            if result == 0 {
                if monotonicNanoseconds() < deadlineNanos {
                    usleep(5_000)
                } else {
                    _ = Glibc.kill(pid, SIGKILL)
                    killed = true
                }
            }
        }
    }

    /// "exited with status 3", "was killed by signal 11 (Segmentation fault)".
    static func describe(status: Int32) -> String {
        let signal = status & 0x7f
        if signal == 0 { return "exited with status \((status >> 8) & 0xff)" }
        return "was killed by signal \(signal) (\(String(cString: strsignal(signal))))"
    }
}

/// `posix_spawn_file_actions_addclosefrom_np` (glibc 2.34+). Its declaration needs `_GNU_SOURCE`,
/// which Swift's Glibc module is not built with, so it is looked up by name; on an older libc
/// the child inherits the descriptors it would have closed.
private let addCloseFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
    guard let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else { return nil }
    return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
}()
