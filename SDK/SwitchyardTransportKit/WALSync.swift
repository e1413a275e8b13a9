import Foundation
import SwitchyardABI

#if canImport(Glibc)
    import Glibc
#endif

/// Makes a SQLite store's commits durable after the write lock is let go: an `fdatasync` of the
/// write-ahead log once the commit is written.
///
/// With `synchronous=FULL` SQLite syncs the WAL inside each commit, holding the write lock — and
/// so holding up every other process's writer on the same file — for the whole fsync (half of a
/// durable request-reply between two processes was the two sides waiting out each other's
/// fsyncs). ``SQLiteWriter`` instead commits with `synchronous=NORMAL` (the WAL's frames are
/// written, not synced; SQLite still syncs the WAL before each checkpoint, and its header when
/// the WAL starts over), lets the lock go, and then syncs the WAL here before answering the
/// commit's callers.
///
/// The WAL file is opened once, when the writer starts (its connection keeps the database in WAL
/// mode, so SQLite neither deletes nor replaces the file meanwhile); its directory is synced then,
/// so that the file's own entry survives a power cut as SQLite's first synced commit would have
/// made it.
///
/// A failed `fdatasync` is final: the kernel may already have dropped the pages it could not
/// write, and a later sync that succeeds would not bring them back (and SQLite's recovery cannot
/// read frames past a lost one). Every later sync fails with the first error, and the writer no
/// longer commits what must be durable (it would be delivered, yet reported failed).
///
/// Relies on SQLite's default "powersafe overwrite" (a write to one part of a sector never
/// damages the rest): with it, `FULL` does not pad a commit to a sector either, so syncing the
/// frames ourselves leaves them exactly as `FULL` would. A database opened with `psow=0` is not
/// Switchyard's.
final class WALSync: Sendable {
    private let file: Int32
    private let path: String
    /// The first failure and the syncs so far: read by the writer's turn while the syncer thread
    /// syncs (``SQLiteWriter``).
    private let state = Guarded<(failure: TransportError?, syncs: Int)>((nil, 0))
    /// Held by each sync, from its check for an earlier failure to the recording of its own.
    private let syncing = Guarded(0)
    /// The first failure, for ever: later synced batches are not even written (see
    /// ``SQLiteWriter``).
    var failure: TransportError? { state.withLock { $0.failure } }
    /// Syncs run so far (tests check that synced batches make them, and unsynced ones none).
    var syncs: Int { state.withLock { $0.syncs } }

    /// Opens the WAL at `walPath` (as SQLite names it: ``SQLiteDatabase/walPath``) and syncs its
    /// directory; nil when it cannot be opened (then commits must sync themselves:
    /// `synchronous=FULL`).
    init?(walPath: String) {
        path = walPath
        file = open(path, O_RDONLY | O_CLOEXEC)
        guard file >= 0 else { return nil }
        let directory = (walPath as NSString).deletingLastPathComponent
        let folder = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if folder >= 0 {
            _ = fsync(folder)
            close(folder)
        }
    }

    deinit { close(file) }

    /// Writes zeros past the WAL's end until it is `bytes` long, and syncs them (see
    /// `SQLiteWriter.writeWALAhead`). Only with the database's write lock held: nothing else may
    /// be appending. Never writes below the current end.
    func extend(toBytes bytes: Int64) {
        let writable = open(path, O_WRONLY | O_CLOEXEC)
        guard writable >= 0 else { return }
        defer { close(writable) }
        var info = stat()
        guard fstat(writable, &info) == 0, Int64(info.st_size) < bytes else { return }
        let zeros = [UInt8](repeating: 0, count: 256 * 1024)
        var offset = Int64(info.st_size)
        while offset < bytes {
            let count = Int(min(Int64(zeros.count), bytes - offset))
            let written = zeros.withUnsafeBytes { pwrite(writable, $0.baseAddress, count, off_t(offset)) }
            guard written > 0 else { break }
            offset += Int64(written)
        }
        _ = fdatasync(writable)
    }

    /// Returns once everything written to the WAL so far is on disk; throws when the disk refused
    /// (now or at any earlier sync).
    /// Safe from several threads at once (the syncer's, the writer's, a caller running its own
    /// turn): one sync at a time, the check for an earlier failure and the recording of a new one
    /// included. Linux reports a failed writeback to one `fdatasync` of the file only, so a sync
    /// running beside the one that failed could return success for frames written after the
    /// lost ones — which recovery then drops with them.
    func sync() throws(TransportError) {
        try syncing.withLock { _ throws(TransportError) in
            if let failure { throw failure }
            state.withLock { $0.syncs += 1 }
            guard fdatasync(file) != 0 else { return }
            let error = TransportError(
                .io,
                "cannot sync '\(path)' to disk (\(String(cString: strerror(errno)))): the last commits may be lost in a power cut; "
                    + "every later durable write of this store fails with this error — check the disk, then restart the process")
            state.withLock { $0.failure = error }
            throw error
        }
    }
}
