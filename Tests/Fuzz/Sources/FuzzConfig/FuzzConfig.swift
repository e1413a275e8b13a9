// libFuzzer target: config parsing (YAML, environment expansion, every section's validation).
// A bad config must be an error naming the key, never a crash. Run: scripts/fuzz config.
import SwitchyardConfig

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    _ = try? SwitchyardConfig.parse(yaml: text, baseDirectory: "/tmp", environment: ["DATA": "/tmp/data", "EMPTY": ""])
    _ = try? EnvironmentExpansion.expand(text, environment: ["A": "1"])
    return 0
}
