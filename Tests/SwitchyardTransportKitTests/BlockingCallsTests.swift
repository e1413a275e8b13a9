import Foundation
import SwitchyardABI
import SwitchyardTestSupport
import Testing

@testable import SwitchyardTransportKit

/// Work that blocks, off a caller that must not: at most so many threads, in arrival order.
@Suite("Blocking calls")
struct BlockingCallsTests {
    @Test("twenty blocking pieces of work on at most three threads: all run, never more than three at once")
    func bounded() throws {
        let calls = BlockingCalls(name: "test-blocking", maxThreads: 3)
        let state = Guarded<(running: Int, most: Int, ran: Set<Int>, threads: Set<UInt>)>((0, 0, [], []))
        for index in 0..<20 {
            calls.run {
                state.withLock {
                    $0.running += 1
                    $0.most = max($0.most, $0.running)
                    $0.ran.insert(index)
                    $0.threads.insert(UInt(bitPattern: Int(bitPattern: pthread_self())))
                }
                usleep(5_000)
                state.withLock { $0.running -= 1 }
            }
        }
        calls.waitUntilIdle()  // blocks this thread: the work is short
        let seen = state.withLock { $0 }
        #expect(seen.ran == Set(0..<20))
        #expect(seen.most == 3, "at most three at once, and three when work piles up: \(seen.most)")
        #expect(seen.threads.count <= 3, "\(seen.threads.count) threads")
    }

    @Test("on one thread, work runs in the order it came")
    func inOrder() throws {
        let calls = BlockingCalls(name: "test-order", maxThreads: 1)
        let ran = Guarded<[Int]>([])
        for index in 0..<50 { calls.run { ran.withLock { $0.append(index) } } }
        calls.waitUntilIdle()  // blocks this thread: the work is short
        #expect(ran.withLock { $0 } == Array(0..<50))
    }
}
