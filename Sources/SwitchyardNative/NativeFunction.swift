import CFFI
import Foundation

/// A value passed to or returned from a native function.
public enum NativeValue: Sendable, Hashable, Codable, CustomStringConvertible {
    /// A signed integer (any of i8…i64).
    case int(Int64)
    /// An unsigned integer (any of u8…u64).
    case uint(UInt64)
    /// A floating-point number (f32 or f64).
    case double(Double)
    /// A boolean.
    case bool(Bool)
    /// UTF-8 text (`str`).
    case string(String)
    /// A byte buffer (`bytes`).
    case bytes([UInt8])
    /// No value (a `void` result).
    case void

    public var description: String {
        switch self {
        case .int(let value): "\(value)"
        case .uint(let value): "\(value)"
        case .double(let value): "\(value)"
        case .bool(let value): "\(value)"
        case .string(let value): value
        case .bytes(let value): value.map { String(format: "%02x", $0) }.joined()
        case .void: "void"
        }
    }

    /// Parses command-line text as a value of `type`: integers in range, `true`/`false`, bytes as
    /// hex; throws the reason otherwise.
    public init(parsing text: String, as type: NativeType) throws(NativeCallError) {
        func fail(_ what: String) -> NativeCallError { NativeCallError("'\(text)' is not \(what)") }
        switch type {
        case .i8, .i16, .i32, .i64:
            // Range by width; for 64 bits Int64 itself is the range (negating 1 << 63 would overflow,
            // as the signature fuzzer found).
            guard let value = Int64(text), type.bits == 64 || (value >= -(Int64(1) << (type.bits - 1)) && value < (Int64(1) << (type.bits - 1))) else {
                throw fail("an \(type.rawValue) (a whole number that fits \(type.bits) signed bits)")
            }
            self = .int(value)
        case .u8, .u16, .u32, .u64:
            guard let value = UInt64(text), type.bits == 64 || value < (UInt64(1) << type.bits) else {
                throw fail("a \(type.rawValue) (a whole number from 0 that fits \(type.bits) bits)")
            }
            self = .uint(value)
        case .f32, .f64:
            guard let value = Double(text) else { throw fail("a number") }
            self = .double(value)
        case .bool:
            switch text.lowercased() {
            case "true", "1": self = .bool(true)
            case "false", "0": self = .bool(false)
            default: throw fail("true or false")
            }
        case .str: self = .string(text)
        case .bytes:
            let hex = text.hasPrefix("0x") ? String(text.dropFirst(2)) : text
            guard hex.count % 2 == 0, hex.allSatisfy({ $0.isASCII && $0.isHexDigit }) else { throw fail("hex bytes (e.g. 0x0a1b)") }
            var bytes: [UInt8] = []
            var index = hex.startIndex
            while index < hex.endIndex {
                let next = hex.index(index, offsetBy: 2)
                bytes.append(UInt8(hex[index..<next], radix: 16)!)
                index = next
            }
            self = .bytes(bytes)
        case .void: throw fail("a value (void takes none)")
        }
    }
}

/// Why a native call could not be made, for a person.
public struct NativeCallError: Error, Hashable, Sendable, CustomStringConvertible {
    public let description: String
    /// An error saying `description`.
    public init(_ description: String) { self.description = description }
}

/// A libffi call interface for a signature, prepared once: what both calling a native function
/// and a closure called from C need. A `bytes` parameter is two C arguments (pointer, length).
public final class CallInterface: @unchecked Sendable {
    // @unchecked: immutable after init; libffi only reads it during calls.
    /// The prepared interface.
    public let cif: UnsafeMutablePointer<ffi_cif>
    /// C arguments per call.
    public let argumentCount: Int
    private let types: UnsafeMutablePointer<UnsafeMutablePointer<ffi_type>?>

    /// Prepares the interface for `signature` with the platform's default calling convention.
    public init(_ signature: NativeSignature) throws(NativeCallError) {
        let cTypes: [UnsafeMutablePointer<ffi_type>] = signature.parameters.flatMap { type -> [UnsafeMutablePointer<ffi_type>] in
            type == .bytes ? [NativeType.bytes.ffiType, sy_ffi_type_uint64()] : [type.ffiType]
        }
        argumentCount = cTypes.count
        types = .allocate(capacity: max(1, cTypes.count))
        for (index, type) in cTypes.enumerated() { types[index] = type }
        cif = .allocate(capacity: 1)
        let status = ffi_prep_cif(cif, sy_ffi_default_abi(), UInt32(cTypes.count), signature.result.ffiType, types)
        guard status == FFI_OK else {
            cif.deallocate()
            types.deallocate()
            throw NativeCallError("libffi cannot prepare a call with \(signature) (status \(status.rawValue))")
        }
    }

    deinit {
        cif.deallocate()
        types.deallocate()
    }
}

/// A loaded native library. Never unloaded: code from it may still be running or referenced.
public final class NativeLibrary: @unchecked Sendable {
    // @unchecked: the handle is immutable and dlsym is thread-safe.
    /// The file it came from.
    public let path: String
    let handle: UnsafeMutableRawPointer

    /// Loads `path` (RTLD_NOW | RTLD_LOCAL); the error carries `dlerror`'s reason.
    public init(path: String) throws(NativeCallError) {
        guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
            throw NativeCallError("cannot load native module '\(path)': \(dlerror().map { String(cString: $0) } ?? "unknown error")")
        }
        self.path = path
        self.handle = handle
    }

    /// The address of `symbol`.
    func address(of symbol: String) throws(NativeCallError) -> UnsafeMutableRawPointer {
        guard let address = dlsym(handle, symbol) else {
            throw NativeCallError(
                "'\(path)' has no function '\(symbol)' (the names it exports: nm -D --defined-only \(path); a function named otherwise in "
                    + "the config takes symbol: NAME, and a C++ one needs extern \"C\")")
        }
        return address
    }
}

/// One exported C-ABI function with its signature: looked up once, its libffi call interface
/// prepared once, then called any number of times from any thread.
public final class NativeFunction: @unchecked Sendable {
    // @unchecked: immutable after init; libffi's cif is read-only during calls.
    /// The function's name in its library.
    public let symbol: String
    /// Its signature.
    public let signature: NativeSignature
    private let address: UnsafeMutableRawPointer
    private let free: (@convention(c) (UnsafeMutableRawPointer?) -> Void)?
    private let interface: CallInterface
    private var cif: UnsafeMutablePointer<ffi_cif> { interface.cif }
    /// C arguments per call (a `bytes` parameter is two).
    private var cArgumentCount: Int { interface.argumentCount }

    /// Looks `symbol` up in `library` and prepares its call interface. A `str` result needs
    /// `free`: the library's function that frees the returned string (never the host's `free`,
    /// which may belong to another allocator).
    public init(library: NativeLibrary, symbol: String, signature: NativeSignature, free freeSymbol: String? = nil) throws(NativeCallError) {
        self.symbol = symbol
        self.signature = signature
        address = try library.address(of: symbol)
        if signature.result == .str {
            guard let freeSymbol else {
                throw NativeCallError(
                    "\(symbol) returns str: name the library function that frees it (free: in the config; --free NAME with switchyard call --native)")
            }
            free = unsafeBitCast(try library.address(of: freeSymbol), to: (@convention(c) (UnsafeMutableRawPointer?) -> Void).self)
        } else {
            free = nil
        }
        interface = try CallInterface(signature)
    }

    /// Calls the function with `arguments` (checked against the signature: count, kinds, ranges)
    /// and returns its result.
    public func call(_ arguments: [NativeValue]) throws(NativeCallError) -> NativeValue {
        guard arguments.count == signature.parameters.count else {
            throw NativeCallError("\(symbol) takes \(signature.parameters.count) argument(s) (\(signature)), got \(arguments.count)")
        }
        // One 8-byte slot per C argument, on the stack; strings and byte buffers copied for the
        // call's duration.
        let count = max(1, cArgumentCount)
        let outcome: Result<NativeValue, NativeCallError> = withUnsafeTemporaryAllocation(byteCount: 16 * count, alignment: 8) { raw in
            let slots = raw.baseAddress!
            let values = (slots + 8 * count).bindMemory(to: UnsafeMutableRawPointer?.self, capacity: count)
            do throws(NativeCallError) {
                return .success(try call(arguments, slots: slots, values: values))
            } catch {
                return .failure(error)
            }
        }
        return try outcome.get()
    }

    private func call(
        _ arguments: [NativeValue], slots: UnsafeMutableRawPointer, values: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    ) throws(NativeCallError) -> NativeValue {
        var owned: [UnsafeMutableRawPointer] = []
        defer { owned.forEach { Foundation.free($0) } }
        var slot = 0
        func put<T>(_ value: T) {
            (slots + 8 * slot).storeBytes(of: value, as: T.self)
            values[slot] = slots + 8 * slot
            slot += 1
        }
        for (index, (type, value)) in zip(signature.parameters, arguments).enumerated() {
            func mismatch() -> NativeCallError {
                NativeCallError("argument \(index + 1) of \(symbol): expected \(type.rawValue), got \(value.kind)")
            }
            switch (type, value) {
            case (.i8, .int(let v)): guard let x = Int8(exactly: v) else { throw range(index, type, v) }; put(x)
            case (.i16, .int(let v)): guard let x = Int16(exactly: v) else { throw range(index, type, v) }; put(x)
            case (.i32, .int(let v)): guard let x = Int32(exactly: v) else { throw range(index, type, v) }; put(x)
            case (.i64, .int(let v)): put(v)
            case (.u8, .uint(let v)): guard let x = UInt8(exactly: v) else { throw range(index, type, v) }; put(x)
            case (.u16, .uint(let v)): guard let x = UInt16(exactly: v) else { throw range(index, type, v) }; put(x)
            case (.u32, .uint(let v)): guard let x = UInt32(exactly: v) else { throw range(index, type, v) }; put(x)
            case (.u64, .uint(let v)): put(v)
            case (.u8, .int(let v)), (.u16, .int(let v)), (.u32, .int(let v)), (.u64, .int(let v)):
                guard v >= 0 else { throw range(index, type, v) }
                switch type {
                case .u8: guard let x = UInt8(exactly: v) else { throw range(index, type, v) }; put(x)
                case .u16: guard let x = UInt16(exactly: v) else { throw range(index, type, v) }; put(x)
                case .u32: guard let x = UInt32(exactly: v) else { throw range(index, type, v) }; put(x)
                default: put(UInt64(v))
                }
            case (.i8, .uint(let v)), (.i16, .uint(let v)), (.i32, .uint(let v)), (.i64, .uint(let v)):
                guard let signed = Int64(exactly: v) else { throw range(index, type, v) }
                switch type {
                case .i8: guard let x = Int8(exactly: signed) else { throw range(index, type, v) }; put(x)
                case .i16: guard let x = Int16(exactly: signed) else { throw range(index, type, v) }; put(x)
                case .i32: guard let x = Int32(exactly: signed) else { throw range(index, type, v) }; put(x)
                default: put(signed)
                }
            case (.f32, .double(let v)): put(Float(v))
            case (.f32, .int(let v)): put(Float(v))
            case (.f32, .uint(let v)): put(Float(v))
            case (.f64, .double(let v)): put(v)
            case (.f64, .int(let v)): put(Double(v))
            case (.f64, .uint(let v)): put(Double(v))
            case (.bool, .bool(let v)): put(UInt8(v ? 1 : 0))
            case (.str, .string(let v)):
                guard !v.utf8.contains(0) else { throw NativeCallError("argument \(index + 1) of \(symbol): a str must not contain NUL") }
                let copy = strdup(v)!
                owned.append(UnsafeMutableRawPointer(copy))
                put(UnsafeRawPointer(copy))
            case (.bytes, .bytes(let v)):
                let copy = malloc(max(1, v.count))!
                v.withUnsafeBytes { if let base = $0.baseAddress { copy.copyMemory(from: base, byteCount: v.count) } }
                owned.append(copy)
                put(UnsafeRawPointer(copy))
                put(UInt64(v.count))
            default: throw mismatch()
            }
        }
        var result = (UInt64(0), UInt64(0))  // room for ffi_arg and double, 16-byte aligned enough
        withUnsafeMutableBytes(of: &result) { raw in
            ffi_call(cif, unsafeBitCast(address, to: (@convention(c) () -> Void).self), raw.baseAddress, values)
        }
        return withUnsafeBytes(of: &result) { raw -> NativeValue in
            // libffi widens integral results narrower than ffi_arg to a full ffi_arg.
            let word = raw.load(as: UInt64.self)
            switch signature.result {
            case .i8: return .int(Int64(Int8(truncatingIfNeeded: word)))
            case .i16: return .int(Int64(Int16(truncatingIfNeeded: word)))
            case .i32: return .int(Int64(Int32(truncatingIfNeeded: word)))
            case .i64: return .int(Int64(bitPattern: word))
            case .u8: return .uint(UInt64(UInt8(truncatingIfNeeded: word)))
            case .u16: return .uint(UInt64(UInt16(truncatingIfNeeded: word)))
            case .u32: return .uint(UInt64(UInt32(truncatingIfNeeded: word)))
            case .u64: return .uint(word)
            case .bool: return .bool(UInt8(truncatingIfNeeded: word) != 0)
            case .f32: return .double(Double(raw.load(as: Float.self)))
            case .f64: return .double(raw.load(as: Double.self))
            case .str:
                guard let pointer = UnsafeMutablePointer<CChar>(bitPattern: UInt(word)) else { return .string("") }
                let text = String(cString: pointer)
                free?(UnsafeMutableRawPointer(pointer))
                return .string(text)
            case .bytes, .void: return .void
            }
        }
    }

    private func range(_ index: Int, _ type: NativeType, _ value: some BinaryInteger) -> NativeCallError {
        NativeCallError("argument \(index + 1) of \(symbol): \(value) does not fit \(type.rawValue)")
    }
}

extension NativeValue {
    /// The value's kind, for errors.
    var kind: String {
        switch self {
        case .int: "an integer"
        case .uint: "an unsigned integer"
        case .double: "a number"
        case .bool: "a boolean"
        case .string: "a string"
        case .bytes: "bytes"
        case .void: "nothing"
        }
    }
}

extension NativeType {
    /// libffi's type for values of this type (`bool` is a byte; `str` and `bytes` pass a pointer).
    var ffiType: UnsafeMutablePointer<ffi_type> {
        switch self {
        case .i8: sy_ffi_type_sint8()
        case .i16: sy_ffi_type_sint16()
        case .i32: sy_ffi_type_sint32()
        case .i64: sy_ffi_type_sint64()
        case .u8, .bool: sy_ffi_type_uint8()
        case .u16: sy_ffi_type_uint16()
        case .u32: sy_ffi_type_uint32()
        case .u64: sy_ffi_type_uint64()
        case .f32: sy_ffi_type_float()
        case .f64: sy_ffi_type_double()
        case .str, .bytes: sy_ffi_type_pointer()
        case .void: sy_ffi_type_void()
        }
    }
}

extension NativeSignature {
    /// Arguments given as text (a command line, a JSON document's values), each parsed as its
    /// parameter's type; `name` is the function as the caller named it, for the error.
    public func values(parsing texts: [String], name: String) throws(NativeCallError) -> [NativeValue] {
        guard texts.count == parameters.count else {
            throw NativeCallError("\(name) takes \(parameters.count) argument(s) (\(self)), got \(texts.count)")
        }
        var values: [NativeValue] = []
        for (index, (text, type)) in zip(texts, parameters).enumerated() {
            do {
                values.append(try NativeValue(parsing: text, as: type))
            } catch {
                throw NativeCallError("argument \(index + 1): \(error)")
            }
        }
        return values
    }
}
