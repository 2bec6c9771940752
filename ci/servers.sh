# shellcheck shell=bash
# Install, start and stop the real servers kvstore is tested against. Source this file, then:
#
#   kv_install                 Debian packages (and the Consul build) that are missing
#   kv_start redis etcd ...    start each on a free 127.0.0.1 port, wait until ready, export
#                              KVSTORE_<NAME>_URL; stopped by PID when the shell exits.
#                              redis-stock, zk-stock and consul-stock start the same servers
#                              with their default settings (KVSTORE_<NAME>_STOCK_URL), for the
#                              tests of what kvstore reports on a server it cannot fully use.
#                              etcd36 is etcd 3.6 built from its Go module (KVSTORE_ETCD36_URL);
#                              redis-cluster a Redis in Cluster mode (KVSTORE_REDIS_CLUSTER_URL).
#                              redis-tls, etcd-tls, zk-tls and consul-tls demand TLS with a client
#                              certificate and a password or token (KVSTORE_<NAME>_TLS_URL, with
#                              certificates generated per run by kv_certs under $KV_RUN_DIR/certs).
#   kv_stop_one NAME / kv_start_one NAME   restart a single server on the same port (fault tests)
#
# Each server runs in its own directory under $KV_RUN_DIR with its log beside it; a server that
# is not ready within its deadline fails the run and prints its log.

KV_CI_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KV_RUN_DIR="${KV_RUN_DIR:-$(mktemp -d -t kvstore-servers.XXXXXX)}"
KV_CONSUL_VERSION="$(sed -n 's/^require github.com\/hashicorp\/consul v//p' "$KV_CI_DIR/consul/go.mod")"
KV_CONSUL_BIN="${KV_CONSUL_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/kvstore-ci/consul-$KV_CONSUL_VERSION}"
# etcd 3.6 (current upstream), built like Consul; Debian's etcd-server package is 3.4.
KV_ETCD36_VERSION="$(sed -n 's/^require go.etcd.io\/etcd\/server\/v3 v//p' "$KV_CI_DIR/etcd/go.mod")"
KV_ETCD36_BIN="${KV_ETCD36_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/kvstore-ci/etcd-$KV_ETCD36_VERSION}"
KV_PIDS=()
export KV_RUN_DIR

kv_log() { printf '[ci] %s\n' "$*" >&2; }

# A free TCP port on 127.0.0.1, picked by the kernel.
kv_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

kv_install() {
    local want=(redis-server etcd-server etcd-client zookeeper protobuf-compiler libprotobuf-dev python3 curl openssl)
    local missing=()
    for pkg in "${want[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        kv_log "installing Debian packages: ${missing[*]}"
        local sudo=()
        [ "$(id -u)" = 0 ] || sudo=(sudo)
        "${sudo[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    kv_build_consul
    kv_build_etcd36
}

# kv_go_build WHAT BIN MODULE_DIR PACKAGE [ENV=VALUE...]: builds PACKAGE at the version pinned
# in ci/MODULE_DIR/go.mod into BIN once; later runs reuse the cached binary.
kv_go_build() {
    local what=$1 bin=$2 module=$3 package=$4
    shift 4
    if [ -x "$bin" ]; then return 0; fi
    command -v go >/dev/null || { kv_log "Go is needed to build $what"; return 1; }
    kv_log "building $what from its Go module (first run only)"
    mkdir -p "$(dirname "$bin")"
    (cd "$KV_CI_DIR/$module" && env GOFLAGS=-mod=mod "$@" go build -trimpath -o "$bin.tmp" "$package") &&
        mv "$bin.tmp" "$bin"
}

# The pinned etcd 3.6 server (~1.5 min to build on two cores).
kv_build_etcd36() {
    kv_go_build "etcd $KV_ETCD36_VERSION" "$KV_ETCD36_BIN" etcd go.etcd.io/etcd/server/v3
}

# The pinned Consul release (~4 min). consul-awsauth's pinned pseudo-version is missing from the
# public checksum database; go.sum (committed) still pins its hash, and every other module is
# verified as usual.
kv_build_consul() {
    kv_go_build "Consul $KV_CONSUL_VERSION" "$KV_CONSUL_BIN" consul github.com/hashicorp/consul \
        GONOSUMDB=github.com/hashicorp/consul-awsauth
}

# kv_wait NAME DEADLINE_SECONDS CHECK_COMMAND...
kv_wait() {
    local name=$1 deadline=$2
    shift 2
    local end=$((SECONDS + deadline))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= end)); then
            kv_log "$name not ready within ${deadline}s; its log:"
            tail -n 60 "$KV_RUN_DIR/$name/log" >&2 || true
            return 1
        fi
        sleep 0.1
    done
    kv_log "$name ready"
}

kv_zk_ready() {
    python3 - "$1" <<'EOF'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
s.sendall(b"srvr")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
sys.exit(0 if b"Mode: standalone" in data else 1)
EOF
}

# Certificates for the TLS servers, generated once per run dir (never committed): a CA, a
# server certificate for localhost/127.0.0.1, two client certificates ("client", and "reader"
# for the ZooKeeper identity tests), and a second CA with its own
# client certificate, which the servers must refuse. Exports KVSTORE_TLS_DIR.
kv_certs() {
    local d="$KV_RUN_DIR/certs"
    export KVSTORE_TLS_DIR="$d"
    [ -f "$d/done" ] && return 0
    mkdir -p "$d"
    (
        cd "$d" || exit 1
        local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
        for ca in ca other-ca; do
            openssl req -x509 "${ec[@]}" -days 2 -subj "/CN=kvstore test $ca" \
                -keyout "$ca-key.pem" -out "$ca.pem" 2>/dev/null || exit 1
        done
        # kv_cert NAME SIGNER EXTENSIONS
        kv_cert() {
            openssl req "${ec[@]}" -subj "/CN=$1" -keyout "$1-key.pem" -out "$1.csr" 2>/dev/null &&
                printf '%s\n' "$3" >"$1.ext" &&
                openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2-key.pem" -CAcreateserial \
                    -days 2 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
        }
        kv_cert server ca "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth" || exit 1
        kv_cert client ca "extendedKeyUsage=clientAuth" || exit 1
        kv_cert reader ca "extendedKeyUsage=clientAuth" || exit 1
        kv_cert stranger other-ca "extendedKeyUsage=clientAuth" || exit 1
        cat server.pem server-key.pem >server-bundle.pem
        chmod 600 ./*-key.pem server-bundle.pem
        touch done
    )
}

# The password (Redis, etcd, ZooKeeper digest) or Consul management token of a TLS server,
# generated once per run dir.
kv_secret() {
    local f="$KV_RUN_DIR/certs/$1.secret"
    [ -f "$f" ] || python3 -c 'import uuid; print(uuid.uuid4())' >"$f"
    cat "$f"
}

kv_consul_ready() { curl -fsS "http://127.0.0.1:$1/v1/status/leader" | grep -q ':'; }
# kv_consul_tls_ready CURL_COMMAND... BASE_URL
kv_consul_tls_ready() { "${@:1:$#-1}" "${*: -1}/v1/status/leader" | grep -q ':'; }

# kv_zoo_cfg DIR CLIENT_PORT: the zoo.cfg settings every ZooKeeper here shares.
kv_zoo_cfg() {
    cat <<EOF
tickTime=200
initLimit=10
syncLimit=5
minSessionTimeout=400
maxSessionTimeout=60000
dataDir=$1/data
clientPort=$2
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,mntr,stat
EOF
}

# kv_zk_java DIR EXTRA_CLASSPATH JVM_OPTION...: starts the ZooKeeper of DIR in the background.
kv_zk_java() {
    local dir=$1 cp=$2
    shift 2
    java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 "$@" -Dzookeeper.log.dir="$dir" \
        -cp "$cp"/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar:/etc/zookeeper/conf \
        org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg" >"$dir/log" 2>&1 &
}

# Starts one server; its port is chosen on the first start and kept on restarts.
kv_start_one() {
    local name=$1 dir="$KV_RUN_DIR/$1"
    mkdir -p "$dir"
    local port_file="$dir/port"
    [ -f "$port_file" ] || kv_free_port >"$port_file"
    local port
    port=$(cat "$port_file")
    case $name in
    redis)
        redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
            --notify-keyspace-events KEA --dir "$dir" >"$dir/log" 2>&1 &
        echo $! >"$dir/pid"
        kv_wait redis 10 redis-cli -p "$port" ping
        export KVSTORE_REDIS_URL="redis://127.0.0.1:$port"
        ;;
    redis-cluster)
        # A server in Cluster mode (no slots assigned): kvstore must refuse it at connect.
        redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
            --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" --dir "$dir" >"$dir/log" 2>&1 &
        echo $! >"$dir/pid"
        kv_wait redis-cluster 10 redis-cli -p "$port" ping
        export KVSTORE_REDIS_CLUSTER_URL="redis://127.0.0.1:$port"
        ;;
    redis-stock)
        # Defaults: keyspace notifications off. Persistence off only to keep the run dir clean.
        redis-server --bind 127.0.0.1 --port "$port" --save '' --dir "$dir" >"$dir/log" 2>&1 &
        echo $! >"$dir/pid"
        kv_wait redis-stock 10 redis-cli -p "$port" ping
        export KVSTORE_REDIS_STOCK_URL="redis://127.0.0.1:$port"
        ;;
    etcd | etcd36)
        # etcd: Debian's 3.4; etcd36: the pinned 3.6 build. Same flags for both.
        local bin=etcd
        [ "$name" = etcd ] || bin=$KV_ETCD36_BIN
        [ -f "$dir/peer_port" ] || kv_free_port >"$dir/peer_port"
        local peer
        peer=$(cat "$dir/peer_port")
        "$bin" --name kvstore --data-dir "$dir/data" \
            --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
            --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
            --initial-cluster "kvstore=http://127.0.0.1:$peer" \
            --heartbeat-interval 10 --election-timeout 100 >"$dir/log" 2>&1 &
        echo $! >"$dir/pid"
        kv_wait "$name" 20 curl -fsS "http://127.0.0.1:$port/health"
        if [ "$name" = etcd ]; then
            export KVSTORE_ETCD_URL="etcd://127.0.0.1:$port"
        else
            export KVSTORE_ETCD36_URL="etcd://127.0.0.1:$port"
        fi
        ;;
    zk | zk-stock)
        mkdir -p "$dir/data"
        # zk-stock: the server's defaults for TTL nodes (off) and container reaping (60 s).
        local extended=(-Dzookeeper.extendedTypesEnabled=true -Dznode.container.checkIntervalMs=100)
        [ "$name" = zk ] || extended=()
        kv_zoo_cfg "$dir" "$port" >"$dir/zoo.cfg"
        kv_zk_java "$dir" "" "${extended[@]}"
        echo $! >"$dir/pid"
        kv_wait "$name" 30 kv_zk_ready "$port"
        if [ "$name" = zk ]; then
            export KVSTORE_ZK_URL="zk://127.0.0.1:$port"
        else
            export KVSTORE_ZK_STOCK_URL="zk://127.0.0.1:$port"
        fi
        ;;
    consul | consul-stock)
        local serf_lan serf_wan server
        for p in serf_lan serf_wan server; do [ -f "$dir/$p" ] || kv_free_port >"$dir/$p"; done
        serf_lan=$(cat "$dir/serf_lan") serf_wan=$(cat "$dir/serf_wan") server=$(cat "$dir/server")
        # consul-stock keeps the agent's default session_ttl_min (10 s).
        local ttl_min='session_ttl_min = "1s"'
        [ "$name" = consul ] || ttl_min=''
        cat >"$dir/consul.hcl" <<EOF
$ttl_min
telemetry {
  prometheus_retention_time = "1h"
  disable_hostname = true
}
EOF
        "$KV_CONSUL_BIN" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port "$port" \
            -dns-port -1 -grpc-port -1 -grpc-tls-port -1 -serf-lan-port "$serf_lan" \
            -serf-wan-port "$serf_wan" -server-port "$server" -config-file "$dir/consul.hcl" \
            >"$dir/log" 2>&1 &
        echo $! >"$dir/pid"
        kv_wait "$name" 60 kv_consul_ready "$port"
        if [ "$name" = consul ]; then
            export KVSTORE_CONSUL_URL="consul://127.0.0.1:$port"
        else
            export KVSTORE_CONSUL_STOCK_URL="consul://127.0.0.1:$port"
        fi
        ;;
    redis-tls)
        kv_certs
        local c="$KVSTORE_TLS_DIR" pw
        pw=$(kv_secret redis)
        # Users: "kv" may do everything; "reader" may only read (the permission test).
        printf 'user default off\nuser kv on >%s ~* &* +@all\nuser reader on >%s ~* &* -@all +@read +@connection +@scripting\n' \
            "$pw" "$pw" >"$dir/users.acl"
        # TLS file paths must be absolute: --dir changes the working directory first.
        redis-server --bind 127.0.0.1 --port 0 --tls-port "$port" --save '' --appendonly no \
            --tls-cert-file "$c/server.pem" --tls-key-file "$c/server-key.pem" \
            --tls-ca-cert-file "$c/ca.pem" --tls-auth-clients yes --aclfile "$dir/users.acl" \
            --notify-keyspace-events KEA --dir "$dir" >"$dir/log" 2>&1 &
        echo $! >"$dir/pid"
        kv_wait redis-tls 10 redis-cli --tls --cacert "$c/ca.pem" --cert "$c/client.pem" \
            --key "$c/client-key.pem" -p "$port" --user kv --pass "$pw" --no-auth-warning ping
        export KVSTORE_REDIS_TLS_URL="rediss://kv:$pw@127.0.0.1:$port?tls_ca=$c/ca.pem&tls_cert=$c/client.pem&tls_key=$c/client-key.pem"
        ;;
    etcd-tls)
        kv_certs
        [ -f "$dir/peer_port" ] || kv_free_port >"$dir/peer_port"
        local c="$KVSTORE_TLS_DIR" peer pw
        peer=$(cat "$dir/peer_port") pw=$(kv_secret etcd)
        # A short token TTL (seconds), so the suite runs across many token expiries.
        etcd --name kvstore --data-dir "$dir/data" \
            --listen-client-urls "https://127.0.0.1:$port" --advertise-client-urls "https://127.0.0.1:$port" \
            --cert-file "$c/server.pem" --key-file "$c/server-key.pem" --trusted-ca-file "$c/ca.pem" \
            --client-cert-auth --auth-token-ttl 2 \
            --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
            --initial-cluster "kvstore=http://127.0.0.1:$peer" \
            --heartbeat-interval 10 --election-timeout 100 >"$dir/log" 2>&1 &
        echo $! >"$dir/pid"
        local ctl=(env ETCDCTL_API=3 etcdctl --endpoints "https://127.0.0.1:$port" --cacert "$c/ca.pem"
            --cert "$c/client.pem" --key "$c/client-key.pem")
        kv_wait etcd-tls 20 "${ctl[@]}" endpoint health
        if [ ! -f "$dir/auth" ]; then
            # root may do everything; reader may only read. The client certificate's CN
            # ("client") is no user, so a request without a password is refused.
            {
                "${ctl[@]}" user add root --new-user-password="$pw" &&
                    "${ctl[@]}" user grant-role root root &&
                    "${ctl[@]}" user add reader --new-user-password="$pw" &&
                    "${ctl[@]}" role add readonly &&
                    "${ctl[@]}" role grant-permission readonly read "" --from-key &&
                    "${ctl[@]}" user grant-role reader readonly &&
                    "${ctl[@]}" auth enable
            } >"$dir/auth.log" 2>&1 || {
                cat "$dir/auth.log" >&2
                return 1
            }
            touch "$dir/auth"
        fi
        export KVSTORE_ETCD_TLS_URL="etcd://root:$pw@127.0.0.1:$port?tls_ca=$c/ca.pem&tls_cert=$c/client.pem&tls_key=$c/client-key.pem"
        ;;
    zk-tls)
        kv_certs
        mkdir -p "$dir/data"
        [ -f "$dir/plain_port" ] || kv_free_port >"$dir/plain_port"
        local c="$KVSTORE_TLS_DIR" plain pw
        plain=$(cat "$dir/plain_port") pw=$(kv_secret zk)
        # SASL DIGEST-MD5 users (auth=sasl); the digest scheme needs no server configuration.
        cat >"$dir/jaas.conf" <<JAASEOF
Server {
    org.apache.zookeeper.server.auth.DigestLoginModule required
    user_kv="$pw"
    user_reader="$pw";
};
JAASEOF
        # The plain port serves only the readiness probe (four-letter words).
        {
            kv_zoo_cfg "$dir" "$plain"
            cat <<ZKEOF
secureClientPort=$port
secureClientPortAddress=127.0.0.1
serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory
ssl.keyStore.location=$c/server-bundle.pem
ssl.trustStore.location=$c/ca.pem
ssl.clientAuth=need
authProvider.1=org.apache.zookeeper.server.auth.SASLAuthenticationProvider
ZKEOF
        } >"$dir/zoo.cfg"
        # Debian's classpath lacks the Netty codec jars the TLS connection factory needs.
        kv_zk_java "$dir" /usr/share/java/netty-codec.jar:/usr/share/java/netty-resolver.jar: \
            -Dzookeeper.extendedTypesEnabled=true -Dznode.container.checkIntervalMs=100 \
            -Djava.security.auth.login.config="$dir/jaas.conf"
        echo $! >"$dir/pid"
        kv_wait zk-tls 30 kv_zk_ready "$plain"
        export KVSTORE_ZK_TLS_URL="zk://kv:$pw@127.0.0.1:$port?tls_ca=$c/ca.pem&tls_cert=$c/client.pem&tls_key=$c/client-key.pem"
        ;;
    consul-tls)
        kv_certs
        local serf_lan serf_wan server c="$KVSTORE_TLS_DIR" token
        for p in serf_lan serf_wan server; do [ -f "$dir/$p" ] || kv_free_port >"$dir/$p"; done
        serf_lan=$(cat "$dir/serf_lan") serf_wan=$(cat "$dir/serf_wan") server=$(cat "$dir/server")
        token=$(kv_secret consul)
        cat >"$dir/consul.hcl" <<CONSULEOF
session_ttl_min = "1s"
ports {
  http = -1
  https = $port
}
tls {
  defaults {
    ca_file = "$c/ca.pem"
    cert_file = "$c/server.pem"
    key_file = "$c/server-key.pem"
  }
  https {
    verify_incoming = true
  }
}
acl {
  enabled = true
  default_policy = "deny"
  tokens {
    initial_management = "$token"
  }
}
CONSULEOF
        "$KV_CONSUL_BIN" agent -dev -bind 127.0.0.1 -client 127.0.0.1 \
            -dns-port -1 -grpc-port -1 -grpc-tls-port -1 -serf-lan-port "$serf_lan" \
            -serf-wan-port "$serf_wan" -server-port "$server" -config-file "$dir/consul.hcl" \
            >"$dir/log" 2>&1 &
        echo $! >"$dir/pid"
        local curl=(curl -fsS --cacert "$c/ca.pem" --cert "$c/client.pem" --key "$c/client-key.pem"
            -H "X-Consul-Token: $token")
        kv_wait consul-tls 60 kv_consul_tls_ready "${curl[@]}" "https://127.0.0.1:$port"
        # A token that may read every key and write none (the permission test). -dev keeps no
        # state across restarts, so it is made on every start.
        "${curl[@]}" -X PUT "https://127.0.0.1:$port/v1/acl/policy" \
            -d '{"Name":"kv-read","Rules":"key_prefix \"\" { policy = \"read\" }\nsession_prefix \"\" { policy = \"write\" }"}' >/dev/null
        export KVSTORE_CONSUL_TLS_READER_TOKEN KVSTORE_CONSUL_TLS_URL
        KVSTORE_CONSUL_TLS_READER_TOKEN=$("${curl[@]}" -X PUT "https://127.0.0.1:$port/v1/acl/token" \
            -d '{"Description":"kvstore reader","Policies":[{"Name":"kv-read"}]}' |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["SecretID"])')
        KVSTORE_CONSUL_TLS_URL="consul://127.0.0.1:$port?token=$token&tls_ca=$c/ca.pem&tls_cert=$c/client.pem&tls_key=$c/client-key.pem"
        ;;
    *)
        kv_log "unknown server $name"
        return 1
        ;;
    esac
    KV_PIDS+=("$(cat "$dir/pid")")
}

# Stops one server by its recorded PID and waits until it has exited.
kv_stop_one() {
    local pid_file="$KV_RUN_DIR/$1/pid"
    [ -f "$pid_file" ] || return 0
    local pid
    pid=$(cat "$pid_file")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pid_file"
}

kv_stop_all() {
    local dir
    for dir in "$KV_RUN_DIR"/*/; do
        [ -d "$dir" ] && kv_stop_one "$(basename "$dir")"
    done
}

kv_start() {
    trap kv_stop_all EXIT
    local name
    for name in "$@"; do kv_start_one "$name"; done
}
