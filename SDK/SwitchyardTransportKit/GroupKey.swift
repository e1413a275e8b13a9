import SwitchyardABI

/// A subscriber group on a channel, as the broker and the in-memory store key it: hashed fast,
/// since reply channels have long names (see `FastStringKey`).
struct GroupKey: Hashable {
    let channel: String
    let group: String

    func hash(into hasher: inout Hasher) {
        hasher.combine(FastStringKey.hash(channel))
        hasher.combine(FastStringKey.hash(group))
    }
}
