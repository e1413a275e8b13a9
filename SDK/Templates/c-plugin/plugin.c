/*
 * example-c — a Switchyard transport plugin in plain C: an in-memory work queue.
 *
 * This file is both the bundled C example and the template a third party copies to start a C
 * plugin (see README.md beside it and docs/writing-a-plugin.md). It needs nothing but
 * switchyard_plugin.h and switchyard_config.h:
 *
 *     cc -std=c99 -O2 -shared -fPIC -I<switchyard>/SDK/CSwitchyard/include plugin.c \
 *        -o libswitchyard-example-c.so -lpthread
 *
 * Semantics: competing consumers per channel (each message goes to one subscriber of its channel,
 * round robin; groups are not distinguished), at-least-once with settle. It keeps nothing on disk,
 * ignores retry delays and drops dead-lettered messages with a log line, so it claims only
 * SY_CAP_QUEUE. Deliveries run on whichever thread publishes, subscribes or settles.
 */
#define _POSIX_C_SOURCE 200809L /* pthread_condattr_setclock under -std=c99 */
#include "switchyard_plugin.h"
#include "switchyard_config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef struct node {
    struct node *next;
    sy_delivery_id delivery;    /* 0 while pending */
    sy_subscription_id owner;   /* subscription holding the delivery, 0 while pending */
    int in_deliver;             /* a deliver call is reading this node right now */
    int free_after_deliver;     /* settled for good during that call: free it afterwards */
    uint64_t given_back_round;  /* the dispatch round in which it was last given back from inside */
    uint32_t given_back_count;  /*   its own deliver, and how often in that round (see dispatch) */
    uint32_t attempt;
    char *id, *channel, *key;   /* NUL-terminated copies */
    sy_header *headers;
    size_t header_count;
    uint8_t *body;
    size_t body_len;
    int64_t enqueued_at_ns;
    int64_t deliver_at_ns, expires_at_ns;  /* kept and handed back on delivery, as the header asks */
    uint32_t flags;
} node;

typedef struct subscription {
    struct subscription *next;
    sy_subscription_id id;
    char *channel;
    sy_subscriber subscriber;
    int delivering;             /* deliver calls running right now */
    uint32_t max_in_flight;     /* the subscriber's prefetch: most unsettled at once (0: unbounded) */
    uint32_t in_flight;         /* its deliveries not settled yet */
} subscription;

typedef struct instance {
    pthread_mutex_t lock;
    pthread_cond_t idle;        /* signalled when a deliver call returns or a delivery settles */
    const sy_host_services *host;
    node *pending, *pending_tail, *in_flight;
    subscription *subscriptions;
    sy_subscription_id next_subscription;
    sy_delivery_id next_delivery;
    int dispatching, more_work, draining;
    uint64_t round;             /* counts top-level dispatch calls (see dispatch) */
    sy_stats stats;
} instance;

static char *copy_str(sy_str s) {
    char *out = (char *)malloc(s.len + 1);
    if (out == NULL) return NULL;
    if (s.len > 0) memcpy(out, s.data, s.len);
    out[s.len] = '\0';
    return out;
}

static void free_node(node *n) {
    size_t i;
    for (i = 0; i < n->header_count; i++) {
        free((void *)n->headers[i].key.data);
        free((void *)n->headers[i].value.data);
    }
    free(n->headers);
    free(n->id);
    free(n->channel);
    free(n->key);
    free(n->body);
    free(n);
}

static void push_pending(instance *q, node *n) {
    n->next = NULL;
    n->delivery = 0;
    n->owner = 0;
    if (q->pending_tail != NULL) q->pending_tail->next = n; else q->pending = n;
    q->pending_tail = n;
}

/* A delivery of subscription `owner` left the in-flight list: it has room for one more (when it
 * is still subscribed). */
static void room_again(instance *q, sy_subscription_id owner) {
    subscription *s;
    for (s = q->subscriptions; s != NULL; s = s->next) {
        if (s->id == owner && s->in_flight > 0) s->in_flight--;
    }
}

/* Removes the in-flight node for `delivery` (or, when `delivery` is 0, the first one owned by
 * `owner`) from the in-flight list and returns it. */
static node *take_in_flight(instance *q, sy_delivery_id delivery, sy_subscription_id owner) {
    node **link;
    for (link = &q->in_flight; *link != NULL; link = &(*link)->next) {
        node *n = *link;
        if ((delivery != 0 && n->delivery == delivery) || (delivery == 0 && n->owner == owner)) {
            *link = n->next;
            room_again(q, n->owner);
            return n;
        }
    }
    return NULL;
}

/* Picks the subscription for `channel` with room for another delivery (its max_in_flight: the
 * backpressure a slow subscriber asks for) that has waited longest (round robin by rotation). */
static subscription *pick_subscriber(instance *q, const char *channel) {
    subscription **link;
    for (link = &q->subscriptions; *link != NULL; link = &(*link)->next) {
        subscription *s = *link;
        if (strcmp(s->channel, channel) == 0 && (s->max_in_flight == 0 || s->in_flight < s->max_in_flight)) {
            subscription *last = s;
            /* Rotate s to the end so the next message goes to another member. */
            if (s->next != NULL) {
                *link = s->next;
                while (last->next != NULL) last = last->next;
                last->next = s;
                s->next = NULL;
            }
            return s;
        }
    }
    return NULL;
}

/* How often one message given back (released, or retried) from inside its own deliver is delivered
 * within the same dispatch round. After that it waits for the next publish, subscribe or
 * settle: a subscriber that gives back everything it is handed would otherwise keep this loop,
 * and so the publish that started it, running forever. */
#define MAX_GIVEN_BACK_PER_ROUND 4

/* Hands pending messages to subscribers. Called with the lock held; drops it around deliver.
 * Re-entrant calls (a settle from inside deliver) only flag more work for the running loop, so
 * one thread at a time dispatches and the stack never grows. */
static void dispatch(instance *q) {
    if (q->dispatching) {
        q->more_work = 1;
        return;
    }
    q->dispatching = 1;
    q->round++;
    do {
        node *prev = NULL, *n = q->pending;
        q->more_work = 0;
        while (n != NULL && !q->draining) {
            subscription *s;
            sy_delivery_id delivery;
            sy_message m;
            sy_status accepted;
            if (n->given_back_round == q->round && n->given_back_count >= MAX_GIVEN_BACK_PER_ROUND) {
                prev = n;
                n = n->next;
                continue;
            }
            s = pick_subscriber(q, n->channel);
            if (s == NULL) {
                prev = n;
                n = n->next;
                continue;
            }
            if (prev != NULL) prev->next = n->next; else q->pending = n->next;
            if (q->pending_tail == n) q->pending_tail = prev;
            n->attempt += 1;
            n->delivery = delivery = ++q->next_delivery;
            n->owner = s->id;
            s->in_flight++;
            n->in_deliver = 1;
            n->next = q->in_flight;
            q->in_flight = n;
            q->stats.delivered++;
            q->stats.in_flight++;
            q->stats.depth--;

            memset(&m, 0, sizeof m);
            m.struct_size = sizeof m;
            m.attempt = n->attempt;
            m.id = sy_str_from_cstr(n->id);
            m.channel = sy_str_from_cstr(n->channel);
            m.ordering_key = sy_str_from_cstr(n->key);
            m.headers = n->headers;
            m.header_count = n->header_count;
            m.body.data = n->body;
            m.body.len = n->body_len;
            m.enqueued_at_ns = n->enqueued_at_ns;
            m.deliver_at_ns = n->deliver_at_ns;
            m.expires_at_ns = n->expires_at_ns;
            m.flags = n->flags & ~SY_MESSAGE_SETTLED;  /* this queue never settles on delivery */

            s->delivering++;
            pthread_mutex_unlock(&q->lock);
            accepted = s->subscriber.deliver(s->subscriber.context, delivery, &m);
            pthread_mutex_lock(&q->lock);
            s->delivering--;
            pthread_cond_broadcast(&q->idle);
            n->in_deliver = 0;
            if (n->free_after_deliver) {
                free_node(n); /* acked from inside deliver; m pointed into it until now */
            } else if (accepted != SY_OK) {
                /* Refused: give it back and stop until something changes. */
                node *back = take_in_flight(q, delivery, 0);
                if (back != NULL) {
                    back->attempt -= 1;
                    q->stats.in_flight--;
                    q->stats.depth++;
                    push_pending(q, back);
                }
                break;
            }
            prev = NULL; /* the list may have changed while unlocked: start over */
            n = q->pending;
        }
    } while (q->more_work && !q->draining);
    q->dispatching = 0;
}

/* Frees a node that left the queue, unless a deliver call still reads it. */
static void retire(node *n) {
    if (n->in_deliver) n->free_after_deliver = 1; else free_node(n);
}

static sy_status example_create(const sy_create_args *args, void **out_instance, sy_error *err) {
    instance *q;
    if (args == NULL || out_instance == NULL || args->struct_size < SY_CREATE_ARGS_SIZE_V1_0 || args->host == NULL)
        return sy_error_set(err, SY_ERR_INVALID_ARGUMENT, "create: NULL or too small arguments");
    /* This plugin takes no config: sy_config_finish refuses any key, naming it. A plugin with
     * config calls sy_config_int / _string / _bool / _duration_ns between parse and finish. */
    {
        sy_config config;
        if (sy_config_parse(&config, args->config_json, err) != SY_OK || sy_config_finish(&config, err) != SY_OK)
            return SY_ERR_CONFIG;
    }
    q = (instance *)calloc(1, sizeof *q);
    if (q == NULL) return sy_error_set(err, SY_ERR_INTERNAL, "out of memory");
    {
        pthread_condattr_t attr;   /* drain's deadline is on the monotonic clock */
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&q->idle, &attr);
        pthread_condattr_destroy(&attr);
    }
    pthread_mutex_init(&q->lock, NULL);
    q->host = args->host;
    q->stats.struct_size = sizeof q->stats;
    *out_instance = q;
    return SY_OK;
}

static void example_destroy(void *self) {
    instance *q = (instance *)self;
    node *n;
    subscription *s;
    if (q == NULL) return;
    while ((n = q->pending) != NULL) { q->pending = n->next; free_node(n); }
    while ((n = q->in_flight) != NULL) { q->in_flight = n->next; free_node(n); }
    while ((s = q->subscriptions) != NULL) { q->subscriptions = s->next; free(s->channel); free(s); }
    pthread_cond_destroy(&q->idle);
    pthread_mutex_destroy(&q->lock);
    free(q);
}

static sy_status example_publish(void *self, const sy_message *m, sy_error *err) {
    instance *q = (instance *)self;
    node *n;
    size_t i;
    /* Only ABI 1.0 fields are read here, so any message at least that large is fine (comparing
     * with sizeof(sy_message) would refuse an older host's smaller struct). */
    if (q == NULL || m == NULL || m->struct_size < SY_MESSAGE_SIZE_V1_0)
        return sy_error_set(err, SY_ERR_INVALID_ARGUMENT, "publish: NULL or too small message");
    if (m->id.len == 0 || m->channel.len == 0)
        return sy_error_set(err, SY_ERR_INVALID_ARGUMENT, "publish: message id and channel are required");
    n = (node *)calloc(1, sizeof *n);
    if (n == NULL) return sy_error_set(err, SY_ERR_INTERNAL, "out of memory");
    n->id = copy_str(m->id);
    n->channel = copy_str(m->channel);
    n->key = copy_str(m->ordering_key);
    n->attempt = m->attempt > 0 ? m->attempt - 1 : 0; /* counts deliveries so far */
    n->body_len = m->body.len;
    n->body = (uint8_t *)malloc(m->body.len > 0 ? m->body.len : 1);
    n->headers = (sy_header *)calloc(m->header_count > 0 ? m->header_count : 1, sizeof(sy_header));
    if (n->id == NULL || n->channel == NULL || n->key == NULL || n->body == NULL || n->headers == NULL) {
        free_node(n);
        return sy_error_set(err, SY_ERR_INTERNAL, "out of memory");
    }
    if (m->body.len > 0) memcpy(n->body, m->body.data, m->body.len);
    for (i = 0; i < m->header_count; i++) {
        n->headers[i].key.data = copy_str(m->headers[i].key);
        n->headers[i].key.len = m->headers[i].key.len;
        n->headers[i].value.data = copy_str(m->headers[i].value);
        n->headers[i].value.len = m->headers[i].value.len;
        n->header_count = i + 1;
    }
    n->enqueued_at_ns = q->host->now_ns(q->host->host_context);
    n->deliver_at_ns = m->deliver_at_ns;
    if (m->struct_size >= SY_SIZE_THROUGH(sy_message, flags)) {  /* 1.3 fields, from a 1.3+ host */
        n->expires_at_ns = m->expires_at_ns;
        n->flags = m->flags & ~SY_MESSAGE_SETTLED;                /* meaningless on publish */
    }

    pthread_mutex_lock(&q->lock);
    if (q->draining) {
        pthread_mutex_unlock(&q->lock);
        free_node(n);
        return sy_error_set(err, SY_ERR_CLOSED, "publish: draining");
    }
    push_pending(q, n);
    q->stats.published++;
    q->stats.depth++;
    dispatch(q);
    pthread_mutex_unlock(&q->lock);
    q->host->metric(q->host->host_context, SY_METRIC_COUNTER, "published", 1);
    return SY_OK;
}

static sy_status example_subscribe(void *self, const sy_subscribe_options *options,
                                   const sy_subscriber *subscriber, sy_subscription_id *out_id,
                                   sy_error *err) {
    instance *q = (instance *)self;
    subscription *s;
    sy_subscriber copy;
    if (q == NULL || options == NULL || out_id == NULL || options->struct_size < SY_SUBSCRIBE_OPTIONS_SIZE_V1_0 ||
        !sy_read_sized(&copy, sizeof copy, subscriber, SY_SUBSCRIBER_SIZE_V1_0) ||
        copy.deliver == NULL || options->channel.len == 0)
        return sy_error_set(err, SY_ERR_INVALID_ARGUMENT, "subscribe: NULL or too small argument, or empty channel");
    s = (subscription *)calloc(1, sizeof *s);
    if (s == NULL || (s->channel = copy_str(options->channel)) == NULL) {
        free(s);
        return sy_error_set(err, SY_ERR_INTERNAL, "out of memory");
    }
    s->subscriber = copy;
    s->max_in_flight = options->max_in_flight;
    pthread_mutex_lock(&q->lock);
    s->id = ++q->next_subscription;
    s->next = q->subscriptions;
    q->subscriptions = s;
    *out_id = s->id;
    dispatch(q);
    pthread_mutex_unlock(&q->lock);
    return SY_OK;
}

static sy_status example_unsubscribe(void *self, sy_subscription_id id, sy_error *err) {
    instance *q = (instance *)self;
    subscription **link, *found = NULL;
    node *n;
    if (q == NULL) return sy_error_set(err, SY_ERR_INVALID_ARGUMENT, "unsubscribe: NULL instance");
    pthread_mutex_lock(&q->lock);
    for (link = &q->subscriptions; *link != NULL; link = &(*link)->next) {
        if ((*link)->id == id) {
            found = *link;
            *link = found->next;
            break;
        }
    }
    if (found == NULL) {
        pthread_mutex_unlock(&q->lock);
        return sy_error_set(err, SY_ERR_NOT_FOUND, "unsubscribe: unknown subscription");
    }
    while (found->delivering > 0) pthread_cond_wait(&q->idle, &q->lock);
    /* Its unsettled deliveries go back to the queue for the other members. */
    while ((n = take_in_flight(q, 0, id)) != NULL) {
        q->stats.in_flight--;
        q->stats.released++;
        q->stats.depth++;
        n->attempt -= 1;
        push_pending(q, n);
    }
    dispatch(q);
    pthread_mutex_unlock(&q->lock);
    free(found->channel);
    free(found);
    return SY_OK;
}

/* Counts a give-back from inside the message's own deliver, for MAX_GIVEN_BACK_PER_ROUND. */
static void given_back(instance *q, node *n) {
    if (!n->in_deliver) return;
    if (n->given_back_round != q->round) {
        n->given_back_round = q->round;
        n->given_back_count = 0;
    }
    n->given_back_count++;
}

static sy_status example_settle(void *self, sy_delivery_id delivery, const sy_settlement *given, sy_error *err) {
    instance *q = (instance *)self;
    node *n;
    sy_settlement settlement, *s = &settlement;
    /* Read caller-sized structs through sy_read_sized: an older host's smaller struct is fine. */
    if (q == NULL || !sy_read_sized(&settlement, sizeof settlement, given, SY_SETTLEMENT_SIZE_V1_0))
        return sy_error_set(err, SY_ERR_INVALID_ARGUMENT, "settle: NULL or too small settlement");
    if (s->outcome < SY_SETTLE_ACK || s->outcome > SY_SETTLE_RELEASE)
        return sy_error_set(err, SY_ERR_INVALID_ARGUMENT, "settle: unknown outcome");
    pthread_mutex_lock(&q->lock);
    n = take_in_flight(q, delivery, 0);
    if (n == NULL) {
        pthread_mutex_unlock(&q->lock);
        return sy_error_set(err, SY_ERR_NOT_FOUND, "settle: unknown or already settled delivery");
    }
    q->stats.in_flight--;
    switch (s->outcome) {
    case SY_SETTLE_ACK:
        q->stats.acked++;
        retire(n);
        break;
    case SY_SETTLE_DEAD_LETTER:
        /* No dead-letter channel here (no SY_CAP_DEAD_LETTER): say so loudly. */
        q->stats.dead_lettered++;
        q->host->log(q->host->host_context, SY_LOG_WARNING, "example-c has no dead-letter channel; dropping a dead-lettered message");
        retire(n);
        break;
    case SY_SETTLE_RETRY:  /* no delays here: redeliver at once, counting the attempt */
        given_back(q, n);
        q->stats.retried++;
        q->stats.depth++;
        push_pending(q, n);
        break;
    default:               /* SY_SETTLE_RELEASE: back without counting an attempt */
        given_back(q, n);
        q->stats.released++;
        q->stats.depth++;
        n->attempt -= 1;
        push_pending(q, n);
        break;
    }
    pthread_cond_broadcast(&q->idle);
    dispatch(q);
    pthread_mutex_unlock(&q->lock);
    return SY_OK;
}

static sy_status example_drain(void *self, int64_t deadline_ns, sy_error *err) {
    instance *q = (instance *)self;
    struct timespec deadline;
    node *n, **link;
    int released = 0, delivering = 0;
    if (q == NULL) return sy_error_set(err, SY_ERR_INVALID_ARGUMENT, "drain: NULL instance");
    deadline.tv_sec = (time_t)(deadline_ns / 1000000000);
    deadline.tv_nsec = (long)(deadline_ns % 1000000000);
    pthread_mutex_lock(&q->lock);
    q->draining = 1;
    /* Wait for settlements until the deadline, then give back what is still unsettled. */
    while (q->in_flight != NULL && pthread_cond_timedwait(&q->idle, &q->lock, &deadline) == 0) {}
    /* Every one not inside `deliver` right now, wherever it is in the list (the newest is first). */
    link = &q->in_flight;
    while ((n = *link) != NULL) {
        if (n->in_deliver) {  /* its subscriber has it this moment: it stays in flight */
            delivering++;
            link = &n->next;
            continue;
        }
        *link = n->next;
        room_again(q, n->owner);
        n->attempt -= 1;
        q->stats.in_flight--;
        q->stats.released++;
        q->stats.depth++;
        push_pending(q, n);
        released++;
    }
    pthread_mutex_unlock(&q->lock);
    if (delivering > 0) return sy_error_set(err, SY_ERR_TIMEOUT, "drain: deliveries were still being delivered at the deadline; the others were released");
    return released > 0 ? sy_error_set(err, SY_ERR_TIMEOUT, "drain: unsettled deliveries were released at the deadline") : SY_OK;
}

static sy_status example_stats(void *self, sy_stats *out, sy_error *err) {
    instance *q = (instance *)self;
    uint32_t size;
    if (q == NULL || out == NULL) return sy_error_set(err, SY_ERR_INVALID_ARGUMENT, "stats: NULL argument");
    size = out->struct_size < sizeof(sy_stats) ? out->struct_size : (uint32_t)sizeof(sy_stats);
    pthread_mutex_lock(&q->lock);
    memcpy((char *)out + sizeof(uint32_t), (const char *)&q->stats + sizeof(uint32_t),
           size > sizeof(uint32_t) ? size - sizeof(uint32_t) : 0);
    pthread_mutex_unlock(&q->lock);
    return SY_OK;
}

/* What channel_stats counts for one channel: its own copy of the name, since the nodes may be
 * freed once the lock is let go. */
typedef struct channel_count {
    char *channel;
    uint64_t depth, in_flight;
} channel_count;

/* Adds one message of `channel` to `*counts` (grown as needed); 0 when out of memory. */
static int count_message(channel_count **counts, size_t *count, size_t *capacity, const char *channel, int in_flight) {
    size_t i;
    for (i = 0; i < *count && strcmp((*counts)[i].channel, channel) != 0; i++) {}
    if (i == *count) {
        if (*count == *capacity) {
            size_t grown_capacity = *capacity ? *capacity * 2 : 8;
            channel_count *grown = (channel_count *)realloc(*counts, grown_capacity * sizeof **counts);
            if (grown == NULL) return 0;
            *counts = grown;
            *capacity = grown_capacity;
        }
        (*counts)[i].channel = strdup(channel);
        if ((*counts)[i].channel == NULL) return 0;
        (*counts)[i].depth = (*counts)[i].in_flight = 0;
        (*count)++;
    }
    if (in_flight) (*counts)[i].in_flight++; else (*counts)[i].depth++;
    return 1;
}

/* channel_stats (ABI 1.9): one report per channel with a message pending or in flight. Counted
 * under the lock, reported after it is let go: `each` is the host's, and may take a while. Groups
 * are not distinguished here, so every report's group is empty; nothing waits for a backoff. */
static sy_status example_channel_stats(void *self, sy_channel_stats_fn each, void *context, sy_error *err) {
    instance *q = (instance *)self;
    channel_count *counts = NULL;
    size_t count = 0, capacity = 0, i;
    int ok = 1;
    node *n;
    if (q == NULL || each == NULL) return sy_error_set(err, SY_ERR_INVALID_ARGUMENT, "channel_stats: NULL argument");
    pthread_mutex_lock(&q->lock);
    for (n = q->pending; n != NULL && ok; n = n->next) ok = count_message(&counts, &count, &capacity, n->channel, 0);
    for (n = q->in_flight; n != NULL && ok; n = n->next) ok = count_message(&counts, &count, &capacity, n->channel, 1);
    pthread_mutex_unlock(&q->lock);
    for (i = 0; i < count; i++) {
        if (ok) {
            sy_channel_stats report;
            memset(&report, 0, sizeof report);
            report.struct_size = sizeof report;
            report.channel.data = counts[i].channel;
            report.channel.len = strlen(counts[i].channel);
            report.depth = counts[i].depth;
            report.in_flight = counts[i].in_flight;
            each(context, &report);
        }
        free(counts[i].channel);
    }
    free(counts);
    return ok ? SY_OK : sy_error_set(err, SY_ERR_INTERNAL, "channel_stats: out of memory");
}

static const sy_plugin_descriptor descriptor = {
    sizeof(sy_plugin_descriptor), SY_ABI_MAJOR, SY_ABI_MINOR,
    "example-c", "1.0.0", "In-memory work queue written in C (the C plugin template)",
    SY_CAP_QUEUE,
    example_create, example_destroy, example_publish, example_subscribe, example_unsubscribe,
    example_settle, example_drain, example_stats,
    NULL, /* publish_batch (ABI 1.1, optional): the host publishes one message at a time */
    NULL, /* settle_batch (ABI 1.3, optional): the host settles one delivery at a time */
    NULL, /* publish_and_settle (ABI 1.3, optional): the host publishes, then settles */
    NULL, /* extend (ABI 1.6, optional): leases are not extended (this queue never redelivers on a timeout) */
    NULL, /* publish_async (ABI 1.7, optional): publish returns at once here, so the host calls it inline */
    NULL, /* instance_capabilities (ABI 1.8, optional): no config turns a capability off here */
    example_channel_stats, /* channel_stats (ABI 1.9, optional): what each channel holds, for operators */
};

/* The one exported symbol, with C linkage and default visibility (SY_PLUGIN_EXPORT). Refuse hosts
 * of another ABI major by returning NULL. */
SY_PLUGIN_EXPORT const sy_plugin_descriptor *switchyard_plugin_entry(uint32_t host_abi_major) {
    return host_abi_major == SY_ABI_MAJOR ? &descriptor : NULL;
}
