/*
 * switchyard_plugin.h — the Switchyard transport plugin ABI, version 1.
 *
 * This header is the whole contract between the Switchyard host and a transport plugin (a shared
 * object loaded with dlopen). A plugin written in any language that can export a C function and
 * lay out C structs can implement it; nothing else is needed to build one.
 *
 * Compatibility rules (docs/abi.md explains them at length):
 *  - A plugin exports exactly one function, SY_PLUGIN_ENTRY_SYMBOL, of type sy_plugin_entry_fn.
 *  - Every struct that may grow starts with `uint32_t struct_size`, set by whoever fills it in.
 *    Structs only ever grow at the end. A reader accepts an older, smaller struct and treats the
 *    fields past its struct_size as absent (zero / NULL); it never reads past struct_size.
 *  - SY_ABI_MAJOR changes only when an existing field changes meaning or position. The host refuses
 *    a plugin of another major. SY_ABI_MINOR grows when fields are appended.
 *  - Integer constants are #defines over fixed-width types, never C enums, so their size is fixed.
 *
 * Conventions for every declaration below:
 *  - "borrowed": the callee may read the memory only until the call returns; copy what you keep.
 *  - "static": the memory must stay valid and unchanged for as long as the plugin is loaded
 *    (plugins are never unloaded, so: forever).
 *  - Strings are UTF-8. `sy_str` is length-delimited and NOT NUL-terminated; `const char *` is
 *    NUL-terminated.
 *  - Functions returning `sy_status` return SY_OK on success; on failure they return an error
 *    code and, when `err` is not NULL, fill it in (see sy_error).
 *
 * This header is C99 and C++17 clean under -Wall -Wextra -Werror -pedantic. Helpers are
 * `static inline` on purpose: a helper with external linkage would be exported from every plugin
 * image and could bind to another plugin's copy.
 */
#ifndef SWITCHYARD_PLUGIN_H
#define SWITCHYARD_PLUGIN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------
 * Versions and the entry point
 * ------------------------------------------------------------------------------------------- */

/** ABI major version. A host refuses a plugin whose descriptor carries another major. */
#define SY_ABI_MAJOR 1
/** ABI minor version. Grows when fields are appended to structs; older minors stay loadable. */
#define SY_ABI_MINOR 0

/** Name of the one symbol a plugin exports: a function of type `sy_plugin_entry_fn`. */
#define SY_PLUGIN_ENTRY_SYMBOL "switchyard_plugin_entry"

/** Longest plugin name, in bytes, without the terminating NUL. Names match `[a-z0-9-]+`, start
 *  with a letter and do not end with '-'. */
#define SY_PLUGIN_NAME_MAX 63

/** Size of the message buffer in sy_error, including the terminating NUL. */
#define SY_ERROR_MESSAGE_CAPACITY 512

struct sy_plugin_descriptor;

/**
 * The plugin entry point, exported as SY_PLUGIN_ENTRY_SYMBOL.
 *
 * `host_abi_major` is the SY_ABI_MAJOR the host was built with. Return a pointer to a static
 * descriptor whose `abi_major` equals it, or NULL to refuse to load (for example when the plugin
 * supports only another major). The host calls it once per load, from one thread, before anything
 * else; it must not block or call back into the host.
 */
typedef const struct sy_plugin_descriptor *(*sy_plugin_entry_fn)(uint32_t host_abi_major);

/* ---------------------------------------------------------------------------------------------
 * Status codes and errors
 * ------------------------------------------------------------------------------------------- */

/** Result of every fallible ABI function. 0 is success; the others say what kind of failure. */
typedef int32_t sy_status;

#define SY_OK 0                     /**< Success. */
#define SY_ERR_INVALID_ARGUMENT 1   /**< A NULL, empty or malformed argument. */
#define SY_ERR_CONFIG 2             /**< The instance config is malformed; the message names the key. */
#define SY_ERR_UNSUPPORTED 3        /**< The plugin does not do this (see its capabilities). */
#define SY_ERR_NOT_FOUND 4          /**< Unknown subscription or delivery id. */
#define SY_ERR_FULL 5               /**< Bounded capacity reached; nothing was stored. */
#define SY_ERR_TOO_LARGE 6          /**< A message or header exceeds a configured limit. */
#define SY_ERR_TIMEOUT 7            /**< A deadline passed before the work finished. */
#define SY_ERR_CLOSED 8             /**< The instance is draining or destroyed. */
#define SY_ERR_IO 9                 /**< Storage or network failure; the operation did not happen. */
#define SY_ERR_UNAVAILABLE 10       /**< A remote dependency cannot be reached right now. */
#define SY_ERR_INTERNAL 11          /**< A bug or an impossible state inside the plugin. */

/**
 * Error out-parameter. Owned by the caller (usually on its stack), filled in by the callee on
 * failure. The callee writes `code` and a NUL-terminated, one-line, human-readable `message`
 * (truncated to fit), and never writes past `message[SY_ERROR_MESSAGE_CAPACITY - 1]`.
 * The callee must leave it untouched on success.
 */
typedef struct sy_error {
    sy_status code;                               /**< Same value the function returned. */
    char message[SY_ERROR_MESSAGE_CAPACITY];      /**< One line, NUL-terminated, UTF-8. */
} sy_error;

/**
 * Fills `err` (when not NULL) with `code` and `message` (copied, truncated to fit, NUL-terminated)
 * and returns `code`, so a callee can write `return sy_error_set(err, SY_ERR_FULL, "queue full");`.
 */
static inline sy_status sy_error_set(sy_error *err, sy_status code, const char *message) {
    if (err != NULL) {
        size_t n = 0;
        err->code = code;
        if (message != NULL) {
            n = strlen(message);
            if (n > SY_ERROR_MESSAGE_CAPACITY - 1) n = SY_ERROR_MESSAGE_CAPACITY - 1;
            memcpy(err->message, message, n);
        }
        err->message[n] = '\0';
    }
    return code;
}

/* ---------------------------------------------------------------------------------------------
 * Plain data
 * ------------------------------------------------------------------------------------------- */

/** A UTF-8 string slice, not NUL-terminated. `data` may be NULL only when `len` is 0.
 *  Ownership is stated wherever the type is used. */
typedef struct sy_str {
    const char *data;
    size_t len;
} sy_str;

/** A byte slice. `data` may be NULL only when `len` is 0. Ownership is stated where used. */
typedef struct sy_bytes {
    const uint8_t *data;
    size_t len;
} sy_bytes;

/** One message header. Keys are case-sensitive; a key may repeat. */
typedef struct sy_header {
    sy_str key;
    sy_str value;
} sy_header;

/** Makes an sy_str from a NUL-terminated string (or NULL, giving the empty slice). */
static inline sy_str sy_str_from_cstr(const char *s) {
    sy_str out;
    out.data = s;
    out.len = (s != NULL) ? strlen(s) : 0;
    return out;
}

/**
 * A message as it crosses the boundary.
 *
 * Ownership: every pointer inside is borrowed. On `publish` the plugin may read it only until
 * publish returns. On delivery (sy_subscriber.deliver) the host may read it only until deliver
 * returns. Whoever keeps a message copies it.
 *
 * Times are nanoseconds since the Unix epoch (UTC), as given by sy_host_services.now_ns.
 */
typedef struct sy_message {
    uint32_t struct_size;       /**< sizeof(sy_message) as the writer knows it. */
    uint32_t attempt;           /**< Deliveries so far, this one included (1 on the first). Set by
                                     the transport on delivery; on publish, the attempt the sender
                                     wants to record (0 or 1 for a new message). Travels with the
                                     message, so it survives restarts of durable transports. */
    sy_str id;                  /**< Unique message id, chosen by the publisher. Required. */
    sy_str channel;             /**< Destination channel (queue or topic name). Required. */
    sy_str ordering_key;        /**< Messages sharing a non-empty key are delivered one at a time
                                     in publish order within a subscriber group. Empty: no order. */
    const sy_header *headers;   /**< `header_count` headers; NULL when `header_count` is 0. */
    size_t header_count;
    sy_bytes body;              /**< Opaque payload. */
    int64_t deliver_at_ns;      /**< Earliest delivery time; 0 or a past time means now. */
    int64_t enqueued_at_ns;     /**< When the transport accepted it. Set by the transport on
                                     delivery; ignored on publish. */
} sy_message;

/* ---------------------------------------------------------------------------------------------
 * Capabilities
 * ------------------------------------------------------------------------------------------- */

/** Capability flags a plugin declares in its descriptor. The host refuses configuration that
 *  needs a capability the plugin does not declare. Unknown bits are ignored by older hosts. */
typedef uint64_t sy_capabilities;

#define SY_CAP_QUEUE ((sy_capabilities)1 << 0)       /**< Competing consumers: one delivery per message per group. */
#define SY_CAP_FANOUT ((sy_capabilities)1 << 1)      /**< Every subscriber group gets its own copy. */
#define SY_CAP_DELAY ((sy_capabilities)1 << 2)       /**< Honors deliver_at_ns in the future. */
#define SY_CAP_RETRY ((sy_capabilities)1 << 3)       /**< Timed redelivery: honors SY_SETTLE_RETRY's retry_after_ns and
                                                          the visibility timeout, without holding back other messages,
                                                          and keeps each message's attempt history. */
#define SY_CAP_DEAD_LETTER ((sy_capabilities)1 << 4) /**< SY_SETTLE_DEAD_LETTER moves the message to a dead-letter channel. */
#define SY_CAP_DURABLE ((sy_capabilities)1 << 5)     /**< A successful publish survives a process crash. */
#define SY_CAP_ORDERED ((sy_capabilities)1 << 6)     /**< Honors ordering_key. */
#define SY_CAP_WRAPS_INNER ((sy_capabilities)1 << 7) /**< A decorator: needs an inner transport at creation. */

/* ---------------------------------------------------------------------------------------------
 * Host services, handed to every instance at creation
 * ------------------------------------------------------------------------------------------- */

/** Log levels for sy_host_services.log, in increasing severity. */
#define SY_LOG_TRACE 0
#define SY_LOG_DEBUG 1
#define SY_LOG_INFO 2
#define SY_LOG_NOTICE 3
#define SY_LOG_WARNING 4
#define SY_LOG_ERROR 5

/** Metric kinds for sy_host_services.metric. */
#define SY_METRIC_COUNTER 0   /**< Adds `value` (>= 0) to a counter. */
#define SY_METRIC_GAUGE 1     /**< Sets a gauge to `value`. */
#define SY_METRIC_TIMER_NS 2  /**< Records one duration of `value` nanoseconds. */

/**
 * Services the host lends a plugin instance: logging, clocks, metrics. Plugins never look host
 * symbols up by name; everything they may call on the host is here.
 *
 * Ownership: owned by the host; the pointer given at creation stays valid until `destroy` of that
 * instance returns. Threading: every function may be called from any thread, concurrently, and
 * returns promptly (none blocks on I/O). None may be called after `destroy` returns.
 */
typedef struct sy_host_services {
    uint32_t struct_size;     /**< sizeof(sy_host_services) as the host knows it. */
    uint16_t abi_major;       /**< The host's SY_ABI_MAJOR. */
    uint16_t abi_minor;       /**< The host's SY_ABI_MINOR. */
    void *host_context;       /**< Opaque; pass it back as the first argument of every call. */

    /** Logs one line. `message` is borrowed and NUL-terminated. The host adds the transport name. */
    void (*log)(void *host_context, int32_t level, const char *message);

    /** Wall-clock time, nanoseconds since the Unix epoch. Use it for message timestamps. */
    int64_t (*now_ns)(void *host_context);

    /** Monotonic time in nanoseconds from an arbitrary origin. Use it for timeouts and deadlines. */
    int64_t (*monotonic_ns)(void *host_context);

    /** Records a metric. `name` is borrowed and NUL-terminated (e.g. "published");
     *  the host prefixes and labels it with the transport name. `kind` is a SY_METRIC_* value. */
    void (*metric)(void *host_context, int32_t kind, const char *name, double value);
} sy_host_services;

/* ---------------------------------------------------------------------------------------------
 * Subscriptions and settlement
 * ------------------------------------------------------------------------------------------- */

/** Identifies one delivery of one message within an instance; chosen by the plugin, unique among
 *  the deliveries of that instance that are not yet settled. Never 0. */
typedef uint64_t sy_delivery_id;

/** Identifies one subscription within an instance; chosen by the plugin. Never 0. */
typedef uint64_t sy_subscription_id;

/**
 * The receiving side of a subscription, given by whoever subscribes (the host, or a decorator
 * plugin subscribing to its inner transport).
 *
 * Ownership: the subscriber owns `context`; the plugin copies this struct at subscribe and may
 * call `deliver` until `unsubscribe` (or `destroy`) of that subscription returns.
 */
typedef struct sy_subscriber {
    uint32_t struct_size;     /**< sizeof(sy_subscriber) as the subscriber knows it. */
    void *context;            /**< Opaque; passed back as the first argument of deliver. */

    /**
     * Hands one message to the subscriber. `message` is borrowed until deliver returns.
     * Returns SY_OK when the subscriber took the delivery: it will settle `delivery` exactly once,
     * possibly from inside this call and from any thread. Any other status means it refused
     * (for example while draining): the plugin treats the delivery as released.
     *
     * Threading: the plugin may call it from any thread, concurrently for different deliveries.
     * The plugin must not hold a lock that `settle` or `publish` would take while calling it.
     */
    sy_status (*deliver)(void *context, sy_delivery_id delivery, const sy_message *message);
} sy_subscriber;

/** Where a new subscriber group starts on a transport that keeps history (a durable topic). */
#define SY_START_NEW 0        /**< Only messages published after the group was created. */
#define SY_START_EARLIEST 1   /**< Every message the transport still keeps. */

/**
 * What to subscribe to. Borrowed for the duration of `subscribe`.
 * Fields left 0 take the instance's configured defaults.
 */
typedef struct sy_subscribe_options {
    uint32_t struct_size;         /**< sizeof(sy_subscribe_options) as the caller knows it. */
    uint32_t max_in_flight;       /**< Prefetch: most unsettled deliveries at once (backpressure). */
    sy_str channel;               /**< Channel to consume. Required. */
    sy_str group;                 /**< Subscriber group: members compete for each message; every
                                       group gets its own copy on fan-out transports. Empty means
                                       the default group. */
    int64_t visibility_timeout_ns;/**< An unsettled delivery is redelivered after this long. */
    int32_t start;                /**< SY_START_* for a group the transport has not seen before. */
} sy_subscribe_options;

/** Settlement outcomes. */
#define SY_SETTLE_ACK 0          /**< Done; remove the message. */
#define SY_SETTLE_RETRY 1        /**< Failed; deliver again after `retry_after_ns`, counting an
                                      attempt. Must not hold back the messages behind it. */
#define SY_SETTLE_DEAD_LETTER 2  /**< Give up now; move to the dead-letter channel with `reason`. */
#define SY_SETTLE_RELEASE 3      /**< Give it back untouched, without counting an attempt (e.g.
                                      during shutdown); redelivered as soon as possible. */

/** How one delivery ends. Borrowed for the duration of `settle`. */
typedef struct sy_settlement {
    uint32_t struct_size;     /**< sizeof(sy_settlement) as the caller knows it. */
    int32_t outcome;          /**< SY_SETTLE_* */
    int64_t retry_after_ns;   /**< With SY_SETTLE_RETRY: the delay before the next attempt. */
    sy_str reason;            /**< With SY_SETTLE_RETRY or SY_SETTLE_DEAD_LETTER: why (the last
                                   error). Kept with the message's attempt history. */
} sy_settlement;

/** Counters an instance reports. The caller sets `struct_size`; the plugin fills the fields that
 *  fit inside it and leaves the rest alone. Counters are totals since creation. */
typedef struct sy_stats {
    uint32_t struct_size;
    uint32_t reserved;        /**< Zero. */
    uint64_t published;
    uint64_t delivered;
    uint64_t acked;
    uint64_t retried;
    uint64_t dead_lettered;
    uint64_t released;
    uint64_t in_flight;       /**< Deliveries handed out and not yet settled, now. */
    uint64_t depth;           /**< Messages stored and not yet delivered, now. */
} sy_stats;

/* ---------------------------------------------------------------------------------------------
 * Instances
 * ------------------------------------------------------------------------------------------- */

/** An existing transport instance, handed to a decorator as its inner transport. The decorator
 *  calls the inner through `plugin`'s functions with `instance` as the first argument. Both
 *  pointers stay valid until the decorator's `destroy` returns; the host destroys the inner only
 *  after the decorator. */
typedef struct sy_transport_ref {
    const struct sy_plugin_descriptor *plugin;
    void *instance;
} sy_transport_ref;

/** Everything `create` receives. Borrowed for the duration of `create`, except `host`, which
 *  stays valid until `destroy` returns (see sy_host_services), and `inner` (see sy_transport_ref). */
typedef struct sy_create_args {
    uint32_t struct_size;         /**< sizeof(sy_create_args) as the host knows it. */
    uint32_t reserved;            /**< Zero. */
    sy_str instance_name;         /**< The transport's name in the host config (for logs). */
    sy_str config_json;           /**< The plugin's own config as one JSON object ("{}" if none). */
    const sy_host_services *host; /**< Never NULL. */
    const sy_transport_ref *inner;/**< The inner transport for decorators, NULL otherwise. */
} sy_create_args;

/**
 * The plugin descriptor, returned by the entry point. Static: it must stay valid and unchanged
 * while the plugin is loaded (forever).
 *
 * The host reads `struct_size`, `abi_major` and `abi_minor` first and nothing else until they
 * pass: the descriptor must be at least large enough for the fields of the minor it claims.
 *
 * Threading, for every function below unless it says otherwise: may be called from any thread and
 * concurrently with every other function on the same instance, except that no call on an instance
 * overlaps or follows its `destroy`. Functions that take a deadline or may wait (drain) say so;
 * all others return promptly.
 */
typedef struct sy_plugin_descriptor {
    uint32_t struct_size;         /**< sizeof(sy_plugin_descriptor) as the plugin knows it. */
    uint16_t abi_major;           /**< SY_ABI_MAJOR the plugin was built for. */
    uint16_t abi_minor;           /**< SY_ABI_MINOR the plugin was built for. */

    const char *name;             /**< Static. Unique plugin name, `[a-z0-9-]`, at most
                                       SY_PLUGIN_NAME_MAX bytes. Config selects plugins by it. */
    const char *version;          /**< Static. Semantic version of the plugin, e.g. "1.2.0". */
    const char *description;      /**< Static. One line for `switchyard plugins list`. */
    sy_capabilities capabilities; /**< SY_CAP_* flags. */

    /**
     * Creates an instance from `args`. On success stores an opaque instance pointer (never NULL)
     * in `*out_instance` and returns SY_OK. On failure returns an error (SY_ERR_CONFIG naming the
     * offending key for bad config) and leaves `*out_instance` untouched. Required.
     */
    sy_status (*create)(const sy_create_args *args, void **out_instance, sy_error *err);

    /**
     * Destroys an instance: stops deliveries (no deliver call is running or will start once it
     * returns), releases unsettled deliveries, frees everything. The host calls it exactly once,
     * after every other call on the instance has returned. Required.
     */
    void (*destroy)(void *instance);

    /**
     * Accepts one message. Returns SY_OK only once the message is stored as the capabilities
     * promise (committed to disk when SY_CAP_DURABLE). `message` is borrowed. SY_ERR_FULL when
     * bounded capacity is reached, SY_ERR_CLOSED while draining. Required.
     */
    sy_status (*publish)(void *instance, const sy_message *message, sy_error *err);

    /**
     * Starts delivering `options->channel` to `subscriber`, as a member of `options->group`.
     * `options` is borrowed; `*subscriber` is copied. Stores a non-zero id in `*out_id`. Required.
     */
    sy_status (*subscribe)(void *instance, const sy_subscribe_options *options,
                           const sy_subscriber *subscriber, sy_subscription_id *out_id,
                           sy_error *err);

    /**
     * Stops a subscription. When it returns, no deliver call for it is running or will start
     * (it must not be called from inside that subscription's own deliver). Its unsettled
     * deliveries are released for redelivery to other members of the group. Required.
     */
    sy_status (*unsubscribe)(void *instance, sy_subscription_id id, sy_error *err);

    /**
     * Settles one delivery, exactly once. `settlement` is borrowed. May be called from inside
     * `deliver`. SY_ERR_NOT_FOUND for an unknown or already settled delivery. Required.
     */
    sy_status (*settle)(void *instance, sy_delivery_id delivery, const sy_settlement *settlement,
                        sy_error *err);

    /**
     * Drains before shutdown: stops starting new deliveries and refuses new publishes with
     * SY_ERR_CLOSED, then waits until every delivery is settled or the monotonic clock reaches
     * `deadline_ns`; deliveries still unsettled then are released. Returns SY_ERR_TIMEOUT when
     * it had to release any. Blocks the calling thread. Optional (NULL: the host skips it).
     */
    sy_status (*drain)(void *instance, int64_t deadline_ns, sy_error *err);

    /** Fills `out` with counters (see sy_stats for the size rule). Optional (NULL: none). */
    sy_status (*stats)(void *instance, sy_stats *out, sy_error *err);
} sy_plugin_descriptor;

/** Size of a struct up to and including `field`, for checking `struct_size` against a field:
 *  a field is present when SY_SIZE_THROUGH(type, field) <= struct_size. */
#define SY_SIZE_THROUGH(type, field) (offsetof(type, field) + sizeof(((type *)0)->field))

/** Smallest descriptor a host accepts for ABI 1.0: every field through `stats`. */
#define SY_DESCRIPTOR_SIZE_V1_0 SY_SIZE_THROUGH(sy_plugin_descriptor, stats)

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* SWITCHYARD_PLUGIN_H */
