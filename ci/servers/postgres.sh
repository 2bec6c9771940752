# shellcheck shell=bash
# PostgreSQL: postgres (Debian's PostgreSQL 15, initdb'd into the run directory, a per-run
# password, loopback only).
# Sourced by ci/servers.sh, whose helpers (kv_wait, kv_secret, kv_export_url…) it uses.

# The newest installed PostgreSQL's bin directory (Debian: /usr/lib/postgresql/<major>/bin).
kv_pg_bin() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    echo "${dir:-/usr/lib/postgresql/15/bin}"
}

# kv_as_postgres COMMAND...: execs COMMAND as the postgres user when root (the server refuses
# to run as root); setpriv keeps the PID, so the recorded PID is the server's.
kv_as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        exec setpriv --reuid postgres --regid postgres --init-groups -- "$@"
    fi
    exec "$@"
}

# kv_start_postgres NAME DIR PORT: initdb on the first start, then the server on 127.0.0.1:PORT.
kv_start_postgres() {
    local name=$1 dir=$2 port=$3 bin pw
    bin=$(kv_pg_bin) pw=$(kv_secret postgres)
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        if [ "$(id -u)" = 0 ]; then
            # The postgres user reaches its directory through the run directory.
            chmod a+x "$KV_RUN_DIR"
            chown postgres "$dir"
        fi
        (umask 077 && echo "$pw" >"$dir/pwfile")
        [ "$(id -u)" != 0 ] || chown postgres "$dir/pwfile"
        # Keys compare bytewise on every database (the store's column says COLLATE "C" too).
        (kv_as_postgres "$bin/initdb" -D "$dir/data" -U postgres --pwfile="$dir/pwfile" \
            -A scram-sha-256 -E UTF8 --locale=C --no-sync) >"$dir/initdb.log" 2>&1 || {
            cat "$dir/initdb.log" >&2
            return 1
        }
        rm -f "$dir/pwfile"
    fi
    (kv_as_postgres "$bin/postgres" -D "$dir/data" -k "$dir" -p "$port" \
        -c listen_addresses=127.0.0.1 -c max_connections=400) >"$dir/log" 2>&1 &
    echo $! >"$dir/pid"
    kv_wait "$name" 30 "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"
    kv_export_url "$name" "postgres://postgres:$pw@127.0.0.1:$port/postgres"
}
