import DequeModule
import SwitchyardABI
import SwitchyardHost
import SwitchyardWire
import Synchronization

/// One delivery taken from a transport and not yet settled. A class: it travels from the
/// transport's thread through the worker, the handler's task and the settlement, and a struct
/// holding the envelope was copied (a retain and release per string) at every step.
final class Inbound: Sendable {
    /// The transport's delivery id, for settling.
    let delivery: DeliveryID
    /// The transport it came from (and replies go back through).
    let transport: Transport
    /// The envelope, read on the transport's thread.
    let envelope: Envelope
    /// The form the call came in, which its reply takes (a caller reads the form it writes).
    let form: Envelope.Form
    /// Deliveries so far, this one included.
    let attempt: UInt32
    /// The subscriber group it was delivered to ("" outside a topic, and for the default group).
    let group: String
    /// Where the reply and the settlement run (nil: inline, the chain never waits for storage).
    let cost: CallCost?
    /// What keeps its lease from running out while it is held here (nil: the transport cannot).
    let leases: LeaseKeeper?
    /// The keeper's bookkeeping (``LeaseKeeper``): when it was taken and is next due for
    /// extension (coarse monotonic ns), and whether it is no longer held. Atomics, so that letting
    /// a delivery go costs one store and no lock.
    let leaseTakenAt = Atomic<Int64>(0)
    let leaseDue = Atomic<Int64>(0)
    let leaseLetGo = Atomic<Bool>(false)

    init(
        delivery: DeliveryID, transport: Transport, envelope: Envelope, form: Envelope.Form, attempt: UInt32, group: String, cost: CallCost?,
        leases: LeaseKeeper?
    ) {
        self.delivery = delivery
        self.transport = transport
        self.envelope = envelope
        self.form = form
        self.attempt = attempt
        self.group = group
        self.cost = cost
        self.leases = leases
    }
}

/// Hands deliveries from a transport's thread to the worker tasks that execute them.
///
/// Workers take deliveries in a loop and only suspend when the queue is empty, so under load a
/// delivery costs a lock and an append, not a task or a thread hand-off per call.
package final class DeliveryQueue: Sendable {
    private struct State {
        var items: Deque<Inbound> = []
        var waiting: Deque<UnsafeContinuation<Inbound?, Never>> = []
        var closed = false
        /// Whether a worker is spinning (``spinForNext()``): then deliveries are queued for it
        /// rather than handed to a suspended worker, whose resume from the transport's thread
        /// could wake a parked pool thread.
        var spinning = false

        /// The first queued delivery, with the next one handed to an idle worker when there are
        /// both (so a worker that starts while more wait wakes another, from a pool thread).
        mutating func take() -> (item: Inbound, next: Handoff?)? {
            guard let item = items.popFirst() else { return nil }
            return (item, handOff())
        }

        /// The next queued delivery for an idle worker, when there are both.
        mutating func handOff() -> Handoff? {
            guard !items.isEmpty, let waiter = waiting.popFirst() else { return nil }
            return Handoff(waiter: waiter, item: items.removeFirst())
        }
    }

    /// A delivery given to a waiting worker, resumed once the lock is let go.
    private struct Handoff {
        let waiter: UnsafeContinuation<Inbound?, Never>
        let item: Inbound
        func resume() { waiter.resume(returning: item) }
    }
    private let state = Guarded(State())

    /// Queues a delivery; false when the queue is closed (the caller releases it).
    func push(_ item: Inbound) -> Bool {
        let (accepted, waiter) = state.withLock { state -> (Bool, UnsafeContinuation<Inbound?, Never>?) in
            guard !state.closed else { return (false, nil) }
            if !state.spinning, let waiter = state.waiting.popFirst() { return (true, waiter) }
            state.items.append(item)
            return (true, nil)
        }
        waiter?.resume(returning: item)
        return accepted
    }

    /// Queues deliveries in order under one lock, handing the first straight to a waiting worker;
    /// false when the queue is closed (nothing was queued: the caller releases them).
    ///
    /// One worker is woken from here, not one per delivery: the transport's thread is not one of
    /// the pool's, so each task it resumed poked a parked pool thread awake (a futex wake each,
    /// and the typed fire-and-forget path's largest kernel cost). The worker woken wakes the next
    /// one as it starts (``next()``), from a pool thread, while deliveries wait: every delivery
    /// still starts without waiting for another's handler.
    func push(contentsOf batch: [Inbound]) -> Bool {
        guard !batch.isEmpty else { return true }
        let (accepted, handed) = state.withLock { state -> (Bool, Handoff?) in
            guard !state.closed else { return (false, nil) }
            guard !state.spinning, let waiter = state.waiting.popFirst() else {
                state.items.append(contentsOf: batch)
                return (true, nil)
            }
            state.items.append(contentsOf: batch[1...])
            return (true, Handoff(waiter: waiter, item: batch[0]))
        }
        handed?.resume()
        return accepted
    }

    /// The next delivery, waiting for one; nil once the queue is closed and empty. A worker that
    /// takes one while more wait and another worker is idle wakes that worker with the next.
    nonisolated(nonsending) func next() async -> Inbound? {
        if let (item, next) = state.withLock({ $0.take() }) {
            next?.resume()
            return item
        }
        if let spun = await spinForNext() { return spun }
        let item = await withUnsafeContinuation { continuation in
            let ready: Inbound?? = state.withLock { state in
                if let item = state.items.popFirst() { return .some(item) }
                if state.closed { return .some(nil) }
                state.waiting.append(continuation)
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
        if item != nil { state.withLock { $0.handOff() }?.resume() }
        return item
    }

    /// Before a worker with nothing to do suspends, one worker at a time yields for a short while
    /// (``spinNanos``), and deliveries queued meanwhile wait for it instead of resuming a
    /// suspended worker.
    ///
    /// A suspended worker leaves its pool thread with nothing to run, and the pool parks the
    /// thread; the transport's next delivery then resumes the worker from the transport's thread
    /// with a futex wake, and so does the reply that resumes a caller. On this machine's two
    /// virtual cores those wakes were most of a typed request-reply's time. A worker that yields
    /// keeps a pool thread running, so the next call, usually microseconds away in a busy period,
    /// needs no wake — as long as the delivery goes to the spinning worker: resuming a suspended
    /// one from the transport's thread still woke the pool's other thread now and then. `bench
    /// typed --quick` on 2026-12-04: request-reply p50 about 11 µs in most runs against 35–50 µs
    /// without (some runs still read 44–54 µs: docs/benchmark-history.md, nineteenth round);
    /// fire-and-forget and 64 callers within the noise. One worker spins, not all: spinning
    /// workers would take the threads the callers' tasks need.
    nonisolated(nonsending) private func spinForNext() async -> Inbound? {
        guard !Self.neverSpin.load(ordering: .relaxed) else { return nil }
        let started = state.withLock { state in
            guard !state.spinning && !state.closed else { return false }
            state.spinning = true
            return true
        }
        guard started else { return nil }
        let until = monotonicNanoseconds() + Self.spinNanos
        while true {
            await Task.yield()
            let last = monotonicNanoseconds() >= until
            let (taken, stop) = state.withLock { state -> ((item: Inbound, next: Handoff?)?, Bool) in
                let taken = state.take()
                // Stopped under the lock that queues: from here on a delivery goes to a
                // suspended worker again.
                if taken != nil || last || state.closed { state.spinning = false }
                return (taken, !state.spinning)
            }
            if let (item, next) = taken {
                next?.resume()
                return item
            }
            if stop { return nil }
        }
    }

    /// How long a worker with nothing to do yields before suspending: a little longer than the gap
    /// between one call and the next in a busy period (about 10 µs here). By time, not by rounds:
    /// a round takes from a fraction of a microsecond (nothing else to run) to many (a busy pool).
    static let spinNanos: Int64 = 30_000

    /// Workers suspend at once, never spinning. For `switchyard-hot-path` only: under callgrind
    /// threads run one at a time, so a spinning worker always spins out its budget while the
    /// threads it waits for cannot run (about 58,000 instructions per request-reply call were
    /// counted), where a native run spins on an otherwise idle core until the next call arrives.
    package static func keepWorkersFromSpinning() { neverSpin.store(true, ordering: .relaxed) }
    private static let neverSpin = Atomic<Bool>(false)

    /// Takes out the deliveries nobody started yet that `isTaken` matches, leaving the others
    /// queued in their order.
    func remove(where isTaken: (Inbound) -> Bool) -> [Inbound] {
        state.withLock { state in
            guard state.items.contains(where: isTaken) else { return [] }
            var taken: [Inbound] = []
            var kept = Deque<Inbound>()
            for item in state.items {
                if isTaken(item) { taken.append(item) } else { kept.append(item) }
            }
            state.items = kept
            return taken
        }
    }

    /// What the queue holds now, for a diagnosis (a test that waited in vain says why): deliveries
    /// queued, workers suspended waiting, whether one is spinning, whether it is closed.
    package var snapshot: String {
        state.withLock { "queued \($0.items.count), workers waiting \($0.waiting.count), spinning \($0.spinning), closed \($0.closed)" }
    }

    /// Closes the queue: workers finish, and the deliveries nobody started are returned.
    func close() -> [Inbound] {
        let (items, waiters) = state.withLock { state in
            state.closed = true
            defer {
                state.items.removeAll()
                state.waiting.removeAll()
            }
            // Empty ones as literals: copying an empty Deque into an Array writes to Swift's
            // shared empty-array storage, which ThreadSanitizer reports as a race with any
            // thread reading an empty array at that moment.
            return (state.items.isEmpty ? [] : Array(state.items), state.waiting.isEmpty ? [] : Array(state.waiting))
        }
        for waiter in waiters { waiter.resume(returning: nil) }
        return items
    }
}
