# shellcheck shell=bash
# ZooKeeper: zk, zk-stock, zk-tls, and the zk-cluster members (zk-c1..3).
# Sourced by ci/servers.sh, whose helpers (kv_port, kv_wait, kv_certs, kv_launch…) it uses.

# kv_zk_ready PORT [MODE...]: the server answers `srvr` in one of MODES (default standalone).
kv_zk_ready() {
    local port=$1
    shift
    (($#)) || set -- standalone
    python3 - "$port" "$@" <<'EOF'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
s.sendall(b"srvr")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
sys.exit(0 if any(b"Mode: " + m.encode() in data for m in sys.argv[2:]) else 1)
EOF
}

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
    kv_launch "$(basename "$dir")" java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 "$@" -Dzookeeper.log.dir="$dir" \
        -cp "$cp"/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar:/etc/zookeeper/conf \
        org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg" >"$dir/log" 2>&1 &
}

# kv_start_zk NAME DIR PORT: starts one single ZooKeeper server and waits until it serves.
kv_start_zk() {
    local name=$1 dir=$2 port=$3
    case $name in
    zk | zk-stock)
        mkdir -p "$dir/data"
        # zk-stock: the server's defaults for TTL nodes (off) and container reaping (60 s).
        local extended=(-Dzookeeper.extendedTypesEnabled=true -Dznode.container.checkIntervalMs=100)
        [ "$name" = zk ] || extended=()
        kv_zoo_cfg "$dir" "$port" >"$dir/zoo.cfg"
        kv_zk_java "$dir" "" "${extended[@]}"
        echo $! >"$dir/pid"
        kv_wait "$name" 30 kv_zk_ready "$port"
        kv_export_url "$name" "zk://127.0.0.1:$port"
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
    *) kv_log "unknown server $name"; return 1 ;;
    esac
}

kv_zk_member() {
    local name=$1 dir="$KV_RUN_DIR/$1" i peer
    mkdir -p "$dir/data"
    echo "${name#zk-c}" >"$dir/data/myid"
    {
        # A follower waits 5 s (syncLimit 25 ticks) for its leader before giving up, not 1 s,
        # so a loaded machine does not make the ensemble flap (at 1 s it did, and re-syncs hit
        # ZooKeeper 3.8.0's NullPointerException in Learner.syncWithLeader). A new leader
        # waits 2 s (initLimit 10 ticks) for its followers. Source: ZooKeeper Administrator's
        # Guide, "Cluster Options".
        kv_zoo_cfg "$dir" "$(kv_port "$name" port)" | sed 's/^syncLimit=.*/syncLimit=25/'
        for i in "${KV_CLUSTER_MEMBERS[@]}"; do
            peer="zk-c$i"
            echo "server.$i=127.0.0.1:$(kv_port "$peer" quorum_port):$(kv_port "$peer" election_port)"
        done
    } >"$dir/zoo.cfg"
    # A member cut off from its peers keeps calling elections, with its notification interval
    # doubling up to maxNotificationInterval (60 s by default): after a long cut it would
    # rejoin up to a minute after the heal. 2 s keeps the rejoin within seconds. Source:
    # ZooKeeper Administrator's Guide, "Advanced Configuration"
    # (zookeeper.fastleader.maxNotificationInterval).
    kv_zk_java "$dir" "" -Dzookeeper.extendedTypesEnabled=true -Dznode.container.checkIntervalMs=100 \
        -Dzookeeper.fastleader.maxNotificationInterval=2000
    echo $! >"$dir/pid"
}
