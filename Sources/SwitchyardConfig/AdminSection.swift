import Foundation

extension SwitchyardConfig {
    /// `admin:` — the operator's HTTP endpoint (metrics, health, the JSON API and the console),
    /// served by the `SwitchyardAdmin` module when an application opts into it. Off when absent.
    ///
    /// ```yaml
    /// admin:
    ///   listen: 127.0.0.1:9464        # the default; port 0 picks a free port
    ///   # token: defaults to $SWITCHYARD_ADMIN_TOKEN
    /// ```
    ///
    /// A token is required to listen anywhere but loopback, and always for what changes state
    /// (replaying or purging dead letters, calls); without `token`, `SWITCHYARD_ADMIN_TOKEN` from
    /// the environment is used. The token is never logged or shown.
    public struct AdminSection: Sendable, Hashable {
        /// The default address: loopback only, Prometheus's customary exporter port.
        public static let defaultListen = "127.0.0.1:9464"
        /// The environment variable read for the token when the config sets none.
        public static let tokenVariable = "SWITCHYARD_ADMIN_TOKEN"

        /// The IP address to bind (IPv4 or IPv6, no brackets).
        public var host: String
        /// The TCP port; 0 picks a free one.
        public var port: Int
        /// The bearer token, or nil (then only loopback, and nothing that changes state).
        public var token: String?

        /// The line of `listen:` (or of `admin:`) in the file it was read from, for errors.
        public var listenLine: Int?

        /// An endpoint on `host`:`port`.
        public init(host: String = "127.0.0.1", port: Int = 9464, token: String? = nil) {
            self.host = host
            self.port = port
            self.token = token
        }

        /// Why this endpoint cannot be served as it is, naming the key; nil when it can. A
        /// non-loopback address needs a token (``token``, else `SWITCHYARD_ADMIN_TOKEN` in
        /// `environment`). Asked by whatever serves the endpoint (`AdminServer`, and `switchyard
        /// run` before it starts anything), not when the file is read: commands that only read the
        /// file's transports (`switchyard dlq`, `stats --config`) work where the variable is unset.
        public func servingProblem(environment: [String: String] = ProcessInfo.processInfo.environment) -> ConfigError? {
            guard !isLoopback, token == nil, (environment[Self.tokenVariable] ?? "").isEmpty else { return nil }
            return ConfigError(
                key: "admin.token", line: listenLine,
                message: "is required to listen on \(host), which is not loopback: every request must then carry it. "
                    + "Export \(Self.tokenVariable) (admin.token defaults to it), set admin.token, or listen on 127.0.0.1")
        }

        /// Whether `host` is a loopback address (`127.0.0.0/8` or `::1`).
        public var isLoopback: Bool { Self.isLoopback(host) }

        /// The endpoint's address on `port` (the one picked when ``port`` is 0): `http://HOST:PORT/`.
        public func url(port: Int) -> String { "http://\(host.contains(":") ? "[\(host)]" : host):\(port)/" }

        /// Whether `host` is a loopback address (`127.0.0.0/8` or `::1`).
        public static func isLoopback(_ host: String) -> Bool {
            host == "::1" || host == "localhost" || host.split(separator: ".").first == "127"
        }

        /// `HOST:PORT` (`[HOST]:PORT` for IPv6) parsed; nil with the reason when malformed.
        public static func parseListen(_ text: String) -> Result<(host: String, port: Int), ListenError> {
            var host: Substring
            let portText: Substring
            if text.hasPrefix("[") {
                guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                    return .failure(ListenError("an IPv6 address goes in brackets: [::1]:9464"))
                }
                host = text[text.index(after: text.startIndex)..<close]
                portText = text[text.index(close, offsetBy: 2)...]
            } else {
                guard let colon = text.lastIndex(of: ":") else { return .failure(ListenError("expected HOST:PORT, e.g. 127.0.0.1:9464")) }
                host = text[..<colon]
                portText = text[text.index(after: colon)...]
            }
            if host == "localhost" { host = "127.0.0.1" }
            guard let port = Int(portText), (0...65_535).contains(port) else {
                return .failure(ListenError("the port must be a number from 0 to 65535 (0: any free port)"))
            }
            var v4 = in_addr()
            var v6 = in6_addr()
            let numeric = String(host).withCString { inet_pton(AF_INET, $0, &v4) == 1 || inet_pton(AF_INET6, $0, &v6) == 1 }
            guard numeric else {
                return .failure(ListenError("'\(host)' is not an IP address; use one (127.0.0.1 for this machine only, 0.0.0.0 for every interface)"))
            }
            return .success((String(host), port))
        }

        /// Why a `listen` value was refused.
        public struct ListenError: Error, Sendable {
            /// For a person.
            public let message: String
            init(_ message: String) { self.message = message }
        }
    }

    /// `admin:` parsed and checked, its token defaulting to `SWITCHYARD_ADMIN_TOKEN` from
    /// `environment`. Whether a non-loopback address has its token is checked where the endpoint
    /// is served (``AdminSection/servingProblem(environment:)``).
    static func parseAdmin(_ node: ConfigNode, environment: [String: String]) throws(ConfigError) -> AdminSection {
        var section = AdminSection()
        guard !node.isNull else {
            throw node.error(
                "has no value: write admin: {} for the endpoint on its default address (\(section.host):\(section.port)), or leave the section out to have none")
        }
        var listenNode: ConfigNode?
        for (key, value) in try node.mapping(allowed: ["listen", "token"]) {
            switch key {
            case "listen":
                listenNode = value
                switch AdminSection.parseListen(try value.string()) {
                case .success(let address): (section.host, section.port) = address
                case .failure(let problem): throw value.error(problem.message)
                }
            case "token":
                let token = try value.string(allowingEmpty: true)  // the message below says more than "must not be empty"
                guard !token.isEmpty else {
                    throw value.error("is empty (an unset environment variable?); set a token, or remove the key to serve loopback only")
                }
                section.token = token
            default: break
            }
        }
        if section.token == nil, let token = environment[AdminSection.tokenVariable], !token.isEmpty { section.token = token }
        section.listenLine = listenNode?.line ?? node.line
        return section
    }
}
