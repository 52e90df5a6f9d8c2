#!/usr/bin/env bash
# PostgreSQL server for the cluster tests (Optuna RDB storage shared by SLURM workers).
#
#   tests/services/postgres.sh start    install (root, if missing) and start the Debian "main"
#                                       cluster on 127.0.0.1:5432; create role and database
#                                       effscale (password effscale); print the storage URL
#   tests/services/postgres.sh stop     stop the cluster
#   tests/services/postgres.sh status   exit 0 if the server accepts connections, else 1
#
# No systemd: the cluster is driven with pg_ctlcluster. `start` is idempotent and returns
# quickly when the server is already up and the database exists.
set -euo pipefail

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"
export LC_ALL=C

HOST=127.0.0.1
PORT=5432
DB_USER=effscale
DB_PASS=effscale
DB_NAME=effscale
CLUSTER=main
URL="postgresql+psycopg://$DB_USER:$DB_PASS@$HOST:$PORT/$DB_NAME"
WAIT_S=30

say() { echo "postgres: $*"; }
die() { echo "postgres: error: $*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

packages_present() {
    command -v pg_ctlcluster >/dev/null 2>&1 && command -v pg_isready >/dev/null 2>&1 &&
        command -v psql >/dev/null 2>&1 && compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

server_ready() { pg_isready -q -h "$HOST" -p "$PORT" -t 3 >/dev/null 2>&1; }

db_ready() {
    PGPASSWORD="$DB_PASS" PGCONNECT_TIMEOUT=3 psql -X -q -A -t -h "$HOST" -p "$PORT" -U "$DB_USER" -d "$DB_NAME" \
        -c 'SELECT 1' >/dev/null 2>&1
}

pg_version() {
    # Newest version with a cluster under /etc/postgresql, else the newest installed server.
    local v
    v="$(find /etc/postgresql -mindepth 2 -maxdepth 2 -name "$CLUSTER" -printf '%h\n' 2>/dev/null |
        xargs -r -n1 basename | sort -V | tail -n1)"
    if [ -z "$v" ]; then
        v="$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null |
            awk -F/ '{print $5}' | sort -V | tail -n1)"
    fi
    [ -n "$v" ] || die "no PostgreSQL server version found under /etc/postgresql or /usr/lib/postgresql"
    echo "$v"
}

install_packages() {
    packages_present && return 0
    is_root || die "PostgreSQL is not installed; as root run: apt-get install postgresql (or run this script as root)"
    local log
    log="$(mktemp /tmp/postgres-apt.XXXXXX)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends postgresql >"$log" 2>&1; then
        if ! { apt-get update && apt-get install -y --no-install-recommends postgresql; } >>"$log" 2>&1; then
            tail -n 20 "$log" >&2
            die "apt-get install postgresql failed (full log: $log)"
        fi
    fi
    rm -f "$log"
    packages_present || die "package postgresql installed but the server binaries are still missing"
}

as_postgres() { (cd / && runuser -u postgres -- "$@"); }

psql_admin() {
    as_postgres psql -X -q -A -t -v ON_ERROR_STOP=1 -p "$PORT" -d postgres "$@"
}

provision() {
    local exists
    psql_admin >/dev/null <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') THEN
        CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASS';
    ELSE
        ALTER ROLE $DB_USER LOGIN PASSWORD '$DB_PASS';
    END IF;
END
\$\$;
SQL
    exists="$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")"
    if [ "$exists" != 1 ]; then
        psql_admin -c "CREATE DATABASE $DB_NAME OWNER $DB_USER" >/dev/null
    fi
}

cmd_start() {
    install_packages
    if server_ready && db_ready; then
        say "up: $URL"
        return 0
    fi
    is_root || die "the server is not running or not provisioned, and fixing that needs root (sudo $0 start)"

    local ver port
    ver="$(pg_version)"
    if [ ! -d "/etc/postgresql/$ver/$CLUSTER" ]; then
        pg_createcluster "$ver" "$CLUSTER" -p "$PORT" >/dev/null
    fi
    port="$(pg_conftool -s "$ver" "$CLUSTER" show port 2>/dev/null || echo "$PORT")"
    [ "$port" = "$PORT" ] || die "cluster $ver/$CLUSTER is configured for port $port, not $PORT"

    if ! server_ready; then
        mkdir -p /run/postgresql
        chown postgres:postgres /run/postgresql
        chmod 2775 /run/postgresql
        local out
        if ! out="$(pg_ctlcluster "$ver" "$CLUSTER" start 2>&1)"; then
            # "already running" is fine; anything else is reported below if the server stays down.
            echo "$out" | grep -qi 'already running' || echo "$out" >&2
        fi
        local deadline=$((SECONDS + WAIT_S))
        until server_ready; do
            [ "$SECONDS" -lt "$deadline" ] || {
                tail -n 20 "/var/log/postgresql/postgresql-$ver-$CLUSTER.log" >&2 2>/dev/null || true
                die "server $ver/$CLUSTER not ready on $HOST:$PORT after ${WAIT_S}s"
            }
            sleep 0.5
        done
    fi
    provision
    db_ready || die "server is up but cannot log in as $DB_USER to database $DB_NAME on $HOST:$PORT"
    say "up: $URL"
}

cmd_stop() {
    local ver
    ver="$(pg_version)"
    if pg_ctlcluster "$ver" "$CLUSTER" status >/dev/null 2>&1; then
        is_root || [ "$(id -un)" = postgres ] || die "stopping the server needs root"
        pg_ctlcluster "$ver" "$CLUSTER" stop >/dev/null
    fi
    say "stopped"
}

cmd_status() {
    if command -v pg_isready >/dev/null 2>&1 && server_ready; then
        say "up: $URL"
        return 0
    fi
    say "not accepting connections on $HOST:$PORT"
    return 1
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
