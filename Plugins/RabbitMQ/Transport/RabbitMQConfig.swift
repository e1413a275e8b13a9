import CRabbitMQ
import Foundation
import SwitchyardPluginKit
import SwitchyardTransportKit

/// The `rabbitmq` plugins' config. Durations are strings with a unit; credentials come from the
/// URL, the environment or a file and are never logged.
///
/// ```json
/// {"url": "amqp://rabbit.internal:5672/orders", "user_env": "RABBITMQ_USER", "password_env": "RABBITMQ_PASSWORD",
///  "queue_type": "quorum", "max_in_flight": 256}
/// ```
public struct RabbitMQConfig: PluginConfig, Sendable {
    /// Every key this config accepts.
    public static let allowedKeys: Set<String> = [
        "url", "user_env", "password_env", "password_file", "tls", "prefix", "queue_type", "max_in_flight", "ack_wait",
        "publish_timeout", "connect_timeout", "heartbeat", "publishers", "dead_letter_suffix", "ephemeral_prefixes",
        "max_message_bytes",
    ]
    /// `amqp://user:password@host:port/vhost` or `amqps://…` (TLS). Default: `RABBITMQ_URL` from
    /// the environment, else `amqp://guest:guest@127.0.0.1:5672/`.
    public var url: String?
    /// Environment variable holding the user name (overrides the URL's).
    public var user_env: String?
    /// Environment variable holding the password (overrides the URL's).
    public var password_env: String?
    /// File holding the password (overrides the URL's).
    public var password_file: String?
    /// TLS: `{ "ca": file, "cert": file, "key": file, "verify": true }`; implied by `amqps://`.
    public var tls: TLSConfig?
    /// Prefix of every queue and exchange the transport declares (default `switchyard.<transport>`).
    public var prefix: String?
    /// `quorum` (default: replicated, delivery counts, at-least-once dead-lettering) or `classic`.
    public var queue_type: String?
    /// Default prefetch per subscriber (basic.qos; default 256).
    public var max_in_flight: Int?
    /// Redelivery after this long unsettled (the visibility timeout; default 30s).
    public var ack_wait: ConfigDuration?
    /// How long a publish waits for the broker's confirm (default 10s).
    public var publish_timeout: ConfigDuration?
    /// How long opening a connection waits for the broker (default 5s).
    public var connect_timeout: ConfigDuration?
    /// AMQP heartbeat of consumer connections (default 30s; `0s` turns it off).
    public var heartbeat: ConfigDuration?
    /// Most publisher connections open at once (default 16, opened as concurrency needs them);
    /// publishes beyond wait for one.
    public var publishers: Int?
    /// Dead-letter channel suffix (default `.dlq`).
    public var dead_letter_suffix: String?
    /// Channels with these prefixes get classic queues the broker deletes once unused for a
    /// minute, without dead letters (per-process reply channels); default `["_switchyard.reply."]`.
    public var ephemeral_prefixes: [String]?
    /// Largest message accepted: body, id, channel and headers (default 16 MiB, RabbitMQ 4's own
    /// limit: a larger one passed here and the broker closed the channel; 3.x allows 128 MiB).
    public var max_message_bytes: Int?
}

/// The config, checked and with its defaults.
struct RabbitMQSettings: Sendable {
    var host: String
    var port: Int32
    var vhost: String
    var user: String
    var password: String
    var tls: TLSConfig?
    var prefix: String
    var quorum: Bool
    var maxInFlight: Int
    var ackWaitNanos: Int64
    var publishTimeoutNanos: Int64
    var connectTimeoutNanos: Int64
    var heartbeatSeconds: Int32
    var publishers: Int
    var deadLetterSuffix: String
    var ephemeralPrefixes: [String]
    var maxMessageBytes: Int

    /// Where the broker is, for messages: never the credentials.
    var address: String { "\(tls == nil ? "amqp" : "amqps")://\(host):\(port)\(vhost == "/" ? "/" : "/" + vhost)" }

    init(_ config: RabbitMQConfig, instance: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws(TransportError) {
        func fail(_ key: String, _ message: String) -> TransportError { TransportError(.config, "config key '\(key)': \(message)") }
        // Set but empty counts as unset, as for ${VAR} in a config file.
        let fromEnvironment = environment["RABBITMQ_URL"].flatMap { $0.isEmpty ? nil : $0 }
        let url = config.url ?? fromEnvironment ?? "amqp://guest:guest@127.0.0.1:5672/"
        var info = amqp_connection_info()
        let copy = strdup(url)
        defer { free(copy) }
        guard url.hasPrefix("amqp://") || url.hasPrefix("amqps://"), amqp_parse_url(copy, &info) == 0 else {
            let expected = "expected amqp://user:password@host:5672/vhost or amqps://… (TLS)"
            guard config.url != nil || fromEnvironment == nil else {
                // From the environment: no key of the file to name, so the variable is named.
                throw TransportError(
                    .config, "RABBITMQ_URL: \(expected) (not shown: it may hold credentials; read because the config sets no 'url'; set it there, or fix RABBITMQ_URL)")
            }
            throw fail("url", expected)
        }
        host = String(cString: info.host)
        port = info.port
        // "amqp://host/" is the empty vhost to amqp_parse_url, "/" (the default) to pika and to
        // most users: the empty name means the default here.
        let parsedVhost = String(cString: info.vhost)
        vhost = parsedVhost.isEmpty ? "/" : parsedVhost
        user = String(cString: info.user)
        password = String(cString: info.password)
        tls = config.tls ?? (info.ssl != 0 ? TLSConfig() : nil)
        if let variable = config.user_env {
            guard let value = environment[variable], !value.isEmpty else { throw fail("user_env", "environment variable \(variable) is not set") }
            user = value
        }
        if let variable = config.password_env {
            guard let value = environment[variable] else { throw fail("password_env", "environment variable \(variable) is not set") }
            password = value
        }
        if let file = config.password_file {
            guard let value = try? String(contentsOfFile: file, encoding: .utf8) else { throw fail("password_file", "cannot read '\(file)'") }
            password = value.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        prefix = config.prefix ?? "switchyard.\(instance)"
        guard !prefix.isEmpty, prefix.utf8.count <= 100, !prefix.hasPrefix("amq.") else {
            throw fail("prefix", "1 to 100 bytes, not starting with 'amq.' (reserved by RabbitMQ)")
        }
        switch config.queue_type ?? "quorum" {
        case "quorum": quorum = true
        case "classic": quorum = false
        default: throw fail("queue_type", "expected \"quorum\" or \"classic\"")
        }
        maxInFlight = config.max_in_flight ?? 256
        guard (1...65_535).contains(maxInFlight) else { throw fail("max_in_flight", "must be between 1 and 65535 (AMQP's prefetch count)") }
        ackWaitNanos = config.ack_wait?.nanoseconds ?? 30_000_000_000
        guard ackWaitNanos >= 1_000_000 else { throw fail("ack_wait", "must be at least 1ms") }
        publishTimeoutNanos = config.publish_timeout?.nanoseconds ?? 10_000_000_000
        guard publishTimeoutNanos >= 1_000_000 else { throw fail("publish_timeout", "must be at least 1ms") }
        connectTimeoutNanos = config.connect_timeout?.nanoseconds ?? 5_000_000_000
        guard connectTimeoutNanos >= 1_000_000 else { throw fail("connect_timeout", "must be at least 1ms") }
        let heartbeat = config.heartbeat?.nanoseconds ?? 30_000_000_000
        guard heartbeat == 0 || (1_000_000_000...3_600_000_000_000).contains(heartbeat) else {
            throw fail("heartbeat", "0s (off) or between 1s and 1h")
        }
        // AMQP negotiates whole seconds: 1.5s was read as 1s without a word.
        guard heartbeat % 1_000_000_000 == 0 else { throw fail("heartbeat", "must be whole seconds (AMQP's heartbeat is in seconds)") }
        heartbeatSeconds = Int32(heartbeat / 1_000_000_000)
        publishers = config.publishers ?? 16
        guard (1...256).contains(publishers) else { throw fail("publishers", "must be between 1 and 256") }
        deadLetterSuffix = config.dead_letter_suffix ?? DeadLetter.defaultSuffix
        guard !deadLetterSuffix.isEmpty else { throw fail("dead_letter_suffix", "must not be empty") }
        ephemeralPrefixes = config.ephemeral_prefixes ?? ["_switchyard.reply."]
        maxMessageBytes = config.max_message_bytes ?? 16 << 20
        guard maxMessageBytes > 0 else { throw fail("max_message_bytes", "must be positive") }
    }
}
