import Foundation
import SwitchyardTestSupport
import Testing

@Suite("Crash soak")
struct SoakTests {
    /// The numbers `switchyard soak --json` prints.
    struct Report: Decodable {
        var published: Int
        var acknowledged: Int
        var handled: Int
        var lost: Int
        var duplicate_effects: Int
        var stuck: Int
        var passed: Bool
        var kills: [String: Int]
    }

    @Test("switchyard soak: producer and consumers SIGKILLed at random; nothing acknowledged is lost, no effect happens twice with the inbox")
    func shortSoak() async throws {
        let result = try await run(BuildProducts.switchyard, ["soak", "--cycles", "4", "--messages", "300", "--json", "--seed", "42"])
        #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)")
        let report = try JSONDecoder().decode(Report.self, from: Data(result.stdout.utf8))
        #expect(report.lost == 0)
        #expect(report.duplicate_effects == 0)
        #expect(report.stuck == 0)
        #expect(report.acknowledged > 0 && report.acknowledged <= report.published)
        #expect(report.handled >= report.acknowledged)
        #expect(report.kills.values.reduce(0, +) == 4)
        #expect(report.passed)
    }
}
