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
#                              etcd-cluster, zk-cluster, consul-cluster and redis-sentinel are
#                              clusters of three on loopback (see "Clusters on loopback" below;
#                              KVSTORE_<CLUSTER>_URL is their multi-endpoint URL).
#                              toxiproxy is the fault proxy (KVSTORE_TOXIPROXY_URL, its HTTP API).
#   kv_stop_one NAME / kv_start_one NAME   restart a single server on the same port (fault tests)
#   kv_kill_one NAME / kv_leader CLUSTER   SIGKILL a server or member / name a cluster's leader
#
# Each server runs in its own directory under $KV_RUN_DIR with its log beside it; a server that
# is not ready within its deadline fails the run and prints its log. What is particular to one
# server family (how to start it, its cluster members, its readiness probe) is in
# ci/servers/<family>.sh; this file holds the verbs and what they share.

KV_CI_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# A run directory this script made is removed when the servers stop (kv_start's EXIT trap); one
# given in KV_RUN_DIR is left for inspection.
if [ -z "${KV_RUN_DIR:-}" ]; then
    KV_RUN_DIR="$(mktemp -d -t kvstore-servers.XXXXXX)"
    KV_RUN_DIR_OWNED=1
fi
KV_CONSUL_VERSION="$(sed -n 's/^require github.com\/hashicorp\/consul v//p' "$KV_CI_DIR/consul/go.mod")"
KV_CONSUL_BIN="${KV_CONSUL_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/kvstore-ci/consul-$KV_CONSUL_VERSION}"
# etcd 3.6 (current upstream), built like Consul; Debian's etcd-server package is 3.4.
KV_ETCD36_VERSION="$(sed -n 's/^require go.etcd.io\/etcd\/server\/v3 v//p' "$KV_CI_DIR/etcd/go.mod")"
KV_ETCD36_BIN="${KV_ETCD36_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/kvstore-ci/etcd-$KV_ETCD36_VERSION}"
# Toxiproxy, the fault proxy of the partition tests, built like Consul.
KV_TOXIPROXY_VERSION="$(sed -n 's/^require github.com\/Shopify\/toxiproxy\/v2 v//p' "$KV_CI_DIR/toxiproxy/go.mod")"
KV_TOXIPROXY_BIN="${KV_TOXIPROXY_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/kvstore-ci/toxiproxy-$KV_TOXIPROXY_VERSION}"
KV_PIDS=()
export KV_RUN_DIR

kv_log() { printf '[ci] %s\n' "$*" >&2; }

# One file per server family: its start, its cluster members and its readiness probes.
for kv_server_file in "$KV_CI_DIR"/servers/*.sh; do
    # shellcheck source=/dev/null
    source "$kv_server_file"
done
unset kv_server_file

# kv_export_url NAME URL: exports URL as KVSTORE_<NAME>_URL (zk-stock: KVSTORE_ZK_STOCK_URL).
kv_export_url() {
    local var="KVSTORE_${1^^}_URL"
    export "${var//-/_}=$2"
}

# A free TCP port on 127.0.0.1, picked by the kernel.
kv_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

kv_install() {
    local want=(redis-server redis-sentinel etcd-server etcd-client zookeeper postgresql protobuf-compiler libprotobuf-dev python3 curl openssl iptables)
    local missing=()
    for pkg in "${want[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        local sudo=()
        if [ "$(id -u)" != 0 ]; then
            if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
                sudo=(sudo)
            elif kv_required; then
                kv_log "installing ${missing[*]} needs root or sudo"
                return 1
            else
                kv_log "skipping the Debian packages ${missing[*]}: installing them needs root or sudo"
                missing=()
            fi
        fi
        if ((${#missing[@]})); then
            kv_log "installing Debian packages: ${missing[*]}"
            "${sudo[@]}" apt-get update -qq
            DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        fi
    fi
    if ! command -v go >/dev/null && ! kv_required; then
        [ -x "$KV_CONSUL_BIN" ] || kv_log "skipping the Consul build: Go is not installed"
        [ -x "$KV_ETCD36_BIN" ] || kv_log "skipping the etcd $KV_ETCD36_VERSION build: Go is not installed"
        [ -x "$KV_TOXIPROXY_BIN" ] || kv_log "skipping the Toxiproxy build: Go is not installed"
        return 0
    fi
    kv_build_consul
    kv_build_etcd36
    kv_build_toxiproxy
}

# Whether a missing server is a failure (KVSTORE_REQUIRE_BACKENDS=1, as CI sets it) rather
# than a skip.
kv_required() {
    case "${KVSTORE_REQUIRE_BACKENDS:-}" in 1 | true | yes) return 0 ;; *) return 1 ;; esac
}

# kv_available NAME: whether the programs server NAME runs are installed.
kv_available() {
    case $1 in
    redis-sentinel) command -v redis-server >/dev/null && command -v redis-sentinel >/dev/null ;;
    redis*) command -v redis-server >/dev/null ;;
    etcd36 | etcd-cluster) [ -x "$KV_ETCD36_BIN" ] ;;
    etcd*) command -v etcd >/dev/null ;;
    zk*) command -v java >/dev/null && [ -f /usr/share/java/zookeeper.jar ] ;;
    consul*) [ -x "$KV_CONSUL_BIN" ] ;;
    postgres*) [ -x "$(kv_pg_bin)/postgres" ] ;;
    toxiproxy) [ -x "$KV_TOXIPROXY_BIN" ] ;;
    *) return 1 ;;
    esac
}

# kv_startable NAME...: prints the names whose programs are installed; says which are skipped.
# With KVSTORE_REQUIRE_BACKENDS=1 it prints every name (a missing program then fails the start).
kv_startable() {
    local name
    for name in "$@"; do
        if kv_required || kv_available "$name"; then
            echo "$name"
        else
            kv_log "skipping $name: its server is not installed (its tests print \"skipping\")"
        fi
    done
}

# kv_protoc: etcd-client's build needs protoc. Without a system one (Debian's
# protobuf-compiler), use the protoc binary that the protoc-bin-vendored crate ships, installed
# with cargo (no root needed), and export PROTOC for the builds that follow.
kv_protoc() {
    [ -n "${PROTOC:-}" ] && return 0
    command -v protoc >/dev/null && return 0
    local root="${XDG_CACHE_HOME:-$HOME/.cache}/kvstore-ci/protoc-bin-vendored"
    if [ ! -x "$root/bin/protoc-bin-which" ]; then
        kv_log "protoc not found: installing the protoc-bin-vendored crate's protoc with cargo"
        cargo install --quiet --locked --root "$root" protoc-bin-vendored@3.3.0
    fi
    PROTOC="$("$root/bin/protoc-bin-which")"
    export PROTOC
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

# The pinned Toxiproxy server (~10 s).
kv_build_toxiproxy() {
    kv_go_build "Toxiproxy $KV_TOXIPROXY_VERSION" "$KV_TOXIPROXY_BIN" toxiproxy \
        github.com/Shopify/toxiproxy/v2/cmd/server
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

# Certificates for the TLS servers, generated once per run dir (never committed): a CA, a
# server certificate for localhost/127.0.0.1, two client certificates ("client", and "reader"
# for the ZooKeeper identity tests), a server certificate for another host name (which the
# clients must refuse), and a second CA with its own client certificate, which the servers must
# refuse. Exports KVSTORE_TLS_DIR.
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
        # A server certificate from the trusted CA for another host only: the clients must
        # refuse it (testutils' other_host_endpoint presents it).
        kv_cert otherhost ca "subjectAltName=DNS:not-this-server.example
extendedKeyUsage=serverAuth" || exit 1
        cat server.pem server-key.pem >server-bundle.pem
        chmod 600 ./*-key.pem server-bundle.pem
        touch done
    )
}

# The password (Redis, etcd, ZooKeeper digest) or Consul management token of a TLS server,
# generated once per run dir.
kv_secret() {
    local f="$KV_RUN_DIR/certs/$1.secret"
    mkdir -p "$KV_RUN_DIR/certs"
    [ -f "$f" ] || python3 -c 'import uuid; print(uuid.uuid4())' >"$f"
    cat "$f"
}

# ---- Clusters on loopback ----
# etcd-cluster: 3 etcd 3.6 members (etcd-c1..3); zk-cluster: a 3-node ZooKeeper ensemble
# (zk-c1..3); consul-cluster: 3 Consul servers (consul-c1..3) and the client agent that
# applications talk to (consul-agent); redis-sentinel: a Redis primary (redis-r1), one replica
# (redis-r2) and 3 Sentinels (redis-s1..3) that monitor them as "kvstore"; the two Redis
# servers take only an ACL login (user kv, a per-run password, in the URL), the Sentinels a
# password of their own (requirepass; ?sentinel_password= in the URL).
# Each member runs in its own directory like a single server, so restart.sh stops, kills and
# starts members by name, and `restart.sh CLUSTER leader` names the current leader (or Redis
# primary).
KV_CLUSTER_MEMBERS=(1 2 3)
KV_SENTINEL_SERVICE=kvstore

# kv_port MEMBER KIND: MEMBER's port of KIND, chosen on first use and kept across restarts.
kv_port() {
    local f="$KV_RUN_DIR/$1/$2"
    mkdir -p "$KV_RUN_DIR/$1"
    [ -f "$f" ] || kv_free_port >"$f"
    cat "$f"
}

# kv_hosts PREFIX: "127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3" of the members' client ports.
kv_hosts() {
    local hosts="" i
    for i in "${KV_CLUSTER_MEMBERS[@]}"; do hosts+="${hosts:+,}127.0.0.1:$(kv_port "$1$i" port)"; done
    printf '%s' "$hosts"
}

# ---- Cutting a cluster member off from its peers ----
# On loopback every packet is 127.0.0.1 to 127.0.0.1, so a packet filter tells the members
# apart by process instead: each member of zk-cluster, etcd-cluster and consul-cluster runs in
# a cgroup (v2) of its own, which the iptables `cgroup` match names. `kv_isolate MEMBER on` then
# rejects every packet to MEMBER's peer ports (TCP with a reset, UDP dropped) and every packet
# MEMBER sends to another member's peer ports, while its client port stays reachable: the
# established peer connections are reset and new ones refused, as behind a firewall that
# rejects. A fault proxy on the peer ports cannot do this: ZooKeeper's election
# connects back to the port a member announces, around any proxy, and an etcd or Consul member
# announces one peer address to all its peers.
# Sources: iptables-extensions(8), "cgroup" and "REJECT"; the kernel's cgroup-v2 documentation.
KV_FIREWALL_CHAIN=KVSTORE_ISOLATE

kv_cgroup_root() { awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts; }

# kv_member_tag MEMBER: the name of MEMBER's cgroup and of its filter rules, unique per run dir.
# Letters, digits, `-` and `_` only: `iptables -S` quotes a comment with any other character
# (mktemp's run dirs have a `.`), and kv_firewall_clear matches the comment unquoted.
kv_member_tag() {
    local run
    run=$(basename "$KV_RUN_DIR")
    echo "kvstore-${run//[^A-Za-z0-9_-]/_}-$1"
}

# Whether this machine can isolate a member: root, iptables and a writable cgroup v2 hierarchy.
kv_firewall_ready() {
    local root
    root=$(kv_cgroup_root)
    [ "$(id -u)" = 0 ] && [ -n "$root" ] && [ -w "$root" ] &&
        command -v iptables >/dev/null && iptables -w -S OUTPUT >/dev/null 2>&1
}

# kv_launch NAME COMMAND...: execs COMMAND (run it in a subshell or `&` it). A quorum-cluster
# member is first moved into its cgroup, so every socket it opens is matched, when the firewall
# is ready. The PID stays the same through the exec.
kv_launch() {
    local name=$1 cg
    shift
    if kv_cluster_of "$name" >/dev/null && kv_firewall_ready; then
        cg="$(kv_cgroup_root)/$(kv_member_tag "$name")"
        mkdir -p "$cg"
        exec sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cg" "$@"
    fi
    exec "$@"
}

# kv_peer_ports MEMBER: the ports MEMBER's peers reach it on (not its client port).
kv_peer_ports() {
    case $1 in
    zk-c*) echo "$(kv_port "$1" quorum_port) $(kv_port "$1" election_port)" ;;
    etcd-c*) kv_port "$1" peer_port ;;
    consul-*) echo "$(kv_port "$1" server) $(kv_port "$1" serf_lan) $(kv_port "$1" serf_wan)" ;;
    esac
}

# kv_cluster_of MEMBER: the cluster MEMBER belongs to.
kv_cluster_of() {
    case $1 in
    zk-c*) echo zk-cluster ;;
    etcd-c*) echo etcd-cluster ;;
    consul-*) echo consul-cluster ;;
    *) return 1 ;;
    esac
}

# kv_firewall_clear TAG: removes every rule of the chain whose tag starts with TAG.
kv_firewall_clear() {
    local line args
    { iptables -w -S "$KV_FIREWALL_CHAIN" 2>/dev/null || true; } | { grep -F -- "--comment $1" || true; } |
        while read -r line; do
            read -ra args <<<"${line#-A }"
            iptables -w -D "${args[@]}"
        done
}

# kv_isolate MEMBER on|off: cuts MEMBER off from its peers (on) or heals that (off), both
# ways; its clients still reach it. Idempotent. Fails, saying why, where the machine cannot.
kv_isolate() {
    local member=$1 mode=$2 tag cluster peer port proto
    cluster=$(kv_cluster_of "$member") || { kv_log "$member is not a member of a quorum cluster"; return 2; }
    kv_firewall_ready || {
        kv_log "isolating $member needs root, iptables and a writable cgroup v2 hierarchy"
        return 1
    }
    tag=$(kv_member_tag "$member")
    iptables -w -N "$KV_FIREWALL_CHAIN" 2>/dev/null || true
    iptables -w -C OUTPUT -o lo -j "$KV_FIREWALL_CHAIN" 2>/dev/null ||
        iptables -w -I OUTPUT -o lo -j "$KV_FIREWALL_CHAIN"
    kv_firewall_clear "$tag "
    if iptables -w -S "$KV_FIREWALL_CHAIN" | grep -qF -- "$tag"; then
        kv_log "the filter rules of $member could not be removed"
        return 1
    fi
    [ "$mode" = on ] || return 0
    local to_member=() from_member=() ports=()
    read -ra to_member <<<"$(kv_peer_ports "$member")"
    for peer in $(kv_members "$cluster"); do
        [ "$peer" = "$member" ] && continue
        read -ra ports <<<"$(kv_peer_ports "$peer")"
        from_member+=("${ports[@]}")
    done
    for proto in tcp udp; do
        local verdict=(-j REJECT --reject-with tcp-reset)
        [ "$proto" = udp ] && verdict=(-j DROP)
        for port in "${to_member[@]}"; do
            iptables -w -A "$KV_FIREWALL_CHAIN" -p "$proto" --dport "$port" -m comment --comment "$tag" "${verdict[@]}"
        done
        for port in "${from_member[@]}"; do
            iptables -w -A "$KV_FIREWALL_CHAIN" -m cgroup --path "$tag" -p "$proto" --dport "$port" \
                -m comment --comment "$tag" "${verdict[@]}"
        done
    done
}

# Removes this run dir's filter rules and member cgroups (the members are stopped by then).
kv_firewall_clean() {
    local root cg
    [ "$(id -u)" = 0 ] || return 0
    command -v iptables >/dev/null && kv_firewall_clear "$(kv_member_tag "")"
    root=$(kv_cgroup_root)
    [ -n "$root" ] || return 0
    for cg in "$root/$(kv_member_tag "")"*; do
        if [ -d "$cg" ]; then rmdir "$cg" 2>/dev/null || true; fi
    done
    return 0
}

# kv_member_ready MEMBER: whether MEMBER serves requests (with a leader, for quorum systems;
# a Consul server also votes again).
kv_member_ready() {
    local port
    port=$(kv_port "$1" port)
    case $1 in
    etcd-c*) curl -fsS "http://127.0.0.1:$port/health" | grep -q '"health":"true"' ;;
    zk-c*) kv_zk_ready "$port" leader follower ;;
    consul-c*) kv_consul_ready "$port" && kv_consul_voter "$port" "$1" ;;
    consul-*) kv_consul_ready "$port" ;;
    # A replica is ready once its initial sync is done: promoted before that, it would lose
    # every key (Sentinel still elects a replica whose link has been down for less than ten
    # times down-after-milliseconds).
    redis-r*) kv_sentinel_cli -p "$port" info replication | grep -Eq '^(role:master|master_link_status:up)' ;;
    redis-s*) kv_sentinel_ready "$port" ;;
    esac
}

# kv_start_member MEMBER: starts one member of a cluster and waits until it is ready; with
# KV_NO_WAIT=1, only starts it (a quorum needs its peers before any member is ready).
kv_start_member() {
    local name=$1
    mkdir -p "$KV_RUN_DIR/$name"
    case $name in
    etcd-c*) kv_etcd_member "$name" ;;
    zk-c*) kv_zk_member "$name" ;;
    consul-*) kv_consul_member "$name" ;;
    redis-r*) kv_redis_member "$name" ;;
    redis-s*) kv_sentinel_member "$name" ;;
    *) kv_log "unknown cluster member $name"; return 1 ;;
    esac
    KV_PIDS+=("$(cat "$KV_RUN_DIR/$name/pid")")
    [ "${KV_NO_WAIT:-}" = 1 ] || kv_wait "$name" 60 kv_member_ready "$name"
}

# The members of a cluster, in start order.
kv_members() {
    local i
    case $1 in
    etcd-cluster) for i in "${KV_CLUSTER_MEMBERS[@]}"; do echo "etcd-c$i"; done ;;
    zk-cluster) for i in "${KV_CLUSTER_MEMBERS[@]}"; do echo "zk-c$i"; done ;;
    consul-cluster) for i in "${KV_CLUSTER_MEMBERS[@]}"; do echo "consul-c$i"; done; echo consul-agent ;;
    redis-sentinel) echo redis-r1; echo redis-r2; for i in "${KV_CLUSTER_MEMBERS[@]}"; do echo "redis-s$i"; done ;;
    esac
}

# kv_start_cluster CLUSTER: starts every member, waits until each is ready and exports
# KVSTORE_<CLUSTER>_URL, the multi-endpoint URL kvstore connects with.
kv_start_cluster() {
    local cluster=$1 member
    for member in $(kv_members "$cluster"); do KV_NO_WAIT=1 kv_start_member "$member" || return 1; done
    for member in $(kv_members "$cluster"); do kv_wait "$member" 90 kv_member_ready "$member" || return 1; done
    case $cluster in
    etcd-cluster) export KVSTORE_ETCD_CLUSTER_URL="etcd://$(kv_hosts etcd-c)" ;;
    zk-cluster) export KVSTORE_ZK_CLUSTER_URL="zk://$(kv_hosts zk-c)" ;;
    consul-cluster) export KVSTORE_CONSUL_CLUSTER_URL="consul://127.0.0.1:$(kv_port consul-agent port)" ;;
    redis-sentinel) export KVSTORE_REDIS_SENTINEL_URL="redis+sentinel://$KV_SENTINEL_USER:$(kv_sentinel_password)@$(kv_hosts redis-s)/$KV_SENTINEL_SERVICE?sentinel_password=$(kv_sentinels_password)" ;;
    esac
}

# kv_leader CLUSTER: the member that leads the cluster now (the Redis primary); fails when
# none does.
kv_leader() {
    local member port
    case $1 in
    etcd-cluster)
        for member in $(kv_members etcd-cluster); do
            [ -f "$KV_RUN_DIR/$member/pid" ] || continue
            port=$(kv_port "$member" port)
            # Source: etcd API reference, Maintenance/Status (leader and header.member_id).
            curl -fsS -m 2 -X POST -d '{}' "http://127.0.0.1:$port/v3/maintenance/status" 2>/dev/null |
                python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["leader"] == s["header"]["member_id"] else 1)' &&
                { echo "$member"; return 0; }
        done
        ;;
    zk-cluster)
        for member in $(kv_members zk-cluster); do
            [ -f "$KV_RUN_DIR/$member/pid" ] || continue
            kv_zk_ready "$(kv_port "$member" port)" leader 2>/dev/null && { echo "$member"; return 0; }
        done
        ;;
    consul-cluster)
        local leader
        leader=$(curl -fsS -m 2 "http://127.0.0.1:$(kv_port consul-agent port)/v1/status/leader" | tr -d '"')
        for member in $(kv_members consul-cluster); do
            [ "$leader" = "127.0.0.1:$(kv_port "$member" server)" ] && { echo "$member"; return 0; }
        done
        ;;
    redis-sentinel)
        port=$(kv_sentinel_primary)
        for member in redis-r1 redis-r2; do
            [ "$port" = "$(kv_port "$member" port)" ] && { echo "$member"; return 0; }
        done
        ;;
    esac
    return 1
}

# Starts one server; its port is chosen on the first start and kept on restarts.
kv_start_one() {
    local name=$1 dir="$KV_RUN_DIR/$1"
    case $name in
    # (redis-cluster is one server in Redis Cluster mode: ci/servers/redis.sh.)
    etcd-cluster | zk-cluster | consul-cluster | redis-sentinel) kv_start_cluster "$name"; return ;;
    etcd-c[0-9] | zk-c[0-9] | consul-c[0-9] | consul-agent | redis-[rs][0-9]) kv_start_member "$name"; return ;;
    esac
    mkdir -p "$dir"
    local port_file="$dir/port"
    [ -f "$port_file" ] || kv_free_port >"$port_file"
    local port
    port=$(cat "$port_file")
    case $name in
    toxiproxy) kv_start_toxiproxy "$name" "$dir" "$port" || return 1 ;;
    redis*) kv_start_redis "$name" "$dir" "$port" || return 1 ;;
    etcd*) kv_start_etcd "$name" "$dir" "$port" || return 1 ;;
    zk*) kv_start_zk "$name" "$dir" "$port" || return 1 ;;
    consul*) kv_start_consul "$name" "$dir" "$port" || return 1 ;;
    postgres*) kv_start_postgres "$name" "$dir" "$port" || return 1 ;;
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
    # PostgreSQL's SIGTERM waits for every client to leave; SIGINT is its fast shutdown.
    case $1 in postgres*) kill -INT "$pid" 2>/dev/null || true ;; *) kill "$pid" 2>/dev/null || true ;; esac
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pid_file"
}

# kv_signal NAME SIGNAL: sends SIGNAL to server NAME by its recorded PID. A PostgreSQL server
# is a postmaster and one process per connection, its children: SIGSTOP, SIGCONT and SIGKILL
# go to all of them (the postmaster first when stopping, so it forks no new one meanwhile).
kv_signal() {
    local name=$1 sig=$2 pid children
    pid=$(cat "$KV_RUN_DIR/$name/pid")
    case $name in
    postgres*)
        children=$(pgrep -P "$pid" || true)
        if [ "$sig" = CONT ]; then
            # shellcheck disable=SC2086
            kill -CONT $children "$pid" 2>/dev/null || true
        else
            kill "-$sig" "$pid" 2>/dev/null || true
            # shellcheck disable=SC2086
            [ -z "$children" ] || kill "-$sig" $children 2>/dev/null || true
        fi
        ;;
    *) kill "-$sig" "$pid" 2>/dev/null || true ;;
    esac
}

# SIGKILLs one server or member (no chance to flush or say goodbye) and waits until it is gone.
kv_kill_one() {
    local pid_file="$KV_RUN_DIR/$1/pid"
    [ -f "$pid_file" ] || return 0
    local pid
    pid=$(cat "$pid_file")
    kv_signal "$1" KILL
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    rm -f "$pid_file"
}

kv_stop_all() {
    local dir
    for dir in "$KV_RUN_DIR"/*/; do
        [ -d "$dir" ] && kv_stop_one "$(basename "$dir")"
    done
}

# Stops every server and removes the run directory if this script made it.
kv_stop_and_clean() {
    kv_stop_all
    kv_firewall_clean
    [ -z "${KV_RUN_DIR_OWNED:-}" ] || rm -rf "$KV_RUN_DIR"
}

kv_start() {
    trap kv_stop_and_clean EXIT
    local name
    for name in "$@"; do kv_start_one "$name"; done
}
