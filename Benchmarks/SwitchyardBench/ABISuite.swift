import CSwitchyard
import SwitchyardABI
import SwitchyardHost
import SwitchyardLoader
import Synchronization

/// `abi`: the cost of publishing across the plugin ABI (C and Swift plugins) against a direct
/// call through a Swift protocol existential doing the same work (validate the message, count it).
struct ABISuite: BenchSuite {
    let name = "abi"
    let summary = "publish through the C ABI (C and Swift plugins) vs a direct Swift existential call"

    func run(_ context: BenchContext) throws -> [BenchResult] {
        let catalog = PluginLoader().discover(in: context.pluginDirectories.map { SearchDirectory(path: $0, source: .commandLine) })
        guard let cPlugin = catalog.plugin(named: "bench-null-c"), let swiftPlugin = catalog.plugin(named: "bench-null-swift") else {
            throw BenchUnavailable("the bench-null-c and bench-null-swift plugins were not found in \(context.pluginDirectories)")
        }
        let cTransport = try Transport(name: "bench-c", plugin: cPlugin)
        let swiftTransport = try Transport(name: "bench-swift", plugin: swiftPlugin)
        defer {
            cTransport.close()
            swiftTransport.close()
        }
        let iterations = context.quick ? 2_000_000 : 20_000_000
        let message = Message(id: "bench-00000001", channel: "bench", body: [UInt8](repeating: 0xAB, count: 64))
        let direct = makeDirectPublisher()

        return try message.withCMessage { (pointer) throws -> [BenchResult] in
            context.progress("abi: direct existential call")
            let directNs = Measure.nanosPerOperation(rounds: context.rounds, iterations: iterations) { n in
                for _ in 0..<n { direct.publish(pointer) }
            }
            func throughABI(_ transport: Transport) throws -> Double {
                let publish = transport.plugin.descriptor.pointee.publish!
                let instance = transport.client.instance
                var error = sy_error()
                guard publish(instance, pointer, &error) == SY_OK else {
                    throw BenchFailure("\(transport.plugin.name) refused the bench message: \(TransportError(status: error.code, error: error))")
                }
                return Measure.nanosPerOperation(rounds: context.rounds, iterations: iterations) { n in
                    for _ in 0..<n { _ = publish(instance, pointer, &error) }
                }
            }
            // Context: the bare cost of an existential call that only counts (no validation).
            let bare = makeBarePublisher()
            let bareNs = Measure.nanosPerOperation(rounds: context.rounds, iterations: iterations) { n in
                for _ in 0..<n { bare.publish(pointer) }
            }
            context.progress("abi: C plugin")
            let cNs = try throughABI(cTransport)
            context.progress("abi: Swift plugin")
            let swiftNs = try throughABI(swiftTransport)
            let baseline = ("direct_existential_ns", directNs)
            return [
                BenchResult(suite: name, metric: "bare_existential_ns", value: bareNs, unit: "ns"),
                BenchResult(suite: name, metric: "direct_existential_ns", value: directNs, unit: "ns"),
                BenchResult(suite: name, metric: "publish_c_plugin_ns", value: cNs, unit: "ns", baseline: baseline),
                BenchResult(suite: name, metric: "publish_swift_plugin_ns", value: swiftNs, unit: "ns", baseline: baseline),
            ]
        }
    }
}

/// The baseline: what a plugin's publish does, called directly through a Swift existential.
protocol DirectPublisher: AnyObject {
    func publish(_ message: UnsafePointer<sy_message>)
}

final class CountingPublisher: DirectPublisher {
    let published = Atomic<UInt64>(0)
    func publish(_ message: UnsafePointer<sy_message>) {
        // The same work the Swift plugin's publish does: the SDK validates, the plugin counts.
        if (try? MessageView(validating: message)) != nil { published.add(1, ordering: .relaxed) }
    }
}

/// Counts without validating: the floor of a Swift existential call.
final class BarePublisher: DirectPublisher {
    let published = Atomic<UInt64>(0)
    func publish(_ message: UnsafePointer<sy_message>) { published.add(1, ordering: .relaxed) }
}

@inline(never)
func makeBarePublisher() -> any DirectPublisher {
    BarePublisher()
}

/// Returns the publisher as an existential the optimizer cannot see through.
@inline(never)
func makeDirectPublisher() -> any DirectPublisher {
    CountingPublisher()
}
