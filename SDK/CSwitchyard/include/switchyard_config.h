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
 * arrays are checked and parsed past but cannot be read here. An integer may be a JSON number or a
 * string of digits ("12"); a duration is a string with its unit (a JSON 0 means "0"); a boolean is
 * true or false. Keys and strings are decoded as JSON defines (\u0061 is "a"), so a key matches,
 * repeats and is named in errors by its decoded text. Malformed JSON (trailing commas, leading
 * zeros, a lone \u surrogate, nesting past 512 levels) is refused, naming the key where it went
 * wrong. Nothing is allocated: the struct holds slices into the JSON text, which must stay alive
 * while you read it (config_json does, for the length of `create`).
 *
 * Header-only, `static inline` like switchyard_plugin.h; C99 and C++17 clean.
 */
#ifndef SWITCHYARD_CONFIG_H
#define SWITCHYARD_CONFIG_H

#include <stdio.h>
#include <stdlib.h>
#include "switchyard_plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Most keys a config may have (more is refused with SY_ERR_CONFIG). */
#define SY_CONFIG_MAX_KEYS 64

/** How deep a nested value may go (Swift's JSONDecoder stops at 512 too); deeper is refused. */
#define SY_CONFIG_MAX_DEPTH 512

/** Kinds of value a key can hold. */
#define SY_CONFIG_STRING 1
#define SY_CONFIG_NUMBER 2
#define SY_CONFIG_BOOL 3
#define SY_CONFIG_NULL 4
#define SY_CONFIG_NESTED 5   /**< An object or an array. */

/** One key of the object: slices into the JSON text. */
typedef struct sy_config_entry {
    sy_str key;          /**< Without quotes, escapes left as written (the getters match it decoded). */
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

/* The value of the 4 hex digits at s.data[i]; -1 when there are not 4. */
static inline long sy_config_i_hex4(sy_str s, size_t i) {
    long v = 0;
    size_t k;
    if (s.len < 4 || i > s.len - 4) return -1;
    for (k = i; k < i + 4; k++) {
        char h = s.data[k];
        if (h >= '0' && h <= '9') v = v * 16 + (h - '0');
        else if (h >= 'a' && h <= 'f') v = v * 16 + (h - 'a' + 10);
        else if (h >= 'A' && h <= 'F') v = v * 16 + (h - 'A' + 10);
        else return -1;
    }
    return v;
}

/* Skips a JSON string starting at the quote at i, checking its escapes; returns the index after
 * the closing quote, or 0 when malformed. A \u surrogate must come in a pair (one alone encodes
 * no character, and Swift's JSONDecoder refuses it too), so every checked string decodes. */
static inline size_t sy_config_i_skip_string(sy_str s, size_t i) {
    for (i = i + 1; i < s.len; i++) {
        long u;
        if ((unsigned char)s.data[i] < 0x20) return 0;  /* raw control characters are not JSON */
        if (s.data[i] == '"') return i + 1;
        if (s.data[i] != '\\') continue;
        if (++i == s.len) return 0;
        switch (s.data[i]) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't': continue;
        case 'u': break;
        default: return 0;
        }
        u = sy_config_i_hex4(s, i + 1);
        if (u < 0 || (u >= 0xDC00 && u <= 0xDFFF)) return 0;
        i += 4;
        if (u >= 0xD800 && u <= 0xDBFF) {
            if (i + 2 >= s.len || s.data[i + 1] != '\\' || s.data[i + 2] != 'u') return 0;
            u = sy_config_i_hex4(s, i + 3);
            if (u < 0xDC00 || u > 0xDFFF) return 0;
            i += 6;
        }
    }
    return 0;
}

/* Decodes the character at s.data[*i] of a string sy_config_i_skip_string checked into `out`
 * (UTF-8); returns its length in bytes and moves *i past it. */
static inline size_t sy_config_i_char(sy_str s, size_t *i, char out[4]) {
    unsigned long u;
    char ch = s.data[(*i)++];
    if (ch != '\\') { out[0] = ch; return 1; }
    ch = s.data[(*i)++];
    switch (ch) {
    case 'b': out[0] = '\b'; return 1;
    case 'f': out[0] = '\f'; return 1;
    case 'n': out[0] = '\n'; return 1;
    case 'r': out[0] = '\r'; return 1;
    case 't': out[0] = '\t'; return 1;
    case 'u': break;
    default: out[0] = ch; return 1;  /* \" \\ \/ */
    }
    u = (unsigned long)sy_config_i_hex4(s, *i);
    *i += 4;
    if (u >= 0xD800 && u <= 0xDBFF) {  /* checked: "\uDC00"-"\uDFFF" follows */
        u = 0x10000 + ((u - 0xD800) << 10) + ((unsigned long)sy_config_i_hex4(s, *i + 2) - 0xDC00);
        *i += 6;
    }
    if (u < 0x80) { out[0] = (char)u; return 1; }
    if (u < 0x800) { out[0] = (char)(0xC0 | (u >> 6)); out[1] = (char)(0x80 | (u & 0x3F)); return 2; }
    if (u < 0x10000) {
        out[0] = (char)(0xE0 | (u >> 12)); out[1] = (char)(0x80 | ((u >> 6) & 0x3F)); out[2] = (char)(0x80 | (u & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (u >> 18)); out[1] = (char)(0x80 | ((u >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((u >> 6) & 0x3F)); out[3] = (char)(0x80 | (u & 0x3F));
    return 4;
}

/* Reads the contents of a checked JSON string (or a number's text) one decoded byte at a time:
 * keys are compared decoded without a copy, as nothing here allocates. */
typedef struct sy_config_i_reader {
    sy_str s;
    size_t i, at, n;
    char pending[4];
} sy_config_i_reader;

static inline sy_config_i_reader sy_config_i_read(sy_str s) {
    sy_config_i_reader r;
    memset(&r, 0, sizeof r);
    r.s = s;
    return r;
}

/* The next decoded byte, or -1 at the end. */
static inline int sy_config_i_byte(sy_config_i_reader *r) {
    if (r->at == r->n) {
        if (r->i >= r->s.len) return -1;
        r->n = sy_config_i_char(r->s, &r->i, r->pending);
        r->at = 0;
    }
    return (unsigned char)r->pending[r->at++];
}

/* Decodes `s` into `out`, writing at most `capacity` bytes; returns the whole decoded length. */
static inline size_t sy_config_i_decode(sy_str s, char *out, size_t capacity) {
    sy_config_i_reader r = sy_config_i_read(s);
    size_t n = 0;
    int b;
    for (; (b = sy_config_i_byte(&r)) >= 0; n++)
        if (n < capacity) out[n] = (char)b;
    return n;
}

/* Whether two keys decode to the same text ("a" and "\u0061" do). */
static inline int sy_config_i_same_key(sy_str a, sy_str b) {
    sy_config_i_reader ra = sy_config_i_read(a), rb = sy_config_i_read(b);
    int x;
    do {
        x = sy_config_i_byte(&ra);
        if (x != sy_config_i_byte(&rb)) return 0;
    } while (x >= 0);
    return 1;
}

/* Whether `key` as written in the JSON decodes to the C string `name`. */
static inline int sy_config_i_key_is(sy_str key, const char *name) {
    sy_config_i_reader r = sy_config_i_read(key);
    size_t k = 0;
    int b;
    while ((b = sy_config_i_byte(&r)) >= 0)
        if (name[k] == '\0' || (unsigned char)name[k++] != b) return 0;
    return name[k] == '\0';
}

/* `key` as an error message shows it, into `name`: decoded, at most 64 bytes, never ending inside
 * a UTF-8 character (messages are UTF-8, and the host looks the key up in the file by its name),
 * control characters as '?' (a message is one line, and a NUL would cut it short). */
static inline const char *sy_config_i_key_name(sy_str key, char name[72]) {
    size_t k, n = sy_config_i_decode(key, name, 65);
    if (n > 64) {
        n = 64;
        while (n > 0 && ((unsigned char)name[n] & 0xC0) == 0x80) n--;  /* name[n] continues a character */
    }
    for (k = 0; k < n; k++)
        if ((unsigned char)name[k] < 0x20) name[k] = '?';
    name[n] = '\0';
    return name;
}

/* A failure while reading `key`'s entry, named as every other refusal of that key. */
static inline sy_status sy_config_i_fail_at(sy_error *err, sy_str key, const char *what) {
    char name[72];
    return sy_config_i_fail(err, sy_config_i_key_name(key, name), what);
}

static inline size_t sy_config_i_space(sy_str s, size_t i) {
    while (i < s.len && (s.data[i] == ' ' || s.data[i] == '\t' || s.data[i] == '\n' || s.data[i] == '\r')) i++;
    return i;
}

static inline size_t sy_config_i_digits(sy_str s, size_t i) {
    while (i < s.len && s.data[i] >= '0' && s.data[i] <= '9') i++;
    return i;
}

/* Skips the JSON number at i, -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?; returns the index
 * after it, or 0 when there is none. */
static inline size_t sy_config_i_skip_number(sy_str s, size_t i) {
    size_t at;
    if (i < s.len && s.data[i] == '-') i++;
    if (i < s.len && s.data[i] == '0') i++;  /* no leading zeros: "01" is not JSON */
    else if ((at = sy_config_i_digits(s, i)) == i) return 0;
    else i = at;
    if (i < s.len && s.data[i] == '.') {
        if ((at = sy_config_i_digits(s, i + 1)) == i + 1) return 0;
        i = at;
    }
    if (i < s.len && (s.data[i] == 'e' || s.data[i] == 'E')) {
        i++;
        if (i < s.len && (s.data[i] == '+' || s.data[i] == '-')) i++;
        if ((at = sy_config_i_digits(s, i)) == i) return 0;
        i = at;
    }
    return i;
}

/* Skips `word` (true, false, null) at i; returns the index after it, or 0. */
static inline size_t sy_config_i_skip_word(sy_str s, size_t i, const char *word) {
    size_t n = strlen(word);
    return s.len - i >= n && memcmp(s.data + i, word, n) == 0 ? i + n : 0;
}

/* Skips `"key" :` at i inside an object; returns the index of the value, or 0. */
static inline size_t sy_config_i_skip_member(sy_str s, size_t i) {
    if (i >= s.len || s.data[i] != '"' || (i = sy_config_i_skip_string(s, i)) == 0) return 0;
    i = sy_config_i_space(s, i);
    if (i >= s.len || s.data[i] != ':') return 0;
    return sy_config_i_space(s, i + 1);
}

/* Skips the JSON value at i, checking all of it (nested values too: a malformed one is refused
 * here, not later as an unknown key); returns the index after it, or 0 with *why set. */
static inline size_t sy_config_i_skip_value(sy_str s, size_t i, int *kind, const char **why) {
    char open[SY_CONFIG_MAX_DEPTH];   /* the brackets still open, innermost last */
    size_t depth = 0;
    *why = "not valid JSON (the value is malformed)";
    if (i >= s.len) return 0;
    switch (s.data[i]) {
    case '"': *kind = SY_CONFIG_STRING; break;
    case '{': case '[': *kind = SY_CONFIG_NESTED; break;
    case 't': case 'f': *kind = SY_CONFIG_BOOL; break;
    case 'n': *kind = SY_CONFIG_NULL; break;
    default: *kind = SY_CONFIG_NUMBER; break;
    }
    for (;;) {  /* at the start of a value */
        char ch = i < s.len ? s.data[i] : '\0';
        if (ch == '{' || ch == '[') {
            if (depth == SY_CONFIG_MAX_DEPTH) { *why = "the value is nested more than 512 levels deep"; return 0; }
            open[depth++] = ch;
            i = sy_config_i_space(s, i + 1);
            if (i < s.len && s.data[i] == (ch == '{' ? '}' : ']')) { depth--; i++; }
            else if (ch == '[') continue;
            else if ((i = sy_config_i_skip_member(s, i)) == 0) return 0;
            else continue;
        } else if (ch == '"') {
            if ((i = sy_config_i_skip_string(s, i)) == 0) return 0;
        } else {
            size_t end = ch == 't' ? sy_config_i_skip_word(s, i, "true") : ch == 'f' ? sy_config_i_skip_word(s, i, "false")
                       : ch == 'n' ? sy_config_i_skip_word(s, i, "null") : sy_config_i_skip_number(s, i);
            /* "truex", "01", "1x" are one malformed value, not a value and then garbage */
            if (end == 0 || (end < s.len && (s.data[end] == '\0' || strchr(" \t\n\r,}]", s.data[end]) == NULL))) return 0;
            i = end;
        }
        for (;;) {  /* after a value: close the brackets that end here, up to a ',' */
            if (depth == 0) return i;
            i = sy_config_i_space(s, i);
            if (i < s.len && s.data[i] == (open[depth - 1] == '{' ? '}' : ']')) { depth--; i++; continue; }
            if (i >= s.len || s.data[i] != ',') return 0;
            i = sy_config_i_space(s, i + 1);
            if (open[depth - 1] == '{' && (i = sy_config_i_skip_member(s, i)) == 0) return 0;
            break;
        }
    }
}

/* Finds `key` (records it as known); NULL when absent. */
static inline sy_config_entry *sy_config_i_find(sy_config *c, const char *key) {
    size_t i;
    for (i = 0; i < c->known_count && strcmp(c->known[i], key) != 0; i++) {}
    if (i == c->known_count && c->known_count < SY_CONFIG_MAX_KEYS) c->known[c->known_count++] = key;
    for (i = 0; i < c->count; i++) {
        if (sy_config_i_key_is(c->entries[i].key, key)) {
            c->entries[i].asked = 1;
            return &c->entries[i];
        }
    }
    return NULL;
}

/* Reads text[0..n) as Swift's Double(String) does (the whole text, strtod's forms in the C locale,
 * correctly rounded, no space); 0 when it is not a number. */
static inline int sy_config_i_double(const char *text, size_t n, double *out) {
    char copy[160], point[8];
    char *end;
    size_t k, used = 0, point_len;
    /* strtod reads the process's decimal point (a plugin may have set a locale); printf writes
     * it (localeconv is not thread-safe), and the text's '.' becomes it. */
    snprintf(point, sizeof point, "%.1f", 0.5);
    point_len = strlen(point) >= 3 ? strlen(point) - 2 : 0;
    if (point_len == 0) { point[1] = '.'; point_len = 1; }
    for (k = 0; k < n; k++) {
        char ch = text[k];
        /* strtod's C-locale forms (1.5, 1e3, 0x1p3, inf, nan) use only these: a ',' or a space is
         * no number, whatever the locale */
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '+' || ch == '-' || ch == '.'))
            return 0;
        if (used + point_len >= sizeof copy) return 0;
        if (ch == '.') { memcpy(copy + used, point + 1, point_len); used += point_len; }
        else copy[used++] = ch;
    }
    if (used == 0) return 0;
    copy[used] = '\0';
    *out = strtod(copy, &end);
    return end == copy + used;
}

/* --- the API -------------------------------------------------------------------------------- */

/**
 * Parses `json` (one flat object; empty text counts as `{}`) into `c`. SY_ERR_CONFIG with a
 * message when it is not an object, is malformed (anywhere, nested values included), repeats a
 * key (compared decoded: "a" and "\u0061" are one key) or has too many keys.
 */
static inline sy_status sy_config_parse(sy_config *c, sy_str json, sy_error *err) {
    size_t i, end, k;
    const char *why;
    memset(c, 0, sizeof *c);
    i = sy_config_i_space(json, 0);
    if (i == json.len) return SY_OK;
    if (json.data[i] != '{') return sy_config_i_fail(err, NULL, "must be a JSON object");
    i = sy_config_i_space(json, i + 1);
    if (i < json.len && json.data[i] == '}') {
        if (sy_config_i_space(json, i + 1) != json.len) return sy_config_i_fail(err, NULL, "not valid JSON (text after the object)");
        return SY_OK;
    }
    for (;;) {
        sy_config_entry *e;
        if (c->count == SY_CONFIG_MAX_KEYS) return sy_config_i_fail(err, NULL, "too many keys");
        if (i >= json.len || json.data[i] != '"' || (end = sy_config_i_skip_string(json, i)) == 0) {
            /* After a ',' the key before it is where reading stopped ({"capacity": 1,}); a key that
             * does not parse cannot be named itself. */
            int after = c->count > 0;
            const char *what = i >= json.len ? "not valid JSON (the object is not closed)"
                             : json.data[i] != '"' ? (after ? "not valid JSON (expected a quoted key after it)" : "not valid JSON (expected a quoted key)")
                             : (after ? "not valid JSON (the key after it is malformed)" : "not valid JSON (a key is malformed)");
            return after ? sy_config_i_fail_at(err, c->entries[c->count - 1].key, what) : sy_config_i_fail(err, NULL, what);
        }
        e = &c->entries[c->count];
        e->key.data = json.data + i + 1;
        e->key.len = end - i - 2;
        for (k = 0; k < c->count; k++) {
            if (sy_config_i_same_key(c->entries[k].key, e->key)) return sy_config_i_fail_at(err, e->key, "appears twice");
        }
        i = sy_config_i_space(json, end);
        if (i >= json.len || json.data[i] != ':') return sy_config_i_fail_at(err, e->key, "not valid JSON (expected ':' after the key)");
        i = sy_config_i_space(json, i + 1);
        end = sy_config_i_skip_value(json, i, &e->kind, &why);
        if (end == 0) return sy_config_i_fail_at(err, e->key, why);
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
}

/**
 * Copies string `key` into `out` (`capacity` bytes, NUL-terminated), decoding its escapes as JSON
 * defines (the JSON text "\\u00e9" is é, in UTF-8). Absent or null: `out` keeps its default.
 * SY_ERR_CONFIG naming the key when it is not a string, does not fit, or holds a NUL ("\\u0000":
 * a C string would end there).
 */
static inline sy_status sy_config_string(sy_config *c, const char *key, char *out, size_t capacity, sy_error *err) {
    sy_config_entry *e = sy_config_i_find(c, key);
    sy_config_i_reader r;
    size_t n = 0;
    int b;
    if (e == NULL || e->kind == SY_CONFIG_NULL) return SY_OK;
    if (e->kind != SY_CONFIG_STRING) return sy_config_i_fail(err, key, "expected a string");
    /* Checked and measured before writing: on any error `out` keeps its default. */
    for (r = sy_config_i_read(e->value); (b = sy_config_i_byte(&r)) >= 0; n++)
        if (b == 0) return sy_config_i_fail(err, key, "contains a NUL character (\\u0000)");
    if (n + 1 > capacity) return sy_config_i_fail(err, key, "is too long");
    out[sy_config_i_decode(e->value, out, n)] = '\0';
    return SY_OK;
}

/** Reads integer `key` (a JSON number without fraction or exponent, or a string of digits with
 *  an optional '-', "12"), INT64_MIN to INT64_MAX. Absent or null: `out` keeps its default.
 *  SY_ERR_CONFIG naming the key otherwise. */
static inline sy_status sy_config_int(sy_config *c, const char *key, int64_t *out, sy_error *err) {
    sy_config_entry *e = sy_config_i_find(c, key);
    sy_config_i_reader r;
    int64_t value = 0;   /* summed negatively: -9223372036854775808 has no positive counterpart */
    int b, negative, digits = 0, overflow = 0;
    if (e == NULL || e->kind == SY_CONFIG_NULL) return SY_OK;
    if (e->kind != SY_CONFIG_NUMBER && e->kind != SY_CONFIG_STRING) return sy_config_i_fail(err, key, "expected an integer");
    r = sy_config_i_read(e->value);
    b = sy_config_i_byte(&r);
    negative = b == '-';
    if (negative) b = sy_config_i_byte(&r);
    for (; b >= 0; b = sy_config_i_byte(&r), digits++) {
        if (b < '0' || b > '9') return sy_config_i_fail(err, key, "expected an integer");
        if (value < (INT64_MIN + (b - '0')) / 10) overflow = 1;  /* value * 10 - digit would pass INT64_MIN */
        else value = value * 10 - (b - '0');
    }
    if (digits == 0) return sy_config_i_fail(err, key, "expected an integer");
    if (overflow || (!negative && value == INT64_MIN)) return sy_config_i_fail(err, key, "is out of range");
    *out = negative ? value : -value;
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
 *  nanoseconds, exactly as Swift's ConfigDuration.parse does, so a C and a Swift plugin read one
 *  config alike: spaces around are ignored; units ns, us, µs, ms, s, m, h; the number is anything
 *  Swift's Double(String) reads ("1e3ms", ".5s"), not negative, under 2^63 ns; a fraction rounds to
 *  the nearest nanosecond, halves away from zero ("1.001s" is 1001000000 ns, "0.5ns" is 1, and
 *  "0.4ns" is 0, accepted). At most 127 bytes. Absent or null: `out` keeps its default.
 *  SY_ERR_CONFIG naming the key otherwise (a bare number other than 0 is refused: its unit would be
 *  a guess). */
static inline sy_status sy_config_duration_ns(sy_config *c, const char *key, int64_t *out, sy_error *err) {
    static const struct { const char *unit; double scale; } units[] = {
        {"ns", 1}, {"us", 1e3}, {"\xC2\xB5s", 1e3}, {"ms", 1e6}, {"s", 1e9}, {"m", 60e9}, {"h", 3600e9},
    };
    sy_config_entry *e = sy_config_i_find(c, key);
    char text[128];
    size_t u, k, start = 0, n;
    if (e == NULL || e->kind == SY_CONFIG_NULL) return SY_OK;
    if (e->kind == SY_CONFIG_NUMBER) {
        /* zero in any spelling (0, -0, 0.0): no digit but 0 before an exponent */
        for (k = 0; k < e->value.len && (e->value.data[k] == '0' || e->value.data[k] == '-' || e->value.data[k] == '.'); k++) {}
        if (k == e->value.len || e->value.data[k] == 'e' || e->value.data[k] == 'E') { *out = 0; return SY_OK; }
    } else if (e->kind == SY_CONFIG_STRING && (n = sy_config_i_decode(e->value, text, sizeof text)) < sizeof text) {
        while (n > 0 && (text[n - 1] == ' ' || text[n - 1] == '\t')) n--;
        while (start < n && (text[start] == ' ' || text[start] == '\t')) start++;
        if (n - start == 1 && text[start] == '0') { *out = 0; return SY_OK; }
        for (u = 0; u < sizeof units / sizeof units[0]; u++) {
            size_t len = strlen(units[u].unit);
            double number, ns;
            int64_t whole;
            if (n - start > len && memcmp(text + n - len, units[u].unit, len) == 0
                && sy_config_i_double(text + start, n - len - start, &number) && number >= 0  /* not NaN either */
                && number * units[u].scale < 9223372036854775808.0) {  /* 2^63, as Double(Int64.max) */
                ns = number * units[u].scale;
                whole = (int64_t)ns;
                /* Swift's rounded(): from 2^52 up every double is whole, and whole + 0.5 would round */
                if (ns < 4503599627370496.0 && ns >= (double)whole + 0.5) whole++;
                *out = whole;
                return SY_OK;
            }
        }
    }
    return sy_config_i_fail(err, key, "expected a duration: a number and a unit (ns, us, ms, s, m or h), like \"250ms\" or \"1.5s\"; not negative, and a bare number other than 0 needs a unit");
}

/**
 * Call after the getters: SY_ERR_CONFIG naming the first key no getter asked for (decoded), and
 * the keys they did ask for ("unknown config key 'capacty' (known keys: capacity, prefix)"), so a
 * misspelled key is refused instead of silently ignored.
 */
static inline sy_status sy_config_finish(const sy_config *c, sy_error *err) {
    size_t i, k, used;
    for (i = 0; i < c->count; i++) {
        char message[SY_ERROR_MESSAGE_CAPACITY], name[72];
        if (c->entries[i].asked) continue;
        used = (size_t)snprintf(message, sizeof message, "unknown config key '%s' (known keys: ",
                                sy_config_i_key_name(c->entries[i].key, name));
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
