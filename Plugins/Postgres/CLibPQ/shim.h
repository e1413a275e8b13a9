// libpq, PostgreSQL's C client (Debian's libpq-dev), for the postgres plugins.
#include <libpq-fe.h>
