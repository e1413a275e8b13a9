import ArgumentParser
import Foundation
import Logging
import SwitchyardABI
import SwitchyardConfig
import SwitchyardHost
import SwitchyardRuntime

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// `switchyard stats`: depth, in-flight, rates and counters per transport, once or every few
/// seconds: from the transports a config names (what is stored, on durable and shared
/// engines), or from a running system's admin endpoint (everything, in-memory transports too).
struct StatsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Print depth, in-flight, rates and counters per transport.",
        discussion: """
            With --config it opens the config's transports itself: what durable and shared engines \
            store (SQLite files, NATS, PostgreSQL, RabbitMQ) shows as it is; an in-memory transport \
            lives only in the process that runs it, so read that one from the process's admin \
            endpoint instead: --url http://127.0.0.1:9464 (with --token, or SWITCHYARD_ADMIN_TOKEN, \
            when the endpoint has one). Counters from --config count only what this command's own \
            instances did; depth and in-flight are the engine's. --watch prints again every \
            --interval seconds, with rates from one print to the next. --channels prints what each \
            transport holds per channel and subscriber group instead (depth, waiting, in flight; \
            dead-letter channels included), where its plugin reports channels (ABI 1.9).
            """)

    @OptionGroup var search: PluginSearchOptions

    @Option(help: ArgumentHelp("A running system's admin endpoint, e.g. http://127.0.0.1:9464.", valueName: "url"))
    var url: String?

    @Option(help: ArgumentHelp("The admin endpoint's token (default: $SWITCHYARD_ADMIN_TOKEN).", valueName: "token"))
    var token: String?

    @Flag(help: "Print again every --interval seconds until interrupted.")
    var watch = false

    @Option(parsing: .unconditional, help: ArgumentHelp("Seconds between prints with --watch (default: 2).", valueName: "seconds"), transform: seconds)
    var interval: Double?

    /// The wait between prints: --interval, or 2 seconds.
    private var pause: Duration { .milliseconds(Int((interval ?? 2) * 1000)) }

    @Flag(help: "Print JSON (one array per print).")
    var json = false

    @Flag(help: "Per channel and subscriber group: depth, waiting and in-flight of every channel each transport holds.")
    var channels = false

    func validate() throws {
        guard (url == nil) != (search.config == nil) else {
            throw ValidationError(
                url == nil
                    ? "name a config file (--config FILE) or an admin endpoint (--url URL)"
                    : "name a config file (--config FILE) or an admin endpoint (--url URL), not both: --url reads a running system, --config its files")
        }
        if let interval {
            guard watch else { throw ValidationError("--interval sets the wait between prints of --watch: add --watch, or drop --interval") }
            guard interval.isFinite, (0.1...86_400).contains(interval) else { throw ValidationError("--interval must be between 0.1 and 86400 seconds") }
        }
        if let url, EndpointStats.baseAddress(url) == nil {
            throw ValidationError("--url \(url): expected an endpoint's address such as http://127.0.0.1:9464")
        }
    }

    func run() async throws {
        do {
            try await report()
        } catch let error as StatsError {
            printError("error: \(error.message)")
            throw ExitCode(1)
        }
    }

    private func report() async throws {
        let source: any StatsSource = try url.map { try EndpointStats(base: $0, token: token) } ?? ConfigStats(search: search)
        defer { source.close() }
        var previous: (at: Date, transports: [SystemOverview.TransportInfo])?
        repeat {
            if channels {
                let held = try await source.readChannels()
                if json {
                    print(try Self.snakeCaseJSON(held))
                } else {
                    print(Self.render(channels: held))
                }
                fflush(nil)
                if watch { try await Task.sleep(for: pause) }
                continue
            }
            let now = Date()
            let transports = try await source.read()
            if json {
                print(try Self.snakeCaseJSON(transports))
            } else {
                print(Self.render(transports, since: previous.map { (now.timeIntervalSince($0.at), $0.transports) }))
            }
            fflush(nil)
            previous = (now, transports)
            if watch { try await Task.sleep(for: pause) }
        } while watch
    }

    /// JSON with the admin API's names (dead_lettered, in_flight), so one reader serves both.
    static func snakeCaseJSON(_ value: some Encodable) throws -> String {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    /// The per-channel table: one row per transport and channel (and group), a transport whose
    /// channels could not be read as one row with the reason.
    static func render(channels held: [SystemOverview.TransportChannels]) -> String {
        var rows: [[String]] = []
        for transport in held {
            guard let channels = transport.channels else {
                rows.append([transport.transport, "–", "", "–", "–", "–", transport.note ?? ""])
                continue
            }
            if channels.isEmpty { rows.append([transport.transport, "(none)", "", "0", "0", "0", "holds no message"]) }
            for one in channels {
                rows.append([transport.transport, one.channel, one.group, String(one.depth), String(one.waiting), String(one.inFlight), ""])
            }
        }
        return ISO8601DateFormatter().string(from: Date()) + "\n"
            + table(["TRANSPORT", "CHANNEL", "GROUP", "DEPTH", "WAITING", "IN-FLIGHT", "NOTE"], rows)
    }

    /// The table; rates from `since` (seconds ago, and what was read then), or "…" on the first print.
    static func render(_ transports: [SystemOverview.TransportInfo], since: (seconds: Double, transports: [SystemOverview.TransportInfo])?) -> String {
        let rows = transports.map { info -> [String] in
            let stats = info.stats
            func rate(_ value: KeyPath<TransportStats, UInt64>) -> String {
                guard let since, let now = stats, let then = since.transports.first(where: { $0.name == info.name })?.stats, since.seconds > 0 else { return "…" }
                let delta = now[keyPath: value] >= then[keyPath: value] ? now[keyPath: value] - then[keyPath: value] : 0
                return String(format: "%.1f", Double(delta) / since.seconds)
            }
            func count(_ value: KeyPath<TransportStats, UInt64>) -> String { stats.map { String($0[keyPath: value]) } ?? "–" }
            return [
                info.name, info.chain.joined(separator: " → "), info.engine, count(\.depth), count(\.inFlight), rate(\.published), rate(\.acked),
                count(\.published), count(\.acked), count(\.retried), count(\.deadLettered), info.statsError ?? "",
            ]
        }
        let stamp = ISO8601DateFormatter().string(from: Date())
        return stamp + "\n"
            + table(
                ["TRANSPORT", "PLUGINS", "ENGINE", "DEPTH", "IN-FLIGHT", "PUBLISHED/S", "ACKED/S", "PUBLISHED", "ACKED", "RETRIED", "DEAD-LETTERED", "NOTE"],
                rows)
    }
}

/// Why `switchyard stats` could not read, with what to do.
struct StatsError: Error {
    let message: String
}

/// Where `switchyard stats` reads from.
protocol StatsSource: Sendable {
    func read() async throws -> [SystemOverview.TransportInfo]
    /// What each transport holds per channel (`--channels`).
    func readChannels() async throws -> [SystemOverview.TransportChannels]
    func close()
}

/// The config's transports, opened here.
final class ConfigStats: StatsSource {
    let config: SwitchyardConfig
    let transports: TransportSet

    init(search: PluginSearchOptions) throws {
        config = try search.loadConfig()
        guard !config.transports.isEmpty else { throw StatsError(message: "\(search.config ?? "the config") configures no transports") }
        // A transport no route uses has no file until something does: it is left out, said so,
        // rather than created here. Nothing to open at all is an error.
        let missing = config.missingStores(of: config.transports.map(\.name))
        let opened = config.transports.map(\.name).filter { name in !missing.contains { $0.transport == name } }
        guard !opened.isEmpty else { throw StatsError(message: SwitchyardConfig.noStore(missing[0].path, transport: missing[0].transport)) }
        for (name, path) in missing { printError("not opened: transport '\(name)' has no store at \(path) yet") }
        var quiet = Logger(label: "switchyard.plugins")
        quiet.logLevel = .error
        transports = try TransportSet.start(config, discovery: search.discovery(config), only: opened, logger: quiet)
    }

    func read() async throws -> [SystemOverview.TransportInfo] {
        transports.transports.values.sorted { $0.name < $1.name }.map { transport in
            var info = SystemOverview.TransportInfo(transport, config: config)
            // This command's own fresh instance of it: zeros that would read as "all consumed".
            if let note = notReadableHere(transport, command: "switchyard stats") {
                info.stats = nil
                info.statsError = note
            }
            return info
        }
    }

    func readChannels() async throws -> [SystemOverview.TransportChannels] {
        transports.transports.values.sorted { $0.name < $1.name }.map { transport in
            if let note = notReadableHere(transport, command: "switchyard stats --channels") {
                return SystemOverview.TransportChannels(transport: transport.name, note: note)
            }
            return SystemOverview.TransportChannels(transport)
        }
    }

    /// Why what `transport` holds cannot be read from this command's own instance of it, or nil
    /// when it can (a durable store, a shared engine): a fresh in-memory instance holds nothing.
    /// A chain that is not durable may keep its messages in memory too (a plugin that never
    /// declares durable, such as the C template's, cannot say). `command` is what to run against
    /// the process that holds them.
    func notReadableHere(_ transport: Transport, command: String) -> String? {
        let instead = "read it there: \(command) --url ADMIN-ENDPOINT"
        switch MessageHome(transport, config: config) {
        case .thisProcess: return "in memory: its messages live only in the process that runs it (\(instead))"
        case .maybeThisProcess(let chain):
            return "not durable (\(chain)): if it keeps its messages in memory, they live only in the process that runs it (\(instead))"
        case .shared: return nil
        }
    }

    func close() { transports.close() }
}

/// A running system's `GET /api/transports` (and `GET /api/channels`).
final class EndpointStats: StatsSource {
    /// The endpoint's address, without a trailing slash.
    let base: String
    let token: String?
    let session: URLSession

    /// `url` without a trailing slash, or nil when it is not an http(s) address.
    static func baseAddress(_ url: String) -> String? {
        let trimmed = url.hasSuffix("/") ? String(url.dropLast()) : url
        guard let parsed = URL(string: trimmed + "/api/transports"), parsed.scheme == "http" || parsed.scheme == "https", parsed.host != nil
        else { return nil }
        return trimmed
    }

    init(base: String, token: String?) throws {
        guard let trimmed = Self.baseAddress(base) else {
            throw StatsError(message: "--url \(base): expected an endpoint's address such as http://127.0.0.1:9464")
        }
        self.base = trimmed
        self.token = token ?? ProcessInfo.processInfo.environment[SwitchyardConfig.AdminSection.tokenVariable]
        session = URLSession(configuration: .ephemeral, delegate: RefuseChallenges(), delegateQueue: nil)
    }

    func read() async throws -> [SystemOverview.TransportInfo] { try await get("/api/transports") }

    func readChannels() async throws -> [SystemOverview.TransportChannels] { try await get("/api/channels") }

    /// `GET path`, decoded; every failure as a ``StatsError`` that says what to do.
    private func get<T: Decodable>(_ path: String) async throws -> T {
        var request = URLRequest(url: URL(string: base + path)!, timeoutInterval: 10)
        if let token, !token.isEmpty { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        let (data, response): (Data, URLResponse)
        do {
            (data, response) = try await session.data(for: request)
        } catch let error as URLError where error.code == .cancelled || error.code == .userAuthenticationRequired {
            // A 401 (Foundation reports the declined challenge, not the response).
            guard request.value(forHTTPHeaderField: "Authorization") == nil else {
                throw StatsError(
                    message: "\(request.url!.absoluteString): wrong token: pass the one that process serves with (its admin.token, or "
                        + "SWITCHYARD_ADMIN_TOKEN in its environment) with --token or SWITCHYARD_ADMIN_TOKEN here")
            }
            throw StatsError(message: "\(request.url!.absoluteString): the endpoint wants a token: pass --token or export SWITCHYARD_ADMIN_TOKEN")
        } catch {
            throw StatsError(message: "\(request.url!.absoluteString): \(error.localizedDescription) (is the system running with its admin endpoint on?)")
        }
        let status = (response as? HTTPURLResponse)?.statusCode ?? 0
        guard status == 200 else {
            let body = String(decoding: data, as: UTF8.self)
            let detail = body.count > 300 ? String(body.prefix(300)) + "…" : body
            var advice = status == 401 ? " (pass --token or export SWITCHYARD_ADMIN_TOKEN)" : ""
            if status == 404 {
                let basePath = URL(string: base)?.path ?? ""
                if !basePath.isEmpty && basePath != "/" {
                    advice = " (--url is the endpoint's base address, http://HOST:PORT, without a path: this command adds \(path))"
                } else if body.contains("no such endpoint:") && path == "/api/channels" {
                    // A Switchyard endpoint answers an unknown path so, with the list of its endpoints.
                    advice = " (that process runs a Switchyard release without \(path): upgrade it, or leave out --channels)"
                } else {
                    advice = " (is --url the address a switchyard process serves its admin endpoint on?)"
                }
            }
            throw StatsError(message: "\(request.url!.absoluteString) answered \(status): \(detail)\(advice)")
        }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        do {
            return try decoder.decode(T.self, from: data)
        } catch {
            throw StatsError(
                message: "\(request.url!.absoluteString) did not answer as a Switchyard admin endpoint of this "
                    + "version (\(error)): is --url the address a switchyard process serves its admin endpoint on?")
        }
    }

    func close() { session.invalidateAndCancel() }
}

/// Answers an HTTP authentication challenge by declining it, so a 401 comes back as a response
/// (Foundation on Linux waits forever on one when nobody answers the challenge).
final class RefuseChallenges: NSObject, URLSessionTaskDelegate, Sendable {
    func urlSession(
        _ session: URLSession, task: URLSessionTask, didReceive challenge: URLAuthenticationChallenge,
        completionHandler: @escaping @Sendable (URLSession.AuthChallengeDisposition, URLCredential?) -> Void
    ) {
        completionHandler(.cancelAuthenticationChallenge, nil)
    }
}
