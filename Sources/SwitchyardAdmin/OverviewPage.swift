import SwitchyardRuntime

/// The page at `/`: the overview as tables, rendered on the server, refreshed every 2 seconds by
/// the browser. No script, no styles from elsewhere: it works offline.
enum OverviewPage {
    static func render(_ overview: SystemOverview) -> String {
        var html = """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
            <title>Switchyard — \(escape(overview.instance))</title>
            <style>
            body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
            table{border-collapse:collapse;margin:.5em 0 1.5em}
            th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}
            th{background:#f3f3f3} td.n{text-align:right;font-variant-numeric:tabular-nums}
            .ok{color:#080}.bad{color:#b00}
            </style></head><body>
            <h1>Switchyard</h1>
            <p>Instance <code>\(escape(overview.instance))</code>: <strong class="\(overview.ready ? "ok" : "bad")" id="state">\(escape(overview.state))</strong>\
            \(overview.ready ? ", ready" : ", not ready"). JSON: <a href="/api/overview">/api/overview</a>, metrics: <a href="/metrics">/metrics</a>.</p>

            """
        html += "<h2>Routes</h2>\n"
        html += table(
            ["route", "transport", "mode", "deadline", "delay", "retry", "ordering", "inbox", "outbox", "encoding"], id: "routes",
            overview.routes.map { route in
                [
                    route.pattern, route.transport, route.mode, milliseconds(route.deadlineMs), route.delayMs > 0 ? milliseconds(route.delayMs) : "",
                    route.retry ?? "", route.ordering ?? "", route.inbox ? "yes" : "", route.outbox ? "yes" : "", route.encoding,
                ]
            })
        html += "<h2>Transports</h2>\n"
        html += table(
            ["transport", "plugins", "isolation", "depth", "in flight", "published", "delivered", "acked", "retried", "dead-lettered", "released"],
            id: "transports", numericFrom: 3,
            overview.transports.map { transport in
                let stats = transport.stats
                let counters = [stats?.depth, stats?.inFlight, stats?.published, stats?.delivered, stats?.acked, stats?.retried, stats?.deadLettered, stats?.released]
                return [transport.name, transport.chain.joined(separator: " → "), transport.isolation] + counters.map { $0.map(String.init) ?? "–" }
            })
        html += "<h2>Hosted services</h2>\n"
        html += table(["id", "type", "interfaces"], id: "services", overview.services.map { [$0.id, $0.type, $0.interfaces.joined(separator: ", ")] })
        html += "<h2>Plugins</h2>\n"
        html += table(
            ["plugin", "version", "ABI", "capabilities", "file", "sha256"], id: "plugins",
            overview.plugins.map { [$0.name, $0.version, $0.abi, $0.capabilities.joined(separator: ", "), $0.path, $0.sha256 ?? ""] })
        html += "</body></html>\n"
        return html
    }

    static func table(_ headings: [String], id: String, numericFrom: Int = .max, _ rows: [[String]]) -> String {
        var html = "<table id=\"\(id)\"><tr>" + headings.map { "<th>\(escape($0))</th>" }.joined() + "</tr>\n"
        for row in rows {
            html += "<tr>" + row.enumerated().map { index, cell in index >= numericFrom ? "<td class=\"n\">\(escape(cell))</td>" : "<td>\(escape(cell))</td>" }.joined() + "</tr>\n"
        }
        if rows.isEmpty { html += "<tr><td colspan=\"\(headings.count)\">none</td></tr>\n" }
        return html + "</table>\n"
    }

    static func milliseconds(_ value: Double) -> String {
        value >= 1000 && value.truncatingRemainder(dividingBy: 1000) == 0 ? "\(Int(value / 1000)) s" : (value.rounded() == value ? "\(Int(value)) ms" : "\(value) ms")
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
