import SwitchyardABI

/// The per-channel count of the SQL stores (``SQLiteStore`` and the `postgres` plugins' store
/// share the `entries` and `groups` tables): one definition of what is depth, in flight and
/// waiting (``MessageStore/channelCounts(now:)``), in both SQL dialects.
public enum ChannelCountsQuery {
    /// The query over `prefix`'s tables (`""`, or a schema and a dot), with `now` as `parameter`
    /// (`?1` in SQLite, `$1` in PostgreSQL). Rows: channel, group, depth, in flight, waiting.
    /// Topic groups that hold nothing are listed; the "" group every subscribed channel
    /// registers is not (reply channels of processes long gone would be listed for ever).
    public static func sql(tablesIn prefix: String = "", now parameter: String) -> String {
        """
        SELECT channel, grp,
            COUNT(*) FILTER (WHERE lease_token = 0 OR lease_until <= \(parameter)),
            COUNT(*) FILTER (WHERE lease_token != 0 AND lease_until > \(parameter)),
            COUNT(*) FILTER (WHERE lease_token = 0 AND visible_at > \(parameter))
        FROM \(prefix)entries GROUP BY channel, grp
        UNION ALL
        SELECT channel, grp, 0, 0, 0 FROM \(prefix)groups g
        WHERE g.grp <> '' AND NOT EXISTS (SELECT 1 FROM \(prefix)entries e WHERE e.channel = g.channel AND e.grp = g.grp)
        """
    }

    /// One row of ``sql(tablesIn:now:)``, read through the engine's column getters.
    public static func row(text: (Int32) -> String, int: (Int32) -> Int64) -> ChannelStats {
        ChannelStats(
            channel: text(0), group: text(1), depth: UInt64(int(2)), inFlight: UInt64(int(3)), waiting: UInt64(int(4)))
    }
}
