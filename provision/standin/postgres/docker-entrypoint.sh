#!/bin/sh
# ente-lab: the official postgres image's entrypoint interface on top of Debian's REAL
# PostgreSQL: 15 from bookworm (ente-lab/postgres:15) or 17 from trixie
# (ente-lab/postgres:17). Not a stand-in for the database itself.
# The binaries: PGBIN, else /usr/lib/postgresql/$PG_MAJOR/bin (the image sets PG_MAJOR),
# else the one /usr/lib/postgresql/<major>/bin the rootfs holds.
# A data directory of another major is refused by postgres itself, exactly as upstream
# ("FATAL:  database files are incompatible with server"): this script never masks it,
# the container exits non-zero (upgrades are dump/restore, as upstream).
#   env: POSTGRES_PASSWORD (required on first start), POSTGRES_USER (default postgres),
#        POSTGRES_DB (default $POSTGRES_USER), PGDATA (default /var/lib/postgresql/data),
#        POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD (default scram-sha-256), PGPORT.
#   docker-entrypoint.sh postgres [server options]: as root, fix PGDATA's owner and re-run
#   itself as the postgres user; on an empty data dir initdb + user + database + the
#   /docker-entrypoint-initdb.d scripts (*.sh, *.sql); then exec postgres in the foreground
#   (log on stderr). Any other command is exec'ed as is.
# pg_isready: the image puts /usr/lib/postgresql/<major>/bin on PATH.
set -eu

log() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

if [ -z "${PGBIN:-}" ]; then
    if [ -n "${PG_MAJOR:-}" ]; then
        PGBIN=/usr/lib/postgresql/$PG_MAJOR/bin
    else
        for dir in /usr/lib/postgresql/*/bin; do
            [ -x "$dir/postgres" ] || continue
            [ -z "${PGBIN:-}" ] || die "several PostgreSQL majors under /usr/lib/postgresql: set PG_MAJOR"
            PGBIN=$dir
        done
    fi
fi
if [ -z "${PGBIN:-}" ] || [ ! -x "$PGBIN/postgres" ]; then
    die "no PostgreSQL server binaries (${PGBIN:-/usr/lib/postgresql/*/bin}/postgres)"
fi
PATH="$PGBIN:$PATH"
export PATH
PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA
POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
POSTGRES_HOST_AUTH_METHOD=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
PGPORT=${PGPORT:-5432}
export PGPORT

# Like upstream: options only ("-c x=y") mean "postgres -c x=y".
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
    exec "$@"
fi

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA"
    chmod 00700 "$PGDATA" || :
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
    mkdir -p /var/run/postgresql
    chown postgres:postgres /var/run/postgresql
    chmod 03775 /var/run/postgresql || :
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

# ----------------------------------------------------------------- as postgres from here
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
        die "Database is uninitialized and superuser password is not specified.
       You must specify POSTGRES_PASSWORD to a non-empty value for the
       superuser. For example, \"-e POSTGRES_PASSWORD=password\" on \"docker run\"."
    fi
    if [ -n "$(ls -A "$PGDATA" 2>/dev/null)" ]; then
        die "$PGDATA is not empty and holds no database (no PG_VERSION); refusing to initdb over it"
    fi
    pwfile=$(mktemp)
    trap 'rm -f "$pwfile"' EXIT
    printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of words, as upstream
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 ${POSTGRES_INITDB_ARGS:-} -D "$PGDATA" >&2
    rm -f "$pwfile"
    trap - EXIT
    printf "\nlisten_addresses = '*'\npassword_encryption = 'scram-sha-256'\n" >>"$PGDATA/postgresql.conf"
    printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"

    # Temporary server on the Unix socket only, as upstream.
    PGHOST=/var/run/postgresql
    export PGHOST
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p $PGPORT" -w start >&2
    if [ "$POSTGRES_DB" != postgres ]; then
        exists=$(psql -v ON_ERROR_STOP=1 -X -q -A -t --username "$POSTGRES_USER" --no-password \
                 --dbname postgres --set db="$POSTGRES_DB" <<'EOSQL'
SELECT 1 FROM pg_database WHERE datname = :'db' ;
EOSQL
)
        if [ -z "$exists" ]; then
            psql -v ON_ERROR_STOP=1 -X -q --username "$POSTGRES_USER" --no-password --dbname postgres \
                --set db="$POSTGRES_DB" <<'EOSQL'
CREATE DATABASE :"db" ;
EOSQL
            log "CREATE DATABASE"
        fi
    fi
    log ""
    if [ -d /docker-entrypoint-initdb.d ]; then
        for f in /docker-entrypoint-initdb.d/*; do
            case "$f" in
                *.sh) log "/usr/local/bin/docker-entrypoint.sh: running $f"; sh "$f" ;;
                *.sql) log "/usr/local/bin/docker-entrypoint.sh: running $f"
                       psql -v ON_ERROR_STOP=1 -X --username "$POSTGRES_USER" --no-password \
                           --dbname "$POSTGRES_DB" -f "$f" ;;
                *) if [ -e "$f" ]; then log "/usr/local/bin/docker-entrypoint.sh: ignoring $f"; fi ;;
            esac
        done
    fi
    pg_ctl -D "$PGDATA" -m fast -w stop >&2
    unset PGHOST
    log ""
    log "PostgreSQL init process complete; ready for start up."
    log ""
else
    log ""
    log "PostgreSQL Database directory appears to contain a database; Skipping initialization"
    log ""
fi

shift
exec postgres "$@"
