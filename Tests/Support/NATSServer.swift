import Foundation
import Testing

/// A real `nats-server -js` on loopback, with its own store directory, for the NATS tests.
/// Stopped (SIGKILL, then reaped) when released, or a second after the test process ends.
package final class NATSServer: @unchecked Sendable {
    package let name: String
    package let port: Int
    package let clusterPort: Int?
    package let storeDirectory: String
    private let routes: [Int]
    private let extraArguments: [String]
    private var process: Process?
    private let lock = NSLock()

    /// A server on a free port (or `port`), optionally a cluster member with `clusterPort` and the
    /// other members' cluster ports as `routes`; `extraArguments` go to nats-server as they are
    /// (`--auth TOKEN`, `--tls …`).
    package init(
        name: String = "n1", port: Int? = nil, clusterPort: Int? = nil, routes: [Int] = [], storeDirectory: String, extraArguments: [String] = []
    ) throws {
        self.name = name
        self.port = try port ?? freePort()
        self.clusterPort = clusterPort
        self.routes = routes
        self.extraArguments = extraArguments
        self.storeDirectory = storeDirectory
        try start()
    }

    package var url: String { "nats://127.0.0.1:\(port)" }

    package static var executable: String? {
        ["/usr/bin/nats-server", "/usr/local/bin/nats-server", "/usr/sbin/nats-server"].first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Starts (or restarts) the server with the same port and store, and waits until it accepts
    /// connections.
    package func start() throws {
        guard let executable = Self.executable else { throw NATSTestError("nats-server is not installed (apt-get install nats-server)") }
        var arguments = ["-js", "-a", "127.0.0.1", "-p", "\(port)", "-sd", storeDirectory, "--server_name", name]
        if let clusterPort {
            arguments += [
                "--cluster_name", "switchyard-test", "--cluster", "nats://127.0.0.1:\(clusterPort)",
                "--routes", routes.map { "nats://127.0.0.1:\($0)" }.joined(separator: ","),
            ]
        }
        arguments += extraArguments
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        killWhenTestProcessEnds(process.processIdentifier)
        lock.withLock { self.process = process }
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if canConnect(port) { return }
            usleep(20_000)
        }
        throw NATSTestError("nats-server \(name) did not start listening on \(port)")
    }

    /// Kills the server at once (SIGKILL): nothing is flushed, as in a crash.
    package func kill() {
        guard let process = lock.withLock({ self.process }) else { return }
        Foundation.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        lock.withLock { self.process = nil }
    }

    deinit { kill() }
}

/// Three JetStream servers clustered on loopback.
package final class NATSCluster: @unchecked Sendable {
    package let servers: [NATSServer]
    private let directory: TemporaryDirectory

    package init() throws {
        let directory = try TemporaryDirectory()
        self.directory = directory
        let clusterPorts = try (0..<3).map { _ in try freePort() }
        servers = try (0..<3).map { index in
            try NATSServer(
                name: "n\(index + 1)", clusterPort: clusterPorts[index], routes: clusterPorts,
                storeDirectory: directory.file("n\(index + 1)"))
        }
    }

    package var urls: [String] { servers.map(\.url) }
}

package struct NATSTestError: Error, CustomStringConvertible {
    package let description: String
    package init(_ description: String) { self.description = description }
}

/// A TCP port nobody listens on now.
package func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw NATSTestError("socket failed") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard bound else { throw NATSTestError("bind failed") }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// Whether something accepts TCP connections on loopback `port`.
package func canConnect(_ port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
}
