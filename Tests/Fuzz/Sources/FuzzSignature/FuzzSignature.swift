// libFuzzer target: native signature parsing and value parsing. Run: scripts/fuzz signature.
import SwitchyardNative

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    do {
        _ = try NativeSignature(parsing: text).description
    } catch {
        _ = error.description  // the caret line must render for any input
    }
    for type in NativeType.allCases { _ = try? NativeValue(parsing: text, as: type) }
    return 0
}
