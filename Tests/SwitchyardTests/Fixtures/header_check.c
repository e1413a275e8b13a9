/* Compiled by the tests as C99 and as C++17 with -Wall -Wextra -Werror -pedantic: the header must
 * be clean in both, and its static inline helpers must be usable. */
#include "switchyard_plugin.h"

int header_check(void);
int header_check(void) {
    sy_error err;
    sy_str s = sy_str_from_cstr("channel");
    return (int)sy_error_set(&err, SY_ERR_FULL, "full") + (int)s.len + (int)SY_DESCRIPTOR_SIZE_V1_0;
}
