/*
 * switchyard_native.h — routed function pointers for C programs.
 *
 * A C program opens a Switchyard client from a config file and binds a route (a native module's
 * function, e.g. "Math.add") to a function pointer with the declared signature. Calling the
 * pointer calls the function wherever the config routes it — through a queue to another
 * process, a topic, a delay, or in this process — and returns its result, like the original.
 *
 *     sy_native_client *client = sy_native_open("switchyard.yaml", error, sizeof error);
 *     int32_t (*add)(int32_t, int32_t) = (int32_t (*)(int32_t, int32_t))
 *         sy_native_bind(client, "Math.add", "i32(i32, i32)", error, sizeof error);
 *     int32_t sum = add(40, 2);                  // routed; blocks until the reply
 *     if (sy_native_last_error()[0]) { ... }     // the call failed: timeout, refusal, transport
 *     sy_native_close(client);
 *
 * Link with -lswitchyard-native-client (built next to the switchyard binary). Signatures:
 * docs/native-modules.md.
 *
 * Lifetime: a bound pointer is valid until sy_native_close; close only after every call through
 * it has returned. Threading: bound pointers may be called from any thread, concurrently; each
 * call blocks its thread until the reply arrives or the route's deadline passes. Do not call them
 * from threads of Swift's cooperative pool (a Swift `async` context): the call waits for work
 * that pool must run.
 */
#ifndef SWITCHYARD_NATIVE_H
#define SWITCHYARD_NATIVE_H

#include <stddef.h>
#include <stdint.h> /* the fixed-width types a bound function's signature maps to (int32_t, …) */

#ifdef __cplusplus
extern "C" {
#endif

/** An open client: a Switchyard actor system created from a config file. Opaque. */
typedef struct sy_native_client sy_native_client;

/**
 * Opens a client from the YAML config at `config_path` (plugins, transports, routes, native
 * modules). Returns NULL on failure and writes a NUL-terminated reason (the config key and line
 * for config problems) into `error` (`error_size` bytes, may be 0).
 */
sy_native_client *sy_native_open(const char *config_path, char *error, size_t error_size);

/**
 * A function pointer with `signature` (e.g. "i32(i32, i32)") whose calls are routed as `route`
 * (e.g. "Math.add"). Cast it to the matching C function type. Returns NULL on failure (a bad
 * signature points at the offending character) and writes the reason into `error`.
 * A `str` result is a new string the caller frees with sy_native_free_string.
 */
void *sy_native_bind(sy_native_client *client, const char *route, const char *signature, char *error, size_t error_size);

/**
 * Why the last call through a bound pointer on this thread failed, or "" when it succeeded. A
 * failed call returns zero (or NULL for `str`). The text is valid until the next call on this
 * thread.
 */
const char *sy_native_last_error(void);

/** Frees a string returned through a bound `str` function. NULL is ignored. */
void sy_native_free_string(char *text);

/** Drains and closes the client and frees every pointer bound through it. */
void sy_native_close(sy_native_client *client);

#ifdef __cplusplus
}
#endif

#endif
