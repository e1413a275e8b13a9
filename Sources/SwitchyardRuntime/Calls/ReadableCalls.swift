import Foundation
import SwitchyardWire

extension SwitchyardActorSystem {
    /// Calls a hosted Swift method by its readable name — `Inventory.reserve(sku:qty:)`, or
    /// `Inventory.reserve` when no other method has that base name — on the actor `actor`, with
    /// each argument as JSON text, through the method's route: what `switchyard call` does, and
    /// what any CloudEvents producer can do (docs/services.md, "Calls by readable name").
    ///
    /// The route must set `readable_targets` and `encoding: json`, and have a transport: the
    /// receiver maps the name to its hosted protocol's own method (never to one named on the
    /// wire) and decodes the arguments by that method's parameter types. Returns the result as
    /// JSON text, or "" for a `Void` method and a fire-and-forget route. Errors: `.routing` before
    /// anything is sent (no route, a direct route, a route without `readable_targets`, an argument
    /// that is not JSON); `.rejected` from the receiver (no such method, wrong arguments, a
    /// refused source); and those of any call.
    public func callReadable(_ target: String, actor: String, argumentsJSON: [String]) async throws -> String {
        try refuseIfStopped(target)
        let interface = String(target.prefix { $0 != "." })
        let rest = target.dropFirst(interface.count + 1)
        let method = String(rest.prefix { $0 != "(" })
        guard !interface.isEmpty, !method.isEmpty else {
            throw SwitchyardError.routing(target: target, reason: "a readable target is Interface.method or Interface.method(labels:)")
        }
        guard let route = routes.route(interface: interface, method: method) else {
            throw SwitchyardError.routing(target: target, reason: "no route matches \(interface).\(method) (add '\(interface).\(method)', '\(interface).*' or '*' under routes:)")
        }
        guard !route.isDirect else {
            throw SwitchyardError.routing(
                target: target, reason: "route '\(route.pattern)' is direct: a call by readable name travels through a transport")
        }
        guard route.entry.readableTargets != nil else {
            throw SwitchyardError.routing(
                target: target,
                reason: "route '\(route.pattern)' takes no calls by readable name: set readable_targets: true and encoding: json on it")
        }
        var elements: [String] = []
        for (index, text) in argumentsJSON.enumerated() {
            guard (try? JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed])) != nil else {
                throw SwitchyardError.routing(
                    target: target, reason: "argument \(index + 1) is not JSON: \(text) (a string is quoted: '\"widget\"')")
            }
            elements.append(text)
        }
        let call = CallTarget(readable: target, interface: interface, method: method)
        let arguments = ReadableArguments(json: Array(("[" + elements.joined(separator: ",") + "]").utf8))
        route.metrics.calls.increment()
        if route.entry.mode == .fireAndForget {
            try await send(ActorID(actor), call, arguments, route: route)
            return ""
        }
        let reply = try await request(ActorID(actor), call, arguments, route: route)
        return String(decoding: reply.body, as: UTF8.self)
    }
}

/// Arguments already encoded as a JSON array, for a call by readable name.
struct ReadableArguments: OutgoingArguments {
    let json: [UInt8]
    func encoded(_ encoding: ArgumentEncoding) throws -> [UInt8] {
        guard encoding == .json else { throw EnvelopeError("a call by readable name carries JSON arguments; the route encodes \(encoding.rawValue)") }
        return json
    }
    /// The parameters' names are the receiver's: an ordered route cannot take a readable call.
    func orderingValue(named name: String) -> String? { nil }
}
