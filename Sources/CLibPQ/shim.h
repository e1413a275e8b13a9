// libpq, PostgreSQL's C client (Debian's libpq-dev): the postgres plugins and the runtime's PostgreSQL inbox and outbox.
#include <libpq-fe.h>
