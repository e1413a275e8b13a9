import FlyingFox
import Foundation
import SwitchyardABI
import SwitchyardRuntime

/// Dead letters over HTTP: `GET /api/dead-letters` lists the channels,
/// `GET /api/dead-letters/TRANSPORT/CHANNEL` the letters, decoded, and
/// `POST …/replay` and `POST …/purge` act on some (`{"ids": [...]}`) or all (`{"all": true}`),
/// on a topic optionally one subscriber group's copies only (`"group": "G"`: an id several groups
/// dead-lettered needs it); replay takes `"fire_and_forget": true` for calls whose callers are gone. The page at
/// `/dead-letters/TRANSPORT/CHANNEL` does the same with forms. Acting always needs the token.
struct DeadLetterEndpoints {
    let system: SwitchyardActorSystem
    let token: String?

    /// What a replay or purge acts on: `ids`, or `all`, each narrowed to one topic subscriber
    /// group's copies by `group`; and `letters`, single copies the page's rows name (a row's
    /// checkbox carries its group).
    struct Selection: Decodable {
        var ids: [String]?
        var all: Bool?
        var group: String?
        var letters: [Copy]?
        var fireAndForget: Bool?

        /// One subscriber group's dead letter of message `id` (`default`: an actor hosted without a group).
        struct Copy: Codable, Equatable {
            var id: String
            var group: String
        }

        func picks(_ letter: DeadLetterBrowser.Letter) -> Bool {
            let m = letter.message
            if let letters, letters.contains(where: { $0.id == m.id && DeadLetterBrowser.isCopy(m, of: $0.group) }) { return true }
            guard all == true || (ids ?? []).contains(m.id) else { return false }
            return group.map { DeadLetterBrowser.isCopy(m, of: $0) } ?? true
        }

        /// The ids named without a group (the ones that may be ambiguous on a topic).
        var idsWithoutGroup: [String] { group == nil ? ids ?? [] : [] }

        /// Every id named, for the `missing` report.
        var namedIDs: [String] { (ids ?? []) + (letters ?? []).map(\.id) }
    }

    /// The outcome of a replay or purge.
    struct Outcome: Encodable {
        var action: String
        var done: Int
        var missing: [String]
        var warnings: [String]
    }

    /// `/api/dead-letters…` and `/dead-letters/…`; nil when `segments` is neither.
    func handle(_ request: HTTPRequest, _ segments: [String]) async -> HTTPResponse? {
        let api = segments.first == "api"
        let rest = api ? Array(segments.dropFirst()) : segments
        guard rest.first == "dead-letters" else { return nil }
        let path = Array(rest.dropFirst())
        // The paths that exist: the list, a channel's letters, and its replay and purge. Any
        // other is 404 whatever the method; on these, a method the path does not take is 405.
        let acts = path.count == 3 && (path[2] == "replay" || path[2] == "purge")
        guard path.count == 0 || path.count == 2 || acts else {
            return AdminHandler.noSuchEndpoint(
                request, besides: "dead letters are GET /api/dead-letters/TRANSPORT/CHANNEL and POST …/TRANSPORT/CHANNEL/replay or …/purge")
        }
        switch (request.method, path.count) {
        case (.GET, 0) where api:
            return AdminHandler.encoded(system.overview().deadLetters)
        case (.GET, 0):
            // The overview's "open a channel" form: /dead-letters?transport=T&channel=C.
            let transport = request.query.first { $0.name == "transport" }?.value ?? ""
            let channel = request.query.first { $0.name == "channel" }?.value ?? ""
            guard !transport.isEmpty, !channel.isEmpty else {
                return AdminHandler.json(.badRequest, ["error": "name a transport and a channel: /dead-letters?transport=T&channel=C"])
            }
            return HTTPResponse(
                statusCode: .seeOther, headers: [.location: "/dead-letters/\(Self.escapePath(transport))/\(Self.escapePath(channel))"], body: Data())
        case (.GET, 2):
            let note = request.query.first { $0.name == "note" }?.value
            return await list(transport: path[0], channel: path[1], page: !api, note: note)
        case (.POST, 3) where acts:
            if let refusal = changeRefusal(request) { return refusal }
            let form = !api
            var selection: Selection
            do {
                selection = try await Self.selection(of: request, form: form)
            } catch {
                return AdminHandler.json(.badRequest, ["error": "\(error)"])
            }
            guard selection.all == true || !selection.namedIDs.isEmpty else {
                return AdminHandler.json(.badRequest, ["error": #"say which dead letters: {"ids": ["…"]} or {"all": true}"#])
            }
            // Ids and "all" together: a program that sent both is refused (all would have acted on
            // the whole channel without a word); on the page, its "all N" box says what it does.
            if selection.all == true && !selection.namedIDs.isEmpty {
                guard form else { return AdminHandler.json(.badRequest, ["error": #"name ids or "all", not both"#]) }
                selection.ids = nil
                selection.letters = nil
            }
            let outcome = await act(path[2], on: selection, transport: path[0], channel: path[1])
            switch outcome {
            case .failure(let error):
                return AdminHandler.json(error.code == .notFound ? .notFound : .badRequest, ["error": error.message])
            case .success(let outcome) where form:
                // Back to the page, which says what happened (Post/Redirect/Get).
                let note = "\(outcome.action) \(outcome.done)" + (outcome.warnings.isEmpty ? "" : "; " + outcome.warnings.joined(separator: "; "))
                var components = URLComponents()
                components.path = "/dead-letters/\(Self.escapePath(path[0]))/\(Self.escapePath(path[1]))"
                components.queryItems = [URLQueryItem(name: "note", value: note)]
                return HTTPResponse(statusCode: .seeOther, headers: [.location: components.string ?? "/"], body: Data())
            case .success(let outcome):
                return AdminHandler.encoded(outcome)
            }
        case _ where acts:
            return AdminHandler.methodNotAllowed(
                allow: "POST",
                "\(request.method.rawValue) \(request.path): POST it, with the token and a body like {\"ids\": [\"…\"]} or {\"all\": true}")
        default:
            return AdminHandler.methodNotAllowed(
                allow: "GET, HEAD",
                "\(request.method.rawValue) \(request.path): this only reads (GET); POST to …/TRANSPORT/CHANNEL/replay or …/purge")
        }
    }

    /// Replay, purge and calls change state: they need the token even on loopback, and a form must come
    /// from this endpoint's own page (a page elsewhere must not post here with the browser's
    /// credentials). `Origin: null` is foreign too: browsers send it from sandboxed frames and
    /// `data:` or `file:` pages, which a page elsewhere can make.
    func changeRefusal(_ request: HTTPRequest) -> HTTPResponse? {
        guard token != nil else {
            return AdminHandler.json(
                .forbidden,
                [
                    "error":
                        "this changes state (replaying or purging dead letters, calling a method), so it needs a token: restart the process "
                        + "with SWITCHYARD_ADMIN_TOKEN exported (or, for switchyard run and console, admin.token in its config); from a shell: "
                        + "switchyard dlq replay|purge, switchyard call"
                ])
        }
        if let origin = request.headers[HTTPHeader("Origin")],
            let host = request.headers[.host],
            URL(string: origin)?.host.map({ originHost in
                let port = URL(string: origin)?.port.map { ":\($0)" } ?? ""
                return originHost + port == host || "[\(originHost)]" + port == host
            }) != true
        {
            return AdminHandler.json(.forbidden, ["error": "a form from \(origin) may not act on this endpoint"])
        }
        return nil
    }

    func list(transport: String, channel: String, page: Bool, note: String? = nil) async -> HTTPResponse {
        let letters: DeadLetterBrowser
        do {
            letters = try await system.deadLetters(transport: transport, channel: channel)
        } catch let error as TransportError {
            return AdminHandler.json(error.code == .notFound ? .notFound : .badRequest, ["error": error.message])
        } catch {
            return AdminHandler.json(.internalServerError, ["error": "\(error)"])
        }
        let records = letters.letters.map { DeadLetterRecord($0.message) }
        let deadLetterChannel = letters.channel
        await close(letters)
        // As many as one browser holds: say so when there may be more (replay and purge with
        // "all" go on past it).
        let truncated =
            records.count >= DeadLetterBrowser.defaultLimit
            ? "showing the first \(records.count) dead letters; there may be more (replay or purge of all goes on past them)" : nil
        if page {
            let notes = [note, truncated].compactMap { $0 }
            return AdminHandler.page(
                DeadLetterPage.render(
                    transport: transport, channel: channel, deadLetterChannel: deadLetterChannel, records: records, canAct: token != nil,
                    note: notes.isEmpty ? nil : notes.joined(separator: "; ")))
        }
        var response = AdminHandler.encoded(records)
        if let truncated { response.headers[HTTPHeader("X-Switchyard-Truncated")] = truncated }
        return response
    }

    /// Replays or purges what `selection` picks: with `all`, in passes until the channel holds
    /// no more (``DeadLetterBrowser/inPasses(all:limit:open:picks:_:)``, as `switchyard dlq` does),
    /// not only the first browser's worth.
    func act(_ action: String, on selection: Selection, transport: String, channel: String) async -> Result<Outcome, TransportError> {
        let fireAndForget = selection.fireAndForget == true
        return await Self.offPool { [system] in
            var outcome = Outcome(action: action == "replay" ? "replayed" : "purged", done: 0, missing: [], warnings: [])
            do {
                // On a topic each subscriber group's dead letter of a message has its id: an id
                // named without a group that several groups dead-lettered would act on each copy.
                if !selection.idsWithoutGroup.isEmpty {
                    let letters = try system.openDeadLetters(transport: transport, channel: channel)
                    let ambiguous = letters.idsOfSeveralGroups(selection.idsWithoutGroup)
                    letters.close()
                    if let named = ambiguous {
                        return .failure(
                            TransportError(
                                .invalidArgument,
                                "each subscriber group has its own dead letter of \(named): name the group whose copy to act on, "
                                    + #"{"ids": ["…"], "group": "G"} (the page's rows each act on their own group's copy); nothing was done"#))
                    }
                }
                let passes = try DeadLetterBrowser.inPasses(
                    all: selection.all == true, limit: DeadLetterBrowser.defaultLimit,
                    open: { body in
                        let letters = try system.openDeadLetters(transport: transport, channel: channel)
                        defer { letters.close() }
                        try body(letters)
                    },
                    picks: selection.picks
                ) { letters, letter in
                    if action == "replay" {
                        if let call = try letters.replay(letter, asFireAndForget: fireAndForget) {
                            outcome.warnings.append(
                                "\(call) is a request-reply call whose caller's deadline has passed: the receiver will dead-letter it again "
                                    + "as expired; replay it as fire-and-forget to run it with nobody waiting for the result")
                        }
                    } else {
                        try letters.purge(letter)
                    }
                    outcome.done += 1
                }
                outcome.missing = selection.namedIDs.filter { !passes.ids.contains($0) }
            } catch let error as TransportError {
                // Nothing done yet: the transport's own error (an unknown transport is not found).
                if outcome.done == 0 { return .failure(error) }
                return .failure(TransportError(error.code, "\(outcome.action) \(outcome.done), then: \(error.message)"))
            } catch {
                return .failure(TransportError(.io, "\(outcome.action) \(outcome.done), then: \(error)"))
            }
            return .success(outcome)
        }
    }

    /// Closes the browser off the cooperative pool (unsubscribing may wait for the plugin).
    func close(_ letters: DeadLetterBrowser) async {
        await Self.offPool { letters.close() }
    }

    static func offPool<R: Sendable>(_ work: @escaping @Sendable () -> R) async -> R {
        await withCheckedContinuation { continuation in
            Thread { continuation.resume(returning: work()) }.start()
        }
    }

    /// The selection in a JSON body, or in a form (`ids=a&ids=b`, `letter={"id":…,"group":…}` for
    /// one group's copy, `group=G`, `all=1`, `fire_and_forget=1`).
    static func selection(of request: HTTPRequest, form: Bool) async throws -> Selection {
        let body = try await request.bodyData
        // The page posts forms; programs post JSON, whatever Content-Type they say (curl -d says
        // it is a form).
        let isBlank = { (byte: UInt8) in [0x20, 0x09, 0x0A, 0x0D].contains(byte) }
        let looksLikeJSON = body.first(where: { !isBlank($0) }) == UInt8(ascii: "{")
        if form || !looksLikeJSON {
            var selection = Selection()
            let fields = Self.formFields(body)
            // A program's body that is neither JSON nor a form naming what to act on: say that,
            // not "say which dead letters" (a typo in the JSON reads as a form of nothing).
            if !form && !body.allSatisfy(isBlank)
                && !fields.contains(where: { ["ids", "letter", "all"].contains($0.key) })
            {
                throw AdminError(
                    #"the body is not JSON (it does not start with "{") nor a form with ids= or all=: send JSON like {"ids": ["id-1"]} or {"all": true}"#)
            }
            for (key, value) in fields {
                switch key {
                case "ids": selection.ids = (selection.ids ?? []) + [value]
                case "letter":
                    // The page's row of one group's copy, as JSON (a group name may hold any character).
                    guard let copy = try? JSONDecoder().decode(Selection.Copy.self, from: Data(value.utf8)) else {
                        throw AdminError(#"a letter field must be JSON like {"id": "id-1", "group": "email"}"#)
                    }
                    selection.letters = (selection.letters ?? []) + [copy]
                case "group": selection.group = value.isEmpty ? nil : value
                case "all": selection.all = value == "1" || value == "true"
                case "fire_and_forget": selection.fireAndForget = value == "1" || value == "true"
                default: break
                }
            }
            return selection
        }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        do {
            return try decoder.decode(Selection.self, from: body)
        } catch {
            throw AdminError(#"the body must be JSON like {"ids": ["id-1"]}, {"ids": ["id-1"], "group": "email"} or {"all": true, "fire_and_forget": true}"#)
        }
    }

    /// The fields of an `application/x-www-form-urlencoded` body, in order (names repeat).
    static func formFields(_ body: Data) -> [(key: String, value: String)] {
        String(decoding: body, as: UTF8.self).split(separator: "&").compactMap { pair in
            let parts = pair.split(separator: "=", maxSplits: 1).map {
                String($0).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String($0)
            }
            guard let key = parts.first else { return nil }
            return (key, parts.count > 1 ? parts[1] : "")
        }
    }

    /// One path segment, percent-escaped.
    static func escapePath(_ segment: String) -> String {
        segment.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? segment
    }
}
