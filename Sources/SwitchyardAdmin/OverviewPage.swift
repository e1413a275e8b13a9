import Foundation
import SwitchyardRuntime

/// The page at `/`: the route map, live rates and depths, hosted services, dead letters and
/// plugins, rendered on the server and reloaded by the browser every 2 seconds. Nothing is
/// loaded from elsewhere: it works offline.
enum OverviewPage {
    static func render(_ overview: SystemOverview, rates: [String: RateSampler.Rates]) -> String {
        var html = head(title: "Switchyard — \(overview.instance)", refresh: true)
        html += """
            <h1>Switchyard</h1>
            <p>Instance <code>\(escape(overview.instance))</code>: <strong class="\(overview.ready ? "ok" : "bad")" id="state">\(escape(overview.state))</strong>\
            \(overview.ready ? ", ready" : ", not ready"). JSON: <a href="/api/overview">/api/overview</a>, metrics: <a href="/metrics">/metrics</a>.</p>

            """
        html += "<h2>Route map</h2>\n" + RouteMap.svg(overview)
        html += "<h2>Routes</h2>\n"
        html += table(
            ["route", "transport", "mode", "deadline", "delay", "retry", "ordering", "inbox", "outbox", "encoding"], id: "routes",
            overview.routes.map(routeRow))
        html += "<h2>Transports</h2>\n"
        html += table(
            [
                "transport", "plugins", "engine", "isolation", "depth", "in flight", "published/s", "acked/s", "published", "delivered", "acked",
                "retried", "dead-lettered", "released",
            ],
            id: "transports", numericFrom: 4,
            overview.transports.map { transportRow($0, rates[$0.name]) })
        html += "<p>Per channel and subscriber group: <a href=\"/channels\" id=\"channels-link\">channels</a>.</p>\n"
        html += "<h2>Dead letters</h2>\n"
        html += table(
            ["channel", "transport", "dead-letter channel", "since start", ""], id: "dead-letter-channels", numericFrom: 3,
            overview.deadLetters.map { [$0.channel, $0.transport, $0.deadLetterChannel, String($0.deadLetteredSinceStart), "open"] },
            links: overview.deadLetters.map { [4: "/dead-letters/\(DeadLetterEndpoints.escapePath($0.transport))/\(DeadLetterEndpoints.escapePath($0.channel))"] })
        let options = overview.transports.filter { $0.capabilities.contains("dead-letter") }.map {
            "<option>\(escape($0.name))</option>"
        }.joined()
        html += """
            <form method="get" action="/dead-letters" id="open-dead-letters">Dead letters of another channel: \
            <select name="transport">\(options)</select> <input name="channel" placeholder="channel, e.g. payments" required> \
            <button>open</button></form>

            """
        if overview.routes.contains(where: \.readableTargets) {
            html += "<h2>Call a method</h2>\n<p>On routes with <code>readable_targets</code>: "
            html += overview.routes.filter(\.readableTargets).map { "<code>\(escape($0.pattern))</code>" }.joined(separator: ", ") + ".</p>\n"
            html += CallPage.form()
        }
        html += "<h2>Hosted services</h2>\n"
        html += table(
            ["id", "type", "interfaces", "methods"], id: "services",
            overview.services.map { [$0.id, $0.type, $0.interfaces.joined(separator: ", "), $0.methods.joined(separator: ", ")] })
        html += "<h2>Plugins</h2>\n"
        html += table(
            ["plugin", "version", "ABI", "capabilities", "file", "sha256"], id: "plugins",
            overview.plugins.map { [$0.name, $0.version, $0.abi, $0.capabilities.joined(separator: ", "), $0.path, $0.sha256 ?? ""] })
        html += "</body></html>\n"
        return html
    }

    static func transportRow(_ transport: SystemOverview.TransportInfo, _ rate: RateSampler.Rates?) -> [String] {
        let stats = transport.stats
        let counters: [UInt64?] = [stats?.published, stats?.delivered, stats?.acked, stats?.retried, stats?.deadLettered, stats?.released]
        var row: [String] = [transport.name, transport.chain.joined(separator: " → "), transport.engine, transport.isolation]
        row.append(stats.map { String($0.depth) } ?? "–")
        row.append(stats.map { String($0.inFlight) } ?? "–")
        row.append(rate.map { perSecond($0.published) } ?? "…")
        row.append(rate.map { perSecond($0.acked) } ?? "…")
        row += counters.map { value -> String in value.map { String($0) } ?? "–" }
        return row
    }

    static func routeRow(_ route: SystemOverview.RouteInfo) -> [String] {
        let delay = route.delayMs > 0 ? milliseconds(route.delayMs) : ""
        let retry = route.retry.map(compactJSON) ?? ""
        return [
            route.pattern, route.transport, route.mode, route.deadlineMs.map(milliseconds) ?? "none", delay, retry, route.ordering ?? "",
            route.inbox ? "yes" : "", route.outbox ? "yes" : "", route.encoding,
        ]
    }

    /// Reloads the page every 2 seconds, except while someone types into one of its fields.
    static let reload = """
        <script>setInterval(() => { const a = document.activeElement; \
        if (!a || !["INPUT", "SELECT", "TEXTAREA"].includes(a.tagName)) location.reload() }, 2000)</script>
        """

    /// The document's head and the opening of its body; with `refresh`, the browser reloads it
    /// every 2 seconds.
    static func head(title: String, refresh: Bool) -> String {
        """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8">\(refresh ? reload : "")
        <title>\(escape(title))</title>
        <style>
        body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
        table{border-collapse:collapse;margin:.5em 0 1.5em}
        th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
        th{background:#f3f3f3} td.n{text-align:right;font-variant-numeric:tabular-nums}
        table.detail th{background:none;font-weight:normal;color:#666}
        .ok{color:#080}.bad{color:#b00}.note{background:#eef6ee;padding:.5em}
        svg text{font:12px system-ui,sans-serif} svg rect{fill:#f7f7f7;stroke:#888} svg line{stroke:#888}
        </style></head><body>

        """
    }

    /// A table; `links` puts a link on cells (row → column → address).
    static func table(_ headings: [String], id: String, numericFrom: Int = .max, _ rows: [[String]], links: [[Int: String]] = []) -> String {
        var html = "<table id=\"\(id)\"><tr>" + headings.map { "<th>\(escape($0))</th>" }.joined() + "</tr>\n"
        for (rowIndex, row) in rows.enumerated() {
            html += "<tr>"
            for (index, cell) in row.enumerated() {
                let text = rowIndex < links.count && links[rowIndex][index] != nil ? "<a href=\"\(escape(links[rowIndex][index]!))\">\(escape(cell))</a>" : escape(cell)
                html += index >= numericFrom ? "<td class=\"n\">\(text)</td>" : "<td>\(text)</td>"
            }
            html += "</tr>\n"
        }
        if rows.isEmpty { html += "<tr><td colspan=\"\(headings.count)\">none</td></tr>\n" }
        return html + "</table>\n"
    }

    /// `{"max_attempts":4,"initial_delay":"20ms"}` → `max_attempts 4, initial_delay 20ms`.
    static func compactJSON(_ json: String) -> String {
        guard let object = (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [String: Any] else { return json }
        return object.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
    }

    static func milliseconds(_ value: Double) -> String {
        if value >= 1000 && value.truncatingRemainder(dividingBy: 1000) == 0 { return "\(Int(value / 1000)) s" }
        return value.rounded() == value ? "\(Int(value)) ms" : "\(value) ms"
    }

    static func perSecond(_ value: Double) -> String {
        value >= 10 || value == 0 ? String(Int(value.rounded())) : String((value * 10).rounded() / 10)
    }

    /// Text made safe inside HTML elements and attribute values.
    static func escape(_ text: String) -> String {
        var escaped = ""
        escaped.reserveCapacity(text.utf8.count)
        for character in text {
            switch character {
            case "&": escaped += "&amp;"
            case "<": escaped += "&lt;"
            case ">": escaped += "&gt;"
            case "\"": escaped += "&quot;"
            case "'": escaped += "&#39;"
            default: escaped.append(character)
            }
        }
        return escaped
    }
}

/// The route map as an SVG drawn on the server: each route, the transport it names, that
/// transport's plugin chain and the engine underneath, left to right.
enum RouteMap {
    static func svg(_ overview: SystemOverview) -> String {
        let escape = OverviewPage.escape
        let rowHeight = 34
        let columns = [(x: 10, width: 200), (x: 250, width: 150), (x: 440, width: 190), (x: 670, width: 190)]
        // Transports in the order routes first name them (fewer crossing lines), then the rest.
        var transports: [String] = []
        for name in overview.routes.map(\.transport) + overview.transports.map(\.name) where !transports.contains(name) { transports.append(name) }
        let rows = max(overview.routes.count, transports.count, 1)
        let height = rows * rowHeight + 30
        var svg = "<svg id=\"route-map\" xmlns=\"http://www.w3.org/2000/svg\" width=\"880\" height=\"\(height)\" role=\"img\" aria-label=\"route map\">\n"
        for (index, title) in ["route", "transport", "plugin chain", "engine"].enumerated() {
            svg += "<text x=\"\(columns[index].x)\" y=\"14\" font-weight=\"bold\">\(title)</text>\n"
        }
        func box(_ column: Int, _ row: Int, _ text: String, _ cssClass: String) -> String {
            let y = 24 + row * rowHeight
            return "<g class=\"\(cssClass)\"><rect x=\"\(columns[column].x)\" y=\"\(y)\" width=\"\(columns[column].width)\" height=\"24\" rx=\"4\"/>"
                + "<text x=\"\(columns[column].x + 6)\" y=\"\(y + 16)\">\(escape(text))</text></g>\n"
        }
        func line(from column: Int, _ fromRow: Int, to toColumn: Int, _ toRow: Int) -> String {
            let x1 = columns[column].x + columns[column].width
            let x2 = columns[toColumn].x
            return "<line x1=\"\(x1)\" y1=\"\(36 + fromRow * rowHeight)\" x2=\"\(x2)\" y2=\"\(36 + toRow * rowHeight)\"/>\n"
        }
        for (row, name) in transports.enumerated() {
            let info = overview.transports.first { $0.name == name }
            svg += box(1, row, name, "transport")
            svg += box(2, row, info?.chain.joined(separator: " → ") ?? "in the caller's task", "chain")
            svg += box(3, row, info?.engine ?? "no transport", "engine")
            svg += line(from: 1, row, to: 2, row) + line(from: 2, row, to: 3, row)
        }
        for (row, route) in overview.routes.enumerated() {
            svg += box(0, row, route.pattern, "route")
            if let target = transports.firstIndex(of: route.transport) { svg += line(from: 0, row, to: 1, target) }
        }
        return svg + "</svg>\n"
    }
}
