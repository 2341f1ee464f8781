#!/usr/bin/env bash
# perf/run.sh: siplb measured against the physical limit and against
# Kamailio, on this machine, loopback only, in one run.
#
#   perf/run.sh --quick        # smoke test: ~2 minutes, one repetition
#   perf/run.sh                # full: 3 repetitions, min/median/max, ~15 min
#   perf/run.sh --help
#
# What it does (README "Measuring (perf/)" has the details):
#  1. the floor: `sipload floor` (two threads ping-ponging datagrams) and
#     perf/fwd.c (one recvmmsg/sendmmsg forwarder thread, paced at the
#     datagram rate siplb sees), times the datagrams siplb handles per call;
#  2. siplb (1 worker pinned to core 0, then 2 workers) between `sipload uac`
#     and two `sipload uas` (generators pinned to core 1): CPU per call from
#     /proc/PID/stat at fixed rates, latency minus the direct path, and the
#     highest rate at >= 99.9 % success (`sipload ramp`);
#  3. Kamailio (perf/kamailio/kamailio.cfg) in exactly the same setup;
#  4. both again driven by SIPp (perf/sipp/*.xml) with SIPp backends;
#  5. an overload run at twice the sustainable rate with capacities sized
#     to it: admitted vs rejected (503) and p99 of the admitted calls;
# then writes a table (perf/RESULTS.md in the full mode) and prints it.
#
# Every process it starts runs under `timeout` and is killed on exit.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PERF=$ROOT/perf

usage() {
    cat <<'EOF'
usage: perf/run.sh [--quick] [--reps N] [--only LIST] [--write | --no-write]
                   [--out DIR] [--no-build]

  --quick       seconds per step instead of minutes: a smoke test (1 rep)
  --reps N      repetitions of every measurement (full mode: 3)
  --only LIST   comma-separated parts: floor,direct,sipload,sipp,overload,
                profile (default: all; profile needs `perf`, linux-perf)
  --no-kamailio skip Kamailio (siplb and the floor only)
  --write       append the table to perf/RESULTS.md (default in full mode)
  --no-write    only print it (default with --quick)
  --out DIR     keep raw results and logs in DIR (default: a temp dir,
                kept and printed at the end)
  --no-build    use the binaries already in the target dir
  --commit REV  build REV from a clean `git archive` export instead of the
                working tree (measures exactly that commit)
  --transport T udp (default) or tcp: with tcp, the SIPp part only (sipload
                speaks UDP), SIPp caller and backends over TCP (-t t1), siplb
                listening on TCP with `;transport=tcp` destinations, no
                Kamailio

Environment: CARGO_TARGET_DIR (default: ./target); PERF_RATES (fixed offered
rates, default "2000 5000"); PERF_MAX_SECONDS (hard bound on the whole run).
Ports used on 127.0.0.1: 17060 (proxy), 17070-17071, 17888, 17081-17083,
17100-17110.
EOF
}

ARGS="$*"
QUICK=0
REPS=
WRITE=
ONLY=floor,direct,sipload,sipp,overload,profile
ONLY_SET=0
TRANSPORT=udp
KAMAILIO=1
BUILD=1
OUT=
REV=
while [ $# -gt 0 ]; do
    case $1 in
    --quick) QUICK=1 ;;
    --reps) REPS=$2; shift ;;
    --only) ONLY=$2; ONLY_SET=1; shift ;;
    --transport) TRANSPORT=$2; shift ;;
    --no-kamailio) KAMAILIO=0 ;;
    --write) WRITE=1 ;;
    --no-write) WRITE=0 ;;
    --out) OUT=$2; shift ;;
    --no-build) BUILD=0 ;;
    --commit) REV=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "perf/run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

case $TRANSPORT in
udp) SIPP_T=(-t u1) ;;
tcp)
    # sipload, the floor and Kamailio's set-up are UDP: measure SIPp only
    [ "$ONLY_SET" = 1 ] && [ "$ONLY" != sipp ] && {
        echo "perf/run.sh: --transport tcp measures the sipp part only" >&2
        exit 2
    }
    ONLY=sipp KAMAILIO=0 SIPP_T=(-t t1)
    ;;
*) echo "perf/run.sh: --transport is udp or tcp" >&2; exit 2 ;;
esac

if [ "$QUICK" = 1 ]; then
    : "${REPS:=1}" "${WRITE:=0}"
    FIXED_SECS=2         # seconds of calls per fixed-rate run
    RATES=${PERF_RATES:-2000}
    RAMP_START=2000 RAMP_STEP=4000 RAMP_SECS=1 RAMP_BISECT=1
    SIPP_START=2000 SIPP_STEP=4000 SIPP_SECS=2 SIPP_BISECT=1
    OVL_SECS=3 OVL_HOLD_MS=500
    FLOOR_SECS=1
    MAX_SECONDS=${PERF_MAX_SECONDS:-600}
else
    : "${REPS:=3}" "${WRITE:=1}"
    FIXED_SECS=5
    RATES=${PERF_RATES:-2000 5000}
    RAMP_START=4000 RAMP_STEP=4000 RAMP_SECS=3 RAMP_BISECT=2
    SIPP_START=4000 SIPP_STEP=4000 SIPP_SECS=3 SIPP_BISECT=2
    OVL_SECS=6 OVL_HOLD_MS=1000
    FLOOR_SECS=3
    MAX_SECONDS=${PERF_MAX_SECONDS:-2400}
fi

want() { [[ ",$ONLY," == *",$1,"* ]]; }

IP=127.0.0.1
PROXY_PORT=17060
ADMIN=http://$IP:17888/mi
UAS_PORTS=(17081 17082)
DIRECT_PORT=17083
UAC_PORT=17100
SERVICE=1234
GEN_CPU=1            # core of the generators (the proxy's worker 0 is on core 0)
LIFETIME=$((MAX_SECONDS + 60))
HZ=$(getconf CLK_TCK)

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release

WORK=${OUT:-$(mktemp -d /tmp/siplb-perf.XXXXXX)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
RES=$WORK/results.jsonl
: >"$RES"

# the terminal's stderr and stdout, whatever a command's redirections are when a signal comes
exec 3>&2 4>&1
log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&3; }

# ---------------------------------------------------------------- processes
# Everything is started through `start`, under `timeout` (so nothing outlives
# the run even if this script is killed with SIGKILL), and remembered; `stop`
# ends the current part's processes, the EXIT trap all of them.

ALL_PIDS=()
PART_PIDS=()

start() { # LOG CMD...: starts CMD in the background; $STARTED is timeout's pid
    local logf=$1
    shift
    timeout -k 3 "$LIFETIME" "$@" >"$logf" 2>&1 &
    STARTED=$!
    ALL_PIDS+=("$STARTED")
    PART_PIDS+=("$STARTED")
}

child_of() { # PID of the command under timeout TPID
    local i
    for i in $(seq 50); do
        local c
        c=$(pgrep -P "$1" | head -1 || true)
        if [ -n "$c" ]; then echo "$c"; return; fi
        sleep 0.1
    done
    echo "perf/run.sh: no child under pid $1" >&2
    return 1
}

kill_list() { # PIDS of `timeout`s: ends them and what runs under them
    local p alive=() all=()
    for p in "$@"; do
        all+=("$p" $(pgrep -P "$p" || true))
    done
    for p in "${all[@]}"; do
        kill -TERM "$p" 2>/dev/null && alive+=("$p")
    done
    [ ${#alive[@]} -eq 0 ] && return 0
    for _ in $(seq 30); do
        local any=0
        for p in "${alive[@]}"; do kill -0 "$p" 2>/dev/null && any=1; done
        [ $any = 0 ] && break
        sleep 0.1
    done
    for p in "${alive[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait "${alive[@]}" 2>/dev/null || true
}

stop() {
    [ ${#PART_PIDS[@]} -gt 0 ] && kill_list "${PART_PIDS[@]}"
    PART_PIDS=()
}

# Long foreground commands run through `fg`, in the background with a
# `wait`, so that a signal is handled at once rather than when they end.
FG=
fg() {
    "$@" &
    FG=$!
    local rc=0
    wait $FG || rc=$?
    FG=
    return $rc
}

WATCHDOG=
OVERTIME=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM USR1
    set +e
    [ -n "$FG" ] && kill_list "$FG"
    [ ${#ALL_PIDS[@]} -gt 0 ] && kill_list "${ALL_PIDS[@]}"
    [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
    wait 2>/dev/null || true
    if [ "$OVERTIME" = 1 ] && [ -s "$RES" ]; then
        # over the time bound: report what was measured, marked as such
        record meta --load-end "$(cut -d' ' -f1-3 /proc/loadavg)" --mode "cut short at ${MAX_SECONDS}s" || true
        if [ "$WRITE" = 1 ]; then
            python3 "$PERF/report.py" table "$RES" --append "$PERF/RESULTS.md" >&4 || true
        else
            python3 "$PERF/report.py" table "$RES" >&4 || true
        fi
    fi
    log "raw results and logs: $WORK"
    exit $rc
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
trap 'log "over ${MAX_SECONDS}s: stopping, reporting what was measured"; OVERTIME=1; exit 124' USR1
# a hard bound on the whole run
(
    trap 'kill $sl 2>/dev/null; exit 0' TERM
    sleep "$MAX_SECONDS" &
    sl=$!
    wait $sl
    kill -USR1 $$
) &
WATCHDOG=$!

port_busy() { ss -Htuln "sport = :$1" | grep -q .; }

wait_port() { # PORT: until something listens on it (10 s)
    for _ in $(seq 100); do
        port_busy "$1" && return 0
        sleep 0.1
    done
    echo "perf/run.sh: nothing listens on $1" >&2
    return 1
}

drops() { # UDP receive-buffer drops so far, all sockets of the machine
    awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) c[$i] = i; h = 1 } else print $c["RcvbufErrors"] }' /proc/net/snmp
}

threads() { # PID: "name:utime+stime ..." of its worker threads (siplb-w*)
    local t out=
    for t in /proc/"$1"/task/*; do
        case $(cat "$t/comm" 2>/dev/null) in
        siplb-w*) out+="$(cat "$t/comm"):$(sed 's/.*) //' "$t/stat" | awk '{print $12 + $13}') " ;;
        esac
    done
    echo "$out"
}

switches() { # PID: context switches so far (voluntary + not), all its threads and child processes
    local p n=0 t
    for p in "$1" $(pgrep -P "$1" || true); do
        for t in /proc/"$p"/task/*/status; do
            n=$((n + $(awk '/ctxt_switches/ { s += $2 } END { print s + 0 }' "$t" 2>/dev/null || echo 0)))
        done
    done
    echo $n
}

rss() { # PID: resident KiB, with child processes
    local p n=0
    for p in "$1" $(pgrep -P "$1" || true); do
        n=$((n + $(awk '/VmRSS/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)))
    done
    echo $n
}

ticks() { # PID: "utime stime" in clock ticks, summed over PID and its children
    local p u=0 s=0 f
    for p in "$1" $(pgrep -P "$1" || true); do
        # fields 14, 15 (after the ")" that ends the command name)
        f=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f12,13) || continue
        [ -n "$f" ] || continue
        u=$((u + ${f% *}))
        s=$((s + ${f#* }))
    done
    echo "$u $s"
}

siplb_stats() { # -> JSON of siplb's counters (or {})
    curl -s -m 2 -d '{"jsonrpc":"2.0","method":"get_statistics","params":{"statistics":["all"]},"id":"1"}' \
        "$ADMIN" 2>/dev/null || echo '{}'
}

record() { python3 "$PERF/report.py" record "$RES" "$@"; }

# ------------------------------------------------------------------- preflight

cd "$ROOT"
for p in $PROXY_PORT 17070 17071 17888 "${UAS_PORTS[@]}" $DIRECT_PORT; do
    if port_busy "$p"; then
        echo "perf/run.sh: port $p is in use on this machine; stop what uses it" >&2
        ss -Hulnp "sport = :$p" >&2 || true
        exit 1
    fi
done

COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain -- engine parser loadgen Cargo.toml Cargo.lock 2>/dev/null | head -1)
[ -n "$DIRTY" ] && COMMIT="$COMMIT+uncommitted changes"
if [ -n "$REV" ]; then
    COMMIT=$(git -C "$ROOT" rev-parse --short "$REV")
    log "building $REV ($COMMIT) from a clean export into $CARGO_TARGET_DIR"
    mkdir -p "$WORK/src"
    git -C "$ROOT" archive "$REV" | tar -x -C "$WORK/src"
    (cd "$WORK/src" && timeout 1800 cargo build --release -q -p siplb -p sipload)
elif [ "$BUILD" = 1 ]; then
    log "building siplb and sipload (release) into $CARGO_TARGET_DIR"
    timeout 1800 cargo build --release -q -p siplb -p sipload
else
    COMMIT="$COMMIT (binaries as found in $BIN)"
fi
[ -x "$BIN/siplb" ] && [ -x "$BIN/sipload" ] || { echo "perf/run.sh: no binaries in $BIN" >&2; exit 1; }
cc -O2 -pthread -o "$WORK/fwd" "$PERF/fwd.c"

APT_UPDATED=0
apt_install() { # PACKAGE
    if [ "$(id -u)" != 0 ]; then
        echo "perf/run.sh: $1 is missing and this is not root: apt-get install $1" >&2
        return 1
    fi
    if [ $APT_UPDATED = 0 ]; then
        log "apt-get update"
        timeout 300 apt-get update -qq >"$WORK/apt.log" 2>&1
        APT_UPDATED=1
    fi
    log "apt-get install $1"
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "$1" >>"$WORK/apt.log" 2>&1
}
if [ "$KAMAILIO" = 1 ] && ! command -v kamailio >/dev/null; then
    apt_install kamailio
    # the package enables a service on 5060; we run our own instance
    systemctl disable --now kamailio >/dev/null 2>&1 || true
fi
HAVE_SIPP=1
if want sipp && ! command -v sipp >/dev/null; then
    apt_install sip-tester || HAVE_SIPP=0
fi

record meta --date "$(date -u +'%Y-%m-%d %H:%M UTC')" --commit "$COMMIT" \
    --machine "$(nproc) vCPU, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)" \
    --load-start "$(cut -d' ' -f1-3 /proc/loadavg)" \
    --kamailio "$(kamailio -v 2>/dev/null | sed -n 's/^version: //p' | head -1)" \
    --sipp "$(sipp -v 2>/dev/null | grep -o 'SIPp v[^ ]*' | head -1)" \
    --mode "$([ "$QUICK" = 1 ] && echo quick || echo full)" --reps "$REPS" \
    --command "perf/run.sh${ARGS:+ $ARGS}"

# ----------------------------------------------------------------- the parts

# Generators: one thread per backend, two for the caller (two source ports,
# so that SO_REUSEPORT spreads calls over siplb's two workers), all on core 1.
GEN=(--threads 1 --cpus "$GEN_CPU" -i "$IP")
UAC=(--threads 2 --cpus "$GEN_CPU" -i "$IP" -p $UAC_PORT)

start_uas_sipload() {
    local p
    for p in "${UAS_PORTS[@]}"; do
        start "$WORK/uas-$p.log" "$BIN/sipload" uas -p "$p" "${GEN[@]}" --no-trying
    done
    for p in "${UAS_PORTS[@]}"; do wait_port "$p"; done
}

start_uas_sipp() {
    local p
    for p in "${UAS_PORTS[@]}"; do
        start "$WORK/sipp-uas-$p.log" sipp -sf "$PERF/sipp/uas.xml" -i "$IP" -p "$p" "${SIPP_T[@]}" \
            -nostdin -buff_size 4194304 -max_recv_loops 10000 -max_sched_loops 10000
    done
    for p in "${UAS_PORTS[@]}"; do wait_port "$p"; done
}

TARGET_PID=
start_target() { # NAME [CAPACITY]: siplb-1w, siplb-2w, kamailio-1c, kamailio-2c
    local name=$1 cap=${2:-100000}
    case $name in
    siplb-*)
        local w=${name#siplb-}
        w=${w%w}
        local tcp=()
        if [ "$TRANSPORT" = tcp ]; then
            tcp=(-e "s/^listen = \\[.*/listen = [\"$IP:$PROXY_PORT\", \"tcp:$IP:$PROXY_PORT\"]/"
                -e 's/^\(uri = "sip:[0-9.:]*\)"/\1;transport=tcp"/')
        fi
        sed -e "s/^workers = .*/workers = $w/" -e "s/pstn=[0-9]*/pstn=$cap/" "${tcp[@]}" \
            "$PERF/siplb.toml" >"$WORK/siplb-$name.toml"
        start "$WORK/$name.log" "$BIN/siplb" --config "$WORK/siplb-$name.toml"
        ;;
    kamailio-*)
        local cpus=0
        [ "$name" = kamailio-2c ] && cpus=0,1
        printf '1 sip:%s:%s 0 0 duid=b1;maxload=%s\n1 sip:%s:%s 0 0 duid=b2;maxload=%s\n' \
            "$IP" "${UAS_PORTS[0]}" "$cap" "$IP" "${UAS_PORTS[1]}" "$cap" >"$WORK/dispatcher.list"
        mkdir -p "$WORK/kamailio-run"
        start "$WORK/$name.log" taskset -c "$cpus" kamailio -f "$PERF/kamailio/kamailio.cfg" \
            -DD -E -x tlsf -m 2048 -n "${KAMAILIO_CHILDREN:-2}" -l "udp:$IP:$PROXY_PORT" \
            -Y "$WORK/kamailio-run" -P "$WORK/kamailio-run/kamailio.pid" \
            -A "DSLIST=\"$WORK/dispatcher.list\""
        ;;
    esac
    TARGET_PID=$(child_of "$STARTED")
    wait_port $PROXY_PORT
    sleep 0.5
}

# One fixed-rate run of `sipload uac` through the proxy: CPU of the proxy
# process from /proc before and after, its counters (siplb), the summary.
fixed_run() { # TARGET RATE REP
    local t=$1 rate=$2 rep=$3 f=$WORK/fixed-$1-$2-$3
    siplb_stats >"$f.stats0"
    local before after d0 d1 th0 th1 cs0 cs1
    before=$(ticks "$TARGET_PID") d0=$(drops) th0=$(threads "$TARGET_PID") cs0=$(switches "$TARGET_PID")
    fg timeout -k 3 $((FIXED_SECS + 45)) "$BIN/sipload" uac "$IP:$PROXY_PORT" -s $SERVICE -r "$rate" \
        --duration "$FIXED_SECS" --timeout 5000 "${UAC[@]}" --json >"$f.json" 2>"$f.err" || true
    after=$(ticks "$TARGET_PID") d1=$(drops) th1=$(threads "$TARGET_PID") cs1=$(switches "$TARGET_PID")
    siplb_stats >"$f.stats1"
    record fixed --target "$t" --rate "$rate" --rep "$rep" --uac "$f.json" --hz "$HZ" \
        --ticks "$before $after" --stats "$f.stats0" "$f.stats1" --drops "$d0 $d1" \
        --threads "${th0:-none}" "${th1:-none}" --switches "$cs0 $cs1" --rss "$(rss "$TARGET_PID")"
}

ramp_run() { # TARGET REP
    local f=$WORK/ramp-$1-$2
    fg timeout -k 3 600 "$BIN/sipload" ramp "$IP:$PROXY_PORT" -s $SERVICE --start $RAMP_START \
        --step $RAMP_STEP --step-secs $RAMP_SECS --bisect $RAMP_BISECT --timeout 5000 \
        "${UAC[@]}" --json >"$f.json" 2>"$f.err" || true
    record ramp --target "$1" --rep "$2" --gen sipload --file "$f.json"
}

# One SIPp step: RATE calls/s for SIPP_SECS; prints "pass" or "fail".
sipp_step() { # TARGET REP RATE
    local f=$WORK/sipp-$1-$2-$3 calls=$(($3 * SIPP_SECS)) port=$PROXY_PORT
    [ "$1" = direct ] && port=$DIRECT_PORT
    fg env -C "$WORK" timeout -k 3 $((SIPP_SECS + 30)) sipp -sf "$PERF/sipp/uac.xml" -s $SERVICE "$IP:$port" \
        -i "$IP" -p $UAC_PORT "${SIPP_T[@]}" -m "$calls" -r "$3" -d 0 -nostdin -recv_timeout 5000 \
        -timeout $((SIPP_SECS + 25))s -buff_size 4194304 -max_recv_loops 10000 -max_sched_loops 10000 \
        -trace_stat -stf "$f.csv" -fd 1 >"$f.out" 2>"$f.err" || true
    record sipp-step --target "$1" --rep "$2" --rate "$3" --secs $SIPP_SECS --file "$f.csv"
    sleep 1 # let retransmissions of a failed step drain
}

# Steps up by SIPP_STEP until a step fails, then bisects (what `sipload ramp`
# does, with SIPp as the caller).
sipp_ramp() { # TARGET REP
    local rate=$SIPP_START best=0 failed=0 verdict
    while [ $rate -le 60000 ]; do
        verdict=$(sipp_step "$1" "$2" $rate)
        log "  sipp $1 $rate calls/s: $verdict"
        if [ "$verdict" = pass ]; then best=$rate; rate=$((rate + SIPP_STEP)); else failed=$rate; break; fi
    done
    if [ $failed -gt 0 ]; then
        local lo=$best hi=$failed mid
        for _ in $(seq $SIPP_BISECT); do
            mid=$(((lo + hi) / 2))
            [ $mid -le $lo ] && break
            verdict=$(sipp_step "$1" "$2" $mid)
            log "  sipp $1 $mid calls/s: $verdict"
            if [ "$verdict" = pass ]; then lo=$mid; else hi=$mid; fi
        done
        best=$lo
    fi
    record ramp --target "$1" --rep "$2" --gen sipp --best "$best"
}

best_of() { # TARGET GEN -> median best rate recorded so far
    python3 "$PERF/report.py" best "$RES" "$1" "$2"
}

TARGETS=(siplb-1w siplb-2w)
[ "$KAMAILIO" = 1 ] && TARGETS+=(kamailio-1c kamailio-2c)
START_TIME=$(date +%s)

for rep in $(seq "$REPS"); do
    if want floor; then
        log "rep $rep: floor"
        fg timeout 60 "$BIN/sipload" floor --seconds $FLOOR_SECS --json >"$WORK/floor-$rep.json" 2>/dev/null || true
        record floor --rep "$rep" --file "$WORK/floor-$rep.json"
        for rate in $RATES; do
            # 13 datagrams per call = 6.5 forwarded (one received + one sent)
            fr=$((rate * 13 / 2))
            fg timeout 60 "$WORK/fwd" "$fr" $FLOOR_SECS >"$WORK/fwd-$rate-$rep.json" || true
            record fwd --rep "$rep" --rate "$rate" --file "$WORK/fwd-$rate-$rep.json"
        done
    fi

    if want direct; then
        log "rep $rep: direct path (sipload uac -> sipload uas, no proxy)"
        start "$WORK/uas-direct.log" "$BIN/sipload" uas -p $DIRECT_PORT "${GEN[@]}" --no-trying
        wait_port $DIRECT_PORT
        for rate in $RATES; do
            f=$WORK/direct-$rate-$rep
            fg timeout -k 3 $((FIXED_SECS + 45)) "$BIN/sipload" uac "$IP:$DIRECT_PORT" -s $SERVICE -r "$rate" \
                --duration "$FIXED_SECS" --timeout 5000 "${UAC[@]}" --json >"$f.json" 2>"$f.err" || true
            record direct --rate "$rate" --rep "$rep" --uac "$f.json"
        done
        if [ "$rep" = 1 ]; then
            # what the generators sustain without a proxy, on their one core
            fg timeout -k 3 600 "$BIN/sipload" ramp "$IP:$DIRECT_PORT" -s $SERVICE --start $((RAMP_START * 5)) \
                --step $((RAMP_STEP * 5)) --step-secs $RAMP_SECS --bisect 2 --timeout 5000 \
                "${UAC[@]}" --json >"$WORK/ramp-direct.json" 2>"$WORK/ramp-direct.err" || true
            record ramp --target direct --rep "$rep" --gen sipload --file "$WORK/ramp-direct.json"
        fi
        stop
    fi

    if want sipload; then
        for t in "${TARGETS[@]}"; do
            log "rep $rep: $t with sipload (fixed rates $RATES, then ramp)"
            start_uas_sipload
            start_target "$t"
            # warm up: tables, caches, the kernel's socket buffers
            fg timeout 20 "$BIN/sipload" uac "$IP:$PROXY_PORT" -s $SERVICE -r 1000 -m 1000 \
                "${UAC[@]}" --json >/dev/null 2>&1 || true
            for rate in $RATES; do fixed_run "$t" "$rate" "$rep"; done
            ramp_run "$t" "$rep"
            stop
        done
    fi

    if want sipp && [ $HAVE_SIPP = 1 ]; then
        if [ "$rep" = 1 ]; then
            log "rep $rep: SIPp uac -> SIPp uas, no proxy (what SIPp itself sustains here)"
            start "$WORK/sipp-uas-direct.log" sipp -sf "$PERF/sipp/uas.xml" -i "$IP" -p $DIRECT_PORT \
                "${SIPP_T[@]}" -nostdin -buff_size 4194304 -max_recv_loops 10000 -max_sched_loops 10000
            wait_port $DIRECT_PORT
            sipp_ramp direct "$rep"
            stop
        fi
        for t in siplb-2w $([ "$KAMAILIO" = 1 ] && echo kamailio-2c); do
            log "rep $rep: $t with SIPp"
            start_uas_sipp
            start_target "$t"
            sipp_ramp "$t" "$rep"
            stop
        done
    fi

    if want overload; then
        for t in siplb-2w $([ "$KAMAILIO" = 1 ] && echo kamailio-2c); do
            # the target's own sustainable rate (sipload ramp), or a guess
            s=$(best_of "$t" sipload)
            [ "$s" -gt 0 ] 2>/dev/null || s=5000
            offered=$((2 * s))
            # capacity per destination so that admitted ~ sustainable:
            # concurrent calls = rate x hold
            cap=$(((s * OVL_HOLD_MS / 1000 + 1) / 2))
            log "rep $rep: $t overload: offered $offered calls/s, hold ${OVL_HOLD_MS} ms, capacity 2 x $cap"
            start_uas_sipload
            start_target "$t" "$cap"
            f=$WORK/overload-$t-$rep
            before=$(ticks "$TARGET_PID") d0=$(drops)
            fg timeout -k 3 $((OVL_SECS + 60)) "$BIN/sipload" uac "$IP:$PROXY_PORT" -s $SERVICE -r $offered \
                --duration $OVL_SECS -d $OVL_HOLD_MS --timeout 5000 "${UAC[@]}" \
                --json >"$f.json" 2>"$f.err" || true
            after=$(ticks "$TARGET_PID") d1=$(drops)
            record overload --drops "$d0 $d1" --target "$t" --rep "$rep" --offered $offered --sustainable "$s" \
                --capacity $((2 * cap)) --secs $OVL_SECS --uac "$f.json" --hz "$HZ" --ticks "$before $after"
            stop
        done
    fi
done

if want profile && command -v perf >/dev/null; then
    # where siplb's CPU goes: `perf record` of the 1-worker siplb at the
    # highest fixed rate, kernel and user, flat profile
    rate=${RATES##* }
    log "profile: perf record of siplb-1w at $rate calls/s"
    start_uas_sipload
    start_target siplb-1w
    start "$WORK/perf-record.log" perf record -F 1999 -g -p "$TARGET_PID" -o "$WORK/perf.data" -- sleep $FIXED_SECS
    precord=$STARTED
    fg timeout -k 3 $((FIXED_SECS + 45)) "$BIN/sipload" uac "$IP:$PROXY_PORT" -s $SERVICE -r "$rate" \
        --duration "$FIXED_SECS" --timeout 5000 "${UAC[@]}" --json >"$WORK/profile-uac.json" 2>/dev/null || true
    wait "$precord" 2>/dev/null || true
    stop
    timeout 120 perf report -i "$WORK/perf.data" --stdio --no-children --sort dso,sym -g none 2>/dev/null |
        grep -v '^#' | grep '%' | head -25 >"$WORK/profile.txt" || true
    record profile --target siplb-1w --rate "$rate" --file "$WORK/profile.txt"
fi

record meta --load-end "$(cut -d' ' -f1-3 /proc/loadavg)" --elapsed $(($(date +%s) - START_TIME))
if [ "$WRITE" = 1 ]; then
    python3 "$PERF/report.py" table "$RES" --append "$PERF/RESULTS.md"
    log "appended to perf/RESULTS.md"
else
    python3 "$PERF/report.py" table "$RES"
fi
