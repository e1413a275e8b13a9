import SwitchyardConformance
import Testing

/// Checks a bundled plugin's conformance run: every failed check is recorded as an issue, at
/// least one check passed, and the checks whose notes mark a fault an older third-party plugin
/// may still have carry none (a bundled plugin honours `max_in_flight`, never loops on a
/// subscriber that gives back inside deliver, and refuses a settle after the visibility timeout).
package func expectBundledConformance(_ results: [ConformanceResult], _ label: String, sourceLocation: SourceLocation = #_sourceLocation) {
    for result in results where result.failed { Issue.record("\(label): \(result)", sourceLocation: sourceLocation) }
    #expect(results.contains { if case .passed = $0.outcome { true } else { false } }, "\(label): no check passed", sourceLocation: sourceLocation)
    for name in ["prefetch", "give-back-inside-deliver", "visibility-timeout"] {
        guard let check = results.first(where: { $0.name == name }), let note = check.note else { continue }
        Issue.record("\(label): \(name) passed with a note a bundled plugin must not get: \(note)", sourceLocation: sourceLocation)
    }
}
