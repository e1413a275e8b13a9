import Foundation
import Synchronization
import Testing

@testable import SwitchyardRuntime

/// Where a call that waits for storage runs (``CallCost``): on its own thread when it is the
/// only one, handed off otherwise.
@Suite("calls that wait for storage")
struct StorageCallsTests {
    /// `measureIfAlone` until it runs: other suites' durable calls in this process may hold the
    /// process's one inline waiter for a moment.
    private func runsAlone(_ cost: CallCost, _ value: Int) -> Int? {
        for _ in 0..<500 {
            if let ran = cost.measureIfAlone({ value }) { return ran }
            usleep(1_000)
        }
        return nil
    }

    @Test("a lone call runs on its own thread; while another waits elsewhere through the same meter, it is handed off")
    func aloneOrHandedOff() {
        let cost = CallCost()
        #expect(runsAlone(cost, 1) == 1)
        cost.handedOffCallBegan()
        #expect(cost.measureIfAlone({ 2 }) == nil, "another call of this transport waits for storage")
        cost.handedOffCallEnded()
        #expect(runsAlone(cost, 3) == 3)
    }

    @Test("a transport with a link in a child process never waits on a task thread")
    func isolatedNeverInline() {
        let cost = CallCost(mayWaitInline: false)
        #expect(cost.measureIfAlone({ 1 }) == nil)
    }

    @Test("work that throws leaves the meter alone again")
    func throwingWork() {
        struct Failed: Error {}
        let cost = CallCost()
        var threw = false
        for _ in 0..<500 where !threw {
            do {
                _ = try cost.measureIfAlone { () throws -> Int in throw Failed() }
                usleep(1_000)  // not run: another suite held the inline waiter
            } catch {
                threw = true
            }
        }
        #expect(threw)
        #expect(runsAlone(cost, 1) == 1)
    }

    @Test("work handed to the storage threads counts until it is done")
    func handedOffWorkCounts() {
        let cost = CallCost()
        let started = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        cost.perform {
            started.signal()
            release.wait()
        }
        started.wait()
        #expect(cost.measureIfAlone({ 1 }) == nil, "the performed work still waits")
        release.signal()
        #expect(runsAlone(cost, 2) == 2, "the performed work ended")
    }

    @Test("one task thread of the process at a time waits for storage itself, whatever the transport")
    func oneThreadAtATime() {
        let first = CallCost()
        let second = CallCost()
        let inside = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let done = DispatchSemaphore(value: 0)
        let ran = Mutex(false)
        Thread {
            // Retried as `runsAlone` does: another suite may hold the inline waiter a moment.
            for _ in 0..<500 {
                let took = first.measureIfAlone { () -> Bool in
                    inside.signal()
                    release.wait()
                    return true
                }
                if took != nil {
                    ran.withLock { $0 = true }
                    break
                }
                usleep(1_000)
            }
            done.signal()
        }.start()
        #expect(inside.wait(timeout: .now() + 10) == .success)
        #expect(second.measureIfAlone({ 1 }) == nil, "a thread already waits for storage inline")
        release.signal()
        done.wait()
        #expect(ran.withLock { $0 })
        #expect(runsAlone(second, 2) == 2)
    }
}
