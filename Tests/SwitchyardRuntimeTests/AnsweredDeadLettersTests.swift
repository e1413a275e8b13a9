import Foundation
import Testing

@testable import SwitchyardRuntime

@Suite("Dead letters the runtime answered itself")
struct AnsweredDeadLettersTests {
    @Test("an id stays known after its settlement returned, for the grace period only: a transport's late report of it is not answered twice")
    func lateReportWithinGrace() async throws {
        let answered = AnsweredDeadLetters(graceNanos: 200_000_000)
        #expect(!answered.contains("a"))
        answered.begin("a")
        #expect(answered.contains("a"))
        answered.end("a")
        #expect(answered.contains("a"), "a report read by another thread just after settle returned")
        try await Task.sleep(for: .milliseconds(400))
        #expect(!answered.contains("a"), "remembered past its grace")
    }

    @Test("ids past their grace are swept as more come: the set does not grow with every dead letter")
    func sweptAsMoreCome() {
        let answered = AnsweredDeadLetters(graceNanos: 0)
        for index in 0..<10_000 {
            answered.begin("id-\(index)")
            answered.end("id-\(index)")
        }
        #expect(answered.count <= 128, "\(answered.count) ids kept")
    }
}
