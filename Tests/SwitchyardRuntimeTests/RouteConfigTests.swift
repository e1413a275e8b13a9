import Foundation
import SwitchyardABI
import SwitchyardConfig
import SwitchyardTestSupport
import SwitchyardWire
import Testing

@testable import SwitchyardHost
@testable import SwitchyardRuntime

@Suite("Route configuration")
struct RouteConfigTests {
    static let transports = """
        transports:
          q: { plugin: queue }
          t: { plugin: topic }
          c: { plugin: example-c }
          later: { plugin: delay, inner: q }
          retrying: { plugin: retry, inner: q }

        """

    @Test("a pin under a name no plugin has is a warning naming its key and the nearest name: it checks nothing")
    func misspelledPin() async throws {
        let pins = "plugins:\n  pins: { queu: \(String(repeating: "a", count: 64)) }\n"
        // Routed, so the process opens its transports (and reads the pins).
        let config = try SwitchyardConfig.parse(yaml: pins + Self.transports + "routes:\n  Orders.*: { transport: q }\n", baseDirectory: "/")
        let log = CapturedLog()
        let system = try await offPool { try SwitchyardActorSystem(config: config, pluginDirectories: [BuildProducts.directory], logger: log.logger()) }
        let warning = log.all.first { $0.contains("a pin names no plugin found here") }
        #expect(warning?.contains("key=plugins.pins.queu") == true, "\(log.all)")
        #expect(warning?.contains("Did you mean 'queue'?") == true, "\(log.all)")
        await system.shutdown()
    }

    @Test("routes parse with their defaults")
    func parses() throws {
        let config = try SwitchyardConfig.parse(
            yaml: Self.transports + """
                routes:
                  Orders.place: { transport: q, deadline: 2s, retry: { max_attempts: 3 }, ordering: customer }
                  Orders.*: { transport: direct }
                  "*": { transport: later, mode: fire-and-forget, delay: 5s, inbox: { window: 1m } }
                """, baseDirectory: "/")
        #expect(config.routes.map(\.pattern) == ["Orders.place", "Orders.*", "*"])
        #expect(config.routes[0].deadlineNanos == 2_000_000_000)
        #expect(config.routes[0].orderingArgument == "customer")
        #expect(config.routes[1].deadlineNanos == 30_000_000_000)
        #expect(config.routes[2].mode == .fireAndForget)
        #expect(config.routes[2].inbox?.windowNanos == 60_000_000_000)
        // configuration.md's defaults: 16 workers, a prefetch of twice that.
        #expect(config.routes[0].concurrency == 16)
        #expect(config.routes[0].effectivePrefetch == 32)
    }

    @Test(
        "each kind of route error names the key and line",
        arguments: [
            ("routes:\n  Orders.place: { transport: nowhere }\n", "routes.Orders.place.transport", "no transport named 'nowhere'"),
            ("routes:\n  Orders.place: { mode: fire-and-forget }\n", "routes.Orders.place.transport", "is required"),
            ("routes:\n  Orders.place: { transport: q, mode: sometimes }\n", "routes.Orders.place.mode", "'sometimes' is not a mode (expected one of"),
            // A near miss is named: a mode written in snake case, a transport's name mistyped.
            (
                "routes:\n  Orders.place: { transport: q, mode: fire_and_forget }\n", "routes.Orders.place.mode",
                "'fire_and_forget' is not a mode — did you mean 'fire-and-forget'?"
            ),
            ("routes:\n  Orders.place: { transport: qq }\n", "routes.Orders.place.transport", "no transport named 'qq' — did you mean 'q'?"),
            ("routes:\n  Orders.place: { transport: q, deadline: soon }\n", "routes.Orders.place.deadline", "is not a duration"),
            ("routes:\n  Orders.place: { transport: q, deadline: 0 }\n", "routes.Orders.place.deadline", "more than 0"),
            (
                "routes:\n  Orders.place: { transport: q, deadline: -5s }\n", "routes.Orders.place.deadline",
                "'-5s' is negative: a duration must not be (write a positive one, such as 5s)"
            ),
            ("routes:\n  Orders.place: { transport: q, retry: true }\n", "routes.Orders.place.retry", "expected a retry policy, a mapping like"),
            ("routes:\n  Orders.place: { transport: q, deadline: 5 }\n", "routes.Orders.place.deadline", "'5' has no unit: write it with one, like \"5s\""),
            ("routes:\n  Orders.place: { transport: q, delya: 1s }\n", "routes.Orders.place.delya", "unknown key"),
            ("routes:\n  Orders..place: { transport: q }\n", "routes.Orders..place", "route patterns are"),
            ("routes:\n  Orders.place: { transport: q, encoding: xml }\n", "routes.Orders.place.encoding", "compact or json"),
            ("routes:\n  Orders.place: { transport: q, inbox: { window: forever } }\n", "routes.Orders.place.inbox.window", "is not a duration"),
            ("transports:\n  direct: { plugin: queue }\n", "transports.direct", "reserved"),
            ("routes:\n  Orders.place: { transport: q, max_deliveries: 0 }\n", "routes.Orders.place.max_deliveries", "1"),
            ("routes:\n  Orders.place: { transport: q, prefetch: 0 }\n", "routes.Orders.place.prefetch", "1"),
            ("routes:\n  Orders.place: { transport: q, concurrency: 8, prefetch: 4 }\n", "routes.Orders.place.prefetch", "under the route's concurrency (8)"),
            ("routes:\n  Orders.place: { transport: q, lease_renewal: 31d }\n", "routes.Orders.place.lease_renewal", "not a duration"),
            ("routes:\n  Orders.place: { transport: q, lease_renewal: 800h }\n", "routes.Orders.place.lease_renewal", "at most 30 days"),
        ])
    func parseErrors(_ yaml: String, _ key: String, _ message: String) {
        let text = yaml.hasPrefix("routes") ? Self.transports + yaml : yaml
        let error = #expect(throws: ConfigError.self) { try SwitchyardConfig.parse(yaml: text, baseDirectory: "/") }
        #expect(error?.key == key)
        #expect(error?.line != nil)
        #expect(error?.message.contains(message) == true, "\(error?.message ?? "")")
    }

    @Test(
        "routes are checked against what the loaded plugins can do, before anything starts",
        arguments: [
            ("Orders.place: { transport: q, delay: 1s }", "routes.Orders.place.delay", "cannot: it lacks the delay capability (put a transport of plugin 'delay'"),
            // Not "put a retry transport in front": the retry plugin refuses an inner transport without retry.
            ("Orders.place: { transport: c, retry: { max_attempts: 2 } }", "routes.Orders.place.retry", "lacks the retry capability (route through a transport that redelivers"),
            ("Orders.place: { transport: c, ordering: customer }", "routes.Orders.place.ordering", "lacks the ordered capability"),
            // Two retry policies would both apply: the route's and the plugin's.
            (
                "Orders.place: { transport: retrying, retry: { max_attempts: 2 } }", "routes.Orders.place.retry",
                "retries failed calls with its own policy (transport 'retrying', plugin retry): keep one"
            ),
            ("Orders.place: { transport: t }", "routes.Orders.place.transport", "set mode: fire-and-forget"),
            ("Orders.place: { transport: q, mode: fire-and-forget, deadline: 1s }", "routes.Orders.place.deadline", "set the call's own deadline (CallOptions(deadline:)"),
            ("Orders.place: { transport: direct, delay: 1s }", "routes.Orders.place.delay", "needs a transport"),
            ("Orders.place: { transport: direct, max_deliveries: 5 }", "routes.Orders.place.max_deliveries", "needs a transport"),
            ("Orders.place: { transport: direct, prefetch: 50 }", "routes.Orders.place.prefetch", "needs a transport"),
            ("Orders.place: { transport: direct, concurrency: 4 }", "routes.Orders.place.concurrency", "needs a transport"),
            ("Orders.place: { transport: direct, lease_renewal: 1m }", "routes.Orders.place.lease_renewal", "needs a transport"),
            ("Orders.place: { transport: q, retry: { max_attempts: 0 } }", "routes.Orders.place.retry.max_attempts", "must be at least 1"),
            // The transport counts retries as deliveries: the last retry would read as a crash.
            (
                "Orders.place: { transport: q, max_deliveries: 3, retry: { max_attempts: 5 } }", "routes.Orders.place.max_deliveries",
                "(3) is under retry.max_attempts (5): the transport counts every delivery, retries included"
            ),
            // The same over a retry transport: its max_attempts is 5 unless set.
            (
                "Orders.place: { transport: retrying, max_deliveries: 4 }", "routes.Orders.place.max_deliveries",
                "(4) is under max_attempts (5) of transport 'retrying' (plugin retry), which retries this route's calls: the transport counts every delivery"
            ),
            ("Orders.place: { transport: q, retry: { jitter: half } }", "routes.Orders.place.retry.jitter", "must be \"full\" or \"none\""),
            ("Orders.place: { transport: q, retry: { attempts: 3 } }", "routes.Orders.place.retry.attempts", "unknown key"),
            ("Orders.place: { transport: q, retry: { initial_delay: fast } }", "routes.Orders.place.retry.initial_delay", "not a duration"),
        ])
    func capabilityErrors(_ route: String, _ key: String, _ message: String) async throws {
        let config = try SwitchyardConfig.parse(yaml: Self.transports + "routes:\n  " + route + "\n", baseDirectory: "/")
        let error = await #expect(throws: ConfigError.self) {
            _ = try await offPool { try SwitchyardActorSystem(config: config, pluginDirectories: [BuildProducts.directory]) }
        }
        #expect(error?.key == key)
        #expect(error?.line == 8)
        #expect(error?.message.contains(message) == true, "\(error?.message ?? "")")
    }

    @Test(
        "max_deliveries under a retry transport's own max_attempts is refused, read from that transport's config, also with a decorator in front; at least max_attempts starts",
        arguments: [
            ("{ transport: r8, max_deliveries: 7 }", "(7) is under max_attempts (8) of transport 'r8' (plugin retry)"),
            ("{ transport: later8, max_deliveries: 4 }", "(4) is under max_attempts (8) of transport 'r8' (plugin retry)"),
            ("{ transport: r8, max_deliveries: 8 }", nil),
            ("{ transport: later8, max_deliveries: 13 }", nil),
        ] as [(String, String?)])
    func retryTransportMaxDeliveries(_ route: String, _ refusal: String?) async throws {
        let yaml = """
            transports:
              q: { plugin: queue }
              r8: { plugin: retry, inner: q, config: { max_attempts: 8 } }
              later8: { plugin: delay, inner: r8 }
            routes:
              Orders.place: \(route)

            """
        let config = try SwitchyardConfig.parse(yaml: yaml, baseDirectory: "/")
        guard let refusal else {
            let system = try await offPool { try SwitchyardActorSystem(config: config, pluginDirectories: [BuildProducts.directory]) }
            #expect(system.routes.routes.count == 1)
            return
        }
        let error = await #expect(throws: ConfigError.self) {
            _ = try await offPool { try SwitchyardActorSystem(config: config, pluginDirectories: [BuildProducts.directory]) }
        }
        #expect(error?.key == "routes.Orders.place.max_deliveries" && error?.line == 6, "\(String(describing: error))")
        #expect(error?.message.contains(refusal) == true, "\(error?.message ?? "")")
    }

    @Test("a delay route on a delay transport is accepted")
    func delayAccepted() async throws {
        let config = try SwitchyardConfig.parse(yaml: Self.transports + "routes:\n  Orders.place: { transport: later, delay: 1s }\n", baseDirectory: "/")
        let system = try await offPool { try SwitchyardActorSystem(config: config, pluginDirectories: [BuildProducts.directory]) }
        #expect(system.routes.routes.count == 1)
    }

    @Test("a durable path in a directory that does not exist names the key, its line and the directory")
    func missingDirectory() async throws {
        let yaml = "transports:\n  work:\n    plugin: queue\n    config:\n      capacity: 10\n      path: /nonexistent-\(getpid())/work.db\nroutes:\n  '*': { transport: work }\n"
        let config = try SwitchyardConfig.parse(yaml: yaml, baseDirectory: "/")
        let error = await #expect(throws: ConfigError.self) {
            _ = try await offPool { try SwitchyardActorSystem(config: config, pluginDirectories: [BuildProducts.directory]) }
        }
        #expect(error?.key == "transports.work.config.path")
        #expect(error?.line == 6)
        #expect(error?.message.contains("the directory /nonexistent-\(getpid()) does not exist") == true, "\(error?.message ?? "")")
    }

    @Test("an unknown plugin fails the start, naming the transport")
    func unknownPlugin() async throws {
        let config = try SwitchyardConfig.parse(yaml: "transports:\n  x: { plugin: nosuch }\nroutes:\n  '*': { transport: x }\n", baseDirectory: "/")
        let error = await #expect(throws: ConfigError.self) {
            _ = try await offPool { try SwitchyardActorSystem(config: config, pluginDirectories: [BuildProducts.directory]) }
        }
        #expect(error?.key == "transports.x")
        #expect(error?.message.contains("unknown plugin 'nosuch'") == true)
        // Where it looked, and how to get the bundled plugins.
        #expect(error?.message.contains("searched, in order: \(BuildProducts.directory) (--plugins-dir)") == true, "\(error?.message ?? "")")
        #expect(error?.message.contains("/usr/lib/switchyard/plugins (system-wide)") == true)
        // Not one of the bundled plugins: no build command for a product that does not exist.
        #expect(error?.message.contains("switchyard-nosuch") == false, "\(error?.message ?? "")")
        #expect(error?.message.contains("the bundled plugins are queue, topic") == true)
    }

    @Test("an error found when the system starts (not when the file is parsed) names the file too")
    func startErrorNamesTheFile() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("app.yaml")
        try "transports:\n  x: { plugin: nosuch }\nroutes:\n  '*': { transport: x }\n".write(toFile: path, atomically: true, encoding: .utf8)
        let error = await #expect(throws: ConfigError.self) {
            _ = try await offPool { try SwitchyardActorSystem(configPath: path, pluginDirectories: [BuildProducts.directory]) }
        }
        #expect(error?.description.hasPrefix("\(path):line 2: 'transports.x'") == true, "\(error?.description ?? "")")
    }

    @Test("a plugin name one or two letters off a known one is answered with the name meant, not a build command")
    func misspelledPlugin() async throws {
        let config = try SwitchyardConfig.parse(yaml: "transports:\n  x: { plugin: queues }\nroutes:\n  '*': { transport: x }\n", baseDirectory: "/")
        let error = await #expect(throws: ConfigError.self) {
            _ = try await offPool { try SwitchyardActorSystem(config: config, pluginDirectories: [BuildProducts.directory]) }
        }
        #expect(error?.message.contains("Did you mean 'queue'?") == true, "\(error?.message ?? "")")
        #expect(error?.message.contains("switchyard-queues") == false)
        #expect(TransportSet.unknownPluginAdvice("nats", found: []).hasPrefix("It is a product of the switchyard package"))
        #expect(TransportSet.unknownPluginAdvice("nats", found: []).contains("swift build --product switchyard-nats"))
        #expect(TransportSet.unknownPluginAdvice("nats", found: []).contains("SWITCHYARD_PLUGINS_PATH or plugins.directory"))
        #expect(TransportSet.unknownPluginAdvice("rabitmq", found: []).contains("Did you mean 'rabbitmq'? (build it with 'swift build --product switchyard-rabbitmq'"))
    }

    @Test("environment variables override values; an unset or empty one is an error with its line")
    func environment() throws {
        let yaml = "transports:\n  q:\n    plugin: queue\n    config: { path: \"${DATA}/q.db\", capacity: ${CAP:-10} }\n"
        let config = try SwitchyardConfig.parse(yaml: yaml, baseDirectory: "/", environment: ["DATA": "/var/x"])
        #expect(config.transports[0].configJSON == #"{"capacity":10,"path":"\/var\/x\/q.db"}"#)
        let error = #expect(throws: ConfigError.self) { try SwitchyardConfig.parse(yaml: yaml, baseDirectory: "/", environment: [:]) }
        #expect(error?.line == 4)
        #expect(error?.message.contains("DATA is not set") == true)
        let empty = #expect(throws: ConfigError.self) { try SwitchyardConfig.parse(yaml: yaml, baseDirectory: "/", environment: ["DATA": ""]) }
        #expect(empty?.message.contains("DATA is empty") == true, "\(empty?.message ?? "")")
        #expect(try EnvironmentExpansion.expand("a: ${DATA:-}", environment: ["DATA": ""]) == "a: ")
        let escaped = try EnvironmentExpansion.expand("a: $${HOME}", environment: [:])
        #expect(escaped == "a: ${HOME}")
        // A reference ends on its line: a default spanning two lines would shift every later
        // error's line (as a value with a line break, refused too).
        let spanning = #expect(throws: ConfigError.self) { try EnvironmentExpansion.expand("a: 1\nb: ${X:-a\nc}\n", environment: [:]) }
        #expect(spanning?.line == 2 && spanning?.message.contains("without a closing '}' on its line") == true, "\(String(describing: spanning))")
        let broken = #expect(throws: ConfigError.self) { try EnvironmentExpansion.expand("a: 1\nb: ${X}\n", environment: ["X": "1\n2"]) }
        #expect(broken?.line == 2 && broken?.message.contains("contains a line break") == true)
        // Comments are expanded too (the whole file is, before YAML reads it).
        let inComment = #expect(throws: ConfigError.self) { try EnvironmentExpansion.expand("a: 1\n# token: ${NOPE_Z}\n", environment: [:]) }
        #expect(inComment?.line == 2 && inComment?.message.contains("NOPE_Z is not set") == true)
    }
}
