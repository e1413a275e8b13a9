import Foundation

/// A real `rabbitmq-server` (Debian's package) on loopback, with its node directory, logs and
/// Erlang cookie in a temporary directory, for the RabbitMQ tests. It runs in a process group of
/// its own under a small shell that kills the group when the test process goes away (a crashed
/// test run leaves no broker behind); `kill()` SIGKILLs the group, as in a crash. (Erlang's
/// `epmd`, which the broker starts when none runs, is a system daemon and stays.)
package final class RabbitMQServer: @unchecked Sendable {
    package let port: Int
    package let directory: String
    private let distributionPort: Int
    private var process: Process?
    private let lock = NSLock()
    private let ownsDirectory: TemporaryDirectory?

    /// The broker's start script (it starts Erlang's epmd too, when none runs).
    package static let executable = "/usr/lib/rabbitmq/bin/rabbitmq-server"

    /// Whether rabbitmq-server is installed (`apt-get install rabbitmq-server`).
    package static var isInstalled: Bool { FileManager.default.isExecutableFile(atPath: executable) }

    /// One broker for the tests of a process that do not stop it (started on first use: a broker
    /// takes seconds to start), killed when the process exits.
    package static let shared: Result<RabbitMQServer, Error> = {
        let result = Result { try RabbitMQServer() }
        atexit { if case .success(let server) = RabbitMQServer.shared { server.kill() } }
        return result
    }()

    /// A broker on a free port, started and accepting connections.
    package init() throws {
        let directory = try TemporaryDirectory()
        ownsDirectory = directory
        self.directory = directory.path
        port = try freePort()
        distributionPort = try freePort()
        try start()
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/`: the default user, which RabbitMQ admits from loopback.
    package var url: String { "amqp://guest:guest@127.0.0.1:\(port)/" }

    /// Starts (or restarts) the broker with the same port and node directory, and waits until it
    /// accepts AMQP connections (up to 90 s: the first start on a loaded machine is slow).
    package func start() throws {
        guard Self.isInstalled else { throw NATSTestError("rabbitmq-server is not installed (apt-get install rabbitmq-server)") }
        try "[].".write(toFile: directory + "/enabled_plugins", atomically: true, encoding: .utf8)
        try "".write(toFile: directory + "/rabbitmq.conf", atomically: true, encoding: .utf8)
        var environment = ProcessInfo.processInfo.environment
        let settings = [
            "HOME": directory, "RABBITMQ_NODENAME": "switchyard-test-\(port)@localhost", "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": "\(port)", "RABBITMQ_DIST_PORT": "\(distributionPort)", "RABBITMQ_MNESIA_BASE": directory + "/mnesia",
            "RABBITMQ_LOG_BASE": directory + "/log", "RABBITMQ_ENABLED_PLUGINS_FILE": directory + "/enabled_plugins",
            "RABBITMQ_CONFIG_FILE": directory + "/rabbitmq", "RABBITMQ_PID_FILE": directory + "/rabbitmq.pid",
        ]
        for (key, value) in settings { environment[key] = value }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        // Foundation starts the shell as the leader of a process group, which the broker joins;
        // the shell watches the test process and kills the group when the test process is gone.
        process.arguments = [
            "-c", "\(Self.executable) > \"$1/server.log\" 2>&1 & while kill -0 $2 2>/dev/null; do sleep 1; done; kill -9 0",
            "sh", directory, "\(getpid())",
        ]
        process.environment = environment
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        lock.withLock { self.process = process }
        let deadline = Date().addingTimeInterval(90)
        while Date() < deadline {
            if canConnect(port) { return }
            if !process.isRunning { break }
            usleep(100_000)
        }
        let log = (try? String(contentsOfFile: directory + "/server.log", encoding: .utf8)) ?? ""
        throw NATSTestError("rabbitmq-server did not start listening on \(port); its log ends:\n\(log.suffix(2000))")
    }

    /// Kills the broker's whole process group at once (SIGKILL): nothing is flushed, as in a crash.
    package func kill() {
        guard let process = lock.withLock({ self.process }) else { return }
        let group = process.processIdentifier
        Foundation.kill(-group, SIGKILL)
        // Reaped here (Foundation's waitUntilExit can spin on a child it never sees exit).
        let reapDeadline = Date().addingTimeInterval(10)
        while waitpid(group, nil, WNOHANG) == 0 && Date() < reapDeadline { usleep(10_000) }
        // The Erlang VM is gone when its port is free again.
        let deadline = Date().addingTimeInterval(10)
        while canConnect(port) && Date() < deadline { usleep(20_000) }
        lock.withLock { self.process = nil }
    }

    deinit { kill() }
}
