import Foundation
import SwitchyardRuntime

/// The page at `/dead-letters/TRANSPORT/CHANNEL`: every dead letter with its decoded call,
/// reason and history, and forms to replay or purge the ones ticked (each asks for confirmation).
enum DeadLetterPage {
    static func render(transport: String, channel: String, deadLetterChannel: String, records: [DeadLetterRecord], canAct: Bool, note: String? = nil)
        -> String
    {
        let escape = OverviewPage.escape
        let action = "/dead-letters/\(DeadLetterEndpoints.escapePath(transport))/\(DeadLetterEndpoints.escapePath(channel))"
        var html = OverviewPage.head(title: "Dead letters of \(channel)", refresh: false)
        html += "<p><a href=\"/\">← overview</a></p>\n<h1>Dead letters of <code>\(escape(channel))</code></h1>\n"
        html += "<p>On transport <code>\(escape(transport))</code>, channel <code>\(escape(deadLetterChannel))</code>: "
        html += "<strong id=\"count\">\(records.count)</strong> dead letter\(records.count == 1 ? "" : "s").</p>\n"
        if let note { html += "<p class=\"note\" id=\"note\">\(escape(note))</p>\n" }
        if !canAct {
            html += "<p class=\"bad\">Replay and purge change state, so they need a token: restart the process with "
            html += "<code>SWITCHYARD_ADMIN_TOKEN</code> exported (or, for <code>switchyard run</code> and <code>console</code>, "
            html += "<code>admin.token</code> in its config). Until then: <code>switchyard dlq replay|purge</code>.</p>\n"
        }
        guard !records.isEmpty else { return html + "</body></html>\n" }
        html += "<form method=\"post\" id=\"letters\">\n<table id=\"dead-letters\"><tr><th></th><th>id</th><th>call / channel</th><th>arguments</th>"
        html += "<th>reason</th><th>attempts</th><th>dead-lettered</th></tr>\n"
        for record in records {
            // A topic group's copy is ticked as that group's alone: every group's copy has the id.
            var pick = "name=\"ids\" value=\"\(escape(record.id))\""
            if let group = record.group {
                let copy = DeadLetterEndpoints.Selection.Copy(id: record.id, group: group.isEmpty ? "default" : group)
                let json = (try? JSONEncoder().encode(copy)).map { String(decoding: $0, as: UTF8.self) } ?? ""
                pick = "name=\"letter\" value=\"\(escape(json))\""
            }
            html += "<tr class=\"letter\" data-id=\"\(escape(record.id))\"><td><input type=\"checkbox\" \(pick)></td>"
            html += "<td><details><summary>\(escape(record.id))</summary>\(detail(record))</details></td>"
            html += "<td>\(escape(record.call ?? record.channel))</td><td><code>\(escape(record.arguments ?? ""))</code></td>"
            html += "<td>\(escape(record.reason))</td><td class=\"n\">\(record.attempts)</td><td>\(escape(record.deadLetteredAt))</td></tr>\n"
        }
        html += "</table>\n"
        let disabled = canAct ? "" : " disabled"
        html += """
            <p><label><input type="checkbox" name="all" value="1"> all \(records.count)</label>
            <label><input type="checkbox" name="fire_and_forget" value="1"> replay calls as fire-and-forget (their callers are gone)</label></p>
            <p><button id="replay" formaction="\(action)/replay"\(disabled) onclick="return confirm('Replay the selected dead letters to \(escape(channel))?')">Replay selected</button>
            <button id="purge" formaction="\(action)/purge"\(disabled) onclick="return confirm('Delete the selected dead letters for good?')">Purge selected</button></p>
            </form></body></html>

            """
        return html
    }

    /// Everything known about one dead letter.
    static func detail(_ record: DeadLetterRecord) -> String {
        let escape = OverviewPage.escape
        var rows: [(String, String)] = [("from channel", record.channel)]
        if let group = record.group { rows.append(("group", group)) }
        if let call = record.call { rows.append(("call", call)) }
        if let arguments = record.arguments { rows.append(("arguments", arguments)) }
        if let replyTo = record.replyTo {
            rows.append(("caller", record.callerGone == true ? "stopped waiting on \(replyTo)" : "waits on \(replyTo)"))
        } else if record.call != nil {
            rows.append(("caller", "fire-and-forget: nobody waits"))
        }
        rows.append(("reason", record.reason))
        for (index, entry) in record.history.enumerated() { rows.append((index == 0 ? "history" : "", entry)) }
        for (key, value) in record.headers.sorted(by: { $0.key < $1.key }) { rows.append(("header " + key, value)) }
        if !record.body.isEmpty { rows.append(("body", record.body)) }
        return "<table class=\"detail\">" + rows.map { "<tr><th>\(escape($0.0))</th><td>\(escape($0.1))</td></tr>" }.joined() + "</table>"
    }
}
