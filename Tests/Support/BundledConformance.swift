import SwitchyardConformance
import Testing

/// Checks a bundled plugin's conformance run: every failed check is recorded as an issue, at
/// least one check passed, and the checks whose notes mark a fault an older third-party plugin
/// may still have carry none (a bundled plugin honours `max_in_flight`, never loops on a
/// subscriber that gives back inside deliver, and refuses a settle after the visibility timeout).
///
/// And the checks behind reliability.md's at-least-once promise ran and passed rather than
/// skipped themselves: a check skips when the plugin lacks the optional function or capability it
/// tests, so a bundled plugin that lost `extend`, `drain` or a capability bit would otherwise
/// still pass.
/// The example plugins (`example` true) are templates with the `queue` capability alone: for them
/// only the checks that need no more must run. Every other bundled plugin reports its channels
/// (ABI 1.9), except those that say `reportsChannels: false` (RabbitMQ).
package func expectBundledConformance(
    _ results: [ConformanceResult], _ label: String, example: Bool = false, reportsChannels: Bool = true,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    for result in results where result.failed { Issue.record("\(label): \(result)", sourceLocation: sourceLocation) }
    let mustRun =
        example
        ? ["unsubscribe-releases", "drain-releases", "competing-consumers"]
        : ["visibility-timeout", "extend-leases", "unsubscribe-releases", "drain-releases", "competing-consumers"]
            + (reportsChannels ? ["channel-stats"] : [])
    for name in mustRun {
        guard let check = results.first(where: { $0.name == name }) else { continue }  // a run of chosen checks
        if case .skipped(let why) = check.outcome {
            Issue.record("\(label): \(name) was skipped (\(why)); every bundled plugin must run it", sourceLocation: sourceLocation)
        }
    }
    #expect(results.contains { if case .passed = $0.outcome { true } else { false } }, "\(label): no check passed", sourceLocation: sourceLocation)
    for name in ["prefetch", "give-back-inside-deliver", "visibility-timeout"] {
        guard let check = results.first(where: { $0.name == name }), let note = check.note else { continue }
        Issue.record("\(label): \(name) passed with a note a bundled plugin must not get: \(note)", sourceLocation: sourceLocation)
    }
}
