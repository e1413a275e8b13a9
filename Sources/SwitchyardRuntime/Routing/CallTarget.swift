import Distributed

/// What the runtime knows about one distributed method, derived once from its identifier and
/// cached (demangling costs microseconds). A class: a call hands it along several times, and a
/// copy of a struct of five strings was ten reference-count operations each time.
final class CallTarget: Sendable {
    /// The identifier the runtime dispatches on (the distributed thunk's mangled name).
    let identifier: String
    /// The type that declares the method, fully qualified: `Module.$Orders` for calls through a
    /// `@Resolvable` stub, `Module.OrdersService` for calls on a concrete actor type.
    let owningType: String
    /// The interface name routes use: the owning type without module and `$`: `Orders`.
    let interface: String
    /// The method's base name: `place`.
    let method: String
    /// Readable `Orders.place(_:)`, used in errors, metrics, spans and the CloudEvents type.
    let name: String
    /// The method is generic. Its mangled signature then ends with a generic signature (`…l`)
    /// before the function marker: `…YaKSeRd__lFTE`, where a plain distributed thunk (always
    /// async throws) ends `…YaKFTE`. Such calls are refused on both sides (see ``Server``).
    let isGeneric: Bool
    /// The target prepared for execution (``PreparedTarget``), per substitution, on first use.
    private let preparedTargets = PreparedTargets()

    /// The target prepared for execution with `substitutions`; nil when it cannot be.
    func prepared(substitutions: [Any.Type]) -> PreparedTarget? {
        preparedTargets.prepared(identifier, substitutions: substitutions)
    }

    /// A call by readable name (`Inventory.reserve(sku:qty:)` or `Inventory.reserve`), without an
    /// identifier: the receiver maps it to its hosted protocol's own method (`readable_targets`).
    init(readable name: String, interface: String, method: String) {
        identifier = ""
        owningType = interface
        self.interface = interface
        self.method = method
        self.name = name
        isGeneric = false
    }

    /// Parses a target; nil when the identifier does not demangle to a method.
    init?(identifier: String) {
        self.identifier = identifier
        if identifier.hasPrefix("native:") {
            // A native module's function: `native:Interface.function`.
            let target = identifier.dropFirst("native:".count)
            guard let dot = target.firstIndex(of: "."), !target[..<dot].isEmpty, !target[target.index(after: dot)...].isEmpty else { return nil }
            interface = String(target[..<dot])
            method = String(target[target.index(after: dot)...])
            owningType = "native:" + interface
            name = String(target)
            isGeneric = false
            return
        }
        isGeneric = identifier.hasSuffix("lFTE") || identifier.hasSuffix("lF")
        let description = RemoteCallTarget(identifier).description
        guard let paren = description.firstIndex(of: "("), let dot = description[..<paren].lastIndex(of: ".") else { return nil }
        owningType = String(description[..<dot])
        method = String(description[description.index(after: dot)..<paren])
        let typeName = owningType.split(separator: ".").last.map(String.init) ?? owningType
        interface = typeName.hasPrefix("$") ? String(typeName.dropFirst()) : typeName
        name = interface + "." + description[description.index(after: dot)...]
        guard !method.isEmpty, !interface.isEmpty else { return nil }
    }
}
