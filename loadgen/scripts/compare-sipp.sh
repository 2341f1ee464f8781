#!/usr/bin/env bash
# Side-by-side: sipload uac -> sipload uas vs SIPp uac -> SIPp uas on
# loopback, plus the UDP floor, in one session. Prints a Markdown table.
#
#   cargo build --release -p sipload
#   loadgen/scripts/compare-sipp.sh
#
# Environment: SIPLOAD (binary), SECS (seconds per step, default 5),
# SIPP_RATES and SIPLOAD_RATES (space-separated calls/s to try),
# REPEAT (runs per rate, default 1), UAS_EXTRA (more sipload uas options,
# e.g. --no-trying for SIPp's 6-message flow), UAC_PIN / UAS_PIN (default
# "--cpus 0" / "--cpus 1": one thread each on its own core; "--no-pin" on a
# busy shared machine). SIPp is single threaded and left to the scheduler.
set -uo pipefail
cd "$(dirname "$0")/../.."
SIPLOAD=${SIPLOAD:-${CARGO_TARGET_DIR:-target}/release/sipload}
SECS=${SECS:-5}
SIPP_RATES=${SIPP_RATES-"10000 14000 18000 22000 26000"}
SIPLOAD_RATES=${SIPLOAD_RATES-"20000 30000 40000 45000 50000"}
REPEAT=${REPEAT:-1}
UAS_EXTRA=${UAS_EXTRA:-}
UAC_PIN=${UAC_PIN:---cpus 0}
UAS_PIN=${UAS_PIN:---cpus 1}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

cpu_of() { # /usr/bin/time output file -> user+sys seconds
    tail -1 "$1" | awk '{print $1 + $2}'
}

sipp_pair() { # rate -> "success% cps cpu_us_per_call"
    local rate=$1 calls=$(( $1 * SECS )) d="$TMP/sipp.$1.$RANDOM"
    mkdir -p "$d"
    local p1=$(( 20000 + RANDOM % 20000 )); local p2=$(( p1 + 1 ))
    ( cd "$d" && /usr/bin/time -f "%U %S" -o "$d/uas.time" timeout -k 3 $(( SECS + 30 )) sipp -sn uas -i 127.0.0.1 -p $p1 \
        -m $calls -timeout $(( SECS + 20 ))s -nostdin -buff_size 4194304 >/dev/null 2>&1 ) &
    local upid=$!
    sleep 0.5
    local t0=$(date +%s.%N)
    ( cd "$d" && /usr/bin/time -f "%U %S" -o "$d/uac.time" timeout -k 3 $(( SECS + 30 )) sipp -sn uac 127.0.0.1:$p1 -i 127.0.0.1 -p $p2 \
        -r $rate -m $calls -timeout $(( SECS + 20 ))s -nostdin -buff_size 4194304 -trace_screen >/dev/null 2>&1 )
    local t1=$(date +%s.%N)
    wait $upid
    local screen; screen=$(ls "$d"/*screen.log 2>/dev/null | head -1)
    local ok; ok=$(grep "Successful call" "$screen" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
    local placing; placing=$(grep "Elapsed Time" "$screen" | tail -1 | awk -F'|' '{print $3}' | awk '{print $1}')
    python3 -c "
calls=$calls; ok=int('${ok:-0}' or 0)
cpu=$(cpu_of "$d/uac.time")+$(cpu_of "$d/uas.time")
print(f'{100*ok/calls:.3f} {calls/($t1-$t0):.0f} {cpu*1e6/calls:.1f}')"
}

sipload_pair() { # rate -> "success% cps cpu_us_per_call"
    local rate=$1 calls=$(( $1 * SECS ))
    rm -f "$TMP/uas.err" "$TMP/uas.json" "$TMP/uac.json"
    "$SIPLOAD" uas -p 0 -i 127.0.0.1 --threads 1 $UAS_PIN -m $calls --duration $(( SECS + 60 )) --json $UAS_EXTRA \
        >"$TMP/uas.json" 2>"$TMP/uas.err" &
    local upid=$!
    local port=""
    for _ in $(seq 50); do
        port=$(grep -o '127.0.0.1:[0-9]*' "$TMP/uas.err" 2>/dev/null | cut -d: -f2)
        [ -n "$port" ] && break
        sleep 0.1
    done
    "$SIPLOAD" uac 127.0.0.1:$port -r $rate -m $calls --threads 1 $UAC_PIN --json >"$TMP/uac.json"
    wait $upid
    python3 -c "
import json
c=json.load(open('$TMP/uac.json')); s=json.load(open('$TMP/uas.json'))
cpu=(c['cpu_s']+s['cpu_s'])*1e6/max(1,c['calls_attempted'])
print(f\"{100*c['calls_succeeded']/max(1,c['calls_attempted']):.3f} {c['calls_attempted']/c['duration_s']:.0f} {cpu:.1f} {c['latency_ms']['invite_to_200']['p99']:.2f} {c['retransmissions_sent']}\")"
}

floor=$("$SIPLOAD" floor --seconds "$SECS" --window 32 --json | python3 -c "import json,sys; print(json.load(sys.stdin)['cpu_us_per_datagram'])")
echo "UDP floor (800-byte datagrams, 32 in flight, two pinned threads): $floor us CPU per datagram sent and received"
echo
echo "| generator | offered calls/s | success % | completed calls/s | CPU us/call (UAC+UAS) |"
echo "|---|---:|---:|---:|---:|"
if command -v sipp >/dev/null; then
    for r in $SIPP_RATES; do
        for _ in $(seq "$REPEAT"); do
            read -r succ cps cpu <<<"$(sipp_pair "$r")"
            echo "| SIPp -sn uac -> -sn uas | $r | $succ | $cps | $cpu |"
        done
    done
fi
for r in $SIPLOAD_RATES; do
    for _ in $(seq "$REPEAT"); do
        read -r succ cps cpu p99 retr <<<"$(sipload_pair "$r")"
        echo "| sipload uac -> uas | $r | $succ | $cps | $cpu (p99 INVITE->200 $p99 ms, $retr retransmissions) |"
    done
done
