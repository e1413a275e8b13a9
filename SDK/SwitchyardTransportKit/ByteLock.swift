#if canImport(Glibc)
    import Glibc
#endif

/// Open-file-description locks on single bytes of a file (Linux ≥ 3.15), as the beacon file uses
/// them: one byte per slot, one to initialise the writers' queue. Unlike a POSIX lock, such a lock
/// belongs to the open file, not the process: it conflicts with the same process's other
/// descriptors of the file too (two stores of one process get two slots), and closing another
/// descriptor of the file does not drop it.
enum ByteLock {
    /// `F_OFD_SETLK` and `F_OFD_SETLKW`: `<fcntl.h>` defines them only with `_GNU_SOURCE`, which
    /// Swift's Glibc module does not set.
    private static let (trying, waiting): (Int32, Int32) = (37, 38)

    /// Takes (`F_WRLCK`) or drops (`F_UNLCK`) the lock on the byte at `offset` of `file`; with
    /// `wait`, waits while another open file holds it (again after a signal). Whether it did.
    static func set(_ type: Int32, _ file: Int32, at offset: off_t, wait: Bool = false) -> Bool {
        var lock = flock()
        lock.l_type = Int16(type)
        lock.l_whence = Int16(SEEK_SET)
        lock.l_start = offset
        lock.l_len = 1
        while true {
            if fcntl(file, wait ? waiting : trying, &lock) == 0 { return true }
            if !wait || errno != EINTR { return false }
        }
    }
}
