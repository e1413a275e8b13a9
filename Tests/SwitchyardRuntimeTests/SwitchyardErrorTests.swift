import Foundation
import SwitchyardTestSupport
import SwitchyardWire
import Testing

@testable import SwitchyardRuntime

@Suite("SwitchyardError")
struct SwitchyardErrorTests {
    @Test("a code matches in a catch clause; the kind's details are properties")
    func matching() throws {
        do {
            throw SwitchyardError.deadLettered(target: "Shop.pay(_:)", attempts: 3, reason: "declined")
        } catch SwitchyardError.Code.timeout {
            Issue.record("matched the wrong code")
        } catch SwitchyardError.Code.deadLettered {
            // expected
        }
        let error = SwitchyardError.transport(target: "Shop.pay(_:)", transport: "work", reason: "full")
        #expect(error.code == .transport && error.transport == "work" && error.attempts == nil)
        #expect(!(SwitchyardError.Code.timeout ~= error))
        #expect(!(SwitchyardError.Code.transport ~= CocoaError(.fileNoSuchFile)))
    }

    @Test("descriptions say what happened, for each code")
    func descriptions() {
        #expect("\(SwitchyardError.timeout(target: "A.b()", deadline: .milliseconds(200)))".hasPrefix("A.b(): no reply within 0.2 seconds (is a process hosting it running"))
        #expect("\(SwitchyardError.remote(type: "App.Declined", message: "no funds"))" == "remote App.Declined: no funds")
        #expect("\(SwitchyardError.deadLettered(target: "A.b()", attempts: 3, reason: "x"))" == "A.b(): dead-lettered after 3 attempt(s): x")
        #expect("\(SwitchyardError.rejected(target: "A.b()", reason: "x"))" == "A.b(): rejected by the receiver: x")
        #expect("\(SwitchyardError.routing(target: "A.b()", reason: "x"))" == "A.b(): x")
        #expect("\(SwitchyardError.transport(target: "A.b()", transport: "work", reason: "full"))" == "A.b(): transport error: work: full")
        #expect("\(SwitchyardError.shuttingDown(target: "A.b()"))" == "A.b(): the actor system is shutting down")
        #expect("\(SwitchyardError.limitExceeded(target: "A.b()", reason: "x"))" == "A.b(): x")
    }

    @Test("it crosses the wire as itself, and a code a newer sender knows still decodes")
    func codable() throws {
        let error = SwitchyardError.deadLettered(target: "A.b()", attempts: 2, reason: "x")
        #expect(try JSONDecoder().decode(SwitchyardError.self, from: JSONEncoder().encode(error)) == error)
        #expect(try CompactDecoder().decode(SwitchyardError.self, from: CompactEncoder().encode(error)) == error)
        let newer = Data(#"{"code":"quotaExceeded","target":"A.b()","reason":"over quota"}"#.utf8)
        let decoded = try JSONDecoder().decode(SwitchyardError.self, from: newer)
        #expect(decoded.code.description == "quotaExceeded")
        #expect("\(decoded)" == "A.b(): over quota")
    }
}
