/* A native module nobody wrote for Switchyard: plain exported C functions, for the libffi tests. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int32_t add_i32(int32_t a, int32_t b) { return a + b; }
int8_t negate_i8(int8_t a) { return (int8_t)-a; }
uint16_t double_u16(uint16_t a) { return (uint16_t)(a * 2); }
int64_t mul_i64(int64_t a, int64_t b) { return a * b; }
uint64_t max_u64(void) { return UINT64_MAX; }
double scale(int32_t count, double factor) { return count * factor; }
float half(float value) { return value / 2; }
bool is_even(int64_t value) { return value % 2 == 0; }
static int calls;
void touch(void) { calls++; }
int32_t touched(void) { return calls; }

/* Returns a string the caller frees with greet_free. */
char *greet(const char *name) {
    const char *prefix = "hello, ";
    char *out = malloc(strlen(prefix) + strlen(name) + 1);
    strcpy(out, prefix);
    strcat(out, name);
    return out;
}
void greet_free(char *text) { free(text); }

/* Sums a byte buffer: a pointer and a length. */
uint64_t checksum(const uint8_t *data, size_t length) {
    uint64_t sum = 0;
    for (size_t i = 0; i < length; i++) sum = sum * 31 + data[i];
    return sum;
}
