import Foundation
import SwitchyardNative
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
        // Every kind of call, not only the stub's: by readable name (it reached the closed
        // transport, a transport error) and native (on a direct route it still ran).
        await #expect {
            _ = try await system.callReadable("SlowWork.work", actor: "nobody", argumentsJSON: ["2", "0"])
        } throws: { error in
            (error as? SwitchyardError)?.code == .shuttingDown && (error as? SwitchyardError)?.target == "SlowWork.work"
        }
        await #expect {
            _ = try await system.callNative("Math.add", [.int(1), .int(2)])
        } throws: { error in
            (error as? SwitchyardError)?.code == .shuttingDown && (error as? SwitchyardError)?.target == "Math.add"
        }
        #expect(throws: SwitchyardError.self) { try system.hostNative() }
    }

    /// A call that passed the stopped check just before the drain ended comes to wait after
    /// failAll: it failed at once as a time-out (with the route's full deadline in its reason).
    @Test("a call that comes to wait after the drain failed every waiting call fails as they did, not as a time-out")
    func waitAfterFailAll() async throws {
        let pending = PendingCalls()
        pending.failAll { _ in SwitchyardError.shuttingDown(target: "") }
        var sent = false
        await #expect {
            _ = try await pending.wait(
                id: "late", deadline: .now + .seconds(30), timeout: { SwitchyardError.timeout(target: "A.b()", deadline: .seconds(30)) }, send: { sent = true })
        } throws: { error in
            (error as? SwitchyardError)?.code == .shuttingDown
        }
        #expect(!sent, "nothing is sent for a call that cannot wait for its reply")
    }
}
