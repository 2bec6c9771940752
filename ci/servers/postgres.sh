# shellcheck shell=bash
# PostgreSQL: postgres (Debian's PostgreSQL, initdb'd into the run directory with a per-run
# password and otherwise the server's default settings: loopback only), postgres-tls (TLS
# only, with a client certificate from the run's CA and a password; a read-only role
# `reader`), and postgres-p1 with postgres-r1, a primary and its asynchronous streaming replica
# (`pg_basebackup -R`), for the failover case (KVSTORE_POSTGRES_FAILOVER_URL names both, with
# target_session_attrs=read-write). `ci/restart.sh postgres-r1 promote` promotes the replica.
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
    if [ "$name" = postgres-r1 ] && [ ! -f "$dir/data/PG_VERSION" ]; then
        # A copy of the running primary that streams from it (standby.signal and
        # primary_conninfo written by -R).
        local primary
        primary=$(kv_port postgres-p1 port)
        [ "$(id -u)" != 0 ] || { chmod a+x "$KV_RUN_DIR"; chown postgres "$dir"; }
        (PGPASSWORD=$pw kv_as_postgres "$bin/pg_basebackup" -h 127.0.0.1 -p "$primary" -U postgres \
            -D "$dir/data" -R -X stream --no-sync) >"$dir/basebackup.log" 2>&1 || {
            cat "$dir/basebackup.log" >&2
            return 1
        }
    fi
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
    local tls=()
    if [ "$name" = postgres-tls ]; then
        kv_certs
        local c="$KVSTORE_TLS_DIR"
        # The server reads its key only when the server's user owns it and no one else may.
        cp "$c/server.pem" "$c/server-key.pem" "$c/ca.pem" "$dir/"
        [ "$(id -u)" != 0 ] || chown postgres "$dir/server.pem" "$dir/server-key.pem" "$dir/ca.pem"
        chmod 600 "$dir/server-key.pem"
        # TLS only: a plain connection matches no line and is refused; a TLS one needs a
        # client certificate the run's CA signed and the password.
        printf '%s\n' "local all postgres peer" \
            "hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-ca" >"$dir/hba.conf"
        [ "$(id -u)" != 0 ] || chown postgres "$dir/hba.conf"
        tls=(-c ssl=on -c "ssl_cert_file=$dir/server.pem" -c "ssl_key_file=$dir/server-key.pem"
            -c "ssl_ca_file=$dir/ca.pem" -c "hba_file=$dir/hba.conf")
    fi
    (kv_as_postgres "$bin/postgres" -D "$dir/data" -k "$dir" -p "$port" \
        -c listen_addresses=127.0.0.1 "${tls[@]}") >"$dir/log" 2>&1 &
    echo $! >"$dir/pid"
    kv_wait "$name" 30 "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"
    case $name in
    postgres-p1) ;;
    postgres-r1)
        local p1 r1
        p1=$(kv_port postgres-p1 port) r1=$port
        export KVSTORE_POSTGRES_FAILOVER_URL="postgres://postgres:$pw@127.0.0.1:$p1,127.0.0.1:$r1/postgres?target_session_attrs=read-write"
        export KVSTORE_POSTGRES_REPLICA_URL="postgres://postgres:$pw@127.0.0.1:$r1/postgres"
        ;;
    postgres-tls)
        if [ ! -f "$dir/roles" ]; then
            # reader may read every table the store creates, and write none. Over the local
            # socket, as the server's own user (the hba file's `peer` line).
            (kv_as_postgres "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres \
                -c "CREATE ROLE reader LOGIN PASSWORD '$pw'" \
                -c "ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT SELECT ON TABLES TO reader") \
                >"$dir/roles.log" 2>&1 || {
                cat "$dir/roles.log" >&2
                return 1
            }
            touch "$dir/roles"
        fi
        local c="$KVSTORE_TLS_DIR"
        export KVSTORE_POSTGRES_TLS_URL="postgres://postgres:$pw@127.0.0.1:$port/postgres?tls_ca=$c/ca.pem&tls_cert=$c/client.pem&tls_key=$c/client-key.pem"
        ;;
    *) kv_export_url "$name" "postgres://postgres:$pw@127.0.0.1:$port/postgres" ;;
    esac
}

# kv_promote_postgres NAME: promotes the streaming replica NAME to a primary and waits (30 s at
# most) until it accepts writes.
kv_promote_postgres() {
    local name=$1 dir="$KV_RUN_DIR/$1" bin
    bin=$(kv_pg_bin)
    (kv_as_postgres "$bin/pg_ctl" promote -w -t 30 -D "$dir/data") >>"$dir/log" 2>&1
}
