import FlyingFox
import FlyingSocks
import Foundation
import Logging
import Prometheus
import ServiceLifecycle
import SwitchyardConfig
import SwitchyardRuntime
import Synchronization

/// The operator's HTTP endpoint for one actor system: Prometheus metrics, health probes, a JSON
/// API over ``SystemOverview``, and an HTML overview (docs/operations.md).
///
/// | path | what |
/// |---|---|
/// | `GET /metrics` | every swift-metrics metric, Prometheus text format (``AdminMetrics``) |
/// | `GET /health/live` | 200 while the system has not stopped |
/// | `GET /health/ready` | 200 while it takes work; 503 while draining and once stopped |
/// | `GET /api` | the endpoints |
/// | `GET /api/overview` | state, plugins, transports with counters, routes, services |
/// | `GET /api/plugins`, `/api/transports`, `/api/routes`, `/api/services` | one part of it |
/// | `GET /api/channels` | each transport's depth, waiting and in-flight per channel and group |
/// | `GET /` | the same as a page |
/// | `GET /channels` | the per-channel counts as a page |
///
/// It listens where the config's `admin:` section says (loopback, port 9464 by default). With a
/// token, every request must carry it (`Authorization: Bearer TOKEN`, or HTTP basic auth with the
/// token as password, for a browser); listening beyond loopback requires one. Anything that would
/// change state requires one in any case.
///
/// It is a swift-service-lifecycle `Service`: put it *before* the system in a `ServiceGroup`
/// (`[admin, system]`), so that on SIGTERM the system drains first, with the endpoint still
/// answering (ready: 503), and the endpoint stops last.
public final class AdminServer: Service, Sendable {
    /// The system it reports on.
    public let system: SwitchyardActorSystem
    /// Where it listens, and its token.
    public let settings: SwitchyardConfig.AdminSection
    private let server: HTTPServer
    private let logger: Logger
    /// Set once it is told to stop: the server library then reports the cancelled accept loop
    /// and connections as errors, which are not.
    private let stopping: StopFlag

    /// An endpoint for `system` on `settings` (by default the config's `admin:` section, else
    /// loopback port 9464); without a token there, `SWITCHYARD_ADMIN_TOKEN` from the environment.
    /// Throws when the address is not loopback and there is no token.
    public init(
        system: SwitchyardActorSystem, settings: SwitchyardConfig.AdminSection? = nil,
        logger: Logger = Logger(label: "switchyard.admin")
    ) throws {
        var settings = settings ?? system.config.admin ?? SwitchyardConfig.AdminSection()
        if settings.token == nil, let token = ProcessInfo.processInfo.environment[SwitchyardConfig.AdminSection.tokenVariable], !token.isEmpty {
            settings.token = token
        }
        if let problem = settings.servingProblem() { throw AdminError(problem.description) }
        guard let port = UInt16(exactly: settings.port) else { throw AdminError("port \(settings.port) is out of range") }
        let handler = AdminHandler(system: system, token: settings.token)
        let stopping = StopFlag()
        let bridge = SwiftLogBridge(logger: logger, stopping: stopping)
        do {
            server =
                settings.host.contains(":")
                ? HTTPServer(address: try sockaddr_in6.inet6(ip6: settings.host, port: port), timeout: 15, logger: bridge, handler: handler)
                : HTTPServer(address: try sockaddr_in.inet(ip4: settings.host, port: port), timeout: 15, logger: bridge, handler: handler)
        } catch {
            throw AdminError("cannot listen on \(settings.host): not an IP address (\(error))")
        }
        self.system = system
        self.settings = settings
        self.logger = logger
        self.stopping = stopping
    }

    /// Serves until the task is cancelled or graceful shutdown begins. Throws when it cannot
    /// listen (the port is taken, say), with the address in the message.
    public func run() async throws {
        // Says where it listens once it does (with port 0, the port picked), at notice level.
        let announce = Task { [self] in
            let port = try await waitUntilListening(timeout: 30)
            logger.notice("admin endpoint listening", metadata: ["url": "\(settings.url(port: port))"])
        }
        defer { announce.cancel() }
        do {
            try await cancelWhenGracefulShutdown {
                try await withTaskCancellationHandler {
                    try await self.server.run()
                } onCancel: {
                    self.stopping.set()
                }
            }
        } catch {
            // Told to stop: the server library ends its accept loop with CancellationError or a
            // "disconnected" socket error, depending on timing. Neither is a failure then.
            if stopping.isSet || error is CancellationError { return }
            if "\(error)".contains("errno: \(EADDRINUSE)") { throw Self.portInUse(settings) }
            throw AdminError("cannot serve the admin endpoint on \(settings.host):\(settings.port): \(error)")
        }
    }

    /// Says whether the endpoint could listen where `settings` say, before anything starts: a
    /// host checks it ahead of opening its transports, so that a port in use (or an address it
    /// cannot bind: not this machine's, a port below 1024 without the privilege) stops it having
    /// started nothing. (Another process may still take the port in the moment between; ``run()``
    /// then throws the same error.) Port 0 is not checked. Throws ``AdminError`` naming the
    /// address and what to do.
    public static func checkCanListen(_ settings: SwitchyardConfig.AdminSection) throws {
        guard settings.port != 0, let port = UInt16(exactly: settings.port) else { return }
        let ipv6 = settings.host.contains(":")
        let fd = socket(ipv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return }  // no socket to try with: run() reports what stops it
        defer { close(fd) }
        // As the server binds: an address whose last connections linger in TIME_WAIT is free.
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        func bindTo<Address>(_ address: Address) -> Int32 {
            withUnsafePointer(to: address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<Address>.size)) } }
        }
        let bound: Int32
        if ipv6 {
            var address = sockaddr_in6()
            (address.sin6_family, address.sin6_port) = (sa_family_t(AF_INET6), port.bigEndian)
            guard inet_pton(AF_INET6, settings.host, &address.sin6_addr) == 1 else { return }
            bound = bindTo(address)
        } else {
            var address = sockaddr_in()
            (address.sin_family, address.sin_port) = (sa_family_t(AF_INET), port.bigEndian)
            guard inet_pton(AF_INET, settings.host, &address.sin_addr) == 1 else { return }
            bound = bindTo(address)
        }
        guard bound != 0 else { return }
        let failure = errno
        if failure == EADDRINUSE { throw portInUse(settings) }
        // An address this machine does not have, a port below 1024 without the privilege.
        let remedy =
            switch failure {
            case EADDRNOTAVAIL:
                "; it is not an address of this machine: listen on one it has (ip -brief address lists them), \(ipv6 ? "::" : "0.0.0.0") for every interface, or \(ipv6 ? "::1" : "127.0.0.1") for this machine alone"
            case EACCES where settings.port < 1024:
                "; a port below 1024 needs the privilege to bind it: pick one above 1023"
            default: ""
            }
        throw AdminError(
            "cannot serve the admin endpoint on \(settings.host):\(settings.port): \(String(cString: strerror(failure)))\(remedy) (admin.listen in the config; --admin for switchyard demo --serve and switchyard console)"
        )
    }

    private static func portInUse(_ settings: SwitchyardConfig.AdminSection) -> AdminError {
        AdminError(
            "cannot serve the admin endpoint on \(settings.host):\(settings.port): the port is in use (another Switchyard process with the same admin address?); stop that process, or pick another port (admin.listen in the config; --admin for switchyard demo --serve and switchyard console; port 0 picks a free one)"
        )
    }

    /// Waits until it listens, and returns the port (the one picked, when the config says 0).
    public func waitUntilListening(timeout: TimeInterval = 10) async throws -> Int {
        try await server.waitUntilListening(timeout: timeout)
        switch await server.listeningAddress {
        case .ip4(_, let port), .ip6(_, let port): return Int(port)
        default: return settings.port
        }
    }
}

/// Why the admin endpoint could not start.
public struct AdminError: Error, CustomStringConvertible, Sendable {
    /// For a person, with what to do.
    public let description: String
    init(_ description: String) { self.description = description }
}

/// FlyingFox's log lines, into swift-log: its connection chatter at debug, and its errors at
/// debug too once the endpoint is stopping (a cancelled accept loop is reported as one).
struct SwiftLogBridge: FlyingSocks.Logging {
    let logger: Logger
    /// Shared with ``AdminServer``: it is stopping.
    let stopping: StopFlag
    private var quiet: Bool { stopping.isSet }
    func logDebug(_ debug: @autoclosure () -> String) { logger.debug("\(debug())") }
    func logInfo(_ info: @autoclosure () -> String) { logger.debug("\(info())") }
    func logWarning(_ warning: @autoclosure () -> String) { quiet ? logger.debug("\(warning())") : logger.warning("\(warning())") }
    func logError(_ error: @autoclosure () -> String) { quiet ? logger.debug("\(error())") : logger.error("\(error())") }
    /// FlyingFox's only critical line is the error that ends its server (a port taken, say),
    /// which ``AdminServer/run()`` throws, with the address and what to do: said once, there.
    func logCritical(_ critical: @autoclosure () -> String) { logger.debug("\(critical())") }
}

/// A flag set once, read from any thread.
final class StopFlag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .relaxed) }
    var isSet: Bool { value.load(ordering: .relaxed) }
}
