# Shared by the scripts in this folder: install what the build needs, once, when it is missing.
# Sourced, not run.

# Debian packages the build needs beyond the Swift toolchain:
#   libc6-dev       C headers for the plugin fixtures the tests compile with the toolchain's clang
#   libsqlite3-dev  SQLite, for the durable stores
#   pkg-config      how SwiftPM finds system libraries
#   libnats-dev     nats.c, the NATS client the nats plugins are built on
#   libffi-dev      libffi, for native modules
#   libssl-dev      OpenSSL's libcrypto, for the sha256 of pinned plugin files
#   libpq-dev       libpq, the PostgreSQL client the postgres plugins are built on
#   librabbitmq-dev rabbitmq-c, the AMQP client the rabbitmq plugins are built on
SWITCHYARD_DEBIAN_PACKAGES="libc6-dev libsqlite3-dev pkg-config libnats-dev libffi-dev libssl-dev libpq-dev librabbitmq-dev"

# And what the tests need besides (scripts/test and scripts/sanitize install them; the demo and
# the install do not, so they never start a database service on the machine):
#   nats-server     the NATS server the NATS tests start (and .ci/run)
#   python3-venv    for scripts/cloudevents-check (a CloudEvents SDK reading the wire in the NATS tests)
#   postgresql      the PostgreSQL server the postgres tests start in temporary directories (as the
#                   postgres user); without it those tests are skipped
#   rabbitmq-server the RabbitMQ broker the rabbitmq tests start in temporary directories (Debian
#                   does not start its own service in a container); without it those tests are skipped
#   chromium        Debian's headless browser, for the admin console test (Tests/Browser)
SWITCHYARD_TEST_PACKAGES="nats-server python3-venv postgresql rabbitmq-server chromium"

# The suites that start many processes and kill them on purpose (the crash soak, plugins in child
# processes, PostgreSQL servers, RabbitMQ brokers): they load both cores for seconds, so scripts/test
# runs them after the rest, whose timing-bound tests would otherwise miss their windows on a
# two-core machine. (scripts/sanitize runs everything in one phase, at most 12 tests at a time,
# which keeps them from crowding the rest out.)
SWITCHYARD_HEAVY_SUITES="SoakTests|IsolationTests|PostgresTests|RabbitMQTests"

# The suites that load the machine so much that nothing else may run beside them (a browser over
# the demo at 20 orders/s): scripts/test runs them alone, last. Beside the heavy suites, the
# console test made an isolated plugin miss its 1 s start-up window in CI.
SWITCHYARD_ALONE_SUITES="ConsoleInBrowserTests"

# Installs the packages in SWITCHYARD_DEBIAN_PACKAGES, and those named as arguments, that are not
# installed yet.
ensure_debian_packages() {
    local missing=()
    for package in $SWITCHYARD_DEBIAN_PACKAGES "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "==> installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
}

# Fails early with a clear message when the Swift toolchain is not on PATH.
require_swift() {
    if ! command -v swift >/dev/null 2>&1; then
        echo "error: the Swift toolchain (6.3 or newer) must be on PATH: https://www.swift.org/install/linux/" >&2
        exit 1
    fi
}

# Writes the application package that a docs page shows into DEST: every fenced block preceded by
# `<!-- app: PATH -->` becomes the file DEST/PATH. Used by check-app-package and app-build-time.
extract_app_package() {
    python3 - "$1" "$2" <<'PY'
import os, re, sys
text = open(sys.argv[1]).read()
blocks = re.findall(r"<!-- app: (\S+) -->\n```[a-z]*\n(.*?)```", text, re.S)
if not blocks:
    sys.exit(f"{sys.argv[1]} has no '<!-- app: PATH -->' blocks")
for path, body in blocks:
    target = os.path.join(sys.argv[2], path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    open(target, "w").write(body)
    print(f"    {path}")
PY
}

# Prints the path of a Python with the CloudEvents SDK and one client (nats-py unless told
# otherwise), in a virtual environment under .build/ made on first use (scripts/cloudevents-check,
# scripts/cloudevents-call and scripts/cloudevents-amqp-check: clients that know nothing of
# Switchyard, for the NATS and RabbitMQ tests).
cloudevents_python() {
    # MODULE SPEC: the client the caller needs besides the SDK (nats nats-py==2.9.0, pika pika==1.3.2).
    local module=${1:-nats} spec=${2:-nats-py==2.9.0}
    local venv=.build/cloudevents-venv
    mkdir -p .build
    # One at a time: the NATS and RabbitMQ tests run these scripts at once, and one of them saw the
    # other's half-made environment (a python without pip yet) on a fresh checkout.
    exec 9>.build/cloudevents-venv.lock
    flock 9
    if [ ! -x "$venv/bin/pip" ]; then
        local python=/usr/bin/python3
        [ -x "$python" ] || python=python3
        "$python" -m venv --clear "$venv" >&2
    fi
    "$venv/bin/python" -c "import $module, cloudevents" 2>/dev/null || "$venv/bin/pip" install --quiet "cloudevents==1.11.0" "$spec" >&2
    flock -u 9
    echo "$venv/bin/python"
}
