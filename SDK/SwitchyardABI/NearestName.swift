/// "Did you mean …?" for a mistyped name: a plugin, a config key, a function, a CLI option.
package enum NearestName {
    /// The name among `names` one or two edits from `name` (the first of the nearest), for a
    /// "did you mean"; nil when none is that near, or `name` is among them.
    package static func nearest(to name: String, among names: [String]) -> String? {
        names.map { (name: $0, distance: editDistance($0, name)) }.filter { (1...2).contains($0.distance) }.min { $0.distance < $1.distance }?.name
    }

    /// A message's " — did you mean 'x'?" for the name ``nearest(to:among:)`` finds, written as
    /// `spell` makes it (`Interface.function` from a function's name); empty when none is near.
    package static func suggestion(for name: String, among names: [String], spelled spell: (String) -> String = { $0 }) -> String {
        nearest(to: name, among: names).map { " — did you mean '\(spell($0))'?" } ?? ""
    }

    /// Levenshtein distance, for short names.
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a.utf8)
        let b = Array(b.utf8)
        guard !a.isEmpty, !b.isEmpty else { return max(a.count, b.count) }
        var previous = Array(0...b.count)
        for i in 1...a.count {
            var current = [i] + Array(repeating: 0, count: b.count)
            for j in 1...b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return previous[b.count]
    }
}
