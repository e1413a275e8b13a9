import Foundation
import SwitchyardTestSupport
import Testing

@testable import SwitchyardRuntime

/// What services.md promises about calls made around a drain, in process.
@Suite("Calls around a drain")
struct CallsAroundDrainTests {
    @Test("a call still waiting for its reply when the drain ends fails with .shuttingDown; a call made after it fails at once")
    func callsAroundTheDrain() async throws {
        // Nobody serves SlowWork here: a call waits for its reply until the drain gives up.
        let system = try await makeSystem(
            """
            transports:
              work: { plugin: queue }
            routes:
              SlowWork.*: { transport: work, deadline: 60s }
            """)
        let slow = try $SlowWork.resolve(id: "nobody", using: system)
        let waiting = Task { () -> SwitchyardError.Code? in
            do {
                _ = try await slow.work(1, millis: 0)
                return nil
            } catch {
                return (error as? SwitchyardError)?.code
            }
        }
        #expect(await eventually { system.pending.count == 1 }, "the call is waiting")
        let started = ContinuousClock.now
        await system.shutdown(deadline: .milliseconds(300))
        #expect(ContinuousClock.now - started < .seconds(10), "the drain kept its deadline")
        #expect(await waiting.value == .shuttingDown)
        // After the drain: at once, nothing sent.
        let after = ContinuousClock.now
        await #expect {
            _ = try await slow.work(2, millis: 0)
        } throws: { error in
            // Named as every error names its call, not by the stub's type.
            (error as? SwitchyardError)?.code == .shuttingDown && (error as? SwitchyardError)?.target == "SlowWork.work(_:millis:)"
        }
        // At once: not after the route's deadline (a bound of 1 s was short for a loaded machine).
        #expect(ContinuousClock.now - after < .seconds(5))
    }
}
