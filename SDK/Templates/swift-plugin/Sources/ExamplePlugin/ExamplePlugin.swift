// example-swift — a Switchyard transport plugin in Swift: an in-memory work queue.
//
// This file is both the bundled Swift example and the template a third party copies to start a
// Swift plugin (see README.md beside Package.swift and docs/writing-a-plugin.md).
//
// Semantics: competing consumers per channel and group (each message goes to one member, round
// robin), at-least-once with settle, `max_in_flight` honored per subscriber. Nothing is kept on
// disk and retry delays are not honored, so it claims only `.queue`.

import SwitchyardPluginKit

#if canImport(Glibc)
    import Glibc
#endif

/// The one exported symbol. It must be `public`, or `dlsym` cannot find it.
@c(switchyard_plugin_entry)
public func switchyardPluginEntry(_ hostABIMajor: UInt32) -> UnsafePointer<sy_plugin_descriptor>? {
    PluginExport.descriptor(for: ExampleQueue.self, hostABIMajor: hostABIMajor)
}

/// Config keys this plugin accepts (`{"max_in_flight": 64}`).
struct ExampleConfig: PluginConfig {
    static let allowedKeys: Set<String> = ["max_in_flight"]
    var max_in_flight: UInt32?
}

final class ExampleQueue: TransportPlugin {
    static let info = PluginInfo(
        name: "example-swift", version: "1.0.0",
        description: "In-memory work queue written in Swift (the Swift plugin template)",
        capabilities: [.queue])

    private struct Member {
        let id: SubscriptionID
        let options: SubscribeOptions
        let subscriber: Subscriber
        var inFlight: UInt32 = 0
    }

    private struct InFlight {
        var message: Message
        let member: SubscriptionID
    }

    private struct State {
        var pending: [Message] = []
        var inFlight: [DeliveryID: InFlight] = [:]
        var members: [Member] = []
        var running: [SubscriptionID: Int] = [:]  // deliver calls in progress, per subscription
        var nextID: UInt64 = 0
        var dispatching = false
        var moreWork = false
        /// The delivery whose deliver call runs now (one dispatcher at a time, one call at a time).
        var delivering: DeliveryID?
        /// Messages given back (released, retried) from inside their own deliver during this
        /// dispatching turn, and how often: see ``maxGivenBackPerTurn``.
        var givenBack: [String: Int] = [:]
        var draining = false
        var stats = TransportStats()
    }

    private let state = Guarded(State())
    /// How often one message given back from inside its own deliver is delivered in the same
    /// dispatching turn. After that it waits for the next publish, subscribe or settle: a
    /// subscriber that gives back everything it is handed would otherwise keep the turn, and the
    /// publish that started it, running forever.
    private static let maxGivenBackPerTurn = 4
    private let host: HostServices
    private let defaultMaxInFlight: UInt32

    init(context: TransportContext) throws(TransportError) {
        let config = try context.decodeConfig(ExampleConfig.self)
        if config.max_in_flight == 0 { throw TransportError(.config, "config key 'max_in_flight': must be at least 1") }
        host = context.host
        defaultMaxInFlight = config.max_in_flight ?? 256  // the bundled plugins' default
    }

    func publish(_ message: MessageView) throws(TransportError) {
        var message = message.copy()  // the view is borrowed for this call only
        message.attempt = message.attempt > 0 ? message.attempt - 1 : 0  // deliveries so far
        message.enqueuedAtNanos = host.nowNanos()
        try state.withLock { (state) throws(TransportError) in
            if state.draining { throw TransportError(.closed, "publish: draining") }
            state.pending.append(message)
            state.stats.published += 1
        }
        host.count("published")
        dispatch()
    }

    func subscribe(_ options: SubscribeOptions, _ subscriber: Subscriber) throws(TransportError) -> SubscriptionID {
        let id = state.withLock { state in
            state.nextID += 1
            state.members.append(Member(id: state.nextID, options: options, subscriber: subscriber))
            return state.nextID
        }
        dispatch()
        return id
    }

    func unsubscribe(_ id: SubscriptionID) throws(TransportError) {
        try state.withLock { (state) throws(TransportError) in
            guard let index = state.members.firstIndex(where: { $0.id == id }) else {
                throw TransportError(.notFound, "unsubscribe: unknown subscription \(id)")
            }
            state.members.remove(at: index)
            for (delivery, entry) in state.inFlight where entry.member == id {
                state.inFlight[delivery] = nil
                var message = entry.message
                message.attempt -= 1  // a release does not count an attempt
                state.pending.insert(message, at: 0)
                state.stats.released += 1
            }
        }
        // Deliveries run outside the lock: wait until none for `id` is still running, as the ABI
        // promises the caller (who may free its subscriber context as soon as this returns).
        while state.withLock({ $0.running[id] != nil }) { sched_yield() }
        dispatch()
    }

    func settle(_ delivery: DeliveryID, _ settlement: Settlement) throws(TransportError) {
        try state.withLock { (state) throws(TransportError) in
            guard let entry = state.inFlight.removeValue(forKey: delivery) else {
                throw TransportError(.notFound, "settle: unknown or already settled delivery \(delivery)")
            }
            if let index = state.members.firstIndex(where: { $0.id == entry.member }) {
                state.members[index].inFlight -= 1
            }
            switch settlement {
            case .ack:
                state.stats.acked += 1
            case .deadLetter(let reason):
                state.stats.deadLettered += 1
                host.log(.warning, "example-swift has no dead-letter channel; dropping message \(entry.message.id): \(reason)")
            case .retry:
                state.stats.retried += 1
                state.pending.append(entry.message)
                if state.delivering == delivery { state.givenBack[entry.message.id, default: 0] += 1 }
            case .release:
                state.stats.released += 1
                if state.delivering == delivery { state.givenBack[entry.message.id, default: 0] += 1 }
                var message = entry.message
                message.attempt -= 1
                state.pending.insert(message, at: 0)
            }
        }
        dispatch()
    }

    func drain(deadlineNanos: Int64) throws(TransportError) {
        state.withLock { $0.draining = true }
        // Wait for settlements until the deadline, then give back what is still unsettled.
        while state.withLock({ !$0.inFlight.isEmpty }) && host.monotonicNanos() < deadlineNanos { usleep(1000) }
        let released = state.withLock { state in
            let left = state.inFlight
            state.inFlight.removeAll()
            for entry in left.values {
                var message = entry.message
                message.attempt -= 1
                state.pending.insert(message, at: 0)
            }
            state.stats.released += UInt64(left.count)
            return left.count
        }
        if released > 0 { throw TransportError(.timeout, "drain: \(released) unsettled deliveries were released at the deadline") }
    }

    func stats() -> TransportStats {
        state.withLock { state in
            var stats = state.stats
            stats.inFlight = UInt64(state.inFlight.count)
            stats.depth = UInt64(state.pending.count)
            return stats
        }
    }

    /// Hands pending messages to members with room, one thread at a time; re-entrant calls (a
    /// settle from inside deliver) only flag more work for the running loop.
    private func dispatch() {
        let mine = state.withLock { state in
            if state.dispatching { state.moreWork = true; return false }
            state.dispatching = true
            state.givenBack.removeAll(keepingCapacity: true)  // a new turn
            return true
        }
        guard mine else { return }
        while let (delivery, message, member, subscriber) = nextDelivery() {
            let accepted = subscriber.deliver(delivery, message)
            state.withLock { state in
                state.delivering = nil
                state.running[member, default: 1] -= 1
                if state.running[member] == 0 { state.running[member] = nil }
            }
            if accepted != .ok {
                // Refused (e.g. the host is draining): give it back and stop for now.
                state.withLock { state in
                    if let entry = state.inFlight.removeValue(forKey: delivery) {
                        var message = entry.message
                        message.attempt -= 1
                        state.pending.insert(message, at: 0)
                        if let index = state.members.firstIndex(where: { $0.id == entry.member }) {
                            state.members[index].inFlight -= 1
                        }
                    }
                    state.dispatching = false
                }
                return
            }
        }
    }

    /// Takes the next pending message that a member of its channel has room for, or ends the
    /// dispatching turn when there is none.
    private func nextDelivery() -> (DeliveryID, Message, SubscriptionID, Subscriber)? {
        state.withLock { state in
            while true {
                if !state.draining {
                    for (index, message) in state.pending.enumerated() {
                        guard
                            state.givenBack[message.id, default: 0] < Self.maxGivenBackPerTurn,
                            let slot = state.members.firstIndex(where: {
                                $0.options.channel == message.channel
                                    && $0.inFlight < ($0.options.maxInFlight > 0 ? $0.options.maxInFlight : defaultMaxInFlight)
                            })
                        else { continue }
                        var message = state.pending.remove(at: index)
                        message.attempt += 1
                        // Rotate the chosen member to the back: round robin among competitors.
                        var member = state.members.remove(at: slot)
                        member.inFlight += 1
                        state.members.append(member)
                        state.nextID += 1
                        state.inFlight[state.nextID] = InFlight(message: message, member: member.id)
                        state.stats.delivered += 1
                        state.running[member.id, default: 0] += 1
                        state.delivering = state.nextID
                        return (state.nextID, message, member.id, member.subscriber)
                    }
                }
                if !state.moreWork {
                    state.dispatching = false
                    return nil
                }
                state.moreWork = false
            }
        }
    }
}
