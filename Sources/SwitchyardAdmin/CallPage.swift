import Foundation

/// Any JSON value, kept as its text: the arguments of `POST /api/call`, or one line of the call
/// form (which is JSON already).
enum JSONValue: Decodable {
    case text(String)

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let value: Any
        if container.decodeNil() {
            value = NSNull()
        } else if let bool = try? container.decode(Bool.self) {
            value = bool
        } else if let int = try? container.decode(Int64.self) {
            value = int
        } else if let double = try? container.decode(Double.self) {
            value = double
        } else if let string = try? container.decode(String.self) {
            value = string
        } else if let array = try? container.decode([JSONValue].self) {
            self = .text("[" + array.map(\.json).joined(separator: ",") + "]")
            return
        } else {
            let object = try container.decode([String: JSONValue].self)
            let members = object.sorted { $0.key < $1.key }.map { key, member in
                (String(decoding: (try? JSONSerialization.data(withJSONObject: key, options: [.fragmentsAllowed])) ?? Data(), as: UTF8.self)) + ":" + member.json
            }
            self = .text("{" + members.joined(separator: ",") + "}")
            return
        }
        self = .text(String(decoding: try JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed]), as: UTF8.self))
    }

    /// The value as JSON text.
    var json: String {
        switch self {
        case .text(let text): text
        }
    }
}

/// The call form's answer: what was called and what came back (or why it failed).
enum CallPage {
    static func render(target: String, actor: String, arguments: [String], outcome: String, failed: Bool) -> String {
        let escape = OverviewPage.escape
        var html = OverviewPage.head(title: "Call \(target)", refresh: false)
        html += "<p><a href=\"/\">← overview</a></p>\n<h1>Call <code>\(escape(target))</code></h1>\n"
        html += "<p>On actor <code>\(escape(actor))</code> with <code>[\(escape(arguments.joined(separator: ", ")))]</code>:</p>\n"
        html += "<pre id=\"call-result\" class=\"\(failed ? "bad" : "ok")\">\(escape(outcome))</pre>\n"
        html += form(target: target, actor: actor, arguments: arguments)
        return html + "</body></html>\n"
    }

    /// The form: a readable target, the actor, one JSON argument per line.
    static func form(target: String = "", actor: String = "", arguments: [String] = []) -> String {
        let escape = OverviewPage.escape
        return """
            <form method="post" action="/call" id="call-form">
            <p><label>method <input name="target" value="\(escape(target))" placeholder="Inventory.reserve" required size="40"></label>
            <label>actor <input name="actor" value="\(escape(actor))" placeholder="inventory (default: the interface)"></label></p>
            <p><label>arguments, one JSON value per line<br><textarea name="arguments" rows="3" cols="60" placeholder='"widget"
            2'>\(escape(arguments.joined(separator: "\n")))</textarea></label></p>
            <p><button id="call" onclick="return confirm('Call ' + this.form.target.value + '?')">Call</button></p>
            </form>

            """
    }
}
