import Foundation
import SwitchyardPluginKit
import SwitchyardTransportKit

/// The `nats` plugins' config. Durations are strings with a unit; secrets come from the
/// environment or a file and are never logged.
///
/// ```json
/// {"servers": ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"], "token_env": "NATS_TOKEN",
///  "stream": "ORDERS", "replicas": 3, "ack_wait": "30s"}
/// ```
public struct NATSConfig: PluginConfig, Sendable {
    /// Every key this config accepts.
    public static let allowedKeys: Set<String> = [
        "servers", "token_env", "token_file", "credentials", "user_env", "password_env", "tls", "name",
        "stream", "subject_prefix", "replicas", "storage", "max_age", "max_bytes", "ack_wait", "max_in_flight",
        "fetch_batch", "publish_timeout", "connect_timeout", "dead_letter_suffix", "ephemeral_prefixes", "max_message_bytes",
    ]
    /// Server URLs; the client fails over between them. Default: `NATS_URL` from the environment
    /// (comma-separated), else `nats://127.0.0.1:4222`.
    public var servers: [String]?
    /// Environment variable holding a token.
    public var token_env: String?
    /// File holding a token.
    public var token_file: String?
    /// A NATS credentials file (JWT and NKey seed).
    public var credentials: String?
    /// Environment variable holding a user name (with `password_env`).
    public var user_env: String?
    /// Environment variable holding the password for `user_env`.
    public var password_env: String?
    /// TLS: `{ "ca": file, "cert": file, "key": file, "verify": true }`.
    public var tls: TLSConfig?
    /// Connection name shown by the server (default: the transport's name).
    public var name: String?
    /// The JetStream stream (default `SWITCHYARD_<TRANSPORT>`); dead letters go to `<stream>_DLQ`.
    public var stream: String?
    /// Subject prefix for channels (default `sy.<stream, lowercased>`): channel `orders` is
    /// `<prefix>.ch.orders`, its dead letters `<prefix>.dlq.orders.dlq`.
    public var subject_prefix: String?
    /// Stream replicas (1–5; 3 on a three-node cluster).
    public var replicas: Int?
    /// `file` (default) or `memory`.
    public var storage: String?
    /// Oldest message kept (default: no limit).
    public var max_age: ConfigDuration?
    /// Most bytes kept (default: no limit).
    public var max_bytes: Int?
    /// Redelivery after this long unsettled (the consumers' AckWait; default 30s).
    public var ack_wait: ConfigDuration?
    /// Default prefetch per subscriber (the consumers' MaxAckPending; default 1024).
    public var max_in_flight: Int?
    /// Messages fetched per pull request (default 256).
    public var fetch_batch: Int?
    /// How long a publish waits for JetStream's acknowledgement (default 10s: longer than a
    /// stream leader election).
    public var publish_timeout: ConfigDuration?
    /// How long creating the transport waits for a server (default 5s).
    public var connect_timeout: ConfigDuration?
    /// Dead-letter channel suffix (default `.dlq`).
    public var dead_letter_suffix: String?
    /// Channels with these prefixes get consumers the server removes once unused (per-process
    /// reply channels); default `["_switchyard.reply."]`.
    public var ephemeral_prefixes: [String]?
    /// Largest message accepted (default: the server's max payload).
    public var max_message_bytes: Int?
}

/// The config, checked and with its defaults.
struct NATSSettings: Sendable {
    var servers: [String]
    var stream: String
    var dlqStream: String
    var prefix: String
    var replicas: Int
    var memory: Bool
    var maxAgeNanos: Int64
    var maxBytes: Int64
    var ackWaitNanos: Int64
    var maxInFlight: Int
    var fetchBatch: Int
    var publishTimeoutMillis: Int64
    var connectTimeoutMillis: Int64
    var deadLetterSuffix: String
    var ephemeralPrefixes: [String]
    var maxMessageBytes: Int?
    var name: String
    var token: String?
    var user: (String, String)?
    var credentials: String?
    var tls: TLSConfig?

    init(_ config: NATSConfig, instance: String) throws(TransportError) {
        func fail(_ key: String, _ message: String) -> TransportError { TransportError(.config, "config key '\(key)': \(message)") }
        let upper = instance.uppercased().map { $0.isLetter || $0.isNumber ? $0 : "_" }.reduce(into: "") { $0.append($1) }
        servers =
            config.servers
            // Set but empty counts as unset, as for ${VAR} in a config file. Comma-separated: a
            // cluster's URLs, as the nats CLI reads NATS_URL.
            ?? ProcessInfo.processInfo.environment["NATS_URL"].flatMap { $0.isEmpty ? nil : $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
            ?? ["nats://127.0.0.1:4222"]
        guard !servers.isEmpty, servers.allSatisfy({ $0.hasPrefix("nats://") || $0.hasPrefix("tls://") }) else {
            let expected = "expected URLs like nats://host:4222 or tls://host:4222"
            guard config.servers != nil else {
                // From the environment: no key of the file to name, so the variable is named.
                throw TransportError(
                    .config,
                    "NATS_URL: \(expected) (not shown: it may hold credentials; read because the config sets no 'servers'; set them there, or fix NATS_URL)")
            }
            throw fail("servers", expected)
        }
        stream = config.stream ?? "SWITCHYARD_\(upper)"
        guard !stream.isEmpty, stream.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }) else {
            throw fail("stream", "stream names use letters, digits, '-' and '_'")
        }
        dlqStream = stream + "_DLQ"
        // Streams must not share subjects: the default prefix follows the stream's name.
        prefix = config.subject_prefix ?? "sy.\(stream.lowercased().map { $0.isLetter || $0.isNumber ? $0 : "_" }.reduce(into: "") { $0.append($1) })"
        guard !prefix.isEmpty, !prefix.contains(where: { $0 == " " || $0 == "*" || $0 == ">" }), !prefix.hasSuffix(".") else {
            throw fail("subject_prefix", "must be a NATS subject without wildcards")
        }
        replicas = config.replicas ?? 1
        guard (1...5).contains(replicas) else { throw fail("replicas", "must be between 1 and 5") }
        switch config.storage ?? "file" {
        case "file": memory = false
        case "memory": memory = true
        default: throw fail("storage", "expected \"file\" or \"memory\"")
        }
        maxAgeNanos = config.max_age?.nanoseconds ?? 0
        maxBytes = Int64(config.max_bytes ?? -1)
        ackWaitNanos = config.ack_wait?.nanoseconds ?? 30_000_000_000
        guard ackWaitNanos >= 1_000_000 else { throw fail("ack_wait", "must be at least 1ms") }
        maxInFlight = config.max_in_flight ?? 1024
        guard (1...100_000).contains(maxInFlight) else { throw fail("max_in_flight", "must be between 1 and 100000") }
        fetchBatch = config.fetch_batch ?? 256
        guard (1...10_000).contains(fetchBatch) else { throw fail("fetch_batch", "must be between 1 and 10000") }
        publishTimeoutMillis = (config.publish_timeout?.nanoseconds ?? 10_000_000_000) / 1_000_000
        guard publishTimeoutMillis >= 1 else { throw fail("publish_timeout", "must be at least 1ms") }
        connectTimeoutMillis = (config.connect_timeout?.nanoseconds ?? 5_000_000_000) / 1_000_000
        guard connectTimeoutMillis >= 1 else { throw fail("connect_timeout", "must be at least 1ms") }
        deadLetterSuffix = config.dead_letter_suffix ?? DeadLetter.defaultSuffix
        guard !deadLetterSuffix.isEmpty else { throw fail("dead_letter_suffix", "must not be empty") }
        ephemeralPrefixes = config.ephemeral_prefixes ?? ["_switchyard.reply."]
        maxMessageBytes = config.max_message_bytes
        if let maxMessageBytes, maxMessageBytes <= 0 { throw fail("max_message_bytes", "must be positive") }
        if let maxBytes = config.max_bytes, maxBytes <= 0 { throw fail("max_bytes", "must be positive (leave it out for no limit)") }
        name = config.name ?? "switchyard-\(instance)"
        credentials = config.credentials
        // nats.c reads the file only when it connects, and says "error opening file" without the key.
        if let file = config.credentials, !FileManager.default.isReadableFile(atPath: file) {
            throw fail(
                "credentials",
                "cannot read '\(file)' (\(FileManager.default.fileExists(atPath: file) ? "not readable by this process" : "no such file")): point it at the .creds file `nsc generate creds` or your operator gave you"
            )
        }
        tls = config.tls
        // A client certificate without its key (or a key alone) would leave TLS client
        // authentication off without a word.
        if let tls = config.tls, (tls.cert == nil) != (tls.key == nil) {
            throw fail(tls.cert == nil ? "tls.cert" : "tls.key", "tls.cert and tls.key go together: give both, or neither")
        }
        var token: String?
        if config.token_env != nil && config.token_file != nil {
            throw fail("token_file", "give token_env or token_file, not both (which one to use would be a guess)")
        }
        if let variable = config.token_env {
            guard let value = ProcessInfo.processInfo.environment[variable], !value.isEmpty else {
                throw fail("token_env", "environment variable \(variable) is not set")
            }
            token = value
        }
        if let file = config.token_file {
            guard let value = try? String(contentsOfFile: file, encoding: .utf8) else { throw fail("token_file", "cannot read '\(file)'") }
            token = value.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        self.token = token
        if config.password_env != nil && config.user_env == nil {
            throw fail("password_env", "needs user_env too (the variable holding the user name)")
        }
        if let userVariable = config.user_env {
            let environment = ProcessInfo.processInfo.environment
            guard let user = environment[userVariable], let passwordVariable = config.password_env,
                let password = environment[passwordVariable]
            else { throw fail("user_env", "set both user_env and password_env to variables that are set") }
            self.user = (user, password)
        }
    }
}
