import SwitchyardConfig
import SwitchyardRuntime

/// The page at `/channels`: what each transport holds per channel and subscriber group (ABI 1.9
/// `channel_stats`), with a link to the dead letters of every dead-letter channel that holds some.
/// Counted when the page loads, not every 2 seconds as the overview is: a count reads each store.
enum ChannelsPage {
    static func render(_ held: [SystemOverview.TransportChannels], config: SwitchyardConfig, keepsDeadLetters: (String) -> Bool) -> String {
        var html = OverviewPage.head(title: "Switchyard — channels", refresh: false)
        html += """
            <p><a href="/">← overview</a></p>
            <h1>Channels</h1>
            <p>What each transport holds per channel and subscriber group, counted when this page loaded \
            (reload to count again). <em>depth</em>: stored, not yet delivered; <em>waiting</em>: of those, not due \
            yet; <em>in flight</em>: delivered, not yet settled. JSON: <a href="/api/channels">/api/channels</a>.</p>

            """
        var rows: [[String]] = []
        var links: [[Int: String]] = []
        for transport in held {
            guard let channels = transport.channels else {
                rows.append([transport.transport, "–", "", "", "", "", transport.note ?? ""])
                links.append([:])
                continue
            }
            if channels.isEmpty {
                rows.append([transport.transport, "(none)", "", "0", "0", "0", "holds no message"])
                links.append([:])
            }
            let suffix = config.deadLetterSuffix(ofTransport: transport.transport)
            let browsable = keepsDeadLetters(transport.transport)
            for one in channels {
                let deadLetters = browsable && one.channel.hasSuffix(suffix) && one.depth + one.inFlight > 0
                rows.append([
                    transport.transport, one.channel, one.group, String(one.depth), String(one.waiting), String(one.inFlight),
                    deadLetters ? "dead letters" : "",
                ])
                let origin = String(one.channel.dropLast(suffix.count))
                links.append(
                    deadLetters
                        ? [6: "/dead-letters/\(DeadLetterEndpoints.escapePath(transport.transport))/\(DeadLetterEndpoints.escapePath(origin))"] : [:])
            }
        }
        html += OverviewPage.table(["transport", "channel", "group", "depth", "waiting", "in flight", ""], id: "channels", numericFrom: 3, rows, links: links)
        return html + "</body></html>\n"
    }
}
