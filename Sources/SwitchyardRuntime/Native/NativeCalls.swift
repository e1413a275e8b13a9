import Foundation
import SwitchyardABI
import SwitchyardConfig
import SwitchyardNative
import SwitchyardWire

/// A native module from config, loaded: its functions looked up and their call interfaces
/// prepared once (docs/native-modules.md).
final class NativeModule: Sendable {
    /// The interface routes name (`Math` in `Math.add`).
    let interface: String
    /// Functions by method name.
    let functions: [String: NativeFunction]

    /// Loads `entry`; every problem names the config key and line.
    init(_ entry: SwitchyardConfig.NativeModuleEntry) throws(ConfigError) {
        interface = entry.interface
        let signatures = try Self.signatures(of: entry)
        let library: NativeLibrary
        do {
            library = try NativeLibrary(path: entry.library)
        } catch {
            // The file missing is the usual mistake: say where the path was looked for.
            let hint: String
            if !entry.library.contains("/") {
                hint = " (a name without a slash is looked up on the library search path, as dlopen does: give the file's path instead, or check ldconfig -p)"
            } else if !FileManager.default.fileExists(atPath: entry.library) {
                hint = " (no file there: a relative library path resolves against the config file's directory; build the library or fix the path)"
            } else {
                hint = " (the file is there: a library it needs may be missing, which ldd \(entry.library) shows)"
            }
            throw ConfigError(key: "native.\(entry.interface).library", line: entry.libraryLine ?? entry.line, message: error.description + hint)
        }
        var functions: [String: NativeFunction] = [:]
        for function in entry.functions {
            do {
                functions[function.name] = try NativeFunction(
                    library: library, symbol: function.symbol, signature: signatures[function.name]!, free: function.free)
            } catch {
                throw ConfigError(key: function.key, line: function.line, message: error.description)
            }
        }
        self.functions = functions
    }

    /// `entry`'s signatures, parsed, by function name; a bad one names its key and line.
    static func signatures(of entry: SwitchyardConfig.NativeModuleEntry) throws(ConfigError) -> [String: NativeSignature] {
        var signatures: [String: NativeSignature] = [:]
        for function in entry.functions {
            let signature: NativeSignature
            do {
                signature = try NativeSignature(parsing: function.signature)
            } catch {
                throw ConfigError(key: function.key, line: function.line, message: "bad signature, \(error)")
            }
            // Checked here, where every process reading the config checks, not only where the
            // library is loaded: a caller would otherwise send calls only the host refuses.
            if signature.result == .str && function.free == nil {
                throw ConfigError(
                    key: function.key, line: function.line,
                    message:
                        "returns str: name the library function that frees the string it returns (free: NAME: the module's own function, or free itself only when the module allocates the string with the C library's malloc)"
                )
            }
            signatures[function.name] = signature
        }
        return signatures
    }
}

/// The config's native modules, each loaded — its library opened, its functions looked up — only
/// in a process that runs them: the one serving the module (``SwitchyardActorSystem/hostNative()``)
/// and one calling it through a direct route (loaded at start, so that a missing library stops
/// it). A caller through a transport needs only the signatures in its config: it never opens the
/// library, which may not exist on its machine, and never runs the library's initialisers (a C
/// program calling through `libswitchyard-native-client` included).
final class NativeModules: Sendable {
    private let entries: [String: SwitchyardConfig.NativeModuleEntry]
    private let loaded = Guarded<[String: NativeModule]>([:])

    /// Checks every entry's signatures; loads nothing yet.
    init(_ entries: [SwitchyardConfig.NativeModuleEntry]) throws(ConfigError) {
        for entry in entries { _ = try NativeModule.signatures(of: entry) }
        self.entries = Dictionary(entries.map { ($0.interface, $0) }, uniquingKeysWith: { first, _ in first })
    }

    /// Loads the modules `picks` chooses now (a missing library or function is a config error
    /// now, not at the first call).
    func load(where picks: (SwitchyardConfig.NativeModuleEntry) -> Bool) throws(ConfigError) {
        for interface in interfaces where picks(entries[interface]!) { _ = try module(interface) }
    }

    /// The interfaces the config names, sorted.
    var interfaces: [String] { entries.keys.sorted() }

    /// The module serving `interface`, loaded on first use; nil when the config has none.
    func module(_ interface: String) throws(ConfigError) -> NativeModule? {
        try loaded.withLock { (loaded) throws(ConfigError) -> NativeModule? in
            if let module = loaded[interface] { return module }
            guard let entry = entries[interface] else { return nil }
            let module = try NativeModule(entry)
            loaded[interface] = module
            return module
        }
    }
}

/// How native values travel: the arguments one value after another in the compact form (or a
/// JSON array), typed on the way in by the function's signature; a result the same way.
package enum NativeCodec {
    static func encode(_ values: [NativeValue], _ encoding: ArgumentEncoding) throws -> [UInt8] {
        switch encoding {
        case .compact:
            var writer = CompactWriter()
            for value in values { write(value, into: &writer) }
            return writer.bytes
        case .json:
            return Array(try JSONSerialization.data(withJSONObject: values.map(json), options: [.fragmentsAllowed]))
        }
    }

    static func write(_ value: NativeValue, into writer: inout CompactWriter) {
        switch value {
        case .int(let v): writer.int(v)
        case .uint(let v): writer.uint(v)
        case .double(let v):
            writer.tag(.double)
            writer.raw(v.bitPattern.littleEndian)
        case .bool(let v): writer.tag(v ? .true : .false)
        case .string(let v): writer.string(v)
        case .bytes(let v): writer.byteString(v)
        case .void: writer.tag(.null)
        }
    }

    /// What JSON cannot write as a number travels as a string, as Foundation's
    /// `JSONEncoder.NonConformingFloatEncodingStrategy` names them (`NaN`, `Infinity`,
    /// `-Infinity`); read back as the number where the signature says f32 or f64.
    static let nonFinite: [String: Double] = ["NaN": .nan, "Infinity": .infinity, "-Infinity": -.infinity]

    static func json(_ value: NativeValue) -> Any {
        switch value {
        case .int(let v): v
        case .uint(let v): v
        case .double(let v) where v.isNaN: "NaN"
        case .double(let v) where v.isInfinite: v < 0 ? "-Infinity" : "Infinity"
        case .double(let v): v
        case .bool(let v): v
        case .string(let v): v
        case .bytes(let v): Data(v).base64EncodedString()
        case .void: NSNull()
        }
    }

    /// Decodes values without knowing their types (a result, on the caller's side).
    static func decodeUntyped(_ bytes: [UInt8], _ encoding: ArgumentEncoding) throws -> [NativeValue] {
        switch encoding {
        case .compact:
            return try bytes.withUnsafeBytes { raw -> [NativeValue] in
                var reader = CompactReader(raw)
                var values: [NativeValue] = []
                do {
                    while !reader.atEnd {
                        switch try reader.peekTag() {
                        case .int: values.append(.int(try reader.int()))
                        case .uint: values.append(.uint(try reader.uint()))
                        case .double, .float: values.append(.double(try CompactDecoding.double(&reader)))
                        case .true, .false: values.append(.bool(try CompactDecoding.bool(&reader)))
                        case .string:
                            _ = try reader.tag()
                            values.append(.string(try reader.rawString()))
                        case .bytes:
                            _ = try reader.tag()
                            values.append(.bytes(Array(try reader.byteString())))
                        case .null:
                            _ = try reader.tag()
                            values.append(.void)
                        case let other: throw CompactFormatError("a native value cannot be a \(other)")
                        }
                    }
                } catch let error as CompactFormatError {
                    throw EnvelopeError("unreadable native values: \(error)")
                }
                return values
            }
        case .json:
            do {
                return try JSONDecoder().decode([JSONScalar].self, from: Data(bytes)).map(\.value)
            } catch {
                throw EnvelopeError("native values must be a JSON array of numbers, booleans, strings or null: \(error)")
            }
        }
    }

    /// One JSON value as a native value.
    private struct JSONScalar: Decodable {
        let value: NativeValue
        init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if container.decodeNil() {
                value = .void
            } else if let bool = try? container.decode(Bool.self) {
                value = .bool(bool)
            } else if let int = try? container.decode(Int64.self) {
                value = .int(int)
            } else if let uint = try? container.decode(UInt64.self) {
                value = .uint(uint)
            } else if let double = try? container.decode(Double.self) {
                value = .double(double)
            } else {
                value = .string(try container.decode(String.self))
            }
        }
    }

    /// Decodes a call's arguments for `signature`: untyped values, then converted and checked by
    /// the function itself (count, kinds, ranges). Bytes in JSON travel as base64 strings.
    static func decodeArguments(_ bytes: [UInt8], _ encoding: ArgumentEncoding, for signature: NativeSignature) throws -> [NativeValue] {
        var values = try decodeUntyped(bytes, encoding)
        for (index, type) in signature.parameters.enumerated() where index < values.count {
            if type == .bytes, case .string(let text) = values[index], let data = Data(base64Encoded: text) { values[index] = .bytes(Array(data)) }
            if type.isUnsigned, case .int(let v) = values[index], v >= 0 { values[index] = .uint(UInt64(v)) }
            if type == .f32 || type == .f64, case .string(let text) = values[index], let number = nonFinite[text] { values[index] = .double(number) }
        }
        return values
    }

    /// A result decoded without its type, made what `declared` says where JSON could not: an
    /// unsigned number, a non-finite float.
    package static func typed(_ result: NativeValue, declared: NativeType?) -> NativeValue {
        switch (result, declared) {
        case (.int(let value), let type?) where value >= 0 && type.isUnsigned: .uint(UInt64(value))
        case (.string(let text), .f32?), (.string(let text), .f64?): nonFinite[text].map(NativeValue.double) ?? result
        default: result
        }
    }
}

extension NativeType {
    var isUnsigned: Bool { [.u8, .u16, .u32, .u64].contains(self) }
}

/// Native arguments on their way out.
struct NativeArguments: OutgoingArguments {
    let values: [NativeValue]
    func encoded(_ encoding: ArgumentEncoding) throws -> [UInt8] { try NativeCodec.encode(values, encoding) }
    /// Native parameters have no names: `arg1`, `arg2`, … name them for `ordering:`.
    func orderingValue(named name: String) -> String? {
        guard name.hasPrefix("arg"), let index = Int(name.dropFirst(3)), index >= 1, index <= values.count else { return nil }
        return values[index - 1].description
    }
}

extension SwitchyardActorSystem {
    /// Serves every native module in the config: each module's interface becomes a hosted "actor"
    /// whose channel (the interface name) is subscribed on the transports its routes use; calls
    /// arriving there run through libffi.
    /// Each module's library is loaded here (a library that does not load, or lacks a function,
    /// throws the `ConfigError` naming its key and line).
    public func hostNative() throws {
        try refuseUnlessRunning("native modules")
        for interface in nativeModules.interfaces {
            let module: NativeModule
            do {
                guard let loaded = try nativeModules.module(interface) else { continue }
                module = loaded
            } catch {
                throw error.inFile(config.file)
            }
            let id = ActorID(module.interface)
            let hosted = Server.Hosted(id: id, actor: nil, typeName: "native:\(module.interface)", interfaces: [:], native: module)
            try host(hosted, interfaceNames: [module.interface], type: "native module \(module.interface)")
        }
    }

    /// Calls a native function by its route name (`"Math.add"`) with `arguments`, wherever it is
    /// served: through the route's transport (request-reply, or fire-and-forget for a
    /// fire-and-forget route), or in this process for a direct route. Values are converted and
    /// checked by the function's signature where it runs. A function this config's module does
    /// not declare throws ``NativeCallError`` before anything is sent.
    public func callNative(_ target: String, _ arguments: [NativeValue]) async throws -> NativeValue {
        try refuseIfStopped(target)
        guard let dot = target.firstIndex(of: "."), target.index(after: dot) < target.endIndex else {
            throw SwitchyardError.routing(target: target, reason: "a native target is Interface.function")
        }
        guard let resolved = resolved("native:" + target), let route = resolved.route else {
            let interface = target[..<dot]
            throw SwitchyardError.routing(
                target: target, reason: "no route matches \(target) (add '\(target)', '\(interface).*' or '*' under routes:)")
        }
        let call = resolved.call
        // A function the config's module does not declare: its host would refuse the call and
        // dead-letter it (a direct route would not find it), so it is refused here, before
        // anything is sent or counted (as `switchyard call` refuses it).
        if let module = config.native.first(where: { $0.interface == call.interface }), !module.functions.contains(where: { $0.name == call.method }) {
            throw NativeCallError(
                "\(target): native module '\(call.interface)' has no function '\(call.method)' (it has \(module.functions.map(\.name).sorted().joined(separator: ", "))); nothing was sent"
            )
        }
        route.metrics.calls.increment()
        if route.isDirect {
            // Loaded at start (the route is direct); a failure then stopped the start.
            guard let function = (try? nativeModules.module(call.interface))??.functions[call.method] else {
                throw SwitchyardError.routing(target: target, reason: "route '\(route.pattern)' is direct, but no native module here serves \(target)")
            }
            do {
                return try function.call(arguments)
            } catch {
                throw SwitchyardError.rejected(target: target, reason: error.description)
            }
        }
        let id = ActorID(call.interface)
        if route.entry.mode == .fireAndForget {
            try await send(id, call, NativeArguments(values: arguments), route: route)
            return .void
        }
        let reply = try await request(id, call, NativeArguments(values: arguments), route: route)
        let result = try NativeCodec.decodeUntyped(reply.body, reply.encoding).first ?? .void
        // JSON says neither unsigned nor NaN: when the config declares the function, say it for it.
        return NativeCodec.typed(result, declared: declaredResult(call))
    }

    /// Calls a native function with its arguments as text — from a command line, or the values
    /// of a JSON document (a JSON string as its contents) — each parsed by the signature this
    /// config declares for the function, or read as a whole number, a number, `true`/`false` or
    /// text when the function is not declared here. Throws `NativeCallError` for arguments that do
    /// not fit, before anything is sent.
    public func callNative(_ target: String, texts: [String]) async throws -> NativeValue {
        let parts = target.split(separator: ".", maxSplits: 1).map(String.init)
        guard parts.count == 2, let declared = declaredFunction(parts[0], parts[1]) else {
            return try await callNative(target, texts.map(NativeValue.guessing))
        }
        let signature: NativeSignature
        do {
            signature = try NativeSignature(parsing: declared.signature)
        } catch {
            throw NativeCallError("bad signature, \(error)")
        }
        return try await callNative(target, try signature.values(parsing: texts, name: target))
    }

    /// Whether `interface` names a native module of this config (`native:` in the file).
    public func servesNatively(_ interface: String) -> Bool { config.native.contains { $0.interface == interface } }

    /// The result type of a native function declared in this system's config, if it is.
    private func declaredResult(_ call: CallTarget) -> NativeType? {
        guard let function = declaredFunction(call.interface, call.method) else { return nil }
        return (try? NativeSignature(parsing: function.signature))?.result
    }

    /// A native function as this system's config declares it (`native:`), if it does.
    private func declaredFunction(_ interface: String, _ method: String) -> SwitchyardConfig.NativeModuleEntry.Function? {
        config.native.first { $0.interface == interface }?.functions.first { $0.name == method }
    }

    /// Runs a delivered native call and replies: the function's result, or — for arguments that
    /// do not fit the signature — a refusal with the reason (dead-lettered, and the caller told).
    func runNative(_ item: Inbound, _ call: CallTarget, _ module: NativeModule) -> Result<NativeValue, EnvelopeError> {
        guard call.owningType == "native:\(module.interface)", let function = module.functions[call.method] else {
            return .failure(EnvelopeError("\(call.name) is not a function of native module \(module.interface) (it has \(module.functions.keys.sorted().joined(separator: ", ")))"))
        }
        do {
            let arguments = try NativeCodec.decodeArguments(item.envelope.arguments, item.envelope.contentType, for: function.signature)
            return .success(try function.call(arguments))
        } catch {
            return .failure(EnvelopeError("cannot run \(call.name): \(error)"))
        }
    }
}

extension NativeValue {
    /// The value as JSON text, as native calls carry it in JSON: numbers, booleans and text as
    /// themselves, bytes as base64, `void` as null.
    public var jsonText: String {
        let data = try? JSONSerialization.data(withJSONObject: NativeCodec.json(self), options: [.fragmentsAllowed])
        return data.map { String(decoding: $0, as: UTF8.self) } ?? "null"
    }

    /// A value without a declared type: a whole number, a number, `true`/`false`, or text.
    static func guessing(_ text: String) -> NativeValue {
        if let int = Int64(text) { return .int(int) }
        if let double = Double(text) { return .double(double) }
        if text == "true" || text == "false" { return .bool(text == "true") }
        return .string(text)
    }
}
