#if canImport(Glibc)
    import Glibc
#endif

/// Bytes appended one after another into one allocation that grows (`realloc`), never zeroed
/// first: a writer's batch of rows and encoded messages, each then bound to SQLite where it lies.
///
/// An array of bytes zeroed each message's room before the encoder wrote it (`append(contentsOf:
/// repeatElement(0, …))`, then `memset`), and as a class's stored property paid a run-time
/// exclusivity check on every access: about 600 instructions a message between them on the group
/// commit path. Not copyable: it owns its memory, which its `deinit` frees.
struct ByteArena: ~Copyable {
    private var base: UnsafeMutableRawPointer?
    /// Bytes written so far.
    private(set) var count = 0
    /// Bytes allocated.
    private(set) var capacity = 0

    init() {}

    deinit { free(base) }

    /// Makes room for `size` more bytes at the end and returns where they start; the caller
    /// writes all `size` of them before the arena is read.
    mutating func extend(by size: Int) -> (range: Range<Int>, start: UnsafeMutableRawPointer) {
        let start = count
        // `base` is nil until the first growth (or after a large batch freed it): grown even for
        // no bytes, so that the pointer returned is always valid.
        if start + size > capacity || base == nil { grow(toHold: start + size) }
        count = start + size
        return (start..<start + size, base! + start)
    }

    /// Appends `bytes` and returns where they lie.
    mutating func append(_ bytes: UnsafeRawBufferPointer) -> Range<Int> {
        let (range, start) = extend(by: bytes.count)
        if let source = bytes.baseAddress, bytes.count > 0 { start.copyMemory(from: source, byteCount: bytes.count) }
        return range
    }

    /// The bytes written so far, valid until the arena next changes.
    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    /// Forgets what was written; keeps the allocation for the next batch unless it grew past
    /// `limit` bytes (a batch of large messages must not hold its memory for good).
    mutating func removeAll(keepingAtMost limit: Int) {
        count = 0
        if capacity > limit {
            free(base)
            base = nil
            capacity = 0
        }
    }

    private mutating func grow(toHold needed: Int) {
        let newCapacity = max(needed, capacity * 2, 4096)
        guard let grown = realloc(base, newCapacity) else { fatalError("ByteArena: out of memory growing to \(newCapacity) bytes") }
        base = grown
        capacity = newCapacity
    }
}
