#!/usr/bin/env bash
# Instructions the sans-IO core spends on one complete call (INVITE, 100,
# 180, 200, ACK, BYE, 200 through a record-routing siplb), counted by
# callgrind: repeatable on a noisy machine. Counts only inside the core's
# entry points (handle_datagram, handle_timeout, poll_transmit), so the test
# harness that builds the messages is not in the figure (the example's
# core_datagram and core_timers wrappers are what is counted).
#
#   perf/core-instructions.sh            # prints instructions per call
#   perf/core-instructions.sh --annotate # and the top functions
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -q -p siplb-bench --example core_call
bin="$target/release/examples/core_call"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
count() {
    valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.$1" \
        '--toggle-collect=*core_datagram*' '--toggle-collect=*core_timers*' \
        "$bin" "$1" 2>&1 | sed -n 's/.*Collected : //p'
}
a=$(count 2000)
b=$(count 4000)
echo "core: $(( (b - a) / 2000 )) instructions per call (callgrind, $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
if [ "${1:-}" = --annotate ]; then
    callgrind_annotate --inclusive=yes "$tmp/cg.4000" 2>/dev/null | sed -n 20,60p | cut -c1-180
fi
