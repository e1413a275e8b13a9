import Foundation
import SwitchyardABI

/// A PostgreSQL server of its own for a test: a cluster in a temporary directory, `pg_ctl start`
/// on a free loopback port, trust authentication for the `postgres` user. PostgreSQL refuses to
/// run as root, so as root the server runs as the `postgres` user (`runuser`). Stopped and
/// removed on deinit.
package final class PostgresServer: @unchecked Sendable {
    package private(set) var port: Int
    package let directory: String
    private var data: String { directory + "/data" }
    private let binaries: String

    /// The directory with `initdb` and `pg_ctl` (Debian's `postgresql` package), newest version
    /// first; nil when the server is not installed.
    package static var binDirectory: String? {
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).sorted { (Int($0) ?? 0) > (Int($1) ?? 0) }
        return versions.map { "\(root)/\($0)/bin" }.first { FileManager.default.isExecutableFile(atPath: $0 + "/initdb") }
    }

    /// libpq's environment for this server (what `PGHOST`, `PGPORT`… a user would set).
    package var environment: [String: String] {
        ["PGHOST": "127.0.0.1", "PGPORT": "\(port)", "PGUSER": "postgres", "PGDATABASE": "postgres"]
    }

    /// Open (established) TCP connections to this server from clients on this machine, read
    /// from `/proc/net/tcp`: a client's socket leaves that state the moment it hangs up, so this
    /// says at once whether a client still holds a connection, where the server's own list of
    /// backends lags while they end (seconds on a loaded machine).
    package var clientConnections: Int {
        // Read to its end: procfs reports no size, and a whole-file read may stop at a page.
        guard let file = FileHandle(forReadingAtPath: "/proc/self/net/tcp") else { return -1 }
        defer { try? file.close() }
        let table = String(decoding: file.readDataToEndOfFile(), as: UTF8.self)
        let remote = String(format: ":%04X", port)
        return table.split(separator: "\n").dropFirst().filter { line in
            let fields = line.split(separator: " ")
            return fields.count > 3 && fields[2].hasSuffix(remote) && fields[3] == "01"
        }.count
    }

    /// A libpq connection string for this server.
    package var conninfo: String { "host=127.0.0.1 port=\(port) user=postgres dbname=postgres connect_timeout=5" }

    /// Creates the cluster (a copy of this process's one `initdb`) and starts the server.
    package init() throws {
        guard let binaries = Self.binDirectory else { throw NATSTestError("PostgreSQL is not installed (apt-get install postgresql)") }
        self.binaries = binaries
        port = try freePort()
        directory = try Self.serverDirectory()
        let template = try Self.template.get()
        let copied = try Self.asServerUser("/bin/cp", ["-a", template, data])
        guard copied.status == 0 else { throw NATSTestError("copying the initdb template failed: \(copied.stderr)") }
        // A port found free can be taken by another test's server before this one binds it
        // (tests run in parallel): a first start that fails tries again on another port.
        for _ in 0..<2 {
            do {
                try start()
                return
            } catch {
                port = try freePort()
            }
        }
        try start()
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// A new temporary directory the server user owns.
    private static func serverDirectory() throws -> String {
        var template = Array("/tmp/switchyard-pg-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw NATSTestError("mkdtemp failed") }
        let directory = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if getuid() == 0 {
            guard let user = getpwnam("postgres") else { throw NATSTestError("no postgres user (apt-get install postgresql)") }
            chown(directory, user.pointee.pw_uid, user.pointee.pw_gid)
        }
        return directory
    }

    /// One `initdb` per test process, copied for each server: `initdb` costs about 1.3 s of CPU
    /// (a copy, 0.5 s), and the half dozen servers tests start together were most of the load on
    /// two cores in a test run's first seconds, where other tests' timing windows run. Removed
    /// when the process exits.
    private static let template: Result<String, NATSTestError> = {
        do {
            guard let binaries = binDirectory else { throw NATSTestError("PostgreSQL is not installed (apt-get install postgresql)") }
            let directory = try serverDirectory()
            templateRoot.withLock { $0 = directory }
            atexit { if let root = PostgresServer.templateRoot.withLock({ $0 }) { try? FileManager.default.removeItem(atPath: root) } }
            let data = directory + "/data"
            let initdb = try asServerUser(binaries + "/initdb", ["-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            guard initdb.status == 0 else { throw NATSTestError("initdb failed: \(initdb.stderr)") }
            return .success(data)
        } catch let error as NATSTestError {
            return .failure(error)
        } catch {
            return .failure(NATSTestError("\(error)"))
        }
    }()
    private static let templateRoot = Guarded<String?>(nil)

    /// Starts the server (again, after ``kill()``) and waits until it accepts connections.
    package func start() throws {
        let options = "-p \(port) -k \(directory) -c listen_addresses=127.0.0.1 -c fsync=off"
        // Spawned directly (``spawnAndWait``), output into a file: the server pg_ctl leaves
        // running would hold a pipe or Process's socket open, and waiting for pg_ctl would never end.
        let output = directory + "/pg_ctl.out"
        let program = binaries + "/pg_ctl"
        let arguments = ["-D", data, "-l", directory + "/server.log", "-o", options, "-w", "-t", "30", "start"]
        let argv = getuid() == 0 ? ["/usr/sbin/runuser", "-u", "postgres", "--", program] + arguments : [program] + arguments
        var status = spawnAndWait(argv, output: output)
        // After a SIGKILL, backends of the old server may still hold its shared memory for a moment
        // ("pre-existing shared memory block is still in use"): try again.
        for _ in 0..<10 where status != 0 {
            usleep(300_000)
            status = spawnAndWait(argv, output: output)
        }
        guard status == 0 else {
            let said = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
            let log = (try? String(contentsOfFile: directory + "/server.log", encoding: .utf8)) ?? ""
            throw NATSTestError("pg_ctl start failed: \(said)\n\(log.suffix(2000))")
        }
        if let pid = postmasterPID { killWhenTestProcessEnds(pid) }
    }

    /// SIGKILLs the server (the postmaster; its backends exit with it), as a crash would.
    package func kill() {
        guard let pid = postmasterPID else { return }
        Glibc.kill(pid, SIGKILL)
        for _ in 0..<100 where Glibc.kill(pid, 0) == 0 { usleep(20_000) }
        // The backends notice the postmaster's death within moments; wait for the port to close.
        for _ in 0..<100 where canConnect(port) { usleep(20_000) }
    }

    /// The running server's process id, from its `postmaster.pid`.
    private var postmasterPID: pid_t? {
        guard let text = try? String(contentsOfFile: data + "/postmaster.pid", encoding: .utf8) else { return nil }
        return text.split(separator: "\n").first.flatMap { pid_t($0) }
    }

    /// Stops the server fast (`pg_ctl stop -m immediate`).
    package func stop() {
        _ = try? Self.asServerUser(binaries + "/pg_ctl", ["-D", data, "-m", "immediate", "-w", "stop"])
    }

    /// Runs a server program, as the postgres user when this process is root.
    private static func asServerUser(_ program: String, _ arguments: [String]) throws -> ProcessResult {
        getuid() == 0 ? try run("/usr/sbin/runuser", ["-u", "postgres", "--", program] + arguments) : try run(program, arguments)
    }
}
