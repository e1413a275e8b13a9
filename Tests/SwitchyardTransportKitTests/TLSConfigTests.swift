import SwitchyardPluginKit
import SwitchyardTransportKit
import Testing

@Suite("Engine TLS config")
struct TLSConfigTests {
    struct Settings: Decodable {
        var tls: TLSConfig?
    }

    @Test("tls reads its four keys")
    func reads() throws {
        let settings = try ConfigJSON.decode(
            Settings.self, from: #"{"tls": {"ca": "/ca.pem", "cert": "/c.pem", "key": "/k.pem", "verify": false}}"#, allowedKeys: ["tls"])
        #expect(settings.tls?.ca == "/ca.pem" && settings.tls?.cert == "/c.pem" && settings.tls?.key == "/k.pem" && settings.tls?.verify == false)
    }

    @Test("a misspelled key inside tls is refused, naming it and the known keys")
    func unknownNestedKey() {
        let problem = #expect(throws: ConfigJSON.Problem.self) {
            try ConfigJSON.decode(Settings.self, from: #"{"tls": {"verfy": false}}"#, allowedKeys: ["tls"])
        }
        #expect(problem?.key == "tls.verfy", "\(problem.map { "\($0)" } ?? "")")
        #expect(problem?.description == "config key 'tls.verfy': unknown key (known keys: ca, cert, key, verify)", "\(problem.map { "\($0)" } ?? "")")
    }
}
