#if canImport(Glibc)
    import Glibc
#endif

/// A pipe that wakes a thread waiting in `poll`: a byte written to `writer` makes `reader`
/// readable. Both ends non-blocking (a full pipe is readable already, so a writer never waits)
/// and close-on-exec. Not `pipe2`, which Swift's Glibc does not import: a child started between
/// the calls may inherit the ends, and only holds two descriptors it never uses.
package struct WakePipe {
    /// -1 when the pipe could not be made (then so is `writer`).
    package let reader: Int32
    package let writer: Int32

    /// No pipe: both ends -1.
    package init(reader: Int32, writer: Int32) { (self.reader, self.writer) = (reader, writer) }

    /// Opens one; both ends -1 when the system refuses.
    package init() {
        var ends: [Int32] = [-1, -1]
        guard Glibc.pipe(&ends) == 0 else {
            (reader, writer) = (-1, -1)
            return
        }
        for end in ends {
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
        }
        (reader, writer) = (ends[0], ends[1])
    }

    /// Makes `reader` readable.
    package func wake() {
        guard writer >= 0 else { return }
        var byte: UInt8 = 1
        _ = write(writer, &byte, 1)
    }

    /// Closes both ends.
    package func close() {
        for end in [reader, writer] where end >= 0 { _ = Glibc.close(end) }
    }
}
