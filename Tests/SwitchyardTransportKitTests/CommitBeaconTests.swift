import Foundation
import SwitchyardABI
import SwitchyardTestSupport
import Synchronization
import Testing

@testable import SwitchyardTransportKit

@Suite("Commit beacon: processes sharing a SQLite store wake each other after each commit")
struct CommitBeaconTests {
    /// Counts the times a beacon woke its owner.
    final class Wakes: Sendable {
        let count = Atomic<Int>(0)
        var handler: @Sendable () -> Void { { self.count.add(1, ordering: .relaxed) } }
        var value: Int { count.load(ordering: .relaxed) }
    }

    /// Holds `beacon`'s turn on a thread of its own (a turn is a thread's: taken and given back on
    /// the same thread) until the returned semaphore is signalled.
    static func holdTurn(_ beacon: CommitBeacon) -> DispatchSemaphore {
        let taken = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        Thread {
            beacon.willWrite()
            taken.signal()
            release.wait()
            beacon.didWrite(committed: true)
        }.start()
        taken.wait()
        return release
    }

    /// A plain SQLite connection on a new store at `path`, with a table to write: a writer that
    /// announces nothing (an older Switchyard, or one without a slot).
    static func writerWithoutSlot(_ path: String) throws -> SQLiteDatabase {
        let writer = try SQLiteDatabase(path: path)
        try writer.configureDurable()
        try writer.execute("CREATE TABLE t (x INTEGER)")
        return writer
    }

    /// Seconds `beacon` waited for its turn (taken and given back on a pool thread).
    static func secondsToTurn(_ beacon: CommitBeacon) async throws -> Double {
        try await offPool { () -> Double in
            let start = Date()
            beacon.willWrite()
            beacon.didWrite(committed: false)
            return Date().timeIntervalSince(start)
        }
    }

    /// Whether `beacon` heard another slot's commit within `seconds`, as the dispatcher hears it:
    /// its descriptor readable, then ``CommitBeacon/takeAnnouncements()``.
    static func hearsAnnouncement(_ beacon: CommitBeacon, within seconds: Int32) -> Bool {
        let deadline = monotonicNanoseconds() + Int64(seconds) * 1_000_000_000
        while monotonicNanoseconds() < deadline {
            var descriptor = pollfd(fd: beacon.announcements, events: Int16(POLLIN), revents: 0)
            if poll(&descriptor, 1, 100) > 0, beacon.takeAnnouncements() { return true }
        }
        return false
    }

    @Test("a commit announced in one slot wakes the other beacons on the file, never the one that announced it")
    func announcedCommitsWakeOthers() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("store.db")
        let first = CommitBeacon(databasePath: path) {}
        let second = CommitBeacon(databasePath: path) {}
        defer { first.stop(); second.stop() }
        // Two beacons of one process hold different slots: the locks belong to open files, not to
        // processes, so two stores in one process wake each other too.
        #expect(first.slot != nil && second.slot != nil && first.slot != second.slot)
        #expect(first.claimAnnouncements() >= 0 && second.claimAnnouncements() >= 0)
        for round in 1...3 {
            first.willWrite()
            first.didWrite(committed: true)
            #expect(Self.hearsAnnouncement(second, within: 5), "round \(round)")
        }
        #expect(!Self.hearsAnnouncement(first, within: 1), "the first heard its own commits")
        second.willWrite()
        second.didWrite(committed: true)
        #expect(Self.hearsAnnouncement(first, within: 5))
        #expect(!Self.hearsAnnouncement(second, within: 1), "the second heard its own commit")
    }

    /// A store whose owner does not wait on the descriptor (a plugin's own wrapper around the
    /// SDK's store, say) still hears other processes at once, through its change handler.
    @Test("until the owner claims the descriptor, another slot's commit calls the change handler")
    func unclaimedAnnouncementsCallTheHandler() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("store.db")
        let wakes = Wakes()
        let listener = CommitBeacon(databasePath: path, changed: wakes.handler)
        let announcer = CommitBeacon(databasePath: path) {}
        defer { listener.stop(); announcer.stop() }
        announcer.willWrite()
        announcer.didWrite(committed: true)
        #expect(await eventually(30) { wakes.value >= 1 })
        // Claimed, they are the owner's to take, and no longer reach the handler.
        _ = listener.claimAnnouncements()
        let before = wakes.value
        announcer.willWrite()
        announcer.didWrite(committed: true)
        #expect(Self.hearsAnnouncement(listener, within: 5))
        #expect(wakes.value == before)
    }

    @Test("writers queue for the write lock: a second writer waits until the first one's transaction ended")
    func writersQueue() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("store.db")
        // Turns that do not time out here (an hour): under a sanitizer on a loaded machine the 200 ms below
        // once took more than the default 10 s, and the second writer went on without its turn.
        let first = CommitBeacon(databasePath: path, turnTimeoutNanos: 3_600_000_000_000) {}
        let second = CommitBeacon(databasePath: path, turnTimeoutNanos: 3_600_000_000_000) {}
        defer { first.stop(); second.stop() }
        let releaseFirst = Self.holdTurn(first)
        let secondWrites = Atomic<Bool>(false)
        let done = DispatchSemaphore(value: 0)
        Thread {
            second.willWrite()
            secondWrites.store(true, ordering: .releasing)
            second.didWrite(committed: false)
            done.signal()
        }.start()
        try await Task.sleep(for: .milliseconds(200))
        let early = secondWrites.load(ordering: .acquiring)
        #expect(!early, "the second wrote while the first held its turn")
        releaseFirst.signal()
        #expect(try await offPool { done.wait(timeout: .now() + 10) } == .success)
        let wrote = secondWrites.load(ordering: .acquiring)
        #expect(wrote)
    }

    @Test("a writer that does not let go (a stopped process) is waited for only until the timeout; one that dies hands its turn on")
    func turnsAreBounded() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("store.db")
        let stuck = CommitBeacon(databasePath: path, turnTimeoutNanos: 300_000_000) {}
        let waiting = CommitBeacon(databasePath: path, turnTimeoutNanos: 300_000_000) {}
        defer { stuck.stop(); waiting.stop() }
        let releaseStuck = Self.holdTurn(stuck)
        let waited = try await Self.secondsToTurn(waiting)
        #expect(waited >= 0.25 && waited < 5, "waited \(waited) s for a turn held for ever")
        releaseStuck.signal()
        // A thread that ends holding its turn (a process killed mid-write): the next one gets it
        // at once, not after the timeout.
        let dying = CommitBeacon(databasePath: path, turnTimeoutNanos: 10_000_000_000) {}
        let next = CommitBeacon(databasePath: path, turnTimeoutNanos: 10_000_000_000) {}
        defer { dying.stop(); next.stop() }
        let ended = DispatchSemaphore(value: 0)
        let thread = Thread {
            dying.willWrite()
            ended.signal()
        }
        thread.start()
        ended.wait()
        try await Task.sleep(for: .milliseconds(100))  // the thread has ended by now
        let handedOn = try await Self.secondsToTurn(next)
        #expect(handedOn < 2, "waited \(handedOn) s for the turn of a thread that ended")
    }

    @Test("with every slot taken a beacon still starts, without a slot; a slot comes free when its beacon stops")
    func slotsRunOut() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("store.db")
        let holder = CommitBeacon(databasePath: path, slots: 2) {}
        var leaving: CommitBeacon? = CommitBeacon(databasePath: path, slots: 2) {}
        let late = CommitBeacon(databasePath: path, slots: 2) {}
        #expect(Set([holder.slot, leaving?.slot]) == [0, 1])
        #expect(late.slot == nil)
        #expect(late.problem?.contains("all 2 slots") == true, "\(late.problem ?? "no problem reported")")
        #expect(holder.problem == nil)
        late.willWrite()
        late.didWrite(committed: true)  // nowhere to announce it: nothing happens
        late.stop()
        let freed = leaving?.slot
        leaving?.stop()
        leaving = nil
        // The slot's lock goes with the file, closed once the watcher thread ended (≤ 200 ms) and
        // nothing holds the beacon any more.
        #expect(
            await eventually(30) {
                let next = CommitBeacon(databasePath: path, slots: 2) {}
                next.stop()
                return next.slot == freed
            })
        holder.stop()
    }

    @Test("a commit nobody announces (a writer without a slot, or an older Switchyard) wakes the beacon all the same")
    func unannouncedCommitsWakeThroughTheWAL() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("store.db")
        let writer = try Self.writerWithoutSlot(path)
        let wakes = Wakes()
        let beacon = CommitBeacon(databasePath: path, changed: wakes.handler)
        defer { beacon.stop() }
        try writer.execute("INSERT INTO t VALUES (1)")  // writes the WAL; no counter moves
        #expect(await eventually(30) { wakes.value >= 1 })
    }

    /// Which process wrote the WAL cannot be told: an announcement (here this process's own
    /// commits, one every 2 ms) must not be taken to explain a write by a writer without a slot.
    @Test("an unannounced commit wakes the beacon even while announced commits keep coming")
    func unannouncedCommitsAmongAnnouncedOnes() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("store.db")
        let writer = try Self.writerWithoutSlot(path)
        let wakes = Wakes()
        let beacon = CommitBeacon(databasePath: path, changed: wakes.handler)
        defer { beacon.stop() }
        try writer.execute("INSERT INTO t VALUES (1)")
        for _ in 0..<100 {
            beacon.willWrite()
            beacon.didWrite(committed: true)
            usleep(2_000)
            if wakes.value >= 1 { break }
        }
        #expect(await eventually(30) { wakes.value >= 1 })
    }
}
