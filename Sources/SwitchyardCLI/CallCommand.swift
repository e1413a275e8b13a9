import ArgumentParser
import Foundation
import Logging
import SwitchyardConfig
import SwitchyardNative
import SwitchyardRuntime

/// `switchyard call`: invoke a native function through its route, or one function directly.
struct CallCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "call",
        abstract: "Call a routed native function or a Swift method by its readable name, or one native function directly.",
        discussion: """
            switchyard call --config FILE ROUTE ARG...   calls ROUTE (e.g. Math.add) the way the \
            config routes it — through a queue, a topic, a delay or directly — and prints the result.
            For a native module's function, arguments are parsed by the function's signature \
            (docs/native-modules.md): integers in range, f32/f64 numbers, true/false, str as text, \
            bytes as hex. For a Swift method (Inventory.reserve, or Inventory.reserve(sku:qty:)) on a \
            route with readable_targets: true and encoding: json, each argument is JSON (a string is \
            quoted: '"widget"') and --actor names the actor (default: the interface, first letter \
            lowercased); the result prints as JSON.
            --header NAME=VALUE adds a header to a routed call, as CallOptions(headers:) does in Swift.
            On a fire-and-forget route the call returns once its transport has it. Through a \
            transport that keeps messages in this command's memory a call would reach no host, so \
            it is refused before anything is sent (the bundled queue or topic without a path), or, \
            through a plugin that is not durable, warned about (fire-and-forget) or explained when \
            it times out (request-reply).
            switchyard call --native LIB.so --symbol NAME --signature 'SIG' ARG...   calls one \
            exported function directly, for trying a module out.
            A bad signature, module, symbol, route or argument exits 1 with the reason; options \
            that do not go together (--native with --config, --symbol without --native) exit 64.
            """)

    @Option(help: ArgumentHelp("The config file (routes and native modules).", valueName: "file"))
    var config: String?

    @Option(name: [.customLong("plugins-dir")], help: ArgumentHelp("A directory to search for plugins first (repeatable).", valueName: "dir"))
    var pluginDirectories: [String] = []

    @Option(help: ArgumentHelp("For a Swift method: the actor id to call (default: the interface, first letter lowercased).", valueName: "id"))
    var actor: String?

    @Option(
        name: .customLong("header"),
        help: ArgumentHelp(
            "A header for a routed call, NAME=VALUE (repeatable): what CallOptions(headers:) sets, on the wire as ce-NAME.",
            valueName: "name=value"))
    var headers: [String] = []

    @Option(help: ArgumentHelp("Call one function of this native module directly.", valueName: "lib.so"))
    var native: String?

    @Option(help: ArgumentHelp("With --native: the exported function.", valueName: "name"))
    var symbol: String?

    @Option(help: ArgumentHelp("With --native: its signature, e.g. 'f64(i32, f64)'.", valueName: "sig"))
    var signature: String?

    @Option(help: ArgumentHelp("With --native, for a str result: the module's function that frees it.", valueName: "name"))
    var free: String?

    @Argument(parsing: .allUnrecognized, help: "ROUTE then its arguments (with --config), or the arguments (with --native).")
    var arguments: [String] = []

    /// Usage errors, refused before anything loads (exit 64, as every command's are).
    func validate() throws {
        // Options ArgumentParser does not know land in `arguments` (it takes them all): a
        // mistyped one before the route would be read as the route.
        if native == nil, let first = arguments.first, first.hasPrefix("--"), first != "--" {
            throw ValidationError(UnknownOption.describe(String(first.prefix { $0 != "=" }), for: Self.self))
        }
        if let native {
            guard config == nil else {
                throw ValidationError("--native \(native) calls one function directly, without a config: drop --config (or drop --native to call through the config's routes)")
            }
            guard symbol != nil, signature != nil else {
                throw ValidationError("--native needs --symbol and --signature, e.g. --native \(native) --symbol add --signature 'i32(i32, i32)' 1 2")
            }
            guard headers.isEmpty else { throw ValidationError("--header is for a routed call (--config); a function called with --native gets only its arguments") }
            guard actor == nil else { throw ValidationError("--actor is for a Swift method's route (--config); a function called with --native has no actor") }
        } else {
            let directOnly = [("--symbol", symbol), ("--signature", signature), ("--free", free)].filter { $0.1 != nil }.map(\.0)
            guard directOnly.isEmpty else {
                throw ValidationError(
                    "\(directOnly.joined(separator: ", ")) \(directOnly.count == 1 ? "is" : "are") for --native LIB.so (one function called directly); a routed call's signature comes from its config"
                )
            }
            guard let config else { throw ValidationError("give --config FILE and a route (or --native LIB.so)") }
            guard arguments.contains(where: { $0 != "--" }) else {
                throw ValidationError("which route? e.g. switchyard call --config \(config) Math.add 1 2")
            }
        }
    }

    func run() async throws {
        // `--` ends the options, before the route or after it (`Math.neg -- -7`, for a negative
        // number that would read as an option): it is no argument.
        var arguments = self.arguments
        if let separator = arguments.prefix(2).firstIndex(of: "--") { arguments.remove(at: separator) }
        // Before the call creates them: a mistyped path makes a new, empty store, where the call
        // waits for a host that reads another file.
        let newStores = config.flatMap { try? SwitchyardConfig.load(path: $0) }.map { Self.storesNotYetCreated(route: arguments.first ?? "", in: $0) } ?? []
        do {
            if let native {
                try callDirectly(native, arguments)
            } else {
                try await callRoute(arguments)
            }
        } catch let error as NativeCallError {
            printError("error: \(error)")
            throw ExitCode(1)
        } catch let timedOut as TimedOutInProcess {
            printError("error: \(timedOut.error)")
            printError(timedOut.note)
            // A transport that may keep its messages in memory: the usual causes too.
            if let config { printTimeoutHints(arguments, config: config, newStores: newStores) }
            throw ExitCode(1)
        } catch let error as SwitchyardError {
            printError("error: \(error)")
            if error.code == .timeout, let config { printTimeoutHints(arguments, config: config, newStores: newStores) }
            throw ExitCode(1)
        }
    }

    /// What to check after a call through a transport timed out: a host to start, or a store the
    /// call itself created (a mistyped path).
    private func printTimeoutHints(_ arguments: [String], config: String, newStores: [(transport: String, path: String)]) {
        // Through a transport the call waits for a host; with none there, it times out.
        // switchyard run serves native modules only: a Swift method's host is the application.
        let interface = String((arguments.first ?? "").prefix { $0 != "." })
        let parsed = try? SwitchyardConfig.load(path: config)
        if parsed?.native.contains(where: { $0.interface == interface }) == true {
            printError("(switchyard run --config \(config) serves the native modules the config declares)")
        } else {
            let id = actor ?? interface.prefix(1).lowercased() + interface.dropFirst()
            printError("(is the application that hosts actor '\(id)' running, and reading this route's transport? --actor names another id)")
        }
        // A relative store path is the plugin's, resolved against each process's working
        // directory: a host started elsewhere reads another file.
        if let parsed, let entry = Self.routeEntry(in: parsed, target: arguments.first ?? "") {
            for (transport, path) in parsed.configuredStores(of: entry.transport) where !path.hasPrefix("/") && !newStores.contains(where: { $0.path == path }) {
                printError(
                    "(transport '\(transport)' keeps its messages in \(path), relative to the working directory "
                        + "(\(FileManager.default.currentDirectoryPath)): the host must open the same file, so start it from the same "
                        + "directory, or give the path as an absolute one)")
            }
        }
        for (transport, path) in newStores {
            printError(
                "(transport '\(transport)' keeps its messages in \(path), which did not exist before this call: it was created for it, and the "
                    + "call waits there for a host using the same file; check the path against the application's config)")
        }
    }

    private func callDirectly(_ library: String, _ arguments: [String]) throws {
        guard let symbol, let signature else { throw NativeCallError("--native needs --symbol and --signature") }  // validate() says so first
        let parsed = try parse(signature)
        let values = try parsed.values(parsing: arguments, name: symbol)
        let function = try NativeFunction(library: try NativeLibrary(path: library), symbol: symbol, signature: parsed, free: free)
        let result = try function.call(values)
        if result != .void { print(result) }
    }

    private func callRoute(_ arguments: [String]) async throws {
        guard let config else { throw NativeCallError("give --config FILE and a route (or --native LIB.so)") }
        guard let route = arguments.first else { throw NativeCallError("which route? e.g. switchyard call --config \(config) Math.add 1 2") }
        // Refused before anything starts or is published: only a native module's function can be
        // called from here (a Swift method's arguments need its compiled types), and a call on a
        // channel nobody serves would wait out its deadline and stay queued for ever.
        let parsed = try readConfig(config)
        let parts = route.split(separator: ".", maxSplits: 1).map(String.init)
        guard parts.count == 2, parsed.native.contains(where: { $0.interface == parts[0] }) else {
            if parts.count == 2, Self.routeEntry(in: parsed, target: route)?.readableTargets != nil {
                return try await callSwift(route, Array(arguments.dropFirst()), interface: parts[0], config: parsed)
            }
            let modules = parsed.native.map(\.interface)
            // Route names are case-sensitive: "math.cos" for Math.cos is the usual slip.
            if parts.count == 2, let meant = parsed.native.first(where: { $0.interface.lowercased() == parts[0].lowercased() }),
                let function = meant.functions.first(where: { $0.name.lowercased() == parts[1].lowercased() })
            {
                throw NativeCallError(
                    "'\(route)' is not a function of a native module in \(config); did you mean '\(meant.interface).\(function.name)'? (names are case-sensitive) Nothing was sent."
                )
            }
            throw NativeCallError(
                """
                '\(route)' is not a function of a native module in \(config) (native modules: \(modules.isEmpty ? "none" : modules.joined(separator: ", "))), \
                and its route takes no calls by readable name; nothing was sent. switchyard call calls C functions served as \
                native modules (docs/native-modules.md), and Swift methods on routes with readable_targets: true and \
                encoding: json (docs/services.md, "Calls by readable name").
                """)
        }
        // A function the module does not declare: the host would refuse it (and dead-letter the
        // call), so it is refused here, before anything is sent.
        if let module = parsed.native.first(where: { $0.interface == parts[0] }), !module.functions.contains(where: { $0.name == parts[1] }) {
            throw NativeCallError(
                "native module '\(parts[0])' has no function '\(parts[1])' in \(config) (it has \(module.functions.map(\.name).sorted().joined(separator: ", "))); nothing was sent"
            )
        }
        var logger = Logger(label: "switchyard.call")
        logger.logLevel = .warning
        let system = try startSystem(config: parsed, pluginDirectories: pluginDirectories, logger: logger)
        do {
            // Typed by the signature in the config when the function is declared there.
            let result = try await routed(route, config: parsed, system: system) { try await system.callNative(route, texts: Array(arguments.dropFirst())) }
            await system.shutdown(deadline: .seconds(2))
            if result != .void { print(result) }
        } catch {
            let inProcess = Self.timedOutInProcess(error, route: route, config: parsed, system: system)
            await system.shutdown(deadline: .seconds(2))
            throw inProcess ?? error
        }
    }

    /// A call that timed out on a transport whose messages may stay in this process (a plugin
    /// that is not durable; one that surely keeps them here is refused before sending): that is
    /// the first thing to check.
    struct TimedOutInProcess: Error {
        let error: SwitchyardError
        let note: String
    }

    /// ``TimedOutInProcess`` when `error` is a time-out and the route's transport is not durable
    /// (a plugin of one's own that may keep its messages in memory); nil otherwise.
    static func timedOutInProcess(_ error: any Error, route: String, config: SwitchyardConfig, system: SwitchyardActorSystem) -> TimedOutInProcess? {
        guard let error = error as? SwitchyardError, error.code == .timeout,
            let inProcess = inProcess(route: route, config: config, system: system)
        else { return nil }
        return TimedOutInProcess(error: error, note: "(\(inProcess.note))")
    }

    /// Why a call from this command through `route`'s transport reaches no host elsewhere, when
    /// it does not (`certain`: the bundled queue or topic without a path) or may not (a plugin
    /// that is not durable); nil for a durable transport.
    static func inProcess(route: String, config: SwitchyardConfig, system: SwitchyardActorSystem) -> (note: String, certain: Bool)? {
        guard let entry = routeEntry(in: config, target: route), let home = system.messageHome(ofTransport: entry.transport) else { return nil }
        let instead = "call through the running host's admin endpoint instead (POST /api/call, docs/operations.md)"
        switch home {
        case .thisProcess:
            return (
                "transport '\(entry.transport)' keeps its messages in the memory of the process that creates it, here this command: "
                    + "no host in another process can read the call. Give it a path: (a store both processes open), or \(instead)",
                true
            )
        case .maybeThisProcess(let chain):
            return (
                "transport '\(entry.transport)' (\(chain)) is not durable: if its plugin keeps messages in "
                    + "memory, only the process that creates it sees them, and a call from this command reaches no host; \(instead)",
                false
            )
        case .shared: return nil
        }
    }

    /// The route entry a call to `interface.method` takes (first exact, then `Interface.*`, then `*`).
    static func routeEntry(in config: SwitchyardConfig, interface: String, method: String) -> SwitchyardConfig.RouteEntry? {
        config.routes.first { $0.pattern == "\(interface).\(method)" } ?? config.routes.first { $0.pattern == "\(interface).*" }
            ?? config.routes.first { $0.pattern == "*" }
    }

    /// The stores (a transport's `path`) of the transport `route` takes, or of one it wraps, that
    /// do not exist yet: a call through one waits in a file that no running host reads.
    static func storesNotYetCreated(route: String, in config: SwitchyardConfig) -> [(transport: String, path: String)] {
        guard let entry = routeEntry(in: config, target: route) else { return [] }
        return config.missingStores(of: [entry.transport])
    }

    /// The route entry of a readable target, `Interface.method` or `Interface.method(labels:)`;
    /// nil when it names no method or no route matches.
    static func routeEntry(in config: SwitchyardConfig, target: String) -> SwitchyardConfig.RouteEntry? {
        let parts = target.split(separator: ".", maxSplits: 1).map(String.init)
        guard parts.count == 2 else { return nil }
        return routeEntry(in: config, interface: parts[0], method: String(parts[1].prefix { $0 != "(" }))
    }

    /// A Swift method by its readable name, each argument JSON, on `--actor` (default: the
    /// interface with its first letter lowercased); prints the result as JSON.
    private func callSwift(_ target: String, _ arguments: [String], interface: String, config: SwitchyardConfig) async throws {
        var logger = Logger(label: "switchyard.call")
        logger.logLevel = .warning
        let system = try startSystem(config: config, pluginDirectories: pluginDirectories, logger: logger)
        let id = actor ?? interface.prefix(1).lowercased() + interface.dropFirst()
        do {
            let result = try await routed(target, config: config, system: system) { try await system.callReadable(target, actor: id, argumentsJSON: arguments) }
            await system.shutdown(deadline: .seconds(2))
            if !result.isEmpty && result != "null" { print(result) }
        } catch {
            let inProcess = Self.timedOutInProcess(error, route: target, config: config, system: system)
            await system.shutdown(deadline: .seconds(2))
            throw inProcess ?? error
        }
    }

    /// The call's options: `--header`s.
    private func callOptions() throws(NativeCallError) -> CallOptions {
        var parsed: [String: String] = [:]
        for header in headers {
            guard let equals = header.firstIndex(of: "="), equals != header.startIndex else {
                throw NativeCallError("--header '\(header)': give NAME=VALUE, e.g. --header priority=9")
            }
            parsed[String(header[..<equals])] = String(header[header.index(after: equals)...])
        }
        let options = CallOptions(headers: parsed)
        if let problem = options.problem { throw NativeCallError("--header: \(problem)") }
        return options
    }

    /// Runs `call` with the call's options; through a transport that keeps its messages in this
    /// process, refuses before sending (memory), or for a fire-and-forget call warns after (a
    /// plugin that is not durable): the call would reach no host.
    private func routed<R>(
        _ target: String, config: SwitchyardConfig, system: SwitchyardActorSystem, _ call: () async throws -> R
    ) async throws -> R {
        let options = try callOptions()
        let entry = Self.routeEntry(in: config, target: target)
        if !headers.isEmpty, entry?.transport == SwitchyardConfig.RouteEntry.direct {
            printError("warning: --header has no effect on a direct route: the call runs in this process, and no transport carries it")
        }
        let fireAndForget = entry?.mode == .fireAndForget
        let inProcess = Self.inProcess(route: target, config: config, system: system)
        // Certain (the bundled queue or topic without a path): no other process can read it, so
        // nothing is sent, rather than a request-reply call waiting out its whole deadline first.
        if let inProcess, inProcess.certain {
            let what = fireAndForget ? "is fire-and-forget" : "would wait for a reply that no host can send"
            throw NativeCallError("'\(target)' \(what), and nothing was sent: \(inProcess.note)")
        }
        let result = try await Switchyard.withCallOptions(options) { try await call() }
        // Uncertain (a plugin that is not durable): a request-reply call that times out says so
        // (``timedOutInProcess``); a fire-and-forget one has nobody waiting, so it is said now.
        if let inProcess, fireAndForget { printError("warning: sent, but \(inProcess.note)") }
        return result
    }

    private func parse(_ signature: String) throws(NativeCallError) -> NativeSignature {
        do {
            return try NativeSignature(parsing: signature)
        } catch {
            throw NativeCallError("bad signature, \(error)")
        }
    }
}
