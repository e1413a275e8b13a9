#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Everything waiting to be read in `descriptor` now, read without blocking (none when nothing
/// is). For the rest of a pipe whose writer is gone: Foundation's readability handler is not
/// called again once the writing end closes, whatever is still in the pipe (the crash soak and
/// the tests read a dead child's last output with this).
package func bytesWaiting(in descriptor: Int32) -> [UInt8] {
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65_536)
    while true {
        var waiting = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        guard poll(&waiting, 1, 0) > 0, waiting.revents & Int16(POLLIN) != 0 else { return bytes }
        let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
        guard count > 0 else { return bytes }
        bytes += buffer[0..<count]
    }
}
