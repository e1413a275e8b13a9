import FlyingFox
import Foundation
import Prometheus
import SwitchyardConfig
import SwitchyardNative
import SwitchyardRuntime

/// Routes one admin request: checks its token, then answers from the system's overview, the
/// Prometheus registry or the page.
struct AdminHandler: HTTPHandler {
    let system: SwitchyardActorSystem
    let token: String?
    let rates = RateSampler()
    var deadLetters: DeadLetterEndpoints { DeadLetterEndpoints(system: system, token: token) }

    /// Every endpoint, for `GET /api` and for the 404 message.
    static let endpoints: [(path: String, what: String)] = [
        ("/api", "this list"),
        ("/metrics", "Prometheus text format: every metric the runtime and the plugins record"),
        ("/health/live", "200 while the system has not stopped"),
        ("/health/ready", "200 while the system takes work, 503 while it drains and once stopped"),
        ("/api/overview", "state, plugins, transports with their counters, routes and hosted services"),
        ("/api/plugins", "the loaded plugins"),
        ("/api/transports", "the transports, their plugin chains and counters"),
        ("/api/channels", "what each transport holds per channel and subscriber group: depth, waiting, in flight (counted now)"),
        ("/api/routes", "the routes, in config order"),
        ("/api/services", "the actors and native modules hosted here"),
        ("/api/dead-letters", "the dead-letter channels of what is served here"),
        ("/api/dead-letters/TRANSPORT/CHANNEL", "a channel's dead letters, decoded; POST …/replay or …/purge with {\"ids\": [...]} or {\"all\": true}"),
        (
            "/api/call",
            "POST {\"target\": \"Interface.method\", \"actor\": \"id\", \"arguments\": [JSON, …], \"headers\": {\"name\": \"value\"}}: a call by readable name (routes with readable_targets), or a native module's function; needs the token"
        ),
        ("/", "the console: route map, rates, depths, dead letters, a call form (also /index.html; the form POSTs to /call)"),
        ("/channels", "the console's page of what each transport holds per channel"),
        ("/dead-letters/TRANSPORT/CHANNEL", "the console's page of a channel's dead letters, with replay and purge forms"),
    ]

    func handleRequest(_ request: HTTPRequest) async throws -> HTTPResponse {
        guard request.method == .HEAD else { return try await answer(request) }
        // HEAD: what GET would answer, status and headers, without the body (HTTP forbids one).
        var get = request
        get.method = .GET
        let response = try await answer(get)
        var headers = response.headers
        headers[.contentLength] = String(try await response.bodyData.count)  // GET's, as HTTP asks
        return HTTPResponse(version: response.version, statusCode: response.statusCode, headers: headers, body: Data())
    }

    /// The answer to a GET or POST (or anything else: 405).
    private func answer(_ request: HTTPRequest) async throws -> HTTPResponse {
        if let refusal = refusal(of: request) { return refusal }
        let segments = request.path.split(separator: "/").map { String($0).removingPercentEncoding ?? String($0) }
        if let answer = await deadLetters.handle(request, segments) { return answer }
        if request.path == "/api/call" || request.path == "/call" { return await call(request, form: request.path == "/call") }
        // Whether the path exists first: a method it does not take is 405, any method on a path
        // that is not there 404.
        guard let read = reader(for: request.path) else { return Self.noSuchEndpoint(request) }
        guard request.method == .GET else {
            return Self.methodNotAllowed(
                allow: "GET, HEAD",
                "\(request.method.rawValue) \(request.path): this endpoint only reads (GET); POST is for dead letters (…/replay, …/purge) and /api/call")
        }
        return await read()
    }

    /// What a GET of `path` answers, for the paths that only read; nil for any other.
    private func reader(for path: String) -> (() async -> HTTPResponse)? {
        let system = system
        switch path {
        case "/metrics":
            return {
                HTTPResponse(
                    statusCode: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                    body: Data(AdminMetrics.registry.emitToBuffer()))
            }
        case "/health/live":
            return {
                let stopped = system.overview().state == "stopped"
                return Self.json(stopped ? .serviceUnavailable : .ok, ["status": stopped ? "stopped" : "live"])
            }
        case "/health/ready":
            return {
                let overview = system.overview()
                return Self.json(overview.ready ? .ok : .serviceUnavailable, ["status": overview.ready ? "ready" : overview.state])
            }
        case "/api", "/api/": return { Self.json(.ok, Dictionary(uniqueKeysWithValues: Self.endpoints.map { ($0.path, $0.what) })) }
        case "/api/overview": return { Self.encoded(system.overview()) }
        case "/api/plugins": return { Self.encoded(system.overview().plugins) }
        case "/api/transports": return { Self.encoded(system.overview().transports) }
        case "/api/channels": return { Self.encoded(await system.channels()) }
        case "/api/routes": return { Self.encoded(system.overview().routes) }
        case "/api/services": return { Self.encoded(system.overview().services) }
        case "/channels":
            return {
                Self.page(
                    ChannelsPage.render(await system.channels(), config: system.config) {
                        system.transport(named: $0)?.chainCapabilities.contains(.deadLetter) == true
                    })
            }
        case "/", "/index.html":
            let rates = rates
            return {
                let overview = system.overview()
                return Self.page(OverviewPage.render(overview, rates: rates.rates(overview.transports)))
            }
        default: return nil
        }
    }

    /// 404, with the list of endpoints (and `besides`, what to say first, where the path was
    /// close to one).
    static func noSuchEndpoint(_ request: HTTPRequest, besides: String? = nil) -> HTTPResponse {
        json(
            .notFound,
            [
                "error": "no such endpoint: \(request.path)\(besides.map { "; \($0)" } ?? ""); the endpoints are \(endpoints.map(\.path).joined(separator: ", "))"
            ])
    }

    /// 405, with the `Allow` header HTTP requires of it (the methods the path takes).
    static func methodNotAllowed(allow: String, _ message: String) -> HTTPResponse {
        var response = json(.methodNotAllowed, ["error": message])
        response.headers[HTTPHeader("Allow")] = allow
        return response
    }

    /// What `POST /api/call` takes.
    struct CallRequest: Decodable {
        var target: String
        var actor: String?
        var arguments: [JSONValue]?
        /// The call's headers (``CallOptions/headers``).
        var headers: [String: String]?
    }

    /// `POST /api/call` (JSON) and the console's call form (`POST /call`): a hosted method by its
    /// readable name, or a native module's function, through its route; the token always. Answers `{"result": JSON}` (the form:
    /// the page with the result).
    func call(_ request: HTTPRequest, form: Bool) async -> HTTPResponse {
        guard request.method == .POST else {
            return Self.methodNotAllowed(allow: "POST", "\(request.method.rawValue) \(request.path): POST a call: {\"target\": …, \"actor\": …, \"arguments\": […]}")
        }
        if let refusal = deadLetters.changeRefusal(request) { return refusal }
        let call: CallRequest
        do {
            let body = try await request.bodyData
            if form {
                let fields = Dictionary(DeadLetterEndpoints.formFields(body).map { ($0.key, $0.value) }, uniquingKeysWith: { _, last in last })

                let lines = (fields["arguments"] ?? "").split(whereSeparator: \.isNewline).map(String.init).filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
                call = CallRequest(target: fields["target"] ?? "", actor: fields["actor"], arguments: lines.map { .text($0) })
            } else {
                call = try JSONDecoder().decode(CallRequest.self, from: body)
            }
        } catch {
            return Self.json(.badRequest, ["error": #"the body must be JSON like {"target": "Inventory.reserve", "actor": "inventory", "arguments": ["widget", 2]}"#])
        }
        let interface = String(call.target.prefix { $0 != "." })
        // A target that names no method is the request's mistake (400), not a route that is
        // missing (404, which the call would answer).
        if !form && (interface.isEmpty || call.target.dropFirst(interface.count + 1).prefix(while: { $0 != "(" }).isEmpty) {
            return Self.json(.badRequest, ["error": "target '\(call.target)': name a method as Interface.method (Inventory.reserve) or Interface.method(labels:)"])
        }
        let options = CallOptions(headers: call.headers ?? [:])
        if !form, let problem = options.problem { return Self.json(.badRequest, ["error": problem]) }
        let native = system.servesNatively(interface)
        // A native module is served under its interface's name; a Swift service under its id.
        let actor = native ? interface : (call.actor?.isEmpty == false ? call.actor : nil) ?? interface.prefix(1).lowercased() + interface.dropFirst()
        let outcome: (status: HTTPStatusCode, text: String)
        do {
            if native {
                // Each argument by the function's signature: a JSON string as its contents.
                let texts = (call.arguments ?? []).map(\.json).map { json in
                    (try? JSONSerialization.jsonObject(with: Data(json.utf8), options: [.fragmentsAllowed])) as? String ?? json
                }
                let result = try await Switchyard.withCallOptions(options) { try await system.callNative(call.target, texts: texts) }
                outcome = (.ok, result.jsonText)
            } else {
                let result = try await Switchyard.withCallOptions(options) {
                    try await system.callReadable(call.target, actor: actor, argumentsJSON: (call.arguments ?? []).map(\.json))
                }
                outcome = (.ok, result.isEmpty ? "null" : result)
            }
        } catch let error as SwitchyardError {
            outcome = (Self.status(of: error), "\(error)")
        } catch let error as NativeCallError {
            outcome = (.badRequest, "\(error)")  // arguments that do not fit the native function
        } catch {
            // The handler threw an error type registered here (it comes back as itself): the
            // service answered with a failure, as for an unregistered one (`remote`).
            outcome = (.unprocessableContent, "\(error)")
        }
        if form {
            return Self.page(
                CallPage.render(target: call.target, actor: actor, arguments: (call.arguments ?? []).map(\.json), outcome: outcome.text, failed: outcome.status != .ok))
        }
        guard outcome.status == .ok else { return Self.json(outcome.status, ["error": outcome.text]) }
        return HTTPResponse(statusCode: .ok, headers: [.contentType: "application/json"], body: Data("{\"result\":\(outcome.text)}".utf8))
    }

    /// The HTTP status of a failed call, by cause: 5xx when the system could not answer (sending
    /// it again later may work), 422 when the service answered with a failure (its handler threw,
    /// or failed until its route's retries gave up), 4xx for the request itself.
    static func status(of error: SwitchyardError) -> HTTPStatusCode {
        switch error.code {
        case .timeout: .gatewayTimeout
        case .transport, .shuttingDown: .serviceUnavailable
        case .routing: .notFound
        case .remote, .deadLettered: .unprocessableContent
        case .limitExceeded: .payloadTooLarge
        default: .badRequest
        }
    }

    /// A 401 unless the request carries the token (when there is one).
    func refusal(of request: HTTPRequest) -> HTTPResponse? {
        guard let token else { return nil }
        guard let presented = Self.presentedToken(request.headers[.authorization]) else {
            return Self.unauthorized("this endpoint requires a token: send 'Authorization: Bearer TOKEN' (or basic auth with the token as password)")
        }
        guard Self.constantTimeEqual(presented, token) else {
            return Self.unauthorized("wrong token: send the one this process serves with (its admin.token, or SWITCHYARD_ADMIN_TOKEN in its environment)")
        }
        return nil
    }

    /// The token in an `Authorization` header: `Bearer TOKEN`, or `Basic` with the token as the
    /// password (any user name), which is what a browser sends after its login prompt.
    static func presentedToken(_ header: String?) -> String? {
        guard let header else { return nil }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2 else { return nil }
        switch parts[0].lowercased() {
        case "bearer": return String(parts[1]).trimmingCharacters(in: .whitespaces)
        case "basic":
            guard let data = Data(base64Encoded: String(parts[1]).trimmingCharacters(in: .whitespaces)),
                let pair = String(data: data, encoding: .utf8), let colon = pair.firstIndex(of: ":")
            else { return nil }
            return String(pair[pair.index(after: colon)...])
        default: return nil
        }
    }

    /// Compares `presented` with `token` without stopping at the first difference, and for as
    /// many bytes as the token has whatever the presented one's length, so that neither the
    /// time to the first wrong byte nor a guessed length shows in the answer's timing.
    static func constantTimeEqual(_ presented: String, _ token: String) -> Bool {
        let x = Array(presented.utf8)
        let y = Array(token.utf8)
        var difference = UInt8(x.count == y.count ? 0 : 1)
        for index in 0..<y.count { difference |= (index < x.count ? x[index] : 0) ^ y[index] }
        return difference == 0
    }

    static func unauthorized(_ message: String) -> HTTPResponse {
        var response = json(.unauthorized, ["error": message])
        response.headers[HTTPHeader("WWW-Authenticate")] = #"Basic realm="switchyard", charset="UTF-8""#
        return response
    }

    static func json(_ status: HTTPStatusCode, _ object: [String: String]) -> HTTPResponse {
        let body = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
        return HTTPResponse(statusCode: status, headers: [.contentType: "application/json"], body: body)
    }

    static func page(_ html: String) -> HTTPResponse {
        HTTPResponse(statusCode: .ok, headers: [.contentType: "text/html; charset=utf-8"], body: Data(html.utf8))
    }

    static func encoded(_ value: some Encodable) -> HTTPResponse {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        do {
            return HTTPResponse(statusCode: .ok, headers: [.contentType: "application/json"], body: try encoder.encode(value))
        } catch {
            return json(.internalServerError, ["error": "encoding the answer failed: \(error)"])
        }
    }
}
