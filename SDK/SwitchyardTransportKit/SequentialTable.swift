import DequeModule

/// A table keyed by ids handed out in increasing order (store entries, deliveries) that mostly
/// leave in about the order they came: a deque indexed from the oldest id still present. A lookup
/// is an index, with no hashing and no rehashing as the table grows and shrinks on the hot path.
///
/// Memory is one slot per id from the oldest present to the newest: one id left behind (a
/// delivery nobody settles) holds the slots after it until it leaves (at the latest when its
/// lease expires).
struct SequentialTable<Value> {
    private var slots = Deque<Value?>()
    private var base: UInt64 = 1
    /// Values present.
    private(set) var count = 0

    /// Whether no value is present.
    var isEmpty: Bool { count == 0 }

    /// The value with `id`, if present.
    subscript(id: UInt64) -> Value? {
        id >= base && id - base < UInt64(slots.count) ? slots[Int(id - base)] : nil
    }

    /// Sets the value with `id`: usually a new id past every one so far; an id that left may be
    /// put back (a settlement that failed, undone).
    mutating func insert(_ value: Value, at id: UInt64) {
        if slots.isEmpty { base = id }
        while id < base {
            slots.prepend(nil)
            base -= 1
        }
        while base + UInt64(slots.count) <= id { slots.append(nil) }
        if slots[Int(id - base)] == nil { count += 1 }
        slots[Int(id - base)] = value
    }

    /// Removes and returns the value with `id`, if present.
    @discardableResult
    mutating func removeValue(forKey id: UInt64) -> Value? {
        guard id >= base, id - base < UInt64(slots.count) else { return nil }
        let index = Int(id - base)
        guard let value = slots[index] else { return nil }
        slots[index] = nil
        count -= 1
        while let first = slots.first, first == nil {
            slots.removeFirst()
            base += 1
        }
        return value
    }

    /// Every (id, value) present, oldest first.
    var all: [(id: UInt64, value: Value)] {
        slots.enumerated().compactMap { index, value in value.map { (base + UInt64(index), $0) } }
    }

    /// Calls `body` with every value present, oldest first, without copying them out.
    func forEach(_ body: (Value) -> Void) {
        for case let value? in slots { body(value) }
    }

    /// Removes every value.
    mutating func removeAll() {
        slots.removeAll()
        count = 0
    }
}
