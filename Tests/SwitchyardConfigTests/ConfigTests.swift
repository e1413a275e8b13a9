import Foundation
import SwitchyardConfig
import SwitchyardTestSupport
import Testing

@Suite("Config file validation")
struct ConfigTests {
    @Test("a valid plugins section parses, relative directories resolve against the file")
    func valid() throws {
        let config = try SwitchyardConfig.parse(
            yaml: """
                plugins:
                  directory: ./plugins
                  require_pins: true
                  pins:
                    queue: \(String(repeating: "A1", count: 32))
                """, baseDirectory: "/etc/switchyard")
        #expect(config.plugins.directory == "/etc/switchyard/plugins")
        #expect(config.plugins.requirePins)
        #expect(config.plugins.pins["queue"] == String(repeating: "a1", count: 32))
    }

    @Test("a key given twice in one mapping is an error with its line, not several lines of parser context")
    func duplicateKey() {
        let error = #expect(throws: ConfigError.self) {
            try SwitchyardConfig.parse(yaml: "plugins:\n  probe: true\n  directory: x\n  probe: false\n", baseDirectory: "/")
        }
        // The repeat's line, not the first one's.
        #expect(error?.line == 4, "\(String(describing: error))")
        #expect(
            error?.message
                == "the key 'probe' appears more than once in the same mapping (first on line 2): keep one of each (for a section, merge its entries into one)")
    }

    @Test("a tab in the indentation is named as one")
    func tabIndentation() {
        let error = #expect(throws: ConfigError.self) {
            try SwitchyardConfig.parse(yaml: "plugins:\n\tprobe: true\n", baseDirectory: "/")
        }
        #expect(error?.line == 2)
        #expect(error?.message.contains("a tab in the indentation: YAML indents with spaces only") == true, "\(error?.message ?? "")")
    }

    @Test("a directory, a missing file and an unreadable one are refused with what to do; a pipe is read, its relative paths against the current directory")
    func filesThatAreNotPlain() throws {
        let directory = try TemporaryDirectory()
        let asDirectory = #expect(throws: ConfigError.self) { try SwitchyardConfig.load(path: directory.path) }
        #expect(asDirectory?.description.contains("it is a directory: pass the config file itself (e.g. \(directory.path)/switchyard.yaml)") == true)
        let missing = #expect(throws: ConfigError.self) { try SwitchyardConfig.load(path: directory.file("nope.yaml")) }
        #expect(missing?.description.contains("no config file at") == true)
        // A FIFO, as `--config <(envsubst < switchyard.yaml)` gives: Foundation's String(contentsOfFile:)
        // refused it with a wrong reason ("no permission"); relative paths would have resolved
        // under /dev/fd.
        let fifo = directory.file("config.pipe")
        try #require(mkfifo(fifo, 0o600) == 0)
        let writer = Thread {
            let handle = FileHandle(forWritingAtPath: fifo)
            handle?.write(Data("plugins:\n  directory: ./plugins\n".utf8))
            try? handle?.close()
        }
        writer.start()
        let piped = try SwitchyardConfig.load(path: fifo)
        #expect(piped.plugins.directory == FileManager.default.currentDirectoryPath + "/plugins")
        // A command may load its config again (`call` does): the pipe is not read twice, and
        // the second load is the same config, not an empty one. (The FIFO is gone first: a load
        // that read it again would fail, not wait for ever for a writer.)
        unlink(fifo)
        #expect(try SwitchyardConfig.load(path: fifo).plugins.directory == piped.plugins.directory)
        let file = directory.file("switchyard.yaml")
        try "plugins:\n  directory: ./plugins\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(try SwitchyardConfig.load(path: file).plugins.directory == directory.path + "/plugins", "beside a plain file")
        // A descriptor's name for a plain file (`--config /dev/stdin < switchyard.yaml`): the file
        // has no name here, so relative paths resolve against the working directory, not /dev/fd.
        let descriptor = open(file, O_RDONLY)
        defer { close(descriptor) }
        let named = try SwitchyardConfig.load(path: "/dev/fd/\(descriptor)")
        #expect(named.plugins.directory == FileManager.default.currentDirectoryPath + "/plugins")
    }

    @Test(
        "an error about an entry (its name, a key it lacks) points at the line that names it, not the next one",
        arguments: [
            ("transports:\n  \"a b\":\n    plugin: queue\n", 2),
            ("transports:\n  q:\n    config: {}\n", 2),
            ("transports:\n  q: { plugin: queue }\nroutes:\n  \"Orders..place\":\n    transport: q\n", 4),
            ("transports:\n  q: { plugin: queue }\nroutes:\n  \"Orders.*\":\n    deadline: 5s\n", 4),
            ("native:\n  1Math:\n    library: ./m.so\n", 2),
            ("native:\n  Math:\n    library: ./m.so\n", 2),
        ])
    func entryErrorLines(_ yaml: String, _ line: Int) {
        let error = #expect(throws: ConfigError.self) { try SwitchyardConfig.parse(yaml: yaml, baseDirectory: "/") }
        #expect(error?.line == line, "\(String(describing: error))")
    }

    @Test(
        "an integer too large says its range; a size with a unit, a quoted number and a leading zero say what to write",
        arguments: [
            ("limits: { max_message_bytes: 99999999999999999999999 }\n", "'99999999999999999999999' must be between 1 and 2147483647"),
            ("limits: { max_message_bytes: 1MB }\n", "expected an integer, not '1MB': write a plain number, without a unit (1048576, not 1MB)"),
            ("limits: { max_message_bytes: lots }\n", "expected an integer"),
            ("limits: { max_message_bytes: \"1048576\" }\n", "'1048576' is quoted, so YAML reads it as text: write the number without quotes"),
            ("limits: { max_message_bytes: 010 }\n", "'010' starts with 0, which YAML reads as octal: write it without the leading zeros"),
            ("limits: { max_message_bytes: 08 }\n", "'08' starts with 0, which YAML reads as octal: write it without the leading zeros"),
            // YAML 1.1's other integer forms, and numbers that are not whole or not written out.
            ("limits: { max_message_bytes: 1:00 }\n", "'1:00' is not a plain decimal number (YAML reads it as 60): write 60 if that is what you mean"),
            ("limits: { max_message_bytes: 0x40 }\n", "'0x40' is not a plain decimal number (YAML reads it as 64): write 64 if that is what you mean"),
            ("limits: { max_message_bytes: 1_000 }\n", "'1_000' is not a plain decimal number (YAML reads it as 1000): write 1000 if that is what you mean"),
            ("limits: { max_message_bytes: 1.5 }\n", "expected a whole number written out, not '1.5'"),
            ("limits: { max_message_bytes: 1e6 }\n", "expected a whole number written out, not '1e6': write 1000000"),
        ])
    func integerErrors(_ yaml: String, _ message: String) {
        let error = #expect(throws: ConfigError.self) { try SwitchyardConfig.parse(yaml: yaml, baseDirectory: "/") }
        #expect(error?.key == "limits.max_message_bytes" && error?.message == message, "\(String(describing: error))")
    }

    @Test("a plugin's config refuses a leading zero and a base-60 number as the host's own keys do; text in quotes passes")
    func pluginConfigIntegers() throws {
        let octal = #expect(throws: ConfigError.self) {
            try SwitchyardConfig.parse(yaml: "transports:\n  q:\n    plugin: queue\n    config:\n      max_in_flight: 010\n", baseDirectory: "/")
        }
        #expect(octal?.key == "transports.q.config.max_in_flight" && octal?.line == 5, "\(String(describing: octal))")
        #expect(octal?.message.contains("'010' starts with 0, which YAML reads as octal (8)") == true, "\(String(describing: octal))")
        let sexagesimal = #expect(throws: ConfigError.self) {
            try SwitchyardConfig.parse(yaml: "transports:\n  q: { plugin: queue, config: { at: 1:30 } }\n", baseDirectory: "/")
        }
        #expect(sexagesimal?.message.contains("quote it for text (\"1:30\"), or write 90") == true, "\(String(describing: sexagesimal))")
        let quoted = try SwitchyardConfig.parse(yaml: "transports:\n  q: { plugin: queue, config: { at: \"1:30\", n: 10 } }\n", baseDirectory: "/")
        #expect(quoted.transports.first?.configJSON == #"{"at":"1:30","n":10}"#)
    }

    @Test("readable targets on a direct route ask for a transport, not for an encoding a direct route refuses")
    func readableTargetsOnDirect() {
        let error = #expect(throws: ConfigError.self) {
            try SwitchyardConfig.parse(yaml: "routes:\n  '*': { transport: direct, readable_targets: true }\n", baseDirectory: "/")
        }
        #expect(error?.key == "routes.*.readable_targets" && error?.message.hasPrefix("needs a transport route") == true, "\(String(describing: error))")
    }

    @Test("a route to a function a native module does not have is refused when the file is read, with the nearest name")
    func nativeRouteToMissingFunction() throws {
        let yaml = """
            native:
              Math: { library: ./libmath.so, functions: { cos: "f64(f64)", sin: "f64(f64)" } }
            routes:
              Math.coss: { transport: direct }
            """
        let error = #expect(throws: ConfigError.self) { try SwitchyardConfig.parse(yaml: yaml, baseDirectory: "/") }
        #expect(error?.key == "routes.Math.coss" && error?.line == 4, "\(String(describing: error))")
        #expect(error?.message == "native module Math has no function coss (its functions: cos, sin) — did you mean 'Math.cos'?", "\(String(describing: error))")
        // A whole module's pattern, an existing function and another interface's method pass.
        let others = "Math.*: { transport: direct }\n  Math.sin: { transport: direct }\n  Orders.place: { transport: direct }"
        _ = try SwitchyardConfig.parse(yaml: yaml.replacingOccurrences(of: "Math.coss: { transport: direct }", with: others), baseDirectory: "/")
    }

    @Test("an empty native signature, an address that YAML reads as a list, and a section without a value say what to write")
    func moreMessagesWithRemedies() {
        let signature = #expect(throws: ConfigError.self) {
            try SwitchyardConfig.parse(yaml: "native:\n  Math: { library: ./m.so, functions: { cos: \"\" } }\n", baseDirectory: "/")
        }
        #expect(signature?.message == "is an empty signature: write one, e.g. \"f64(i32, f64)\"", "\(String(describing: signature))")
        let bracket = #expect(throws: ConfigError.self) { try SwitchyardConfig.parse(yaml: "admin:\n  listen: [::1]:0\n", baseDirectory: "/") }
        #expect(bracket?.message.contains("quote an address such as \"[::1]:9464\"") == true, "\(String(describing: bracket))")
        let empty = #expect(throws: ConfigError.self) { try SwitchyardConfig.parse(yaml: "transports:\n", baseDirectory: "/") }
        #expect(empty?.message.contains("write transports: {} for an empty one, or leave the key out") == true, "\(String(describing: empty))")
    }

    @Test(
        "durations in every unit the page lists, a bare 0, and plugins.slow_call_warning read from the file",
        arguments: [
            ("250ns", 250), ("3us", 3_000), ("3µs", 3_000), ("1.5ms", 1_500_000), ("2s", 2_000_000_000), ("5m", 300_000_000_000),
            ("2h", 7_200_000_000_000), ("0", 0),
        ] as [(String, Int64)])
    func durationUnits(_ text: String, _ nanos: Int64) throws {
        let config = try SwitchyardConfig.parse(yaml: "plugins:\n  slow_call_warning: \(text)\n", baseDirectory: "/")
        #expect(config.plugins.slowCallWarningNanos == nanos)
    }

    @Test("the file's own paths resolve beside it (an inbox, an outbox, a native library); a plugin's config path is the plugin's, left as written")
    func relativePaths() throws {
        let config = try SwitchyardConfig.parse(
            yaml: """
                transports:
                  q: { plugin: queue, config: { path: rel.db } }
                routes:
                  Shop.*: { transport: q, inbox: { window: 1m, path: ./inbox.db } }
                outboxes:
                  shop: { path: ./shop.db }
                native:
                  Math: { library: ./libmath.so, functions: { add: "i32(i32, i32)" } }
                """, baseDirectory: "/srv/app")
        #expect(config.routes.first?.inbox?.path == "/srv/app/inbox.db")
        #expect(config.outboxes.first?.path == "/srv/app/shop.db")
        #expect(config.native.first?.library == "/srv/app/libmath.so")
        #expect(config.transports.first?.configJSON == #"{"path":"rel.db"}"#, "resolved by the plugin, against the working directory")
    }

    @Test("an empty file is the default config")
    func empty() throws {
        let config = try SwitchyardConfig.parse(yaml: "", baseDirectory: "/")
        #expect(config.plugins.directory == nil)
        #expect(config.plugins.slowCallWarningNanos == 1_000_000_000, "slow_call_warning: 1s by default")
    }

    @Test(
        "each kind of error names the key and line",
        arguments: [
            ("plugin:\n  directory: x\n", "plugin", 1, "unknown key"),
            ("plugins:\n  directory: [a, b]\n", "plugins.directory", 2, "expected a string"),
            ("plugins:\n  require_pins: maybe\n", "plugins.require_pins", 2, "expected true or false"),
            ("plugins:\n  pins:\n    queue: abc\n", "plugins.pins.queue", 3, "64 hex digits"),
            ("plugins: 3\n", "plugins", 1, "expected a mapping"),
            ("plugins:\n", "plugins", 1, "has no value: expected a mapping of keys to values (keys: directory, pins, require_pins, probe, slow_call_warning)"),
            ("admin:\n", "admin", 1, "has no value: write admin: {} for the endpoint on its default address (127.0.0.1:9464), or leave the section out"),
            ("plugins:\n  directory: \"\"\n", "plugins.directory", 2, "must not be empty"),
        ])
    func errors(_ yaml: String, _ key: String, _ line: Int, _ message: String) {
        let error = #expect(throws: ConfigError.self) { try SwitchyardConfig.parse(yaml: yaml, baseDirectory: "/") }
        #expect(error?.key == key)
        #expect(error?.line == line)
        #expect(error?.message.contains(message) == true, "\(error?.message ?? "")")
    }

    @Test("transports: plugin config becomes JSON; inner references and cycles are checked")
    func transports() throws {
        let config = try SwitchyardConfig.parse(
            yaml: """
                transports:
                  orders:
                    plugin: queue
                    config: { path: /tmp/o.db, capacity: 10, visibility_timeout: 30s, strict: true }
                  orders-retry:
                    plugin: retry
                    inner: orders
                """, baseDirectory: "/")
        #expect(config.transports.map(\.name) == ["orders", "orders-retry"])
        #expect(config.transport(named: "orders")?.configJSON == #"{"capacity":10,"path":"\/tmp\/o.db","strict":true,"visibility_timeout":"30s"}"#)
        #expect(config.transport(named: "orders-retry")?.inner == "orders")
    }

    @Test(
        "transport errors name the key",
        arguments: [
            ("transports:\n  a:\n    inner: b\n", "transports.a.plugin", "is required"),
            ("transports:\n  a:\n    plugin: retry\n    inner: b\n", "transports.a.inner", "no transport named 'b'"),
            ("transports:\n  a:\n    plugin: retry\n    inner: b\n  b:\n    plugin: delay\n    inner: a\n", "transports.a.inner", "cycle: a → b → a"),
            ("transports:\n  a:\n    plugin: queue\n    confg: {}\n", "transports.a.confg", "unknown key"),
            ("transports:\n  a:\n    plugin: queue\n    config: [1]\n", "transports.a.config", "expected a mapping"),
            ("transports:\n  'a b':\n    plugin: queue\n", "transports.a b", "transport names use"),
            ("transports:\n  a:\n    plugin: queue\n    isolation: sideways\n", "transports.a.isolation", "expected 'process' or 'in-process'"),
            ("transports:\n  a:\n    plugin: queue\n    isolation: { mode: proces }\n", "transports.a.isolation.mode", "expected 'process' or 'in-process'"),
            (
                "transports:\n  a:\n    plugin: queue\n    isolation: { call_timeout: 5 }\n", "transports.a.isolation.call_timeout",
                "'5' has no unit: write it with one, like \"5s\""
            ),
            ("transports:\n  a:\n    plugin: queue\n    isolation: { restart: 1s }\n", "transports.a.isolation.restart", "unknown key"),
            ("transports:\n  a:\n    plugin: queue\n    isolation: { restart_backoff: 0s }\n", "transports.a.isolation.restart_backoff", "more than 0"),
            // A setting that would do nothing: the plugin runs in this process.
            (
                "transports:\n  a:\n    plugin: queue\n    isolation: { mode: in-process, call_timeout: 5s }\n", "transports.a.isolation.call_timeout",
                "has no effect with mode: in-process"
            ),
            (
                "transports:\n  a:\n    plugin: queue\n    isolation: { restart_backoff: 5s, max_restart_backoff: 1s }\n",
                "transports.a.isolation.max_restart_backoff", "must not be less than restart_backoff"
            ),
            // Below the first wait's default (100 ms): the waits would shrink instead of doubling.
            (
                "transports:\n  a:\n    plugin: queue\n    isolation: { max_restart_backoff: 50ms }\n",
                "transports.a.isolation.max_restart_backoff", "50 ms must not be less than restart_backoff's default (100 ms)"
            ),
            (
                "transports:\n  a:\n    plugin: retry\n    inner: b\n    isolation: process\n  b:\n    plugin: queue\n", "transports.a.isolation",
                "cannot run with isolation: process"
            ),
        ])
    func transportErrors(_ yaml: String, _ key: String, _ message: String) {
        let error = #expect(throws: ConfigError.self) { try SwitchyardConfig.parse(yaml: yaml, baseDirectory: "/") }
        #expect(error?.key == key)
        #expect(error?.message.contains(message) == true, "\(error?.message ?? "")")
    }

    @Test("a PostgreSQL location's conninfo may be empty (libpq's PG* variables), as the docs' default; the schema may not")
    func emptyConninfo() throws {
        let config = try SwitchyardConfig.parse(yaml: "outboxes:\n  ledger: { postgres: { conninfo: '' } }\n", baseDirectory: "/")
        #expect(config.outboxes.first?.postgres?.conninfo == "")
        let error = #expect(throws: ConfigError.self) {
            try SwitchyardConfig.parse(yaml: "outboxes:\n  ledger: { postgres: { conninfo: '', schema: '' } }\n", baseDirectory: "/")
        }
        #expect(error?.key == "outboxes.ledger.postgres.schema", "\(error.map { "\($0)" } ?? "")")
    }

    @Test("isolation: the word or a mapping; unset durations keep the defaults")
    func isolation() throws {
        let config = try SwitchyardConfig.parse(
            yaml: """
                transports:
                  a: { plugin: queue, isolation: process }
                  b: { plugin: queue, isolation: { call_timeout: 5s, max_restart_backoff: 1m } }
                  c: { plugin: queue, isolation: in-process }
                """, baseDirectory: "/")
        #expect(config.transports[0].isolation == SwitchyardConfig.Isolation())
        #expect(config.transports[1].isolation?.callTimeoutNanos == 5_000_000_000)
        #expect(config.transports[1].isolation?.maxRestartBackoffNanos == 60_000_000_000)
        #expect(config.transports[1].isolation?.restartBackoffNanos == nil)
        #expect(config.transports[2].isolation == nil)
    }

    @Test("isolation.host resolves against the config file's directory, as every path of the file does")
    func isolationHostPath() throws {
        let config = try SwitchyardConfig.parse(
            yaml: """
                transports:
                  a: { plugin: queue, isolation: { host: bin/switchyard } }
                  b: { plugin: queue, isolation: { host: /opt/switchyard/bin/switchyard } }
                """, baseDirectory: "/etc/app")
        #expect(config.transports[0].isolation?.host == "/etc/app/bin/switchyard")
        #expect(config.transports[1].isolation?.host == "/opt/switchyard/bin/switchyard")
    }

    @Test("YAML syntax errors give the line")
    func syntax() {
        let error = #expect(throws: ConfigError.self) { try SwitchyardConfig.parse(yaml: "plugins:\n  directory: [unclosed\n", baseDirectory: "/") }
        #expect(error?.line != nil)
        #expect(error?.message.contains("YAML syntax error") == true)
    }
}
