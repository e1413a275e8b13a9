/*
 * One tiny plugin, compiled by the tests once per way a plugin can be bad. Each -D knob below
 * breaks exactly one thing; with none set it is a valid (if useless) plugin.
 *
 *   FIXTURE_NAME="x"         plugin name (default "fixture")
 *   FIXTURE_VERSION="x"      plugin version (default "1.0.0")
 *   FIXTURE_ABI_MAJOR=n      descriptor's ABI major (default SY_ABI_MAJOR)
 *   FIXTURE_STRUCT_SIZE=n    descriptor's struct_size (default sizeof)
 *   FIXTURE_ABI_MINOR=n      descriptor's ABI minor (default SY_ABI_MINOR): with FIXTURE_STRUCT_SIZE,
 *                            a plugin of an older minor (its functions past that size unread)
 *   FIXTURE_CHANNEL_STATS_PAST_SIZE  sets channel_stats (1.9) to a function that aborts: with
 *                            FIXTURE_STRUCT_SIZE=152 (a 1.8 descriptor) a host must never read it
 *   FIXTURE_NEWER_MINOR      claims the minor after this header's and appends fields this host does
 *                            not know
 *   FIXTURE_V1_0             a plugin built against ABI 1.0: minor 0, the 1.0 descriptor size
 *   FIXTURE_NULL_PUBLISH     leaves the required publish function NULL
 *   FIXTURE_ENTRY_NULL       the entry returns NULL (refuses the host)
 *   FIXTURE_NO_ENTRY         exports no entry symbol at all
 *   FIXTURE_CRASH_IN_ENTRY   the entry dereferences NULL (a crashing plugin)
 *   FIXTURE_HANG_IN_ENTRY    the entry never returns (a hanging plugin)
 *   FIXTURE_CREATE_FAILS     create fails with SY_ERR_CONFIG naming a key
 *   FIXTURE_CREATE_FAILS_SILENT  create fails with SY_ERR_INTERNAL and leaves sy_error empty
 *   FIXTURE_CRASHY           publish accepts messages, except: body "segfault" writes through
 *                            NULL, body "hang" never returns (for isolation: process), body
 *                            "slow" returns after 300 ms
 *   FIXTURE_HANG_IN_PUBLISH  a queue-like plugin whose every publish never returns
 *   FIXTURE_METRIC_KINDS     create reports "fixture_kinds" as a counter (3), then as a gauge (7),
 *                            then values no metric can take: a NaN timer, an infinite counter, a
 *                            counter of 1e30, and a negative counter
 *   FIXTURE_KEEPS_INNER      a decorator that keeps the host's `args->inner` pointer past create (the
 *                            header allows it until destroy) and publishes through it; a publish
 *                            finds SY_ERR_INTERNAL if what it points at changed since create
 *   FIXTURE_INSTALLS_SIGNAL_HANDLER  installs a SIGSEGV handler of its own as it loads (as a Go or
 *                            .NET runtime or a crash reporter does), which passes signals on to the
 *                            handler it found; exported as fixture_segv_handler
 *   FIXTURE_INSTANCE_CAPABILITIES  declares SY_CAP_QUEUE | SY_CAP_DURABLE; its instances keep only
 *                            SY_CAP_QUEUE (instance_capabilities, 1.8), and claim bit 41, which the
 *                            descriptor lacks (a host must ignore it)
 */
#define _POSIX_C_SOURCE 200809L
#include "switchyard_plugin.h"

#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef FIXTURE_NAME
#define FIXTURE_NAME "fixture"
#endif
#ifndef FIXTURE_VERSION
#define FIXTURE_VERSION "1.0.0"
#endif
#ifndef FIXTURE_ABI_MAJOR
#define FIXTURE_ABI_MAJOR SY_ABI_MAJOR
#endif

static int instance_token;

#ifdef FIXTURE_INSTALLS_SIGNAL_HANDLER
#include <signal.h>
static struct sigaction fixture_previous_segv;
/* Passes the signal on to what it found, as a language runtime's handler does. */
void fixture_segv_handler(int sig, siginfo_t *info, void *context) {
    if (fixture_previous_segv.sa_flags & SA_SIGINFO) {
        if (fixture_previous_segv.sa_sigaction) fixture_previous_segv.sa_sigaction(sig, info, context);
    } else if (fixture_previous_segv.sa_handler == SIG_DFL || fixture_previous_segv.sa_handler == SIG_IGN) {
        sigaction(sig, &fixture_previous_segv, NULL);
    } else {
        fixture_previous_segv.sa_handler(sig);
    }
}
__attribute__((constructor)) static void fixture_install_handler(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = fixture_segv_handler;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    sigaction(SIGSEGV, &action, &fixture_previous_segv);
}
#endif

#ifdef FIXTURE_KEEPS_INNER
static const sy_transport_ref *kept_inner; /* the host's pointer, kept */
static sy_transport_ref inner_at_create;   /* what it pointed at then */
#endif

static sy_status f_create(const sy_create_args *args, void **out, sy_error *err) {
    (void)args;
#ifdef FIXTURE_KEEPS_INNER
    kept_inner = args->inner;
    if (kept_inner != NULL) inner_at_create = *kept_inner;
#endif
#ifdef FIXTURE_METRIC_KINDS
    args->host->metric(args->host->host_context, SY_METRIC_COUNTER, "fixture_kinds", 3);
    args->host->metric(args->host->host_context, SY_METRIC_GAUGE, "fixture_kinds", 7);
    args->host->metric(args->host->host_context, SY_METRIC_TIMER_NS, "fixture_nan", 0.0 / 0.0);
    args->host->metric(args->host->host_context, SY_METRIC_COUNTER, "fixture_infinite", 1.0 / 0.0);
    args->host->metric(args->host->host_context, SY_METRIC_COUNTER, "fixture_huge", 1e30);
    args->host->metric(args->host->host_context, SY_METRIC_COUNTER, "fixture_negative", -1);
#endif
#if defined(FIXTURE_CREATE_FAILS)
    (void)out;
    return sy_error_set(err, SY_ERR_CONFIG, "config key 'capacity': must be at least 1");
#elif defined(FIXTURE_CREATE_FAILS_SILENT)
    (void)out;
    (void)err;
    return SY_ERR_INTERNAL;
#else
    (void)err;
    *out = &instance_token;
    return SY_OK;
#endif
}
static void f_destroy(void *instance) { (void)instance; }
static sy_status f_publish(void *instance, const sy_message *m, sy_error *err) {
    (void)instance;
#if defined(FIXTURE_KEEPS_INNER)
    if (kept_inner == NULL || memcmp(kept_inner, &inner_at_create, sizeof inner_at_create) != 0)
        return sy_error_set(err, SY_ERR_INTERNAL, "the sy_transport_ref given at create no longer holds the inner transport");
    return kept_inner->plugin->publish(kept_inner->instance, m, err);
#elif defined(FIXTURE_HANG_IN_PUBLISH)
    (void)m; (void)err;
    for (;;) pause();
#elif defined(FIXTURE_CRASHY)
    (void)err;
    if (m->body.len == 8 && memcmp(m->body.data, "segfault", 8) == 0) {
        volatile int *nowhere = NULL;
        *nowhere = 1;
    }
    if (m->body.len == 4 && memcmp(m->body.data, "hang", 4) == 0) {
        for (;;) pause();
    }
    if (m->body.len == 4 && memcmp(m->body.data, "slow", 4) == 0) {
        struct timespec pause_for = { 0, 300000000L };
        nanosleep(&pause_for, NULL);
    }
    return SY_OK;
#else
    (void)m;
    return sy_error_set(err, SY_ERR_UNSUPPORTED, "fixture does not store messages");
#endif
}
static sy_status f_subscribe(void *instance, const sy_subscribe_options *o, const sy_subscriber *s,
                             sy_subscription_id *out, sy_error *err) {
    (void)instance; (void)o; (void)s; (void)err;
    *out = 1;
    return SY_OK;
}
static sy_status f_unsubscribe(void *instance, sy_subscription_id id, sy_error *err) {
    (void)instance; (void)id; (void)err;
    return SY_OK;
}
static sy_status f_settle(void *instance, sy_delivery_id d, const sy_settlement *s, sy_error *err) {
    (void)instance; (void)d; (void)s;
    return sy_error_set(err, SY_ERR_NOT_FOUND, "no deliveries here");
}

#ifdef FIXTURE_INSTANCE_CAPABILITIES
static sy_capabilities f_instance_capabilities(void *instance) {
    (void)instance;
    return SY_CAP_QUEUE | ((sy_capabilities)1 << 41);
}
#endif

#ifdef FIXTURE_CHANNEL_STATS_PAST_SIZE
static sy_status f_channel_stats_never(void *instance, sy_channel_stats_fn each, void *context, sy_error *err) {
    (void)instance; (void)each; (void)context; (void)err;
    abort();  /* past the descriptor's struct_size: a host that calls it read too far */
}
#endif

#ifdef FIXTURE_NEWER_MINOR
/* A descriptor from a future minor: this header's fields, then fields this host has never heard of. */
typedef struct {
    sy_plugin_descriptor v1_0;
    void *(*future_function)(void);
    uint64_t future_flags;
} future_descriptor;
static const future_descriptor descriptor = {
    { sizeof(future_descriptor), SY_ABI_MAJOR, SY_ABI_MINOR + 1, FIXTURE_NAME, FIXTURE_VERSION, "from the future",
      SY_CAP_QUEUE | ((sy_capabilities)1 << 40),
      f_create, f_destroy, f_publish, f_subscribe, f_unsubscribe, f_settle, NULL, NULL },
    NULL, 42,
};
#define DESCRIPTOR (&descriptor.v1_0)
#else
static const sy_plugin_descriptor descriptor = {
#if defined(FIXTURE_STRUCT_SIZE)
    FIXTURE_STRUCT_SIZE,
#elif defined(FIXTURE_V1_0)
    SY_DESCRIPTOR_SIZE_V1_0,
#else
    sizeof(sy_plugin_descriptor),
#endif
#ifdef FIXTURE_V1_0
    FIXTURE_ABI_MAJOR, 0,
#elif defined(FIXTURE_ABI_MINOR)
    FIXTURE_ABI_MAJOR, FIXTURE_ABI_MINOR,
#else
    FIXTURE_ABI_MAJOR, SY_ABI_MINOR,
#endif
#if defined(FIXTURE_KEEPS_INNER)
    FIXTURE_NAME, FIXTURE_VERSION, "a test fixture", SY_CAP_QUEUE | SY_CAP_WRAPS_INNER,
#elif defined(FIXTURE_INSTANCE_CAPABILITIES)
    FIXTURE_NAME, FIXTURE_VERSION, "a test fixture", SY_CAP_QUEUE | SY_CAP_DURABLE,
#else
    FIXTURE_NAME, FIXTURE_VERSION, "a test fixture", SY_CAP_QUEUE,
#endif
    f_create, f_destroy,
#ifdef FIXTURE_NULL_PUBLISH
    NULL,
#else
    f_publish,
#endif
    f_subscribe, f_unsubscribe, f_settle, NULL, NULL,
#ifdef FIXTURE_INSTANCE_CAPABILITIES
    NULL, NULL, NULL, NULL, NULL, f_instance_capabilities,
#elif defined(FIXTURE_CHANNEL_STATS_PAST_SIZE)
    NULL, NULL, NULL, NULL, NULL, NULL, f_channel_stats_never,
#endif
};
#define DESCRIPTOR (&descriptor)
#endif

#ifdef FIXTURE_NO_ENTRY
__attribute__((visibility("default"))) int not_a_plugin(void) { return DESCRIPTOR->abi_major; }
#else
__attribute__((visibility("default")))
const sy_plugin_descriptor *switchyard_plugin_entry(uint32_t host_abi_major) {
#if defined(FIXTURE_ENTRY_NULL)
    (void)host_abi_major;
    return NULL;
#elif defined(FIXTURE_CRASH_IN_ENTRY)
    volatile int *nowhere = NULL;
    (void)host_abi_major;
    return (const sy_plugin_descriptor *)(uintptr_t)*nowhere;
#elif defined(FIXTURE_HANG_IN_ENTRY)
    (void)host_abi_major;
    for (;;) pause();
#else
    (void)host_abi_major;
    return DESCRIPTOR;
#endif
}
#endif
