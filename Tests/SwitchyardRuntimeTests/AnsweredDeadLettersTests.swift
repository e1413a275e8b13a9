import Foundation
import Testing

@testable import SwitchyardRuntime

@Suite("Dead letters the runtime answered itself")
struct AnsweredDeadLettersTests {
    @Test("an id stays known after its settlement returned, for the grace period only: a transport's late report of it is not answered twice")
    func lateReportWithinGrace() async throws {
        let answered = AnsweredDeadLetters(graceNanos: 200_000_000)
        #expect(!answered.contains("a", group: ""))
        answered.begin("a", group: "")
        #expect(answered.contains("a", group: ""))
        answered.end("a", group: "")
        #expect(answered.contains("a", group: ""), "a report read by another thread just after settle returned")
        try await Task.sleep(for: .milliseconds(400))
        #expect(!answered.contains("a", group: ""), "remembered past its grace")
    }

    @Test("on a topic each subscriber group's copy is its own: one group's dead letter does not hide another's report of the same envelope")
    func groupsApart() {
        let answered = AnsweredDeadLetters()
        answered.begin("e", group: "audit")
        answered.end("e", group: "audit")
        #expect(answered.contains("e", group: "audit"))
        #expect(!answered.contains("e", group: "email") && !answered.contains("e", group: ""))
    }

    @Test("ids past their grace are swept as more come: the set does not grow with every dead letter")
    func sweptAsMoreCome() {
        let answered = AnsweredDeadLetters(graceNanos: 0)
        for index in 0..<10_000 {
            answered.begin("id-\(index)", group: "")
            answered.end("id-\(index)", group: "")
        }
        #expect(answered.count <= 128, "\(answered.count) ids kept")
    }
}
