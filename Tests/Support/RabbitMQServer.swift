import Foundation

/// A real `rabbitmq-server` (Debian's package) on loopback, with its node directory, logs and
/// Erlang cookie in a temporary directory, for the RabbitMQ tests. It runs in a process group of
/// its own under a small shell that kills the group when the test process goes away (a crashed
/// test run leaves no broker behind); `kill()` SIGKILLs the group, as in a crash. (Erlang's
/// `epmd`, which the broker starts when none runs, is a system daemon and stays.)
package final class RabbitMQServer: @unchecked Sendable {
    package let port: Int
    /// A TLS listener's port (`amqps://localhost:PORT/`): its certificate is for `localhost` and
    /// 127.0.0.1, signed by the test CA in ``caFile``.
    package let tlsPort: Int
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
        tlsPort = try freePort()
        distributionPort = try freePort()
        try makeCertificates()
        try start()
    }

    /// The test CA's certificate (PEM), which signed the broker's.
    package var caFile: String { directory + "/ca.pem" }

    /// A CA and a server certificate for localhost / 127.0.0.1, with the openssl command
    /// (a dependency of Debian's rabbitmq-server).
    private func makeCertificates() throws {
        try "subjectAltName=DNS:localhost,IP:127.0.0.1\n".write(toFile: directory + "/san.cnf", atomically: true, encoding: .utf8)
        let steps = [
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=switchyard-test-ca"],
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"],
            [
                "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2",
                "-extfile", "san.cnf",
            ],
        ]
        for arguments in steps {
            let openssl = Process()
            openssl.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
            openssl.arguments = arguments
            openssl.currentDirectoryURL = URL(fileURLWithPath: directory)
            openssl.standardOutput = FileHandle.nullDevice
            openssl.standardError = FileHandle.nullDevice
            try openssl.run()
            openssl.waitUntilExit()
            guard openssl.terminationStatus == 0 else { throw NATSTestError("openssl \(arguments.prefix(2).joined(separator: " ")) failed") }
        }
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/`: the default user, which RabbitMQ admits from loopback.
    package var url: String { "amqp://guest:guest@127.0.0.1:\(port)/" }

    /// Starts (or restarts) the broker with the same port and node directory, and waits until it
    /// accepts AMQP connections (up to 90 s: the first start on a loaded machine is slow).
    package func start() throws {
        guard Self.isInstalled else { throw NATSTestError("rabbitmq-server is not installed (apt-get install rabbitmq-server)") }
        try "[].".write(toFile: directory + "/enabled_plugins", atomically: true, encoding: .utf8)
        try """
        listeners.ssl.default = 127.0.0.1:\(tlsPort)
        ssl_options.cacertfile = \(directory)/ca.pem
        ssl_options.certfile = \(directory)/server.pem
        ssl_options.keyfile = \(directory)/server.key
        ssl_options.verify = verify_none
        ssl_options.fail_if_no_peer_cert = false

        """.write(toFile: directory + "/rabbitmq.conf", atomically: true, encoding: .utf8)
        var environment = ProcessInfo.processInfo.environment
        let settings = [
            "HOME": directory, "RABBITMQ_NODENAME": nodeName, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
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

    /// The broker's node name (for `rabbitmqctl -n`).
    package var nodeName: String { "switchyard-test-\(port)@localhost" }

    /// The delay queues named `prefix…` that still hold messages, with the count of quorum-queue
    /// dead-letter workers running on the node — the evidence that RabbitMQ itself did not
    /// dead-letter messages whose TTL ran out (each quorum queue with at-least-once dead-lettering
    /// needs its own worker, started when the queue gets a leader); nil when none holds any.
    /// Meant for after a run whose delays (milliseconds) are long over.
    package func delayQueuesHoldingMessages(prefix: String) -> String? {
        guard let queues = try? control(["list_queues", "--quiet", "--no-table-headers", "name", "messages"]), queues.status == 0 else { return nil }
        let holding = queues.output.split(separator: "\n").compactMap { line -> String? in
            let fields = line.split(whereSeparator: { $0 == "\t" || $0 == " " })
            guard fields.count == 2, fields[0].hasPrefix(prefix), let count = Int(fields[1]), count > 0 else { return nil }
            return "\(fields[0]) holds \(count)"
        }
        guard !holding.isEmpty else { return nil }
        let workers = (try? control(["eval", "supervisor:count_children(rabbit_fifo_dlx_sup)."]))?.output ?? "?"
        return holding.joined(separator: ", ") + "; dead-letter workers: " + workers.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Runs `rabbitmqctl ARGUMENTS` against this broker (its cookie is in the node directory) and
    /// returns its exit status and output.
    package func control(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/lib/rabbitmq/bin/rabbitmqctl")
        process.arguments = ["-n", nodeName] + arguments
        var environment = ProcessInfo.processInfo.environment
        environment["HOME"] = directory
        process.environment = environment
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, output)
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
