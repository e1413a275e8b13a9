import Distributed
import SwitchyardRuntime

/// A service shared by the tests and the child processes they start (a protocol's module is part
/// of every call's target, so both sides must use this one).
@Resolvable
public protocol Worker: DistributedActor where ActorSystem == SwitchyardActorSystem {
    /// Sleeps `milliseconds`, then returns `value`.
    distributed func work(_ value: Int, milliseconds: Int) async throws -> Int
}

/// The implementation: counts the calls it finished.
public distributed actor WorkerService: Worker {
    public typealias ActorSystem = SwitchyardActorSystem
    /// Calls finished.
    public private(set) var finished = 0
    private var started = 0
    private let onFirstCall: @Sendable () -> Void

    /// A worker in `actorSystem`; `onFirstCall` runs when the first call starts.
    public init(actorSystem: ActorSystem, onFirstCall: @escaping @Sendable () -> Void = {}) {
        self.actorSystem = actorSystem
        self.onFirstCall = onFirstCall
    }

    public distributed func work(_ value: Int, milliseconds: Int) async throws -> Int {
        started += 1
        if started == 1 { onFirstCall() }
        try await Task.sleep(for: .milliseconds(milliseconds))
        finished += 1
        return value
    }

    /// Calls finished, read from outside the actor.
    public distributed func finishedCount() -> Int { finished }
}
