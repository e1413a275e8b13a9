// Header names whose meaning crosses the plugin boundary, each defined once: plugins, the host,
// the conformance kit and the CLI all use these.

/// The headers every transport with the dead-letter capability writes on a dead letter (the
/// conformance kit checks them; `switchyard dlq` reads them). A dead letter keeps the original
/// message's headers besides these.
public enum DeadLetterHeader {
    /// What every dead-letter header name starts with: removing the headers that start with it
    /// gives back the original message's headers.
    public static let prefix = "sy-dlq-"
    /// Why the message was dead-lettered.
    public static let reason = "sy-dlq-reason"
    /// The channel it was dead-lettered from.
    public static let channel = "sy-dlq-channel"
    /// The subscriber group whose copy was dead-lettered (fan-out transports).
    public static let group = "sy-dlq-group"
    /// When, in nanoseconds since the Unix epoch.
    public static let at = "sy-dlq-at"
    /// How many deliveries were attempted.
    public static let attempts = "sy-dlq-attempts"
    /// The attempt history, one `attempt N at T: reason` line per failed attempt.
    public static let history = "sy-dlq-history"
    /// On a message replayed from a fan-out transport's dead letters: the subscriber group whose
    /// copy it was, the only one it is for. Publishing it again reaches every group; a receiver in
    /// another group acknowledges its copy unread (the runtime's do), so a group that handled the
    /// message already does not handle it twice. Not a dead-letter header (no `sy-dlq-` prefix):
    /// it stays on the replayed message.
    public static let replayGroup = "sy-replay-group"
    /// On a replayed message: when it was replayed, in nanoseconds since the Unix epoch. A
    /// transport that drops a publish repeating a recent message id (JetStream's `Nats-Msg-Id`
    /// window) must not take a replay for such a repeat: the message id stays the original's, for
    /// the receivers' inboxes.
    public static let replayedAt = "sy-replayed-at"
}

/// The CloudEvents 1.0 required attributes in binary content mode (attributes as `ce-` headers,
/// the body as data), which every Switchyard call carries on a transport other systems may read
/// (not on one declaring ``Capabilities/privateWire``: there calls use the envelope's compact
/// form), and which transports that put messages on a shared wire (NATS) add to plain messages.
public enum CloudEventsHeader {
    /// `specversion`: always `1.0`.
    public static let specVersion = "ce-specversion"
    /// `id`: the message id.
    public static let id = "ce-id"
    /// `source`: who sent it (a URI reference).
    public static let source = "ce-source"
    /// `type`: what kind of event or call it is.
    public static let type = "ce-type"
}
