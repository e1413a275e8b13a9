import CSwitchyard
import Foundation
import SwitchyardABI
import SwitchyardHost
import Synchronization

/// The checks of the conformance suite. docs/transports.md states the semantics they test.
enum StandardChecks {
    static let all: [ConformanceCheck] = [
        publishDeliverAck, publishBatch, rejectsBadArguments, releaseAndRetryCounting, giveBackInsideDeliver, unsubscribeReleases, prefetch,
        competingConsumers, visibilityTimeout, retryAfter, fanOut, orderingKeys, deadLetter, delayNeverEarly,
        drainReleases, survivesRestart, deliverBatch, settleBatch, publishAndSettle, expiry, settleOnDelivery, extendLeases,
        publishAsync, instanceCapabilities, channelStats,
    ]

    static func message(_ id: String, _ channel: String = "conformance", key: String? = nil, body: [UInt8] = [1, 2, 3]) -> Message {
        Message(id: id, channel: channel, orderingKey: key, headers: [Header("check", id)], body: body)
    }

    static let publishDeliverAck = ConformanceCheck(
        name: "publish-deliver-ack", summary: "a published message is delivered intact once and acknowledged",
        requires: [], requiresDurable: false
    ) { c in
        let t = try c.transport()
        let inbox = Collector()
        _ = try t.client.subscribe(SubscribeOptions(channel: "pda"), handler: inbox.handler(client: t.client))
        let sent = Message(id: "pda-1", channel: "pda", orderingKey: "k", headers: [Header("h", "v"), Header("h", "w")], body: Array(0..<200).map { UInt8($0) })
        try t.client.publish(sent)
        try c.expect(inbox.wait(for: 1), "the message was not delivered within 5 s")
        let got = inbox.received[0].message
        try c.expect(
            got.id == sent.id && got.channel == sent.channel && got.body == sent.body && got.headers == sent.headers,
            "the delivered message differs from the published one: \(got)")
        try c.expect(got.attempt == 1, "first delivery has attempt \(got.attempt), expected 1")
        Thread.sleep(forTimeInterval: 0.2)
        try c.expect(inbox.count == 1, "an acknowledged message was delivered \(inbox.count) times")
        if let stats = try t.client.stats() {
            try c.expect(
                stats.acked == 1 && stats.published == 1,
                "stats say published \(stats.published), acked \(stats.acked), expected 1 and 1"
                    + (stats.published == 0 && stats.acked == 0
                        ? " (all zeros: a Swift plugin that does not override stats() reports the kit's default, zeros; count and return your own)" : ""))
        }
    }

    static let publishBatch = ConformanceCheck(
        name: "publish-batch", summary: "a batch is delivered whole and in order; with publish_batch, a bad batch stores nothing",
        requires: [], requiresDurable: false
    ) { c in
        let t = try c.transport()
        let inbox = Collector()
        _ = try t.client.subscribe(SubscribeOptions(channel: "batch", maxInFlight: 500), handler: inbox.handler(client: t.client))
        let size = ConformanceSuite.messagesHeldAtOnce
        let batch = (0..<size).map { message("batch-\($0)", "batch", body: [UInt8(truncatingIfNeeded: $0)]) }
        try t.client.publish(batch: batch)
        try c.expect(inbox.wait(for: size), "got \(inbox.count) of a batch of \(size)")
        try c.expect(Set(inbox.received.map(\.message.id)) == Set(batch.map(\.id)), "the batch arrived with different ids")
        guard t.plugin.descriptor.pointee.publish_batch != nil else {
            // A 1.0 plugin: the host's fallback (one publish each), which is not atomic.
            c.note("no publish_batch: checked through the host's fallback, one publish each; atomicity not checked")
            return
        }
        var bad = (0..<5).map { message("bad-\($0)", "batch") }
        bad[3].id = ""
        do {
            try t.client.publish(batch: bad)
            throw ConformanceFailure("a batch with an invalid message was accepted")
        } catch is TransportError {}
        Thread.sleep(forTimeInterval: 0.2)
        try c.expect(!inbox.received.contains { $0.message.id.hasPrefix("bad-") }, "part of a refused batch was stored and delivered")
    }

    static let rejectsBadArguments = ConformanceCheck(
        name: "rejects-bad-arguments", summary: "NULL or empty arguments, unknown ids and oversize messages give error codes, never crashes",
        requires: [], requiresDurable: false
    ) { c in
        let t = try c.transport()
        let d = t.plugin.descriptor.pointee
        var error = sy_error()
        try c.expect(d.publish!(t.client.instance, nil, &error) != SY_OK, "publish(NULL message) returned SY_OK")
        try c.expect(d.settle!(t.client.instance, 987_654, nil, &error) != SY_OK, "settle(NULL settlement) returned SY_OK")
        for bad in [Message(id: "", channel: "c"), Message(id: "x", channel: "")] {
            do {
                try t.client.publish(bad)
                throw ConformanceFailure("publishing a message with an empty id or channel succeeded")
            } catch let error as TransportError {
                try c.expect(error.code != .ok, "bad publish")
            }
        }
        do {
            _ = try t.client.subscribe(SubscribeOptions(channel: "")) { _, _ in .ok }
            throw ConformanceFailure("subscribing to an empty channel succeeded")
        } catch is TransportError {}
        do {
            try t.client.settle(987_654, .ack)
            throw ConformanceFailure("settling an unknown delivery succeeded")
        } catch let error as TransportError {
            try c.expect(error.code == .notFound, "settling an unknown delivery gave \(error.code), expected not found")
        }
        do {
            try t.client.unsubscribe(987_654)
            throw ConformanceFailure("unsubscribing an unknown subscription succeeded")
        } catch let error as TransportError {
            try c.expect(error.code == .notFound, "unsubscribing an unknown subscription gave \(error.code), expected not found")
        }
        // Oversize: refused with too-large, or (for plugins without a limit) accepted intact.
        let huge = Message(id: "huge", channel: "huge", body: [UInt8](repeating: 7, count: 16 << 20))
        do {
            try t.client.publish(huge)
        } catch let error as TransportError {
            try c.expect(error.code == .tooLarge || error.code == .full, "a 16 MiB message gave \(error.code), expected too large")
        }
    }

    static let releaseAndRetryCounting = ConformanceCheck(
        name: "attempt-counting", summary: "retry counts an attempt, release does not; each delivery has its own id",
        requires: [], requiresDurable: false
    ) { c in
        let t = try c.transport()
        let turn = Atomic<Int>(0)
        let inbox = Collector()
        _ = try t.client.subscribe(
            SubscribeOptions(channel: "count"),
            handler: inbox.handler(client: t.client) { _ in
                switch turn.add(1, ordering: .relaxed).newValue {
                case 1: .retry(afterNanos: 0, reason: "first try failed")
                case 2: .release
                default: .ack
                }
            })
        try t.client.publish(message("count-1", "count"))
        try c.expect(inbox.wait(for: 3), "expected 3 deliveries (retry, release, ack), got \(inbox.count)")
        let attempts = inbox.received.map(\.message.attempt)
        try c.expect(attempts == [1, 2, 2], "attempts were \(attempts), expected [1, 2, 2]")
        try c.expect(Set(inbox.received.map(\.delivery)).count == 3, "delivery ids were reused")
    }

    /// A subscriber may give a delivery back from inside `deliver`. A plugin that delivers on the
    /// publisher's thread and offers it again at once, on the same stack, never returns from
    /// `publish` while the subscriber keeps giving back (the C template did, up to ABI 1.7). The
    /// Switchyard host never keeps giving back (a draining host refuses instead), so such a plugin
    /// passes with a note, as plugins already shipped must; the bundled ones are held to no note.
    /// The subscriber acknowledges once the wait is over, which ends a loop.
    static let giveBackInsideDeliver = ConformanceCheck(
        name: "give-back-inside-deliver",
        summary:
            "a subscriber that releases every delivery from inside deliver does not keep publish from returning (one that does passes with a note); acknowledged, the message arrives",
        requires: [], requiresDurable: false
    ) { c in
        let t = try c.transport()
        let client = t.client
        let releasing = Atomic<Bool>(true)
        let givenBack = Atomic<Int>(0)
        // Records only what it acknowledges: a looping plugin delivers millions of times.
        let acknowledged = Guarded<Set<String>>([])
        _ = try client.subscribe(SubscribeOptions(channel: "give-back")) { delivery, view in
            if releasing.load(ordering: .acquiring) {
                givenBack.add(1, ordering: .relaxed)
                try? client.settle(delivery, .release)
            } else {
                let id = view.copy().id
                acknowledged.withLock { _ = $0.insert(id) }
                try? client.settle(delivery, .ack)
            }
            return .ok
        }
        let returned = DispatchSemaphore(value: 0)
        let failure = Guarded<TransportError?>(nil)
        Thread.detachNewThread {
            do throws(TransportError) {
                try client.publish(message("give-back-1", "give-back"))
            } catch {
                failure.withLock { $0 = error }
            }
            returned.signal()
        }
        let wait = Collector.defaultWaitSeconds
        // A publish that returns does so at once (the subscriber gives back on the plugin's own
        // thread, or the plugin bounds it); one that loops never does. A fixed 2 s rather than
        // `wait`, which sanitizer runs raise to 30 s: the suite's checks share one thread, and
        // two such waits for a looping plugin held it past the check timeout.
        let loopWait = 2.0
        let inTime = returned.wait(timeout: .now() + loopWait) == .success
        let givenBackMeanwhile = givenBack.load(ordering: .relaxed)
        releasing.store(false, ordering: .releasing)
        if !inTime {
            guard returned.wait(timeout: .now() + wait) == .success else {
                // Still inside publish: closing the transport would free what that call uses.
                c.abandon(t)
                throw ConformanceFailure("publish did not return even once the subscriber acknowledged (\(givenBack.load(ordering: .relaxed)) deliveries given back)")
            }
        }
        // A publish merely slow (a loaded machine) gave back a few; one that loops, thousands.
        if !inTime && givenBackMeanwhile > 1000 {
            c.note(
                "publish did not return within \(Int(loopWait)) s while the subscriber released every delivery from inside deliver (\(givenBackMeanwhile) deliveries): a message given back from inside its own deliver is offered again on the same stack without end (writing-a-plugin.md, \"Settling inside deliver\")"
            )
        }
        if let error = failure.withLock({ $0 }) { throw error }
        // A plugin may keep a message given back from inside deliver for its next round: a
        // publish starts one.
        try client.publish(message("give-back-2", "give-back"))
        let deadline = Date().addingTimeInterval(wait)
        var arrived: Set<String> = []
        repeat {
            arrived = acknowledged.withLock { $0 }
            if arrived.isSuperset(of: ["give-back-1", "give-back-2"]) { break }
            usleep(1000)
        } while Date() < deadline
        try c.expect(
            arrived.isSuperset(of: ["give-back-1", "give-back-2"]),
            "once the subscriber acknowledged, it got \(arrived.sorted()) of give-back-1 and give-back-2")
    }

    static let unsubscribeReleases = ConformanceCheck(
        name: "unsubscribe-releases", summary: "unsettled deliveries of a subscriber that leaves go to another member",
        requires: [.queue], requiresDurable: false
    ) { c in
        let t = try c.transport()
        let holder = Collector()
        let taker = Collector()
        let held = try t.client.subscribe(
            SubscribeOptions(channel: "leave", maxInFlight: 100),
            handler: holder.handler(client: t.client, settle: nil))
        for index in 0..<5 { try t.client.publish(message("leave-\(index)", "leave")) }
        try c.expect(holder.wait(for: 5), "the first subscriber got \(holder.count) of 5")
        _ = try t.client.subscribe(SubscribeOptions(channel: "leave"), handler: taker.handler(client: t.client))
        try t.client.unsubscribe(held)
        try c.expect(taker.wait(for: 5), "after the holder left, the other member got \(taker.count) of 5")
        try c.expect(
            taker.received.allSatisfy { $0.message.attempt == 1 },
            "released messages must not count an attempt: the other member got attempts \(taker.received.map(\.message.attempt))")
    }

    /// Plugins built from the C template before it counted (ABI 1.0–1.7) deliver everything:
    /// they pass with a note saying so, rather than fail, so that plugins already shipped keep
    /// passing; the bundled plugins are held to having no note (`ConformanceTests`).
    static let prefetch = ConformanceCheck(
        name: "prefetch",
        summary: "a subscriber with max_in_flight 2 holds at most 2 unsettled deliveries, and settling one lets the next come (one that ignores it passes with a note)",
        requires: [], requiresDurable: false
    ) { c in
        let t = try c.transport()
        let held = Collector()
        _ = try t.client.subscribe(SubscribeOptions(channel: "prefetch", maxInFlight: 2), handler: held.handler(client: t.client, settle: nil))
        for index in 0..<5 { try t.client.publish(message("prefetch-\(index)", "prefetch")) }
        try c.expect(held.wait(for: 2), "expected 2 deliveries, got \(held.count)")
        Thread.sleep(forTimeInterval: 0.3)  // time for a plugin that ignores the bound to deliver more
        let before = held.count
        try t.client.settle(held.received[0].delivery, .ack)
        try c.expect(held.wait(for: max(3, before)), "after one of \(before) deliveries was settled, \(held.count) in all")
        if before > 2 {
            c.note(
                "max_in_flight not honoured: \(before) of 5 delivered to a subscriber that asked for at most 2 unsettled (a Switchyard host queues in memory whatever it is given: writing-a-plugin.md)"
            )
        }
    }

    static let competingConsumers = ConformanceCheck(
        name: "competing-consumers", summary: "members of one group never both get a message; together they get all",
        requires: [.queue], requiresDurable: false
    ) { c in
        let t = try c.transport()
        let members = (0..<3).map { _ in Collector() }
        for member in members {
            _ = try t.client.subscribe(SubscribeOptions(channel: "compete", group: "workers", maxInFlight: 8), handler: member.handler(client: t.client))
        }
        // No more than the kit says it holds at once: a bounded plugin may keep them all queued.
        let count = ConformanceSuite.messagesHeldAtOnce
        for index in 0..<count { try t.client.publish(message("compete-\(index)", "compete")) }
        let deadline = Date().addingTimeInterval(10)
        while members.reduce(0, { $0 + $1.count }) < count && Date() < deadline { usleep(1000) }
        let ids = members.flatMap { $0.received.map(\.message.id) }
        try c.expect(ids.count == count, "members got \(ids.count) deliveries for \(count) messages")
        try c.expect(Set(ids).count == count, "\(ids.count - Set(ids).count) messages went to more than one member")
        try c.expect(members.filter { $0.count > 0 }.count >= 2, "only one member got work: \(members.map(\.count))")
    }

    static let visibilityTimeout = ConformanceCheck(
        name: "visibility-timeout", summary: "an unsettled delivery is redelivered after the visibility timeout, attempt counted",
        requires: [.queue, .retry], requiresDurable: false
    ) { c in
        let t = try c.transport()
        let inbox = Collector()
        let first = Atomic<Bool>(true)
        _ = try t.client.subscribe(
            SubscribeOptions(channel: "vis", visibilityTimeoutNanos: 200_000_000),
            handler: inbox.handler(client: t.client) { _ in first.exchange(false, ordering: .relaxed) ? nil : .ack })
        let published = wallClockNanoseconds()  // the clock the collector stamps receipts with
        try t.client.publish(message("vis-1", "vis"))
        try c.expect(inbox.wait(for: 2), "no redelivery within \(Collector.defaultWaitSeconds) s of a 200 ms visibility timeout")
        let r = inbox.received
        try c.expect(r[1].message.attempt == 2, "redelivery has attempt \(r[1].message.attempt), expected 2")
        // Measured from the publish, which precedes the first delivery: the receipt of the first
        // delivery can be late (a loaded machine, a plugin in a child process) and would make an
        // on-time redelivery look early. 5 ms of slack for stores that keep milliseconds.
        let waited = r[1].at - published
        try c.expect(waited >= 195_000_000, "redelivered \(waited / 1_000_000) ms after the publish, before the 200 ms timeout")
        // The first delivery's lease ran out and the message went out again: settling it now
        // must not settle the redelivery (a broker's ack names the message, not the delivery).
        do {
            try t.client.settle(r[0].delivery, .ack)
            c.note("a settle after the visibility timeout was accepted (the header allows it only where the transport cannot tell)")
        } catch let error as TransportError {
            try c.expect(error.code == .notFound, "a settle after the visibility timeout failed with \(error), expected not found")
        }
    }

    static let extendLeases = ConformanceCheck(
        name: "extend-leases",
        summary:
            "extend (ABI 1.6) keeps unsettled deliveries from redelivery past their visibility timeout, one status each in a batch, reports the lease, and refuses unknown deliveries",
        requires: [.queue, .retry], requiresDurable: false
    ) { c in
        let t = try c.transport()
        guard let lease = try t.client.leaseNanos() else { throw ConformanceSkip(reason: "the plugin does not offer extend (ABI 1.6)") }
        // A plugin that redelivers after a visibility timeout has leases: 0 ("no time limit")
        // would tell a host that nothing needs extending.
        try c.expect(lease > 0, "extend reported a lease of \(lease) ns through out_lease_ns: report the default visibility timeout (0 means no time limit)")
        // Where everything runs slower (a raised SWITCHYARD_CONFORMANCE_WAIT: sanitizers), every
        // span below is three times as long: an extension that comes late on a loaded machine
        // must not read as a lease the plugin failed to restart.
        let scale: Double = Collector.defaultWaitSeconds > 5 ? 3 : 1
        let leaseSeconds = 0.6 * scale
        let inbox = Collector()
        _ = try t.client.subscribe(
            SubscribeOptions(channel: "lease", maxInFlight: 4, visibilityTimeoutNanos: Int64(leaseSeconds * 1e9)),
            // First deliveries are held (extended below); a redelivery is acknowledged as it
            // arrives, so that a loaded machine's late settle cannot find its lease run out again.
            handler: inbox.handler(client: t.client) { $0.attempt >= 2 ? .ack : nil })
        // Two held at once, extended in one call each time (as a host extends every delivery of a
        // subscription that is due): one status per delivery, in order.
        try t.client.publish(batch: [message("lease-1", "lease"), message("lease-2", "lease")])
        try c.expect(inbox.wait(for: 2), "got \(inbox.count) of 2 deliveries")
        let held = inbox.received.map(\.delivery)
        // Held two and a half times their visibility timeout, extended four times a lease: never
        // redelivered. (Three quarters of a lease to spare for each extension: a loaded machine
        // is slow.)
        let until = Date().addingTimeInterval(2.5 * leaseSeconds)
        while Date() < until {
            let outcome = try t.client.extend(held)
            try c.expect(
                outcome.count == 2 && outcome.allSatisfy { $0 == nil },
                "extending two held deliveries in one call gave \(outcome.map { $0?.description ?? "ok" }) (not found: a lease was not restarted by an earlier extend, so it ran out?)"
            )
            Thread.sleep(forTimeInterval: leaseSeconds / 4)
        }
        try c.expect(inbox.count == 2, "redelivered while its lease was being extended (\(inbox.count) deliveries of 2 messages)")
        // An unknown delivery beside a held one: not found for it alone.
        let mixed = try t.client.extend([held[0], held[0] &+ 987_654])
        try c.expect(
            mixed.count == 2 && mixed[0] == nil && mixed[1]?.code == .notFound,
            "extending a held and an unknown delivery in one call gave \(mixed.map { $0.map { "\($0)" } ?? "ok" }), expected ok and not found")
        // Left alone, they come back once their leases run out, the attempt counted once more.
        try c.expect(inbox.wait(for: 4), "not redelivered within \(Collector.defaultWaitSeconds) s after their leases were no longer extended")
        let again = Array(inbox.received[2..<4])
        try c.expect(
            again.allSatisfy { $0.message.attempt == 2 },
            "the redeliveries have attempts \(again.map(\.message.attempt)), expected 2 (every delivery, id and attempt: "
                + "\(inbox.received.map { "\($0.message.id) \($0.message.attempt)" }))")
        // A first delivery is stale now: not found where the transport can tell (a broker that
        // keeps the lease itself may answer ok; the extension has no effect either way).
        let stale = try t.client.extend([held[0]])
        try c.expect(
            stale.count == 1 && (stale[0] == nil || stale[0]?.code == .notFound),
            "extending a delivery whose lease ran out gave \(stale.first.map { $0.map { "\($0)" } ?? "ok" } ?? "nothing"), expected not found (or ok)")
        if stale[0] == nil { c.note("a delivery whose lease ran out is extended without an error (the broker keeps the lease)") }
        Thread.sleep(forTimeInterval: leaseSeconds * 4 / 3)  // past their lease
        try c.expect(inbox.count == 4, "a redelivery came again after it was acknowledged (\(inbox.count) deliveries)")
    }

    static let retryAfter = ConformanceCheck(
        name: "retry-after", summary: "retry after a delay is never early and never holds back other messages",
        requires: [.retry], requiresDurable: false
    ) { c in
        let t = try c.transport()
        let inbox = Collector()
        // Long enough that ten small deliveries fit before it comes due even on a loaded machine;
        // where everything runs slower (a raised SWITCHYARD_CONFORMANCE_WAIT: sanitizers), longer.
        let delay: Int64 = Collector.defaultWaitSeconds > 5 ? 3_000_000_000 : 500_000_000
        _ = try t.client.subscribe(
            SubscribeOptions(channel: "later"),
            handler: inbox.handler(client: t.client) { message in
                message.id == "later-slow" && message.attempt == 1 ? .retry(afterNanos: delay, reason: "not yet") : .ack
            })
        // Long enough that ten small deliveries fit before it comes due even on a loaded machine.
        try t.client.publish(message("later-slow", "later"))
        for index in 0..<10 { try t.client.publish(message("later-\(index)", "later")) }
        try c.expect(inbox.wait(for: 12), "got \(inbox.count) of 12 deliveries")
        let r = inbox.received
        let firstSlow = r.first { $0.message.id == "later-slow" }!.at
        let secondSlow = r.last { $0.message.id == "later-slow" }!
        try c.expect(secondSlow.message.attempt == 2, "the retried message came back with attempt \(secondSlow.message.attempt)")
        try c.expect(
            secondSlow.at - firstSlow >= delay - 5_000_000, "retried after \((secondSlow.at - firstSlow) / 1_000_000) ms; asked for \(delay / 1_000_000) ms")
        let others = r.filter { $0.message.id != "later-slow" }.map(\.at).max()!
        try c.expect(others < secondSlow.at, "other messages waited behind the retried one")
    }

    static let fanOut = ConformanceCheck(
        name: "fan-out", summary: "every subscriber group gets each message once; members of a group compete",
        requires: [.fanOut], requiresDurable: false
    ) { c in
        let t = try c.transport()
        var groups: [[Collector]] = []
        for group in ["billing", "email", "audit"] {
            let members = [Collector(), Collector()]
            for member in members {
                _ = try t.client.subscribe(SubscribeOptions(channel: "events", group: group), handler: member.handler(client: t.client))
            }
            groups.append(members)
        }
        for index in 0..<50 { try t.client.publish(message("event-\(index)", "events")) }
        let deadline = Date().addingTimeInterval(10)
        while groups.contains(where: { $0.reduce(0) { $0 + $1.count } < 50 }) && Date() < deadline { usleep(1000) }
        Thread.sleep(forTimeInterval: 0.1)
        for (index, members) in groups.enumerated() {
            let ids = members.flatMap { $0.received.map(\.message.id) }
            try c.expect(ids.count == 50 && Set(ids).count == 50, "group \(index) got \(ids.count) deliveries, \(Set(ids).count) distinct, of 50")
        }
    }

    static let orderingKeys = ConformanceCheck(
        name: "ordering-keys", summary: "messages sharing a key are delivered one at a time, in publish order",
        requires: [.ordered], requiresDurable: false
    ) { c in
        let t = try c.transport()
        let inFlightPerKey = Guarded<[String: Int]>([:])
        let overlap = Atomic<Bool>(false)
        let order = Guarded<[String: [Int]]>([:])
        let settling = Atomic<Int>(0)  // settles still scheduled: the check waits for them
        let client = t.client
        let handler: DeliveryHandler = { delivery, view in
            let message = view.copy()
            let key = message.orderingKey ?? ""
            let busy = inFlightPerKey.withLock { state -> Bool in
                state[key, default: 0] += 1
                return state[key]! > 1
            }
            if busy { overlap.store(true, ordering: .relaxed) }
            order.withLock { $0[key, default: []].append(Int(message.id.split(separator: "-").last!)!) }
            settling.add(1, ordering: .relaxed)
            DispatchQueue.global().asyncAfter(deadline: .now() + .microseconds(Int.random(in: 0...500))) {
                inFlightPerKey.withLock { $0[key]! -= 1 }
                try? client.settle(delivery, .ack)
                settling.subtract(1, ordering: .relaxed)
            }
            return .ok
        }
        for _ in 0..<2 { _ = try t.client.subscribe(SubscribeOptions(channel: "ordered", maxInFlight: 10), handler: handler) }
        for index in 0..<60 { try t.client.publish(message("m-\(index)", "ordered", key: "key\(index % 3)")) }
        let deadline = Date().addingTimeInterval(10)
        while order.withLock({ $0.values.reduce(0) { $0 + $1.count } }) < 60 && Date() < deadline { usleep(1000) }
        while settling.load(ordering: .relaxed) > 0 && Date() < deadline.addingTimeInterval(5) { usleep(1000) }
        let seen = order.withLock { $0 }
        try c.expect(seen.values.reduce(0) { $0 + $1.count } == 60, "got \(seen.values.reduce(0) { $0 + $1.count }) of 60")
        for (key, ids) in seen { try c.expect(ids == ids.sorted(), "key \(key) was delivered out of order: \(ids)") }
        try c.expect(!overlap.load(ordering: .relaxed), "two messages of one key were in flight at once")
    }

    static let deadLetter = ConformanceCheck(
        name: "dead-letter", summary: "a dead-lettered message moves to <channel>.dlq with its reason and history",
        requires: [.deadLetter], requiresDurable: false
    ) { c in
        let t = try c.transport()
        let inbox = Collector()
        let dead = Collector()
        _ = try t.client.subscribe(
            SubscribeOptions(channel: "work"),
            handler: inbox.handler(client: t.client) { m in
                m.attempt == 1 ? .retry(afterNanos: 0, reason: "flaky") : .deadLetter(reason: "gave up")
            })
        _ = try t.client.subscribe(SubscribeOptions(channel: "work.dlq"), handler: dead.handler(client: t.client))
        try t.client.publish(message("doomed", "work"))
        try c.expect(dead.wait(for: 1), "nothing arrived on work.dlq")
        let m = dead.received[0].message
        try c.expect(m.id == "doomed" && m.body == [1, 2, 3], "the dead-letter copy differs: \(m)")
        try c.expect(m.header(DeadLetterHeader.reason) == "gave up", "reason header: \(m.header(DeadLetterHeader.reason) ?? "missing")")
        try c.expect(m.header(DeadLetterHeader.channel) == "work", "channel header: \(m.header(DeadLetterHeader.channel) ?? "missing")")
        let history = m.header(DeadLetterHeader.history) ?? ""
        try c.expect(history.contains("flaky") && history.contains("gave up"), "history header: \(history)")
    }

    static let deliverBatch = ConformanceCheck(
        name: "deliver-batch", summary: "deliveries handed over in batches (ABI 1.3) honour partial acceptance: the rest come again, attempts uncounted",
        requires: [], requiresDurable: false
    ) { c in
        let t = try c.transport()
        let inbox = Collector()
        let settle = inbox.handler(client: t.client)
        let calls = Guarded<[Int]>([])
        // The first batch of two or more is half taken: the rest must come again, not be lost or
        // counted as an attempt. A plugin without deliver_batch calls the per-message handler.
        _ = try t.client.subscribe(SubscribeOptions(channel: "batched", maxInFlight: 100), handler: settle) { deliveries, views in
            let first = calls.withLock { calls in
                calls.append(views.count)
                return calls.count == 1 || calls.dropLast().allSatisfy { $0 < 2 }
            }
            let take = first && views.count >= 2 ? views.count / 2 : views.count
            for index in 0..<take { _ = settle(deliveries[index], views[index]) }
            return take
        }
        let batch = (0..<60).map { message("batched-\($0)", "batched") }
        try t.client.publish(batch: batch)
        try c.expect(inbox.wait(for: 60), "got \(inbox.count) of 60 messages through deliver_batch")
        Thread.sleep(forTimeInterval: 0.2)
        let ids = inbox.received.map(\.message.id)
        try c.expect(
            Set(ids) == Set(batch.map(\.id)) && ids.count == 60,
            "\(ids.count) deliveries of \(Set(ids).count) distinct messages; expected each of 60 once")
        let attempts = Set(inbox.received.map(\.message.attempt))
        try c.expect(attempts == [1], "a message not taken from a batch came back with attempts \(attempts.sorted()), expected 1")
        if calls.withLock({ $0.allSatisfy { $0 < 2 } }) {
            c.note("the plugin never handed over two or more messages at once (deliver_batch unused): partial acceptance not exercised")
        }
    }

    static let settleBatch = ConformanceCheck(
        name: "settle-batch", summary: "settle_batch (ABI 1.3) settles each delivery on its own, in order, and reports each status",
        requires: [], requiresDurable: false
    ) { c in
        let t = try c.transport()
        let inbox = Collector()
        _ = try t.client.subscribe(SubscribeOptions(channel: "settled", maxInFlight: 10), handler: inbox.handler(client: t.client, settle: nil))
        for index in 0..<3 { try t.client.publish(message("settled-\(index)", "settled")) }
        try c.expect(inbox.wait(for: 3), "got \(inbox.count) of 3 deliveries")
        let first = inbox.received.map(\.delivery)
        let results = try t.client.settle(batch: [(first[0], .ack), (987_654, .ack), (first[1], .release), (first[2], .ack)])
        try c.expect(results.count == 4, "settle_batch reported \(results.count) outcomes for 4 settlements")
        try c.expect(
            results[0] == nil && results[2] == nil && results[3] == nil,
            "known deliveries failed to settle: \(results.map { $0?.description ?? "ok" })")
        try c.expect(results[1]?.code == .notFound, "an unknown delivery in a batch gave \(results[1].map { "\($0.code)" } ?? "ok"), expected not found")
        try c.expect(inbox.wait(for: 4), "the released delivery did not come again")
        let again = inbox.received[3]
        try c.expect(again.message.id == inbox.received[1].message.id, "redelivered \(again.message.id), expected the released one")
        try t.client.settle(again.delivery, .ack)
        Thread.sleep(forTimeInterval: 0.2)
        try c.expect(inbox.count == 4, "acknowledged deliveries came again: \(inbox.count) deliveries")
        // A batch acknowledged whole (one outcome for all, the usual batch), an unknown delivery
        // in its middle.
        for index in 3..<6 { try t.client.publish(message("settled-\(index)", "settled")) }
        try c.expect(inbox.wait(for: 7), "got \(inbox.count - 4) of 3 more deliveries")
        let more = inbox.received[4...].map(\.delivery)
        let acked = try t.client.settle(batch: [more[0], 987_655, more[1], more[2]], .ack)
        try c.expect(
            acked.count == 4 && acked[0] == nil && acked[2] == nil && acked[3] == nil,
            "an acknowledged batch reported \(acked.map { $0?.description ?? "ok" }), expected ok, not found, ok, ok")
        try c.expect(acked[1]?.code == .notFound, "an unknown delivery in an acknowledged batch gave \(acked[1].map { "\($0.code)" } ?? "ok"), expected not found")
        Thread.sleep(forTimeInterval: 0.2)
        try c.expect(inbox.count == 7, "deliveries acknowledged in a batch came again: \(inbox.count - 7) more")
    }

    static let publishAndSettle = ConformanceCheck(
        name: "publish-and-settle", summary: "publish_and_settle (ABI 1.3) stores the messages and settles the delivery together, or does neither",
        requires: [], requiresDurable: false
    ) { c in
        let t = try c.transport()
        let calls = Collector()
        let replies = Collector()
        _ = try t.client.subscribe(SubscribeOptions(channel: "pas-calls"), handler: calls.handler(client: t.client, settle: nil))
        _ = try t.client.subscribe(SubscribeOptions(channel: "pas-replies"), handler: replies.handler(client: t.client))
        try t.client.publish(message("pas-call", "pas-calls"))
        try c.expect(calls.wait(for: 1), "the call was not delivered")
        let delivery = calls.received[0].delivery
        try t.client.publish([message("pas-reply", "pas-replies")], settling: delivery, .ack)
        try c.expect(replies.wait(for: 1), "the message published with the settlement was not delivered")
        Thread.sleep(forTimeInterval: 0.2)
        try c.expect(calls.count == 1, "the delivery settled with publish_and_settle came again")
        guard t.client.descriptor.pointee.publish_and_settle != nil else {
            c.note("no publish_and_settle: checked through the host's fallback (publish, then settle); its refusals not checked")
            return
        }
        do {
            try t.client.publish([message("pas-orphan", "pas-replies")], settling: delivery, .ack)
            throw ConformanceFailure("publish_and_settle of an already settled delivery succeeded")
        } catch let error as TransportError {
            try c.expect(error.code == .notFound, "publish_and_settle of a settled delivery gave \(error.code), expected not found")
        }
        Thread.sleep(forTimeInterval: 0.2)
        try c.expect(
            !replies.received.contains { $0.message.id == "pas-orphan" },
            "publish_and_settle failed but stored its message anyway (it must do both or neither)")
    }

    static let publishAsync = ConformanceCheck(
        name: "publish-async",
        summary:
            "publish_async (ABI 1.7) tells each publish's outcome exactly once, stores what it accepts, stores nothing of a refused batch, and refuses while draining",
        requires: [], requiresDurable: false
    ) { c in
        let t = try c.transport()
        guard t.client.publishesAsynchronously else { throw ConformanceSkip(reason: "the plugin does not offer publish_async (ABI 1.7)") }
        let inbox = Collector()
        _ = try t.client.subscribe(SubscribeOptions(channel: "async", maxInFlight: 500), handler: inbox.handler(client: t.client))
        // Many in flight at once, as a host's tasks publish: each told once, every one stored.
        let count = 64
        let told = Guarded<[Int: [TransportError?]]>([:])
        let allTold = DispatchSemaphore(value: 0)
        for index in 0..<count {
            t.client.publish([message("async-\(index)", "async")]) { error in
                let first = told.withLock { told in
                    told[index, default: []].append(error)
                    return told.count == count && told[index]!.count == 1
                }
                if first { allTold.signal() }
            }
        }
        try c.expect(
            allTold.wait(timeout: .now() + Collector.defaultWaitSeconds) == .success,
            "\(told.withLock { $0.count }) of \(count) publishes were told their outcome within \(Collector.defaultWaitSeconds) s")
        Thread.sleep(forTimeInterval: 0.2)  // a second call of done would come now
        let outcomes = told.withLock { $0 }
        try c.expect(outcomes.values.allSatisfy { $0.count == 1 }, "done was called more than once for a publish: \(outcomes.filter { $0.value.count > 1 }.keys.sorted())")
        let failed = outcomes.compactMap { index, errors in errors.first!.map { "async-\(index): \($0)" } }
        try c.expect(failed.isEmpty, "publishes failed: \(failed.prefix(3))")
        try c.expect(inbox.wait(for: count), "got \(inbox.count) of \(count) messages published with publish_async")
        // A batch with an invalid message: refused through done, and none of it stored.
        var bad = (0..<3).map { message("async-bad-\($0)", "async") }
        bad[1].id = ""
        let refusal = Guarded<[TransportError?]>([])
        let refused = DispatchSemaphore(value: 0)
        t.client.publish(bad) { error in
            refusal.withLock { $0.append(error) }
            refused.signal()
        }
        try c.expect(refused.wait(timeout: .now() + Collector.defaultWaitSeconds) == .success, "a refused batch was never told its outcome")
        try c.expect(refusal.withLock { $0.first! } != nil, "a batch with an invalid message (an empty id) was accepted")
        Thread.sleep(forTimeInterval: 0.2)
        try c.expect(!inbox.received.contains { $0.message.id.hasPrefix("async-bad-") }, "part of a refused batch was stored and delivered")
        try c.expect(refusal.withLock { $0.count } == 1, "done was called more than once for a refused batch")
        // While draining: refused with closed.
        guard t.plugin.descriptor.pointee.drain != nil else {
            c.note("no drain: a publish while draining not checked")
            return
        }
        try? t.client.drain(deadlineNanos: monotonicNanoseconds() + 200_000_000)
        let closed = Guarded<TransportError??>(nil)
        let answered = DispatchSemaphore(value: 0)
        t.client.publish([message("async-late", "async")]) { error in
            closed.withLock { $0 = .some(error) }
            answered.signal()
        }
        try c.expect(answered.wait(timeout: .now() + Collector.defaultWaitSeconds) == .success, "a publish while draining was never told its outcome")
        let late = closed.withLock { $0 }
        try c.expect(late??.code == .closed, "a publish_async while draining gave \(late.flatMap { $0.map { "\($0.code)" } } ?? "ok"), expected closed")
    }

    static let expiry = ConformanceCheck(
        name: "expiry", summary: "an expired message is never delivered: dead-lettered as \"expired\", or dropped when it says so",
        requires: [.expiry], requiresDurable: false
    ) { c in
        let t = try c.transport()
        let inbox = Collector()
        let dead = Collector()
        let now = wallClockNanoseconds()
        var expired = message("expired", "exp")
        expired.expiresAtNanos = now - 1_000_000
        var dropped = message("dropped", "exp")
        dropped.expiresAtNanos = now - 1_000_000
        dropped.flags = .dropWhenExpired
        var live = message("live", "exp")
        live.expiresAtNanos = now + 60_000_000_000
        _ = try t.client.subscribe(SubscribeOptions(channel: "exp"), handler: inbox.handler(client: t.client))
        try t.client.publish(batch: [expired, dropped, live, message("forever", "exp")])
        try c.expect(inbox.wait(for: 2), "got \(inbox.count) of the 2 messages that had not expired")
        Thread.sleep(forTimeInterval: 0.3)
        let ids = Set(inbox.received.map(\.message.id))
        try c.expect(ids == ["live", "forever"], "delivered \(ids.sorted()); expected only live and forever")
        try c.expect(
            inbox.received.first { $0.message.id == "live" }?.message.expiresAtNanos == live.expiresAtNanos,
            "a delivered message lost its expires_at_ns")
        guard t.plugin.capabilities.contains(.deadLetter) else { return }
        _ = try t.client.subscribe(SubscribeOptions(channel: "exp.dlq"), handler: dead.handler(client: t.client))
        try c.expect(dead.wait(for: 1), "the expired message did not arrive on exp.dlq")
        Thread.sleep(forTimeInterval: 0.3)
        try c.expect(
            dead.received.map(\.message.id) == ["expired"],
            "exp.dlq holds \(dead.received.map(\.message.id)); expected only the expired one (the other asked to be dropped)")
        try c.expect(
            dead.received[0].message.header(DeadLetterHeader.reason) == "expired",
            "reason: \(dead.received[0].message.header(DeadLetterHeader.reason) ?? "missing"), expected expired")
    }

    static let settleOnDelivery = ConformanceCheck(
        name: "settle-on-delivery",
        summary: "a subscription settled on delivery (ABI 1.4) gets each message once; flagged deliveries cannot be settled, refused ones come again",
        requires: [], requiresDurable: false
    ) { c in
        let t = try c.transport()
        let inbox = Collector()
        let settleErrors = Guarded<[String]>([])
        // A delivery marked settled must refuse a settle (not found); one without the mark (the
        // plugin did not honor the option for it) is acknowledged as usual.
        let handler: DeliveryHandler = { [client = t.client] delivery, view in
            let message = view.copy()
            _ = inbox.handler(client: client, settle: nil)(delivery, view)
            do {
                try client.settle(delivery, .ack)
                if message.flags.contains(.settled) { settleErrors.withLock { $0.append("\(message.id): settle of a settled delivery succeeded") } }
            } catch {
                if !message.flags.contains(.settled) { settleErrors.withLock { $0.append("\(message.id): \(error)") } }
            }
            return .ok
        }
        let calls = Guarded<Int>(0)
        // Where everything runs slower (a raised SWITCHYARD_CONFORMANCE_WAIT: sanitizers), the
        // lease and the wait past it are five times as long: an acknowledgement that takes longer
        // than the lease to arrive (through an isolated plugin's socket, under ThreadSanitizer and
        // a build beside it) must not read as a delivery settled twice.
        let scale: Double = Collector.defaultWaitSeconds > 5 ? 5 : 1
        // The first batch of two or more is half taken: the rest must come again.
        _ = try t.client.subscribe(
            SubscribeOptions(channel: "sod", maxInFlight: 100, visibilityTimeoutNanos: Int64(0.2 * scale * 1e9), settleOnDelivery: true),
            handler: handler
        ) { deliveries, views in
            let first = calls.withLock { calls in
                calls += 1
                return calls == 1
            }
            let take = first && views.count >= 2 ? views.count / 2 : views.count
            for index in 0..<take { _ = handler(deliveries[index], views[index]) }
            return take
        }
        var batch = (0..<40).map { message("sod-\($0)", "sod") }
        batch[0].flags.insert(.settled)  // meaningless on publish: must not be stored or trusted
        try t.client.publish(batch: batch)
        try c.expect(inbox.wait(for: 40), "got \(inbox.count) of 40 messages on a subscription settled on delivery")
        Thread.sleep(forTimeInterval: 0.5 * scale)  // past the visibility timeout: nothing comes again
        let ids = inbox.received.map(\.message.id)
        try c.expect(
            Set(ids) == Set(batch.map(\.id)) && ids.count == 40,
            "\(ids.count) deliveries of \(Set(ids).count) distinct messages; expected each of 40 once")
        try c.expect(settleErrors.withLock { $0 }.isEmpty, "settlement: \(settleErrors.withLock { $0 }.joined(separator: "; "))")
        let attempts = Set(inbox.received.map(\.message.attempt))
        try c.expect(attempts == [1], "deliveries came with attempts \(attempts.sorted()), expected 1")
        // Passing says nothing about whether the option was used (ignoring it is allowed): say it.
        let markedCount = inbox.received.filter { $0.message.flags.contains(.settled) }.count
        c.note(markedCount == 0 ? "option not honored (every delivery unmarked, settled by the subscriber)" : "honored: \(markedCount) of \(ids.count) deliveries marked")
        // A plain subscription never sees the mark, even on a message published with it.
        let plain = Collector()
        _ = try t.client.subscribe(SubscribeOptions(channel: "sod-plain"), handler: plain.handler(client: t.client))
        var marked = message("sod-plain-1", "sod-plain")
        marked.flags.insert(.settled)
        try t.client.publish(marked)
        try c.expect(plain.wait(for: 1), "a message published with SY_MESSAGE_SETTLED was not delivered")
        try c.expect(
            !plain.received[0].message.flags.contains(.settled), "a delivery of a plain subscription carries SY_MESSAGE_SETTLED (stored from the publish)")
    }

    static let delayNeverEarly = ConformanceCheck(
        name: "delay-never-early", summary: "a message is never delivered before its deliver-at time",
        requires: [.delay], requiresDurable: false
    ) { c in
        let t = try c.transport()
        let inbox = Collector()
        _ = try t.client.subscribe(SubscribeOptions(channel: "timed"), handler: inbox.handler(client: t.client))
        // 1 s: both publishes return well before it even on a loaded machine (with 300 ms the
        // delayed one could be due, and first, before the immediate one was published).
        let due = wallClockNanoseconds() + 1_000_000_000
        var later = message("timed-later", "timed")
        later.deliverAtNanos = due
        try t.client.publish(later)
        try t.client.publish(message("timed-now", "timed"))
        try c.expect(inbox.wait(for: 2), "got \(inbox.count) of 2")
        let r = inbox.received
        try c.expect(r[0].message.id == "timed-now", "the delayed message overtook the immediate one")
        try c.expect(r[1].at >= due, "delivered \((due - r[1].at) / 1_000_000) ms early")
    }

    static let drainReleases = ConformanceCheck(
        name: "drain-releases", summary: "drain refuses new publishes and releases what is unsettled at its deadline",
        requires: [], requiresDurable: false
    ) { c in
        let t = try c.transport()
        guard t.plugin.descriptor.pointee.drain != nil else {
            throw ConformanceSkip(reason: "the plugin offers no drain (optional: without it the host releases what is unsettled when it closes the transport)")
        }
        let holder = Collector()
        _ = try t.client.subscribe(SubscribeOptions(channel: "drain"), handler: holder.handler(client: t.client, settle: nil))
        try t.client.publish(message("drain-1", "drain"))
        try c.expect(holder.wait(for: 1), "not delivered")
        let deadline = monotonicNanoseconds() + 200_000_000
        do {
            try t.client.drain(deadlineNanos: deadline)
            throw ConformanceFailure(
                "drain returned success with an unsettled delivery (it must refuse new publishes, wait until the deadline for what is "
                    + "unsettled, then give it back and return SY_ERR_TIMEOUT; a Swift plugin that does not override drain(deadlineNanos:) "
                    + "has the kit's default, which does nothing)")
        } catch let error as TransportError {
            try c.expect(error.code == .timeout, "drain gave \(error.code), expected timeout")
        }
        do {
            try t.client.publish(message("drain-2", "drain"))
            throw ConformanceFailure("publish after drain succeeded")
        } catch let error as TransportError {
            try c.expect(error.code == .closed, "publish after drain gave \(error.code), expected closed")
        }
        if let stats = try t.client.stats() { try c.expect(stats.released >= 1, "stats.released is \(stats.released) after drain") }
    }

    static let instanceCapabilities = ConformanceCheck(
        name: "instance-capabilities",
        summary: "with instance_capabilities, an instance keeps a steady subset of what its plugin declares (durable, when configured so)",
        requires: [], requiresDurable: false
    ) { c in
        let t = try c.transport()
        // Through the client's table: under isolation that is the proxy's, which answers what the
        // child's instance said at its create.
        guard let ask = t.client.descriptor.pointee.instance_capabilities else {
            c.note("no instance_capabilities (NULL in the descriptor, as in every plugin built before ABI 1.8): its instances keep every capability the plugin declares")
            return
        }
        let declared = t.plugin.capabilities
        let first = Capabilities(rawValue: ask(t.client.instance))
        let second = Capabilities(rawValue: ask(t.client.instance))
        try c.expect(first == second, "instance_capabilities answered [\(first)], then [\(second)]: the answer must not change")
        try c.expect(
            declared.isSuperset(of: first),
            "instance_capabilities claims [\(first.subtracting(declared))], which the descriptor does not declare (a host ignores them)")
        if declared.contains(.wrapsInner) {
            try c.expect(first.contains(.wrapsInner), "a decorator's instance leaves out wraps-inner, which no config can turn off")
        }
        if c.suite.durable && declared.contains(.durable) {
            try c.expect(
                first.contains(.durable),
                "configured to be durable (its path or isolation key set), the instance leaves out durable: the durable checks would test a store in memory")
        }
        try c.expect(t.capabilities == first.intersection(declared), "the host reads [\(t.capabilities)], the instance answers [\(first)]")
        c.note("this instance keeps [\(first)]\(first == declared ? "" : " of [\(declared)]")")
    }

    static let channelStats = ConformanceCheck(
        name: "channel-stats",
        summary: "with channel_stats, a channel's depth, waiting and in-flight match what is stored and held, per group, dead letters included",
        requires: [], requiresDurable: false
    ) { c in
        let t = try c.transport()
        guard t.client.descriptor.pointee.channel_stats != nil else {
            throw ConformanceSkip(reason: "the plugin does not offer channel_stats (ABI 1.9): operators see only its totals")
        }
        guard try t.client.channelStats() != nil else {
            throw ConformanceSkip(reason: "channel_stats answers unsupported: this instance reports no channels")
        }
        let capabilities = t.chainCapabilities
        // A fan-out transport keeps a copy per group; a queue one copy, reported with group "".
        let group = capabilities.contains(.fanOut) ? "cs-group" : ""
        let named = "channel 'cs'\(group.isEmpty ? "" : " group '\(group)'")"
        func describe(_ one: ChannelStats?) -> String {
            one.map { "depth \($0.depth), waiting \($0.waiting), in flight \($0.inFlight)" } ?? "nothing (no entry)"
        }
        func entry(_ one: ChannelStats) -> String {
            "'\(one.channel)'\(one.group.isEmpty ? "" : " group '\(one.group)'"): \(describe(one))"
        }
        /// The entry for `channel` and `group` once `done` holds (or the last one read, when the wait ran out).
        func read(_ channel: String, _ group: String, until done: (ChannelStats?) -> Bool) throws -> ChannelStats? {
            let deadline = Date().addingTimeInterval(Collector.defaultWaitSeconds)
            while true {
                let all = try t.client.channelStats() ?? []
                for one in all where one.waiting > one.depth {
                    try c.expect(false, "channel \(entry(one)): waiting is part of depth, never more")
                }
                let one = all.first { $0.channel == channel && $0.group == group }
                if done(one) || Date() >= deadline {
                    if one == nil, let elsewhere = all.first(where: { $0.channel == channel }) {
                        try c.expect(
                            false,
                            "channel \(entry(elsewhere)), where \(group.isEmpty ? "the empty group was expected: a transport without fan-out (or a dead-letter channel) reports one shared copy under group \"\"" : "group '\(group)' was expected: a fan-out transport reports each subscriber group's copies under its name")"
                        )
                    }
                    return one
                }
                Thread.sleep(forTimeInterval: 0.05)
            }
        }
        // One delivery at a time, none settled by the handler: one in flight, the rest stored.
        let held = Collector()
        let subscription = try t.client.subscribe(
            SubscribeOptions(channel: "cs", group: "cs-group", maxInFlight: 1), handler: held.handler(client: t.client, settle: nil))
        /// Ends the subscription, which gives back what it held: counts that moved with the
        /// deliveries must move back (`depth` stored, `waiting` of them not due).
        func unsubscribed(expecting depth: UInt64, waiting: UInt64) throws {
            try t.client.unsubscribe(subscription)
            let after = try read("cs", group) { $0?.depth == depth && $0?.inFlight == 0 }
            try c.expect(
                after?.depth == depth && after?.waiting == waiting && after?.inFlight == 0,
                "once its only subscriber unsubscribed (giving back what it held), \(named) reads \(describe(after)); expected depth \(depth), waiting \(waiting), in flight 0"
            )
        }
        for index in 1...3 { try t.client.publish(message("cs-\(index)", "cs")) }
        try c.expect(held.wait(for: 1), "not delivered")
        let first = try read("cs", group) { $0?.depth == 2 && $0?.inFlight == 1 }
        try c.expect(
            first?.depth == 2 && first?.inFlight == 1 && first?.waiting == 0,
            "\(named) reads \(describe(first)); expected depth 2, in flight 1 (3 published, 1 held by a subscriber with max_in_flight 1)")
        guard capabilities.contains(.deadLetter) else { return try unsubscribed(expecting: 3, waiting: 0) }  // no dead-letter channel
        try t.client.settle(held.received[0].delivery, .deadLetter(reason: "counted"))
        try c.expect(held.wait(for: 2), "the next message was not delivered after the first was dead-lettered")
        let dead = try read("cs.dlq", "") { ($0?.depth ?? 0) + ($0?.inFlight ?? 0) == 1 }
        try c.expect(
            (dead?.depth ?? 0) + (dead?.inFlight ?? 0) == 1,
            "channel 'cs.dlq' (group \"\", shared by every group) reads \(describe(dead)); expected the one dead letter")
        let after = try read("cs", group) { $0?.depth == 1 && $0?.inFlight == 1 }
        try c.expect(after?.depth == 1 && after?.inFlight == 1, "after a dead letter, \(named) reads \(describe(after)); expected depth 1, in flight 1")
        guard capabilities.contains(.retry) else { return try unsubscribed(expecting: 2, waiting: 0) }
        // A retry an hour away waits: in depth, and in waiting.
        try t.client.settle(held.received[1].delivery, .retry(afterNanos: 3_600_000_000_000, reason: "later"))
        try c.expect(held.wait(for: 3), "the third message was not delivered after the second was retried")
        let waiting = try read("cs", group) { $0?.waiting == 1 || ($0?.waiting == 0 && $0?.inFlight == 2) }
        if waiting?.waiting == 0 && waiting?.inFlight == 2 {
            // A broker that keeps a retried message unacknowledged until its redelivery (JetStream).
            c.note("a message waiting for its retry reads as in flight, not waiting (allowed: waiting is where the transport can tell)")
            return
        }
        try c.expect(
            waiting?.depth == 1 && waiting?.waiting == 1 && waiting?.inFlight == 1,
            "with one message retried an hour from now, \(named) reads \(describe(waiting)); expected depth 1 of which 1 waiting, in flight 1 (or, where the transport cannot tell a retry's backoff, in flight 2)"
        )
        try unsubscribed(expecting: 2, waiting: 1)
    }

    static let survivesRestart = ConformanceCheck(
        name: "survives-restart", summary: "published and unsettled messages are there after the instance is reopened",
        requires: [.durable], requiresDurable: true
    ) { c in
        let t = try c.transport()
        let holder = Collector()
        _ = try t.client.subscribe(SubscribeOptions(channel: "keep"), handler: holder.handler(client: t.client, settle: nil))
        try t.client.publish(message("keep-1", "keep"))
        try c.expect(holder.wait(for: 1), "not delivered")
        try t.client.publish(message("keep-2", "keep", body: [9]))
        c.close(t)
        let reopened = try c.transport(reopen: true)
        let inbox = Collector()
        _ = try reopened.client.subscribe(SubscribeOptions(channel: "keep"), handler: inbox.handler(client: reopened.client))
        try c.expect(inbox.wait(for: 2), "after reopening, \(inbox.count) of 2 messages came back")
        try c.expect(Set(inbox.received.map(\.message.id)) == ["keep-1", "keep-2"], "got \(inbox.received.map(\.message.id))")
    }
}
