import Foundation
import SwitchyardABI
import SwitchyardConfig
import SwitchyardConformance
import SwitchyardHost
import SwitchyardLoader
import SwitchyardTestSupport
import SwitchyardWire
import Synchronization
import Testing

@testable import SwitchyardRuntime

/// `isolation: process`: a plugin running in a `switchyard plugin-host` child.
@Suite("Process isolation")
struct IsolationTests {
    /// Short timeouts so that hangs and restarts show up within a test's patience.
    static let quick = ProcessIsolation(
        callTimeoutNanos: 5_000_000_000, restartBackoffNanos: 50_000_000,
        maxRestartBackoffNanos: 500_000_000, hostExecutable: BuildProducts.switchyard)

    /// The fixture plugin that segfaults on a "segfault" body and hangs on a "hang" body.
    static func crashy(in directory: TemporaryDirectory) async throws -> LoadedPlugin {
        let path = try await CCompiler.fixture("libcrashy.so", in: directory.path, defines: ["FIXTURE_CRASHY", "FIXTURE_NAME=\"crashy\""])
        return try PluginLoader().load(path: path)
    }

    static func message(_ id: String, _ body: String, channel: String = "work") -> Message {
        Message(id: id, channel: channel, body: Array(body.utf8))
    }

    @Test("the config's idea of the first restart wait is the host's: a max_restart_backoff below it is refused")
    func defaultFirstWaitAgrees() {
        #expect(ProcessIsolation().restartBackoffNanos == SwitchyardConfig.Isolation.defaultRestartBackoffNanos)
    }

    @Test("a plugin that segfaults inside publish kills its child, not the host: the call fails with the signal, the child restarts, the next publish works")
    func segfaultInPublish() async throws {
        let directory = try TemporaryDirectory()
        defer { withExtendedLifetime(directory) {} }  // the child loads the plugin from it
        let plugin = try await Self.crashy(in: directory)
        try await offPool {
            let transport = try Transport(name: "fragile", plugin: plugin, isolation: Self.quick)
            defer { transport.close() }
            try transport.client.publish(Self.message("1", "fine"))
            let firstChild = try #require(transport.pluginProcessID)
            let error = #expect(throws: TransportError.self) { try transport.client.publish(Self.message("2", "segfault")) }
            #expect(error?.code == .unavailable)
            #expect(error?.message.contains("killed by signal 11") == true, "\(error?.message ?? "")")
            #expect(error?.message.contains("during publish; whether the publish took effect is unknown") == true, "\(error?.message ?? "")")
            // The next call waits for the restarted child.
            try transport.client.publish(Self.message("3", "fine again"))
            let secondChild = try #require(transport.pluginProcessID)
            #expect(secondChild != firstChild)
            // And it happens again and again without harm.
            for round in 0..<3 {
                #expect(throws: TransportError.self) { try transport.client.publish(Self.message("crash-\(round)", "segfault")) }
                try transport.client.publish(Self.message("after-\(round)", "fine"))
            }
        }
    }

    @Test("a plugin that hangs inside publish: the call times out, the child is killed and restarted")
    func hangInPublish() async throws {
        let directory = try TemporaryDirectory()
        defer { withExtendedLifetime(directory) {} }  // the child loads the plugin from it
        let plugin = try await Self.crashy(in: directory)
        try await offPool {
            // The timeout bounds the child's start and its answer to `create` too: 3 s (1 s fell
            // short on a loaded machine); under a sanitizer everything is slower still.
            let timeoutMillis: Int64 = ProcessInfo.processInfo.environment["SWITCHYARD_SANITIZER"] == nil ? 3000 : 5000
            var options = Self.quick
            options.callTimeoutNanos = timeoutMillis * 1_000_000
            let transport = try Transport(name: "stuck", plugin: plugin, isolation: options)
            defer { transport.close() }
            let firstChild = try #require(transport.pluginProcessID)
            let started = Date()
            let error = #expect(throws: TransportError.self) { try transport.client.publish(Self.message("1", "hang")) }
            let waited = Date().timeIntervalSince(started)
            let seconds = Double(timeoutMillis) / 1000
            #expect(error?.code == .timeout)
            #expect(error?.message.contains("did not answer publish within \(timeoutMillis) ms") == true, "\(error?.message ?? "")")
            #expect(error?.message.contains("whether the publish took effect is unknown") == true, "\(error?.message ?? "")")
            #expect(waited >= seconds * 0.9 && waited < seconds + 4, "waited \(waited) s")
            // The child is killed and another started: wait for it (on a loaded machine starting
            // one can take longer than the call timeout, which bounds a call's wait for it).
            let restartDeadline = Date().addingTimeInterval(20)
            while transport.pluginProcessID == nil || transport.pluginProcessID == firstChild, Date() < restartDeadline { usleep(20_000) }
            let secondChild = try #require(transport.pluginProcessID)
            #expect(secondChild != firstChild)
            try transport.client.publish(Self.message("2", "fine"))
        }
    }

    @Test("a call into a plugin that blocks past the threshold is logged as a warning naming the transport and the ABI function")
    func slowCallWarning() async throws {
        let directory = try TemporaryDirectory()
        let plugin = try await Self.crashy(in: directory)
        let log = CapturedLog()
        try await offPool {
            let transport = try Transport(name: "sluggish", plugin: plugin, slowCallWarningNanos: 100_000_000, logger: log.logger())
            defer { transport.close() }
            try transport.client.publish(Self.message("1", "fine"))
            #expect(log.all.isEmpty, "\(log.all)")
            try transport.client.publish(Self.message("2", "slow"))
        }
        let warning = log.all.first { $0.hasPrefix("warning a call into a plugin took") }
        #expect(warning?.contains("function=publish") == true && warning?.contains("transport=sluggish") == true, "\(log.all)")
    }

    @Test("at the defaults, a child that keeps dying is restarted after 100 ms, then 200, 400, 800: doubling, as configuration.md says")
    func defaultRestartBackoff() async throws {
        try await offPool {
            let log = CapturedLog()
            let transport = try Transport(
                name: "dying", plugin: try BuildProducts.plugin("queue"), isolation: ProcessIsolation(hostExecutable: BuildProducts.switchyard),
                logger: log.logger())
            defer { transport.close() }
            var waits: [String] = []
            for _ in 0..<4 {
                let child = try #require(waitUntil(30) { transport.pluginProcessID != nil } ? transport.pluginProcessID : nil)
                kill(child, SIGKILL)
                #expect(waitUntil(30) { transport.pluginProcessID.map { $0 != child } ?? false }, "restarted")
                waits = log.all.filter { $0.contains("plugin process ended; restarting") }.compactMap { line in
                    line.split(separator: " ").first { $0.hasPrefix("restart_in_ms=") }.map { String($0.dropFirst("restart_in_ms=".count)) }
                }
            }
            #expect(waits == ["100", "200", "400", "800"], "\(log.all)")
        }
    }

    @Test("a durable queue in a child that is SIGKILLed: deliveries in flight come back from the restarted child and are acked; nothing is lost")
    func inFlightDeliveriesComeBack() async throws {
        try await offPool {
            let directory = try TemporaryDirectory()
            let queue = try BuildProducts.plugin("queue")
            let transport = try Transport(name: "durable", plugin: queue, configJSON: #"{"path": "\#(directory.file("q.db"))"}"#, isolation: Self.quick)
            defer { transport.close() }
            let seen = Seen()
            let client = transport.client
            let acking = Atomic<Bool>(false)
            // Unsettled deliveries are leased in the database; they come back once the lease
            // (the visibility timeout) runs out, which a short one makes quick.
            let options = SubscribeOptions(channel: "work", maxInFlight: 100, visibilityTimeoutNanos: 1_000_000_000)
            _ = try client.subscribe(options) { delivery, message in
                seen.add(message.copy().id, delivery)
                if acking.load(ordering: .acquiring) { try? client.settle(delivery, .ack) }
                return .ok
            }
            for index in 0..<20 { try client.publish(Self.message("m\(index)", "job \(index)")) }
            // Generous waits: under a sanitizer, beside the soaks, a child takes seconds to start.
            // Every message seen, not exactly 20 deliveries: on a slow machine a lease can run out
            // (1 s) before the last of the first round arrives, and the count then passes 20.
            let all = Set((0..<20).map { "m\($0)" })
            #expect(waitUntil(30) { Set(seen.ids) == all }, "first round: \(Set(seen.ids).count) of 20 messages seen")
            let firstRound = seen.deliveries
            let child = try #require(transport.pluginProcessID)
            acking.store(true, ordering: .releasing)
            kill(child, SIGKILL)
            #expect(waitUntil(30) { transport.pluginProcessID.map { $0 != child } ?? false })
            // The restarted child reopens the database and delivers the unsettled messages again;
            // now they are acknowledged, and the queue ends empty: nothing was lost.
            #expect(
                waitUntil(30) { (try? client.stats()).flatMap { $0 }.map { $0.depth == 0 && $0.inFlight == 0 } ?? false },
                "after the kill: \(seen.count - firstRound.count) deliveries, stats \(String(describing: try? client.stats()))")
            #expect(seen.count > firstRound.count, "the restarted child delivered again")
            // None was acknowledged before the kill: every one of the 20 came back (a restarted
            // child that dropped them would also end with an empty queue).
            let afterKill = Set(seen.ids.dropFirst(firstRound.count))
            #expect(afterKill == all, "came back: \(afterKill.count) of 20, missing \(all.subtracting(afterKill).sorted())")
            // Deliveries from the dead child cannot be settled any more.
            let stale = #expect(throws: TransportError.self) { try client.settle(firstRound[0], .ack) }
            #expect(stale?.code == .notFound)
        }
    }

    @Test("in the child, a publish waiting for room does not stop the settlement that makes the room from being served")
    func blockedPublishDoesNotHoldSettlements() async throws {
        try await offPool {
            let config = #"{"capacity": 1, "full_wait": "10s"}"#
            let transport = try Transport(name: "full", plugin: try BuildProducts.plugin("queue"), configJSON: config, isolation: Self.quick)
            defer { transport.close() }
            let client = transport.client
            let delivered = Guarded<[DeliveryID]>([])
            let subscription = try client.subscribe(SubscribeOptions(channel: "work", maxInFlight: 1)) { delivery, _ in
                delivered.withLock { $0.append(delivery) }
                return .ok
            }
            defer { try? client.unsubscribe(subscription) }
            try client.publish(Self.message("1", "first"))  // the queue is now full until it is acked
            #expect(waitUntil(10) { delivered.withLock { $0.count } == 1 })
            let secondPublished = Guarded<Result<Void, TransportError>?>(nil)
            let publisher = Thread {
                let result = Result { () throws(TransportError) in try client.publish(Self.message("2", "second")) }
                secondPublished.withLock { $0 = result }
            }
            publisher.start()
            usleep(200_000)
            #expect(secondPublished.withLock { $0 } == nil, "the second publish waits for room")
            let started = monotonicNanoseconds()
            try client.settle(try #require(delivered.withLock { $0.first }), .ack)  // served while the publish waits
            #expect(waitUntil(10) { secondPublished.withLock { $0 } != nil })
            #expect(throws: Never.self) { try secondPublished.withLock { $0 }?.get() }
            #expect(monotonicNanoseconds() - started < 5_000_000_000, "let in by the settlement, not by full_wait's end")
            #expect(waitUntil(10) { delivered.withLock { $0.count } == 2 })
        }
    }

    @Test("ABI 1.3 batches cross the socket whole: deliver_batch and settle_batch, and publish_and_settle is offered when the child's plugin has it")
    func batchesCrossWhole() async throws {
        try await offPool {
            let transport = try Transport(name: "batched", plugin: try BuildProducts.plugin("queue"), isolation: Self.quick)
            defer { transport.close() }
            let client = transport.client
            #expect(client.descriptor.pointee.publish_and_settle != nil, "the queue's publish_and_settle is offered through the child")
            let batchSizes = Guarded<[Int]>([])
            let received = Guarded<[(delivery: DeliveryID, id: String)]>([])
            let subscription = try client.subscribe(
                SubscribeOptions(channel: "work", maxInFlight: 256),
                handler: { delivery, view in
                    received.withLock { $0.append((delivery, view.copy().id)) }
                    return .ok
                },
                batchHandler: { deliveries, views in
                    batchSizes.withLock { $0.append(views.count) }
                    received.withLock { for index in views.indices { $0.append((deliveries[index], views[index].copy().id)) } }
                    return views.count
                })
            defer { try? client.unsubscribe(subscription) }
            let batch = (0..<200).map { Self.message("m\($0)", "body") }
            try client.publish(batch: batch)
            #expect(waitUntil(10) { received.withLock { $0.count } == 200 })
            #expect(received.withLock { $0.map(\.id) } == batch.map(\.id), "each message once, in order")
            #expect(batchSizes.withLock { $0.contains { $0 > 1 } }, "deliveries came in batches: \(batchSizes.withLock { $0 })")
            // Acknowledged as one batch, with an unknown delivery at its end.
            let outcomes = try client.settle(batch: received.withLock { $0.map(\.delivery) } + [987_654], .ack)
            #expect(outcomes.count == 201 && outcomes.prefix(200).allSatisfy { $0 == nil })
            #expect(outcomes.last??.code == .notFound)
            #expect(waitUntil(10) { (try? client.stats()).flatMap { $0 }.map { $0.acked == 200 && $0.inFlight == 0 } ?? false })
        }
    }

    @Test("settle_batch reports each delivery's outcome from the child: one whose lease ran out there is not found, the other is settled")
    func settleBatchOutcomesFromTheChild() async throws {
        try await offPool {
            let transport = try Transport(name: "leases", plugin: try BuildProducts.plugin("queue"), isolation: Self.quick)
            defer { transport.close() }
            let client = transport.client
            let got = Guarded<[(delivery: DeliveryID, id: String)]>([])
            let options = SubscribeOptions(channel: "work", maxInFlight: 10, visibilityTimeoutNanos: 1_000_000_000)
            let subscription = try client.subscribe(options) { delivery, view in
                got.withLock { $0.append((delivery, view.copy().id)) }
                return .ok
            }
            defer { try? client.unsubscribe(subscription) }
            try client.publish(Self.message("a", "expires"))
            // Its lease runs out in the child: delivered again, under another delivery id.
            #expect(waitUntil(30) { got.withLock { $0.filter { $0.id == "a" }.count } >= 2 })
            try client.publish(Self.message("b", "settles"))
            #expect(waitUntil(30) { got.withLock { $0.contains { $0.id == "b" } } })
            let stale = try #require(got.withLock { $0.first }?.delivery)
            let fresh = try #require(got.withLock { $0.last { $0.id == "b" } }?.delivery)
            let outcomes = try client.settle(batch: [(stale, .ack), (fresh, .ack)])
            #expect(outcomes.count == 2)
            #expect(outcomes.first??.code == .notFound, "the expired delivery: \(String(describing: outcomes.first))")
            #expect(outcomes.last! == nil, "the live delivery: \(String(describing: outcomes.last))")
        }
    }

    @Test("a publish_and_settle the child refuses (draining) does neither: the delivery is still there to settle")
    func refusedPublishAndSettleLeavesTheDelivery() async throws {
        try await offPool {
            let transport = try Transport(name: "pas", plugin: try BuildProducts.plugin("queue"), isolation: Self.quick)
            defer { transport.close() }
            let client = transport.client
            let got = Guarded<[DeliveryID]>([])
            _ = try client.subscribe(SubscribeOptions(channel: "calls")) { delivery, _ in
                got.withLock { $0.append(delivery) }
                return .ok
            }
            try client.publish(Self.message("call", "1", channel: "calls"))
            #expect(waitUntil(30) { got.withLock { $0.count } == 1 })
            let delivery = try #require(got.withLock { $0.first })
            // The drain waits for that delivery; meanwhile the child's queue refuses publishes.
            let drained = Guarded(false)
            let drainer = Thread {
                try? client.drain(deadlineNanos: monotonicNanoseconds() + 20_000_000_000)
                drained.withLock { $0 = true }
            }
            drainer.start()
            #expect(
                waitUntil(30) {
                    do {
                        try client.publish(Self.message("probe", "p", channel: "probes"))
                        return false
                    } catch { return (error as? TransportError)?.code == .closed }
                }, "the child started draining")
            let refused = #expect(throws: TransportError.self) {
                try client.publish([Self.message("reply", "r", channel: "replies")], settling: delivery, .ack)
            }
            #expect(refused?.code == .closed)
            try client.settle(delivery, .ack)  // neither happened: the delivery is still the subscriber's
            #expect(waitUntil(30) { drained.withLock { $0 } }, "the drain ended once the delivery was settled")
        }
    }

    @Test("a subscriber that refuses is offered the message again at the child's next change, not at once (no spin across the socket)")
    func refusalWaitsForAChange() async throws {
        try await offPool {
            let transport = try Transport(name: "refusing", plugin: try BuildProducts.plugin("queue"), isolation: Self.quick)
            defer { transport.close() }
            let client = transport.client
            let accepting = Atomic<Bool>(false)
            let offers = Atomic<Int>(0)
            let taken = Guarded<[String]>([])
            let subscription = try client.subscribe(SubscribeOptions(channel: "work")) { delivery, view in
                offers.add(1, ordering: .relaxed)
                guard accepting.load(ordering: .acquiring) else { return .unavailable }
                taken.withLock { $0.append(view.copy().id) }
                try? client.settle(delivery, .ack)
                return .ok
            }
            defer { try? client.unsubscribe(subscription) }
            try client.publish(Self.message("1", "refused first"))
            #expect(waitUntil(30) { offers.load(ordering: .relaxed) >= 1 })
            usleep(300_000)
            // In process the broker waits for a change after a refusal; through the child it must
            // too, not hand the message straight back (which spun at thousands of offers a second).
            #expect(offers.load(ordering: .relaxed) < 20, "\(offers.load(ordering: .relaxed)) offers in 300 ms while refusing")
            accepting.store(true, ordering: .releasing)
            try client.publish(Self.message("2", "a change"))
            #expect(waitUntil(30) { Set(taken.withLock { $0 }) == ["1", "2"] }, "taken: \(taken.withLock { $0 })")
        }
    }

    @Test("a settlement queued inside a delivery reaches the child before a shutdown another thread sends after it")
    func settlementInsideDeliveryPrecedesShutdown() async throws {
        try await offPool {
            let directory = try TemporaryDirectory()
            let queue = try BuildProducts.plugin("queue")
            let config = #"{"path": "\#(directory.file("q.db"))"}"#
            // A short lease: a message the first child did not hear acknowledged comes back quickly.
            let options = SubscribeOptions(channel: "work", visibilityTimeoutNanos: 200_000_000)
            let acked = DispatchSemaphore(value: 0)
            let first = try Transport(name: "durable", plugin: queue, configJSON: config, isolation: Self.quick)
            _ = try first.client.subscribe(options) { [client = first.client] delivery, _ in
                try? client.settle(delivery, .ack)  // queued: sent once this delivery returns
                acked.signal()
                usleep(100_000)  // the shutdown below is sent meanwhile, from another thread
                return .ok
            }
            try first.client.publish(Self.message("1", "once"))
            #expect(acked.wait(timeout: .now() + 30) == .success)
            first.close()
            // A new child on the same file: the message was acknowledged before the first one
            // shut down, so it never comes again.
            let second = try Transport(name: "durable", plugin: queue, configJSON: config, isolation: Self.quick)
            defer { second.close() }
            let again = Seen()
            _ = try second.client.subscribe(options) { [client = second.client] delivery, message in
                again.add(message.copy().id, delivery)
                try? client.settle(delivery, .ack)
                return .ok
            }
            usleep(1_500_000)
            #expect(again.ids.isEmpty, "delivered again after its acknowledgement: \(again.ids)")
        }
    }

    @Test("a settlement made inside a delivery is served before an unsubscribe another thread sends after it: nothing is left behind")
    func settlementInsideDeliveryPrecedesUnsubscribe() async throws {
        try await offPool {
            let transport = try Transport(name: "replies", plugin: try BuildProducts.plugin("queue"), isolation: Self.quick)
            defer { transport.close() }
            let client = transport.client
            let rounds = 200
            for round in 0..<rounds {
                // A caller taking its reply and closing its reply channel at once.
                let answered = DispatchSemaphore(value: 0)
                let subscription = try client.subscribe(SubscribeOptions(channel: "reply-\(round)")) { delivery, _ in
                    try? client.settle(delivery, .ack)  // queued: sent once this delivery returns
                    answered.signal()
                    return .ok
                }
                try client.publish(Self.message("r\(round)", "reply", channel: "reply-\(round)"))
                #expect(answered.wait(timeout: .now() + 30) == .success)
                try client.unsubscribe(subscription)
            }
            let stats = try #require(try client.stats())
            #expect(stats.acked == UInt64(rounds) && stats.depth == 0, "\(stats)")
        }
    }

    @Test("unsubscribe returns only once a delivery the proxy is making has returned, even when the child died meanwhile")
    func unsubscribeWaitsForADeliveryInProgress() async throws {
        try await offPool {
            let transport = try Transport(name: "slow-subscriber", plugin: try BuildProducts.plugin("queue"), isolation: Self.quick)
            defer { transport.close() }
            let client = transport.client
            let entered = DispatchSemaphore(value: 0)
            let release = DispatchSemaphore(value: 0)
            let order = Guarded<[String]>([])
            let subscription = try client.subscribe(SubscribeOptions(channel: "work")) { _, _ in
                entered.signal()
                _ = release.wait(timeout: .now() + 30)
                order.withLock { $0.append("delivery returned") }
                return .ok
            }
            // Read before the publish: a publish left unanswered kills the child after 5 s.
            let child = try #require(transport.pluginProcessID)
            // From a thread of its own: the child may deliver before it answers the publish, and
            // the answer is read by the thread the delivery holds (this publish then fails).
            Thread { try? client.publish(Self.message("m1", "slow")) }.start()
            #expect(entered.wait(timeout: .now() + 30) == .success)
            // The child dies while its reader thread here is inside the delivery: the unsubscribe
            // cannot reach it, and used to return at once, freeing the subscriber under the call.
            kill(child, SIGKILL)
            let deadline = Date().addingTimeInterval(15)
            while !Self.hasClosedItsDescriptors(child) && Date() < deadline { usleep(1_000) }
            #expect(Self.hasClosedItsDescriptors(child))
            let unsubscribed = DispatchSemaphore(value: 0)
            Thread {
                try? client.unsubscribe(subscription)
                order.withLock { $0.append("unsubscribe returned") }
                unsubscribed.signal()
            }.start()
            let early = unsubscribed.wait(timeout: .now() + 0.5) == .success
            #expect(!early, "unsubscribe returned while its subscriber was being delivered to")
            release.signal()
            if !early { #expect(unsubscribed.wait(timeout: .now() + 30) == .success) }
            #expect(order.withLock { $0 } == ["delivery returned", "unsubscribe returned"])
        }
    }

    /// Whether process `pid` has exited and let its descriptors go: gone, or a zombie whose
    /// threads have all ended (a killed process's leader shows as a zombie while its other
    /// threads, still holding the descriptors, are being torn down).
    static func hasClosedItsDescriptors(_ pid: Int32) -> Bool {
        guard let directory = opendir("/proc/\(pid)/fd") else { return true }
        defer { closedir(directory) }
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { return false }
        }
        return true
    }

    @Test("the plugin host inherits no descriptors but its socket: not a pipe the host opened without close-on-exec")
    func childInheritsNoDescriptors() async throws {
        try await offPool {
            var ends: [Int32] = [-1, -1]
            #expect(pipe(&ends) == 0)  // deliberately without O_CLOEXEC, as many libraries open them
            defer { close(ends[0]); close(ends[1]) }
            let transport = try Transport(name: "clean", plugin: try BuildProducts.plugin("queue"), isolation: Self.quick)
            defer { transport.close() }
            try transport.client.publish(Self.message("1", "hello"))
            let child = try #require(transport.pluginProcessID)
            // Compared by what the descriptors point at ("pipe:[inode]"), not by EOF on the pipe:
            // programs other tests start at the same moment may inherit it for a while.
            func target(_ path: String) -> String? { try? FileManager.default.destinationOfSymbolicLink(atPath: path) }
            let pipeTarget = try #require(target("/proc/self/fd/\(ends[1])"))
            let childFDs = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(child)/fd")) ?? []
            #expect(Set(childFDs).isSuperset(of: ["0", "1", "2", "3"]))
            let held = childFDs.filter { target("/proc/\(child)/fd/\($0)") == pipeTarget }
            #expect(held.isEmpty, "the plugin host holds the pipe \(pipeTarget) as fd \(held)")
        }
    }

    @Test("process isolation keeps the ABI's semantics: the conformance suite passes in a child", arguments: ["queue", "topic", "retry"])
    func conformanceInChild(_ name: String) async throws {
        let directory = try TemporaryDirectory()
        let plugin = try BuildProducts.plugin(name)
        let inner = plugin.capabilities.contains(.wrapsInner) ? try BuildProducts.plugin("queue") : nil
        let results = try await offPool {
            ConformanceSuite.forPlugin(plugin, inner: inner, durableDirectory: directory.path, processIsolation: Self.quick).run()
        }
        expectBundledConformance(results, "\(name) in a child")
    }

    /// Publishes `count` messages through `decorator` (delayed by 30 ms when `delayed`) and acks
    /// every delivery; returns the ids delivered.
    static func roundTrip(through decorator: Transport, count: Int, delayed: Bool, retryFirst: Bool = false) throws -> [String] {
        let seen = Seen()
        let retried = Guarded<Set<String>>([])
        let client = decorator.client
        let subscription = try client.subscribe(SubscribeOptions(channel: "work", maxInFlight: 64)) { delivery, view in
            let message = view.copy()
            // With retryFirst, every message fails once: the retry decorator must send it back.
            if retryFirst && retried.withLock({ $0.insert(message.id).inserted }) {
                try? client.settle(delivery, .retry(afterNanos: 0, reason: "first attempt fails"))
            } else {
                seen.add(message.id, DeliveryID(message.attempt))
                try? client.settle(delivery, .ack)
            }
            return .ok
        }
        defer { try? client.unsubscribe(subscription) }
        for index in 0..<count {
            var message = Self.message("m\(index)", "job \(index)")
            if delayed { message.deliverAtNanos = WallClock.nowNanos() + 30_000_000 }
            try client.publish(message)
        }
        _ = waitUntil(15) { seen.count >= count }
        if retryFirst { #expect(seen.deliveries.allSatisfy { $0 == 2 }, "attempts on delivery: \(seen.deliveries)") }
        return seen.ids
    }

    @Test(
        "delay over an isolated C plugin and an isolated Swift plugin: calls flow through the proxy, and only the child runs the plugin",
        arguments: ["example-c", "example-swift"])
    func delayOverIsolatedPlugin(_ name: String) async throws {
        try await offPool {
            let inner = try Transport(name: "work", plugin: try BuildProducts.plugin(name), isolation: Self.quick)
            defer { inner.close() }
            let later = try Transport(name: "later", plugin: try BuildProducts.plugin("delay"), inner: inner)
            defer { later.close() }
            let ids = try Self.roundTrip(through: later, count: 20, delayed: true)
            #expect(Set(ids) == Set((0..<20).map { "m\($0)" }))
            // The counters come from the child, over its socket: it stored and delivered every
            // message. (Before the fix the decorator called the plugin's own functions here, with
            // the proxy's instance pointer: the C plugin aborted the host.)
            let stats = try #require(try inner.client.stats())
            #expect(stats.published == 20 && stats.delivered == 20, "\(stats)")
            // And the decorator really depends on the child: killed, it is restarted, and
            // messages flow again through the new one.
            let child = try #require(inner.pluginProcessID)
            kill(child, SIGKILL)
            #expect(waitUntil(15) { inner.pluginProcessID.map { $0 != child } ?? false }, "no new child")
            #expect(Set(try Self.roundTrip(through: later, count: 5, delayed: true)) == Set((0..<5).map { "m\($0)" }))
        }
    }

    @Test("retry over an isolated plugin: failures are retried through the proxy, and the child counts them")
    func retryOverIsolatedPlugin() async throws {
        // (No bundled C plugin keeps attempt histories and dead letters, which retry needs of its
        // inner transport; the C template is a plain queue.)
        try await offPool {
            let inner = try Transport(name: "work", plugin: try BuildProducts.plugin("queue"), isolation: Self.quick)
            defer { inner.close() }
            let retry = try Transport(
                name: "retrying", plugin: try BuildProducts.plugin("retry"),
                configJSON: #"{"max_attempts": 3, "initial_delay": "1ms", "max_delay": "5ms"}"#, inner: inner)
            defer { retry.close() }
            let ids = try Self.roundTrip(through: retry, count: 10, delayed: false, retryFirst: true)
            #expect(Set(ids) == Set((0..<10).map { "m\($0)" }))
            let stats = try #require(try inner.client.stats())
            #expect(stats.published == 10 && stats.retried == 10 && stats.acked == 10, "\(stats)")
        }
    }

    @Test("typed calls over a transport with isolation: process in config")
    func typedCallsOverIsolatedQueue() async throws {
        let directory = try TemporaryDirectory()
        let system = try await makeSystem(
            """
            transports:
              work:
                plugin: queue
                config: { path: "\(directory.file("work.db"))" }
                isolation: { mode: process, call_timeout: 5s, host: "\(BuildProducts.switchyard)" }
            routes:
              "*": { transport: work, deadline: 20s }
            """)
        let ledger = Ledger()
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: ledger) }
        let shop = try $Shop.resolve(id: "shop", using: system)
        #expect(try await shop.place(Order(id: 3, customer: "iso", amount: 1)) == "receipt-3-iso")
        #expect(system.transports?["work"]?.pluginProcessID != nil)
        await system.shutdown()
    }

    @Test("isolation.host that is not an executable is an error naming the key, never another switchyard found instead")
    func configuredHostMissing() async throws {
        let directory = try TemporaryDirectory()
        let error = await #expect(throws: (any Error).self) {
            _ = try await makeSystem(
                """
                transports:
                  work:
                    plugin: queue
                    isolation: { mode: process, host: "\(directory.file("no-such-switchyard"))" }
                routes:
                  "*": { transport: work }
                """)
        }
        let text = error.map { "\($0)" } ?? ""
        #expect(text.contains("isolation.host") && text.contains("no-such-switchyard") && text.contains("not an executable file"), "\(text)")
        // Found by the plugin probe, which runs with this transport's settings: its key, not the probe's.
        #expect(text.contains("transports.work.isolation") && !text.contains("plugins.probe"), "\(text)")
    }

    @Test("a probe that cannot do its work (not a switchyard, or SWITCHYARD_PLUGIN_HOST not an executable) stops the start; nothing loads unprobed")
    func probeThatCannotRun() async throws {
        // /bin/true is an executable that ends before loading any file: an older switchyard
        // without --probe, or a wrapper script, looks the same. The files used to load unprobed.
        let error = await #expect(throws: (any Error).self) {
            _ = try await makeSystem(
                """
                transports:
                  work:
                    plugin: queue
                    isolation: { mode: process, host: /bin/true }
                routes:
                  "*": { transport: work }
                """)
        }
        let text = error.map { "\($0)" } ?? ""
        #expect(text.contains("transports.work.isolation") && text.contains("ended before loading any file") && text.contains("plugins.probe: false"), "\(text)")
        // SWITCHYARD_PLUGIN_HOST set to what is not an executable: an error naming it, never another switchyard in its place.
        let result = try await run(
            BuildProducts.switchyard, ["plugins", "test", "queue", "--process-isolation", "--plugins-dir", BuildProducts.directory],
            environment: ProcessInfo.processInfo.environment.merging(["SWITCHYARD_PLUGIN_HOST": "/nonexistent/switchyard"]) { $1 })
        let said = result.stdout + result.stderr
        #expect(result.status != 0 && said.contains("SWITCHYARD_PLUGIN_HOST '/nonexistent/switchyard' is not an executable file"), "\(said)")
    }

    @Test("plugin files whose entry crashes or hangs sit in the plugins directory: with a transport isolated, a probe process refuses them and the host starts and serves")
    func discoveryProbe() async throws {
        let plugins = try TemporaryDirectory()
        try await CCompiler.fixture("crashes.so", in: plugins.path, defines: ["FIXTURE_CRASH_IN_ENTRY"])
        try await CCompiler.fixture("hangs.so", in: plugins.path, defines: ["FIXTURE_HANG_IN_ENTRY"])
        // 3 s: every good plugin the probe loads (the build directory's too) must load within it
        // on a loaded machine.
        let isolation = "isolation: { mode: process, call_timeout: 3s, host: \"\(BuildProducts.switchyard)\" }"
        // Loading either file here would kill (or hang) this test process.
        let system = try await makeSystem(
            """
            plugins: { directory: "\(plugins.path)" }
            transports:
              work: { plugin: queue, \(isolation) }
            routes:
              "*": { transport: work, deadline: 20s }
            """)
        try system.host("shop", as: $Shop.self) { ShopService(actorSystem: $0, ledger: Ledger()) }
        #expect(try await $Shop.resolve(id: "shop", using: system).place(Order(id: 1, customer: "probe", amount: 1)) == "receipt-1-probe")
        await system.shutdown()
        // A transport that wants one of them hears which files were refused, and why.
        let error = await #expect(throws: ConfigError.self) {
            try await makeSystem(
                """
                plugins: { directory: "\(plugins.path)" }
                transports:
                  bad: { plugin: crashes, \(isolation) }
                routes:
                  "*": { transport: bad }
                """)
        }
        let message = error.map { "\($0)" } ?? ""
        #expect(message.contains("unknown plugin 'crashes'"), "\(message)")
        #expect(message.contains("crashes.so: loading it killed a probe process with signal 11"), "\(message)")
        #expect(message.contains("hangs.so: loading it did not finish within 3000 ms"), "\(message)")
    }

    @Test("plugins.probe: true probes without any isolated transport")
    func probeWithoutIsolation() async throws {
        let plugins = try TemporaryDirectory()
        try await CCompiler.fixture("crashes.so", in: plugins.path, defines: ["FIXTURE_CRASH_IN_ENTRY"])
        let system = try await makeSystem(
            """
            plugins: { directory: "\(plugins.path)", probe: true }
            transports:
              memq: { plugin: queue }
            routes:
              "*": { transport: memq }
            """)
        // Only the good plugins were loaded here; the crashing file was refused by the probe.
        #expect(system.transports?["memq"] != nil)
        await system.shutdown()
    }
}

/// What a subscriber saw: message ids and delivery ids, in order.
final class Seen: @unchecked Sendable {
    private let lock = NSLock()
    private var entries: [(id: String, delivery: DeliveryID)] = []
    func add(_ id: String, _ delivery: DeliveryID) { lock.withLock { entries.append((id, delivery)) } }
    var ids: [String] { lock.withLock { entries.map(\.id) } }
    var deliveries: [DeliveryID] { lock.withLock { entries.map(\.delivery) } }
    var count: Int { lock.withLock { entries.count } }
}
