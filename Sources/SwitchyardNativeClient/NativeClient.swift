// libswitchyard-native-client: routed function pointers for C programs (SDK/Native/switchyard_native.h).
// A bound pointer is a libffi closure; its handler reads the C arguments by the signature, runs the
// routed call on a Swift task while the C thread waits, and writes the result back as C.

import CFFI
import Foundation
import Logging
import SwitchyardABI
import SwitchyardNative
import SwitchyardRuntime

/// One open client: the actor system and the closures bound through it.
final class NativeClient: @unchecked Sendable {
    // @unchecked: a `Binding` holds C pointers; the system is thread-safe.
    let system: SwitchyardActorSystem
    private let bindings = Guarded<[Binding]>([])

    init(system: SwitchyardActorSystem) {
        self.system = system
    }

    func add(_ binding: Binding) { bindings.withLock { $0.append(binding) } }

    func close() {
        let all = bindings.withLock { $0 }
        let done = DispatchSemaphore(value: 0)
        let system = self.system
        Task.detached {
            await system.shutdown(deadline: .seconds(5))
            done.signal()
        }
        done.wait()
        for binding in all { binding.free() }
    }
}

/// One bound route: its signature, its libffi closure and call interface.
final class Binding: @unchecked Sendable {
    // @unchecked: immutable after init; libffi reads the cif during calls.
    let route: String
    let signature: NativeSignature
    unowned let client: NativeClient
    let interface: CallInterface
    var closure: UnsafeMutablePointer<ffi_closure>?
    var code: UnsafeMutableRawPointer?

    init(route: String, signature: NativeSignature, client: NativeClient) throws(NativeCallError) {
        self.route = route
        self.signature = signature
        self.client = client
        interface = try CallInterface(signature)
        var code: UnsafeMutableRawPointer?
        guard let raw = ffi_closure_alloc(MemoryLayout<ffi_closure>.size, &code), let code else {
            throw NativeCallError("libffi cannot allocate a closure")
        }
        let closure = raw.assumingMemoryBound(to: ffi_closure.self)
        guard ffi_prep_closure_loc(closure, interface.cif, Binding.handler, Unmanaged.passUnretained(self).toOpaque(), code) == FFI_OK else {
            ffi_closure_free(raw)
            throw NativeCallError("libffi cannot prepare the closure for \(signature)")
        }
        self.closure = closure
        self.code = code
    }

    func free() {
        if let closure { ffi_closure_free(UnsafeMutableRawPointer(closure)) }
        closure = nil
    }

    /// libffi calls this for every call through a bound pointer.
    static let handler:
        @convention(c) (UnsafeMutablePointer<ffi_cif>?, UnsafeMutableRawPointer?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?, UnsafeMutableRawPointer?) -> Void = {
            _, result, arguments, userData in
            guard let userData, let result else { return }
            let binding = Unmanaged<Binding>.fromOpaque(userData).takeUnretainedValue()
            binding.invoke(arguments, result)
        }

    private func invoke(_ arguments: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ result: UnsafeMutableRawPointer) {
        // Read the C arguments by the signature.
        var values: [NativeValue] = []
        var slot = 0
        func next() -> UnsafeMutableRawPointer { defer { slot += 1 }; return arguments![slot]! }
        for type in signature.parameters {
            switch type {
            case .i8: values.append(.int(Int64(next().load(as: Int8.self))))
            case .i16: values.append(.int(Int64(next().load(as: Int16.self))))
            case .i32: values.append(.int(Int64(next().load(as: Int32.self))))
            case .i64: values.append(.int(next().load(as: Int64.self)))
            case .u8: values.append(.uint(UInt64(next().load(as: UInt8.self))))
            case .u16: values.append(.uint(UInt64(next().load(as: UInt16.self))))
            case .u32: values.append(.uint(UInt64(next().load(as: UInt32.self))))
            case .u64: values.append(.uint(next().load(as: UInt64.self)))
            case .bool: values.append(.bool(next().load(as: UInt8.self) != 0))
            case .f32: values.append(.double(Double(next().load(as: Float.self))))
            case .f64: values.append(.double(next().load(as: Double.self)))
            case .str:
                let pointer = next().load(as: UnsafePointer<CChar>?.self)
                values.append(.string(pointer.map { String(cString: $0) } ?? ""))
            case .bytes:
                let pointer = next().load(as: UnsafeRawPointer?.self)
                let count = Int(next().load(as: UInt64.self))
                values.append(.bytes(pointer.map { Array(UnsafeRawBufferPointer(start: $0, count: count)) } ?? []))
            case .void: break
            }
        }
        // Run the routed call on a task; this (C) thread waits for it.
        let outcome = Guarded<Result<NativeValue, any Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        let system = client.system
        let route = self.route
        let arguments = values
        Task.detached {
            let value: Result<NativeValue, any Error>
            do { value = .success(try await system.callNative(route, arguments)) } catch { value = .failure(error) }
            outcome.withLock { $0 = value }
            done.signal()
        }
        done.wait()
        var value: NativeValue
        switch outcome.withLock({ $0! }) {
        case .success(let returned):
            LastError.set("")
            // JSON's NaN and infinities (strings) read by the bound type, as a declared one is.
            value = NativeCodec.typed(returned, declared: signature.result)
            // What came back must be what the bound signature promises its C caller: another
            // kind (a signature bound here that differs from the function's) is an error, not
            // a value made up from it.
            if let problem = Self.mismatch(value, signature.result) {
                LastError.set("\(route): \(problem): bind it with the function's own signature (its native: entry in the config)")
                value = .void
            }
        case .failure(let error):
            LastError.set("\(error)")
            value = .void
        }
        write(value, to: result)
    }

    /// Why `value` cannot be returned as `type`; nil when it can.
    static func mismatch(_ value: NativeValue, _ type: NativeType) -> String? {
        switch (type, value) {
        // Nothing back: a fire-and-forget route answers nothing, whatever the function returns
        // (0 or NULL to the C caller, as before).
        case (_, .void), (.void, _), (.i8, .int), (.i16, .int), (.i32, .int), (.i64, .int), (.i64, .uint), (.u8, .uint), (.u16, .uint), (.u32, .uint),
            (.u64, .uint), (.u8, .int), (.u16, .int), (.u32, .int), (.u64, .int), (.bool, .bool), (.f32, .double), (.f64, .double), (.f32, .int),
            (.f64, .int), (.f32, .uint), (.f64, .uint), (.str, .string), (.bytes, .bytes):
            // Whole numbers that do not fit are refused, as arguments are: never truncated.
            return fits(value, type) ? nil : "the result \(value) does not fit the bound signature's \(type) result (\(type.bits) bits)"
        default:
            return "the result is \(kind(of: value)) (\(value)), which the bound signature's \(type) result cannot hold"
        }
    }

    /// Whether a whole-number `value` fits integer `type` (anything else: true, nothing to check).
    static func fits(_ value: NativeValue, _ type: NativeType) -> Bool {
        guard type.isSignedInteger || type.isUnsignedInteger else { return true }
        let bits = type.bits
        switch value {
        case .int(let x) where type.isUnsignedInteger:
            return x >= 0 && (bits == 64 || UInt64(x) < UInt64(1) << bits)
        case .int(let x):
            return bits == 64 || (x >= -(Int64(1) << (bits - 1)) && x < Int64(1) << (bits - 1))
        case .uint(let x) where type.isUnsignedInteger:
            return bits == 64 || x < UInt64(1) << bits
        case .uint(let x):
            return x <= UInt64(Int64.max) >> (64 - bits)
        default:
            return true
        }
    }

    /// Writes the result as C: integral results narrower than a register are widened to
    /// `ffi_arg`, as libffi requires of closures.
    private func write(_ value: NativeValue, to result: UnsafeMutableRawPointer) {
        func integer(_ v: NativeValue) -> UInt64 {
            switch v {
            case .int(let x): UInt64(bitPattern: x)
            case .uint(let x): x
            case .bool(let x): x ? 1 : 0
            case .double(let x): UInt64(bitPattern: Int64(exactly: x.rounded(.towardZero)) ?? 0)  // never reached for a checked result
            default: 0
            }
        }
        switch signature.result {
        case .i8: result.storeBytes(of: UInt64(bitPattern: Int64(Int8(truncatingIfNeeded: integer(value)))), as: UInt64.self)
        case .i16: result.storeBytes(of: UInt64(bitPattern: Int64(Int16(truncatingIfNeeded: integer(value)))), as: UInt64.self)
        case .i32: result.storeBytes(of: UInt64(bitPattern: Int64(Int32(truncatingIfNeeded: integer(value)))), as: UInt64.self)
        case .i64, .u64, .u8, .u16, .u32, .bool: result.storeBytes(of: integer(value), as: UInt64.self)
        case .f32:
            result.storeBytes(of: Float(Self.real(value)), as: Float.self)
        case .f64:
            result.storeBytes(of: Self.real(value), as: Double.self)
        case .str:
            if case .string(let text) = value {
                result.storeBytes(of: UnsafeMutableRawPointer(strdup(text)), as: UnsafeMutableRawPointer?.self)
            } else {
                result.storeBytes(of: nil, as: UnsafeMutableRawPointer?.self)
            }
        case .bytes, .void: break
        }
    }
}

extension Binding {
    /// What kind of value `value` is, for a person.
    static func kind(of value: NativeValue) -> String {
        switch value {
        case .int, .uint: "an integer"
        case .double: "a floating-point number"
        case .bool: "a boolean"
        case .string: "a string"
        case .bytes: "bytes"
        case .void: "nothing"
        }
    }

    /// A number as a Double (0 for anything else).
    static func real(_ value: NativeValue) -> Double {
        switch value {
        case .double(let x): x
        case .int(let x): Double(x)
        case .uint(let x): Double(x)
        default: 0
        }
    }
}

/// Each thread's last call error, for sy_native_last_error.
enum LastError {
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { free($0) }
        return key
    }()

    static func set(_ text: String) {
        if let old = pthread_getspecific(key) { free(old) }
        pthread_setspecific(key, strdup(text))
    }

    static func get() -> UnsafePointer<CChar> {
        if let current = pthread_getspecific(key) { return UnsafePointer(current.assumingMemoryBound(to: CChar.self)) }
        set("")
        return UnsafePointer(pthread_getspecific(key)!.assumingMemoryBound(to: CChar.self))
    }
}

/// Copies `text` into a caller's error buffer, NUL-terminated and cut to fit.
func report(_ text: String, into buffer: UnsafeMutablePointer<CChar>?, size: Int) {
    guard let buffer, size > 0 else { return }
    let bytes = Array(text.utf8.prefix(size - 1))
    for (index, byte) in bytes.enumerated() { buffer[index] = CChar(bitPattern: byte) }
    buffer[bytes.count] = 0
}

/// `sy_native_open` (switchyard_native.h): starts a client for the config at `configPath`.
@c(sy_native_open)
public func syNativeOpen(_ configPath: UnsafePointer<CChar>?, _ errorBuffer: UnsafeMutablePointer<CChar>?, _ errorSize: Int) -> UnsafeMutableRawPointer? {
    guard let configPath else {
        report("config_path is NULL", into: errorBuffer, size: errorSize)
        return nil
    }
    do {
        var logger = Logger(label: "switchyard.native-client")
        logger.logLevel = .warning
        let system = try SwitchyardActorSystem(configPath: String(cString: configPath), logger: logger)
        return Unmanaged.passRetained(NativeClient(system: system)).toOpaque()
    } catch {
        report("\(error)", into: errorBuffer, size: errorSize)
        return nil
    }
}

/// `sy_native_bind` (switchyard_native.h): a C function pointer that calls a routed function.
@c(sy_native_bind)
public func syNativeBind(
    _ client: UnsafeMutableRawPointer?, _ route: UnsafePointer<CChar>?, _ signature: UnsafePointer<CChar>?,
    _ errorBuffer: UnsafeMutablePointer<CChar>?, _ errorSize: Int
) -> UnsafeMutableRawPointer? {
    guard let client, let route, let signature else {
        report("client, route and signature must not be NULL", into: errorBuffer, size: errorSize)
        return nil
    }
    let owner = Unmanaged<NativeClient>.fromOpaque(client).takeUnretainedValue()
    do {
        let parsed: NativeSignature
        do {
            parsed = try NativeSignature(parsing: String(cString: signature))
        } catch {
            throw NativeCallError("bad signature, \(error)")
        }
        let binding = try Binding(route: String(cString: route), signature: parsed, client: owner)
        owner.add(binding)
        return binding.code
    } catch {
        report("\(error)", into: errorBuffer, size: errorSize)
        return nil
    }
}

/// `sy_native_last_error` (switchyard_native.h): this thread's last error message.
@c(sy_native_last_error)
public func syNativeLastError() -> UnsafePointer<CChar> { LastError.get() }

/// `sy_native_free_string` (switchyard_native.h): frees a string a bound function returned.
@c(sy_native_free_string)
public func syNativeFreeString(_ text: UnsafeMutablePointer<CChar>?) { free(text) }

/// `sy_native_close` (switchyard_native.h): stops the client; its bound functions must not be called after.
@c(sy_native_close)
public func syNativeClose(_ client: UnsafeMutableRawPointer?) {
    guard let client else { return }
    let owner = Unmanaged<NativeClient>.fromOpaque(client).takeRetainedValue()
    owner.close()
}
