import CFFI
import Foundation
import SwitchyardNative

/// `ffi`: calling a native function through libffi against calling it directly, same function,
/// same run: `labs` from the C library, looked up with dlsym, called through a C function pointer
/// (baseline); through a prepared `ffi_call` with its arguments in place (libffi alone); and
/// through `NativeFunction.call`, which also checks and converts the arguments and result.
struct FFISuite: BenchSuite {
    let name = "ffi"
    let summary = "native calls: ffi_call and NativeFunction.call against a direct C function-pointer call of the same function"

    func run(_ context: BenchContext) throws -> [BenchResult] {
        guard let libc = dlopen("libc.so.6", RTLD_NOW), let address = dlsym(libc, "labs") else {
            throw BenchUnavailable("cannot find labs in libc.so.6")
        }
        typealias Labs = @convention(c) (Int) -> Int
        let labs = unsafeBitCast(address, to: Labs.self)
        let iterations = context.quick ? 1_000_000 : 10_000_000
        let direct = Measure.nanosPerOperation(rounds: context.rounds, iterations: iterations) { n in
            var sum = 0
            for i in 0..<n { sum &+= labs(-i) }
            blackHole(sum)
        }
        // libffi alone: a prepared cif and a reused argument slot.
        let cif = UnsafeMutablePointer<ffi_cif>.allocate(capacity: 1)
        let types = UnsafeMutablePointer<UnsafeMutablePointer<ffi_type>?>.allocate(capacity: 1)
        types[0] = sy_ffi_type_sint64()
        guard ffi_prep_cif(cif, sy_ffi_default_abi(), 1, sy_ffi_type_sint64(), types) == FFI_OK else { throw BenchUnavailable("ffi_prep_cif failed") }
        let function = unsafeBitCast(address, to: (@convention(c) () -> Void).self)
        let ffi = Measure.nanosPerOperation(rounds: context.rounds, iterations: iterations) { n in
            var argument = 0
            var result = 0
            var sum = 0
            withUnsafeMutablePointer(to: &argument) { argumentPointer in
                var values: UnsafeMutableRawPointer? = UnsafeMutableRawPointer(argumentPointer)
                for i in 0..<n {
                    argumentPointer.pointee = -i
                    ffi_call(cif, function, &result, &values)
                    sum &+= result
                }
            }
            blackHole(sum)
        }
        let native = try NativeFunction(library: try NativeLibrary(path: "libc.so.6"), symbol: "labs", signature: NativeSignature(parsing: "i64(i64)"))
        let full = Measure.nanosPerOperation(rounds: context.rounds, iterations: iterations / 10) { n in
            var sum: Int64 = 0
            for i in 0..<n {
                if case .int(let value) = try! native.call([.int(Int64(-i))]) { sum &+= value }
            }
            blackHole(sum)
        }
        return [
            BenchResult(suite: name, metric: "direct_call_ns", value: direct, unit: "ns"),
            BenchResult(suite: name, metric: "ffi_call_ns", value: ffi, unit: "ns", baseline: ("direct_call_ns", direct)),
            BenchResult(suite: name, metric: "ffi_overhead_ns", value: ffi - direct, unit: "ns"),
            BenchResult(suite: name, metric: "native_function_call_ns", value: full, unit: "ns", baseline: ("direct_call_ns", direct)),
            BenchResult(suite: name, metric: "native_function_overhead_ns", value: full - direct, unit: "ns"),
        ]
    }
}
