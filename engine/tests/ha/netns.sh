#!/usr/bin/env bash
# Active/standby failover with real components in network namespaces:
# two siplb nodes with keepalived (VRRP) sharing a virtual IP, a Redis, a
# SIPp caller and a SIPp backend, each in its own namespace on one bridge.
#
#   usage: netns.sh SIPLB_BINARY [WORKDIR]
#
# 1. calls are established through the VIP on node 1 (held 10 s);
# 2. siplb on node 1 is killed (SIGKILL); keepalived's health check fails,
#    the VIP moves to node 2 (measured), node 2 loads the replicated dialogs;
# 3. new calls through the VIP succeed on node 2; Redis is stopped for 2 s
#    under load and restarted: no call fails, node 2 catches up;
# 4. the calls established before the failover end with BYE through node 2;
# 5. every load counter ends at zero on node 2 and on node 1 restarted.
# Prints `takeover_vip_ms=N` (kill -> VIP on node 2) and
# `takeover_ready_ms=N` (kill -> node 2 active with the dialogs loaded).
# Everything it starts is killed and every namespace deleted on exit,
# success or not. Needs root, ip, keepalived, redis-server, sipp, curl.
set -euo pipefail

SIPLB=${1:?usage: netns.sh SIPLB_BINARY [WORKDIR]}
WORK=${2:-$(mktemp -d /tmp/siplb-netns.XXXXXX)}
mkdir -p "$WORK"
HERE=$(cd "$(dirname "$0")" && pwd)
SCEN="$HERE/../sipp"
TAG="slb$$"
NS_BR="$TAG-br" NS_R="$TAG-r" NS_C="$TAG-c" NS_B="$TAG-b" NS_1="$TAG-n1" NS_2="$TAG-n2"
NET=10.208.0
VIP=$NET.100
PIDS=()

log() { echo "[netns $(date +%T.%3N)] $*"; }
now_ms() { date +%s%3N; }

cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    for ns in "$NS_1" "$NS_2" "$NS_C" "$NS_B" "$NS_R" "$NS_BR"; do
        # anything still running inside (keepalived's children)
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
}
trap cleanup EXIT

fail() {
    log "FAILED: $*"
    for f in "$WORK"/*.log; do echo "--- $f (tail)"; tail -n 15 "$f"; done
    exit 1
}

# ---- topology ------------------------------------------------------------
ip netns add "$NS_BR"
ip -n "$NS_BR" link add br0 type bridge
ip -n "$NS_BR" link set br0 up
i=0
for pair in "$NS_R:2" "$NS_C:3" "$NS_B:4" "$NS_1:11" "$NS_2:12"; do
    ns=${pair%%:*} host=${pair##*:}
    i=$((i + 1))
    ip netns add "$ns"
    ip link add eth0 netns "$ns" type veth peer name "p$i" netns "$NS_BR"
    ip -n "$NS_BR" link set "p$i" master br0 up
    ip -n "$ns" addr add "$NET.$host/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
done

# ---- Redis, backend ------------------------------------------------------
start_redis() {
    ip netns exec "$NS_R" redis-server --port 6379 --bind "$NET.2" --save '' --appendonly no \
        --protected-mode no >>"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=($!)
    wait_until 10 "redis" ip netns exec "$NS_R" redis-cli -h "$NET.2" ping
}
(cd "$WORK" && exec ip netns exec "$NS_B" sipp -sf "$SCEN/uas.xml" -i "$NET.4" -p 5060 -nostdin \
    >"$WORK/uas.log" 2>&1) &
PIDS+=($!)

# ---- the two siplb nodes and their keepalived ----------------------------
node_conf() { # n ip
    cat <<EOF
[server]
listen = ["$VIP:5060"]
freebind = true
advertised_address = "$VIP:5060"
internal_address = "$VIP"
internal_port_base = 5070
workers = 2
pin_cores = false
io = "epoll"
[admin]
listen = "127.0.0.1:8888"
[timers]
fr_timeout = "2s"
[probing]
address = "$2"
[ha]
redis = "redis://$NET.2:6379/0"
node = "n$1"
vip = "$VIP"
[[destinations]]
id = 1
group = 1
uri = "sip:$NET.4:5060"
resources = "pstn=1000"
[[rules]]
method = "INVITE"
load_balance = { group = 1, resources = "pstn" }
[[rules]]
reply = { code = 405 }
EOF
}

keepalived_conf() { # n priority
    sed -e "s#192.0.2.100/24#$VIP/24#" -e "s/priority 150/priority $2/" \
        -e "s/router_id siplb-lb1/router_id siplb-n$1/" \
        -e "s#script \"/usr/bin/curl .*\"#script \"$SIPLB ctl health --url http://127.0.0.1:8888/mi\"#" \
        "$HERE/../../../examples/keepalived/keepalived-lb1.conf"
}

start_siplb() { # n
    local ns=$NS_1
    [ "$1" = 2 ] && ns=$NS_2
    node_conf "$1" "$NET.1$1" >"$WORK/siplb-n$1.toml"
    ip netns exec "$ns" "$SIPLB" --config "$WORK/siplb-n$1.toml" >>"$WORK/siplb-n$1.log" 2>&1 &
    SIPLB_PID[$1]=$!
    PIDS+=($!)
}

start_keepalived() { # n priority
    local ns=$NS_1
    [ "$1" = 2 ] && ns=$NS_2
    keepalived_conf "$1" "$2" >"$WORK/keepalived-n$1.conf"
    ip netns exec "$ns" keepalived -n -l -D -f "$WORK/keepalived-n$1.conf" \
        -p "$WORK/ka-n$1.pid" -r "$WORK/ka-vrrp-n$1.pid" -c "$WORK/ka-chk-n$1.pid" \
        >"$WORK/keepalived-n$1.log" 2>&1 &
    PIDS+=($!)
}

rpc() { # ns method [params-json]
    ip netns exec "$1" curl -sf -m 2 -d "{\"jsonrpc\":\"2.0\",\"method\":\"$2\",\"params\":${3:-[]},\"id\":\"1\"}" \
        http://127.0.0.1:8888/mi
}
health() { ip netns exec "$1" curl -sf -m 2 http://127.0.0.1:8888/health; }
jget() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval('d'+sys.argv[1]))" "$1"; }
getstat() { rpc "$1" get_statistics '{"statistics":["all"]}' | jget "['result']['$2']"; }
load() { rpc "$1" lb_list | jget "['result']['Destinations'][0]['Resources'][0]['load']"; }
has_vip() { ip -n "$1" -4 addr show dev eth0 | grep -q "inet $VIP/"; }

wait_until() { # seconds description command...
    local limit=$1 what=$2
    shift 2
    local end=$(($(now_ms) + limit * 1000))
    until "$@" >/dev/null 2>&1; do
        [ "$(now_ms)" -lt "$end" ] || fail "timed out after ${limit}s waiting for $what"
        sleep 0.05
    done
}

start_redis
start_siplb 1
start_siplb 2
wait_until 10 "siplb n1 admin" health "$NS_1"
wait_until 10 "siplb n2 admin" health "$NS_2"
start_keepalived 1 150
sleep 0.5
start_keepalived 2 100
wait_until 20 "the VIP on node 1" has_vip "$NS_1"
wait_until 5 "node 1 active" sh -c "ip netns exec $NS_1 curl -sf http://127.0.0.1:8888/health | grep -q '\"role\":\"active\"'"
has_vip "$NS_2" && fail "the VIP is on both nodes"
health "$NS_2" | grep -q '"role":"standby"' || fail "node 2 is not standby: $(health "$NS_2")"
log "VIP on node 1; node 2 standby and warm"

# ---- 1. calls established on node 1 ----------------------------------------
CALLS=30
(cd "$WORK" && exec ip netns exec "$NS_C" sipp -sf "$SCEN/uac.xml" "$VIP:5060" -i "$NET.3" -p 5061 -s 1234 \
    -m $CALLS -r 30 -d 10000 -nostdin -trace_err -timeout 60 -timeout_error >"$WORK/uac-before.log" 2>&1) &
UAC1=$!
PIDS+=($UAC1)
wait_until 10 "$CALLS calls confirmed on node 1" sh -c "[ \"\$(ip netns exec $NS_1 curl -sf -m 2 http://127.0.0.1:8888/health | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"replicated_dialogs\"])')\" = $CALLS ]"
[ "$(getstat "$NS_1" dialog:active_dialogs)" = $CALLS ] || fail "node 1 does not hold $CALLS calls"
log "$CALLS calls established on node 1 and replicated"

# ---- 2. kill siplb on node 1 ---------------------------------------------
T0=$(now_ms)
kill -9 "${SIPLB_PID[1]}"
wait_until 15 "the VIP on node 2" has_vip "$NS_2"
T1=$(now_ms)
wait_until 5 "node 2 active with the dialogs" sh -c "ip netns exec $NS_2 curl -sf http://127.0.0.1:8888/health | grep -q '\"adopted_dialogs\":$CALLS'"
T2=$(now_ms)
has_vip "$NS_1" && fail "the VIP stayed on node 1 too"
log "takeover: VIP on node 2 after $((T1 - T0)) ms, dialogs loaded after $((T2 - T0)) ms"
echo "takeover_vip_ms=$((T1 - T0))"
echo "takeover_ready_ms=$((T2 - T0))"
[ "$(load "$NS_2")" -ge $CALLS ] || fail "node 2 does not count the adopted calls"

# ---- 3. new calls through node 2 -----------------------------------------
(cd "$WORK" && ip netns exec "$NS_C" sipp -sf "$SCEN/uac.xml" "$VIP:5060" -i "$NET.3" -p 5062 -s 1234 \
    -m 20 -r 20 -d 500 -nostdin -trace_err -timeout 30 -timeout_error >"$WORK/uac-after.log" 2>&1) \
    || fail "new calls through node 2 failed"
log "20 new calls through node 2 succeeded"

# ---- 3b. Redis stopped and restarted under load ----------------------------
(cd "$WORK" && exec ip netns exec "$NS_C" sipp -sf "$SCEN/uac.xml" "$VIP:5060" -i "$NET.3" -p 5063 -s 1234 \
    -m 150 -r 25 -d 1000 -nostdin -trace_err -timeout 40 -timeout_error >"$WORK/uac-redis.log" 2>&1) &
UAC3=$!
PIDS+=($UAC3)
sleep 1.5
kill -9 "$REDIS_PID"
wait "$REDIS_PID" 2>/dev/null || true
wait_until 5 "node 2 degraded" sh -c "ip netns exec $NS_2 curl -sf http://127.0.0.1:8888/health | grep -q '\"status\":\"degraded\"'"
sleep 2
start_redis
wait_until 5 "node 2 caught up" sh -c "ip netns exec $NS_2 curl -sf http://127.0.0.1:8888/health | grep -q '\"status\":\"ok\"'"
wait "$UAC3" || fail "calls failed while Redis was down"
log "Redis down for 2 s under 25 calls/s: no call failed, node 2 caught up"


wait "$UAC1" || fail "calls established before the failover did not all end well"
log "the $CALLS calls established before the failover ended with BYE through node 2"

# ---- 5. counters --------------------------------------------------------
wait_until 10 "node 2 idle" sh -c "[ \"\$(ip netns exec $NS_2 curl -sf -m 2 -d '{\"jsonrpc\":\"2.0\",\"method\":\"lb_list\",\"id\":1}' http://127.0.0.1:8888/mi | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"result\"][\"Destinations\"][0][\"Resources\"][0][\"load\"])')\" = 0 ]"
[ "$(getstat "$NS_2" dialog:active_dialogs)" = 0 ] || fail "dialogs left on node 2"
[ "$(getstat "$NS_2" siplb:unknown_dialogs)" = 0 ] || fail "node 2 refused in-dialog requests (481)"
start_siplb 1
wait_until 10 "siplb n1 back" health "$NS_1"
sleep 1
health "$NS_1" | grep -q '"role":"standby"' || fail "node 1 came back active: $(health "$NS_1")"
[ "$(load "$NS_1")" = 0 ] || fail "node 1 counts load after its restart"
[ "$(load "$NS_2")" = 0 ] || fail "node 2 counts load at the end"
left=$(ip netns exec "$NS_R" redis-cli -h "$NET.2" --scan --pattern 'siplb:dlg:*' | wc -l)
[ "$left" = 0 ] || fail "$left dialog records left in Redis"
log "all counters at zero on both nodes, no record left in Redis"
echo "netns failover: ok"
