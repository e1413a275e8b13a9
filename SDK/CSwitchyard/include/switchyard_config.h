/*
 * switchyard_config.h — reading a plugin's config_json from C, without a JSON library.
 *
 * The host hands every instance its config as one flat JSON object (sy_create_args.config_json):
 * the keys under `transports.<name>.config` in the host's YAML. This helper parses that object
 * once and offers typed getters that keep your defaults when a key is absent, and a final check
 * that refuses keys no getter asked for, naming them and the keys you know, as the ABI asks of
 * SY_ERR_CONFIG errors:
 *
 *     sy_config config;
 *     int64_t capacity = 1000, visibility_ns = 30000000000;
 *     char prefix[64] = "jobs";
 *     if (sy_config_parse(&config, args->config_json, err) != SY_OK
 *         || sy_config_int_range(&config, "capacity", 1, 1000000, &capacity, err) != SY_OK
 *         || sy_config_duration_ns(&config, "visibility_timeout", &visibility_ns, err) != SY_OK
 *         || sy_config_string(&config, "prefix", prefix, sizeof prefix, err) != SY_OK
 *         || sy_config_finish(&config, err) != SY_OK)
 *         return SY_ERR_CONFIG;   // err names the key and what is wrong with it
 *
 * Values: strings, integers, booleans and durations (strings with a unit, as everywhere in
 * Switchyard: "250ms", "5s", "1.5s", "1m", "2h", "100us", "10ns", or "0"). Nested objects and
 * arrays are parsed past but cannot be read here. An integer may be a JSON number or a string of
 * digits ("12"); a duration is a string with its unit (a JSON 0 means "0"); a boolean is true or
 * false. Nothing is allocated: the struct holds slices into the JSON text, which
 * must stay alive while you read it (config_json does, for the length of `create`).
 *
 * Header-only, `static inline` like switchyard_plugin.h; C99 and C++17 clean.
 */
#ifndef SWITCHYARD_CONFIG_H
#define SWITCHYARD_CONFIG_H

#include <stdio.h>
#include "switchyard_plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Most keys a config may have (more is refused with SY_ERR_CONFIG). */
#define SY_CONFIG_MAX_KEYS 64

/** Kinds of value a key can hold. */
#define SY_CONFIG_STRING 1
#define SY_CONFIG_NUMBER 2
#define SY_CONFIG_BOOL 3
#define SY_CONFIG_NULL 4
#define SY_CONFIG_NESTED 5   /**< An object or an array. */

/** One key of the object: slices into the JSON text. */
typedef struct sy_config_entry {
    sy_str key;          /**< Without quotes, escapes left as written. */
    sy_str value;        /**< Strings: the contents without quotes, escapes as written. Others: the literal text. */
    int kind;            /**< SY_CONFIG_* */
    int asked;           /**< Set by a getter that asked for this key. */
} sy_config_entry;

/** A parsed config object. Fill it with sy_config_parse; read it with the getters. */
typedef struct sy_config {
    sy_config_entry entries[SY_CONFIG_MAX_KEYS];
    size_t count;
    const char *known[SY_CONFIG_MAX_KEYS];   /**< Keys the getters asked for, for error messages:
                                                  the pointers you passed, kept (not copied) until
                                                  sy_config_finish, so pass string literals or
                                                  strings that live that long. */
    size_t known_count;
} sy_config;

/* --- internals ------------------------------------------------------------------------------ */

static inline sy_status sy_config_i_fail(sy_error *err, const char *key, const char *what) {
    char message[SY_ERROR_MESSAGE_CAPACITY];
    if (key != NULL) snprintf(message, sizeof message, "config key '%s': %s", key, what);
    else snprintf(message, sizeof message, "config: %s", what);
    return sy_error_set(err, SY_ERR_CONFIG, message);
}

/* How many bytes of `key` an error message shows: at most 64, never ending inside a UTF-8
 * character (messages are UTF-8, and the host looks the key up in the file by its name). */
static inline int sy_config_i_key_shown(sy_str key) {
    size_t n = key.len > 64 ? 64 : key.len;
    if (n < key.len)
        while (n > 0 && ((unsigned char)key.data[n] & 0xC0) == 0x80) n--;  /* key.data[n] continues a character */
    return (int)n;
}

/* A failure while reading `key`'s entry, named as every other refusal of that key. */
static inline sy_status sy_config_i_fail_at(sy_error *err, sy_str key, const char *what) {
    char name[72];
    snprintf(name, sizeof name, "%.*s", sy_config_i_key_shown(key), key.data);
    return sy_config_i_fail(err, name, what);
}

static inline size_t sy_config_i_space(sy_str s, size_t i) {
    while (i < s.len && (s.data[i] == ' ' || s.data[i] == '\t' || s.data[i] == '\n' || s.data[i] == '\r')) i++;
    return i;
}

/* Skips a JSON string starting at the quote at i; returns the index after the closing quote, or 0. */
static inline size_t sy_config_i_skip_string(sy_str s, size_t i) {
    for (i = i + 1; i < s.len; i++) {
        if ((unsigned char)s.data[i] < 0x20) return 0;  /* raw control characters are not JSON */
        if (s.data[i] == '\\') { i++; continue; }
        if (s.data[i] == '"') return i + 1;
    }
    return 0;
}

/* Skips any JSON value starting at i; returns the index after it, or 0 when malformed. */
static inline size_t sy_config_i_skip_value(sy_str s, size_t i, int *kind) {
    if (i >= s.len) return 0;
    if (s.data[i] == '"') { *kind = SY_CONFIG_STRING; return sy_config_i_skip_string(s, i); }
    if (s.data[i] == '{' || s.data[i] == '[') {
        int depth = 0;
        *kind = SY_CONFIG_NESTED;
        while (i < s.len) {
            char c = s.data[i];
            if (c == '"') { i = sy_config_i_skip_string(s, i); if (i == 0) return 0; continue; }
            if (c == '{' || c == '[') depth++;
            if (c == '}' || c == ']') { depth--; if (depth == 0) return i + 1; }
            i++;
        }
        return 0;
    }
    {
        size_t start = i;
        while (i < s.len && s.data[i] != ',' && s.data[i] != '}' && s.data[i] != ' ' && s.data[i] != '\t'
               && s.data[i] != '\n' && s.data[i] != '\r') i++;
        if (i == start) return 0;
        if ((i - start == 4 && memcmp(s.data + start, "true", 4) == 0) || (i - start == 5 && memcmp(s.data + start, "false", 5) == 0))
            *kind = SY_CONFIG_BOOL;
        else if (i - start == 4 && memcmp(s.data + start, "null", 4) == 0)
            *kind = SY_CONFIG_NULL;
        else if (s.data[start] == '-' || (s.data[start] >= '0' && s.data[start] <= '9'))
            *kind = SY_CONFIG_NUMBER;
        else
            return 0;
        return i;
    }
}

/* Finds `key` (records it as known); NULL when absent. */
static inline sy_config_entry *sy_config_i_find(sy_config *c, const char *key) {
    size_t i, n = strlen(key);
    for (i = 0; i < c->known_count && strcmp(c->known[i], key) != 0; i++) {}
    if (i == c->known_count && c->known_count < SY_CONFIG_MAX_KEYS) c->known[c->known_count++] = key;
    for (i = 0; i < c->count; i++) {
        if (c->entries[i].key.len == n && memcmp(c->entries[i].key.data, key, n) == 0) {
            c->entries[i].asked = 1;
            return &c->entries[i];
        }
    }
    return NULL;
}

/* Parses a decimal number with an optional fraction into *out (as a double); 0 when malformed. */
static inline int sy_config_i_number(const char *p, size_t len, double *out) {
    double value = 0, scale = 1;
    size_t i = 0;
    int negative = 0, digits = 0, fraction = 0;
    if (len > 0 && p[0] == '-') { negative = 1; i++; }
    for (; i < len; i++) {
        if (p[i] >= '0' && p[i] <= '9') {
            digits++;
            if (fraction) { scale /= 10; value += (p[i] - '0') * scale; } else value = value * 10 + (p[i] - '0');
        } else if (p[i] == '.' && !fraction) {
            fraction = 1;
        } else {
            return 0;
        }
    }
    if (digits == 0) return 0;
    *out = negative ? -value : value;
    return 1;
}

/* --- the API -------------------------------------------------------------------------------- */

/**
 * Parses `json` (one flat object; empty text counts as `{}`) into `c`. SY_ERR_CONFIG with a
 * message when it is not an object, is malformed, repeats a key or has too many keys.
 */
static inline sy_status sy_config_parse(sy_config *c, sy_str json, sy_error *err) {
    size_t i;
    memset(c, 0, sizeof *c);
    i = sy_config_i_space(json, 0);
    if (i == json.len) return SY_OK;
    if (json.data[i] != '{') return sy_config_i_fail(err, NULL, "must be a JSON object");
    i = sy_config_i_space(json, i + 1);
    if (i < json.len && json.data[i] == '}') {
        if (sy_config_i_space(json, i + 1) != json.len) return sy_config_i_fail(err, NULL, "not valid JSON (text after the object)");
        return SY_OK;
    }
    while (i < json.len) {
        sy_config_entry *e;
        size_t end, k;
        if (c->count == SY_CONFIG_MAX_KEYS) return sy_config_i_fail(err, NULL, "too many keys");
        if (json.data[i] != '"' || (end = sy_config_i_skip_string(json, i)) == 0)
            return sy_config_i_fail(err, NULL, "not valid JSON (expected a quoted key)");
        e = &c->entries[c->count];
        e->key.data = json.data + i + 1;
        e->key.len = end - i - 2;
        for (k = 0; k < c->count; k++) {
            if (c->entries[k].key.len == e->key.len && memcmp(c->entries[k].key.data, e->key.data, e->key.len) == 0)
                return sy_config_i_fail_at(err, e->key, "appears twice");
        }
        i = sy_config_i_space(json, end);
        if (i >= json.len || json.data[i] != ':') return sy_config_i_fail_at(err, e->key, "not valid JSON (expected ':' after the key)");
        i = sy_config_i_space(json, i + 1);
        end = sy_config_i_skip_value(json, i, &e->kind);
        if (end == 0) return sy_config_i_fail_at(err, e->key, "not valid JSON (the value is malformed)");
        if (e->kind == SY_CONFIG_STRING) { e->value.data = json.data + i + 1; e->value.len = end - i - 2; }
        else { e->value.data = json.data + i; e->value.len = end - i; }
        c->count++;
        i = sy_config_i_space(json, end);
        if (i < json.len && json.data[i] == ',') { i = sy_config_i_space(json, i + 1); continue; }
        if (i < json.len && json.data[i] == '}') {
            if (sy_config_i_space(json, i + 1) != json.len) return sy_config_i_fail(err, NULL, "not valid JSON (text after the object)");
            return SY_OK;
        }
        return sy_config_i_fail_at(err, e->key, "not valid JSON (expected ',' or '}' after the value)");
    }
    return sy_config_i_fail(err, NULL, "not valid JSON (the object is not closed)");
}

/**
 * Copies string `key` into `out` (`capacity` bytes, NUL-terminated), decoding the escapes \" \\ \/
 * \n \t \r \b \f. Absent or null: `out` keeps its default. SY_ERR_CONFIG naming the key when it is
 * not a string, does not fit, or uses \u escapes (write the character itself: the text is UTF-8).
 */
static inline sy_status sy_config_string(sy_config *c, const char *key, char *out, size_t capacity, sy_error *err) {
    sy_config_entry *e = sy_config_i_find(c, key);
    size_t i, n = 0, pass;
    if (e == NULL || e->kind == SY_CONFIG_NULL) return SY_OK;
    if (e->kind != SY_CONFIG_STRING) return sy_config_i_fail(err, key, "expected a string");
    /* Pass 0 checks and measures, pass 1 writes: on any error `out` keeps its default. */
    for (pass = 0; pass < 2; pass++) {
        for (i = 0, n = 0; i < e->value.len; i++, n++) {
            char ch = e->value.data[i];
            if (ch == '\\' && i + 1 < e->value.len) {
                char x = e->value.data[++i];
                switch (x) {
                case 'n': ch = '\n'; break;
                case 't': ch = '\t'; break;
                case 'r': ch = '\r'; break;
                case 'b': ch = '\b'; break;
                case 'f': ch = '\f'; break;
                case '"': case '\\': case '/': ch = x; break;
                case 'u': return sy_config_i_fail(err, key, "\\u escapes are not supported here; write the character itself (the text is UTF-8)");
                default: return sy_config_i_fail(err, key, "has an invalid escape");
                }
            }
            if (pass == 1) out[n] = ch;
        }
        if (n + 1 > capacity) return sy_config_i_fail(err, key, "is too long");
    }
    out[n] = '\0';
    return SY_OK;
}

/** Reads integer `key` (a JSON number without fraction, or such a number in a string). Absent or
 *  null: `out` keeps its default. SY_ERR_CONFIG naming the key otherwise. */
static inline sy_status sy_config_int(sy_config *c, const char *key, int64_t *out, sy_error *err) {
    sy_config_entry *e = sy_config_i_find(c, key);
    int64_t value = 0;
    size_t i = 0;
    int negative = 0;
    if (e == NULL || e->kind == SY_CONFIG_NULL) return SY_OK;
    if (e->kind != SY_CONFIG_NUMBER && e->kind != SY_CONFIG_STRING) return sy_config_i_fail(err, key, "expected an integer");
    if (e->value.len > 0 && e->value.data[0] == '-') { negative = 1; i = 1; }
    if (i == e->value.len) return sy_config_i_fail(err, key, "expected an integer");
    for (; i < e->value.len; i++) {
        char ch = e->value.data[i];
        if (ch < '0' || ch > '9') return sy_config_i_fail(err, key, "expected an integer");
        if (value > (INT64_MAX - (ch - '0')) / 10) return sy_config_i_fail(err, key, "is out of range");
        value = value * 10 + (ch - '0');
    }
    *out = negative ? -value : value;
    return SY_OK;
}

/** Reads integer `key` as sy_config_int does, and refuses a value outside `min`...`max`
 *  (inclusive) with SY_ERR_CONFIG naming the key and the range ("config key 'capacity': must be
 *  between 1 and 1000000, got 0"). Absent or null: `out` keeps its default, unchecked (a default
 *  may mean "automatic" outside the range). The getters check types only; ranges are yours. */
static inline sy_status sy_config_int_range(sy_config *c, const char *key, int64_t min, int64_t max, int64_t *out, sy_error *err) {
    int64_t value = *out;
    char what[128];
    const sy_config_entry *e = sy_config_i_find(c, key);
    if (e == NULL || e->kind == SY_CONFIG_NULL) return SY_OK;
    if (sy_config_int(c, key, &value, err) != SY_OK) return SY_ERR_CONFIG;
    if (value < min || value > max) {
        snprintf(what, sizeof what, "must be between %lld and %lld, got %lld", (long long)min, (long long)max, (long long)value);
        return sy_config_i_fail(err, key, what);
    }
    *out = value;
    return SY_OK;
}

/** Refuses `key` with SY_ERR_CONFIG and the message "config key '<key>': <what>", the form every
 *  getter uses: for checks of your own across keys ("needs 'user' as well"). Returns
 *  SY_ERR_CONFIG. */
static inline sy_status sy_config_refuse(sy_error *err, const char *key, const char *what) {
    return sy_config_i_fail(err, key, what);
}

/** Reads boolean `key` (true or false) into `out` as 1 or 0. Absent or null: `out` keeps its
 *  default. SY_ERR_CONFIG naming the key otherwise. */
static inline sy_status sy_config_bool(sy_config *c, const char *key, int *out, sy_error *err) {
    sy_config_entry *e = sy_config_i_find(c, key);
    if (e == NULL || e->kind == SY_CONFIG_NULL) return SY_OK;
    if (e->kind != SY_CONFIG_BOOL) return sy_config_i_fail(err, key, "expected true or false");
    *out = e->value.data[0] == 't';
    return SY_OK;
}

/** Reads duration `key` ("250ms", "5s", "1.5s", "1m", "2h", "100us", "10ns" or "0") in
 *  nanoseconds. Absent or null: `out` keeps its default. SY_ERR_CONFIG naming the key otherwise
 *  (a bare number is refused: its unit would be a guess). */
static inline sy_status sy_config_duration_ns(sy_config *c, const char *key, int64_t *out, sy_error *err) {
    static const struct { const char *unit; double scale; } units[] = {
        {"ns", 1}, {"us", 1e3}, {"ms", 1e6}, {"s", 1e9}, {"m", 60e9}, {"h", 3600e9},
    };
    sy_config_entry *e = sy_config_i_find(c, key);
    size_t u;
    if (e == NULL || e->kind == SY_CONFIG_NULL) return SY_OK;
    if (e->value.len == 1 && e->value.data[0] == '0') { *out = 0; return SY_OK; }  /* "0" or 0 */
    if (e->kind == SY_CONFIG_STRING) {
        for (u = 0; u < sizeof units / sizeof units[0]; u++) {
            size_t n = strlen(units[u].unit);
            double number;
            if (e->value.len > n && memcmp(e->value.data + e->value.len - n, units[u].unit, n) == 0
                && sy_config_i_number(e->value.data, e->value.len - n, &number) && number >= 0
                && number * units[u].scale < 9.2e18) {
                *out = (int64_t)(number * units[u].scale + 0.5);  /* "1.001s" is 1001000000 ns */
                return SY_OK;
            }
        }
    }
    return sy_config_i_fail(err, key, "expected a duration like \"250ms\", \"5s\", \"1m\" or \"2h\" (not negative)");
}

/**
 * Call after the getters: SY_ERR_CONFIG naming the first key no getter asked for, and the keys
 * they did ask for ("unknown config key 'capacty' (known keys: capacity, prefix)"), so a
 * misspelled key is refused instead of silently ignored.
 */
static inline sy_status sy_config_finish(const sy_config *c, sy_error *err) {
    size_t i, k, used;
    for (i = 0; i < c->count; i++) {
        char message[SY_ERROR_MESSAGE_CAPACITY];
        if (c->entries[i].asked) continue;
        used = (size_t)snprintf(message, sizeof message, "unknown config key '%.*s' (known keys: ",
                                sy_config_i_key_shown(c->entries[i].key), c->entries[i].key.data);
        if (c->known_count == 0 && used < sizeof message) used += (size_t)snprintf(message + used, sizeof message - used, "none");
        for (k = 0; k < c->known_count && used < sizeof message; k++)
            used += (size_t)snprintf(message + used, sizeof message - used, "%s%s", k > 0 ? ", " : "", c->known[k]);
        if (used < sizeof message) snprintf(message + used, sizeof message - used, ")");
        return sy_error_set(err, SY_ERR_CONFIG, message);
    }
    return SY_OK;
}

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* SWITCHYARD_CONFIG_H */
