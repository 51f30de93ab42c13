#!/usr/bin/env bash
# One lane of `make test`: COMMAND (a pytest run) writes to LOG; what is printed is a line with
# LABEL and its time, then its skips counted by reason, its slowest tests (where it printed them)
# and its result line or, when it failed, the whole log. A lane that outlives LIMIT seconds is
# stopped (SIGTERM: pytest writes every thread's stack into LOG, naming the test it was in;
# SIGKILL 30 s later) and fails with its log: a hang must fail the run, not stall CI until its
# limit. --foreground: a terminal's Ctrl-C still reaches pytest.
# Usage: run_lane.sh LABEL LOG LIMIT COMMAND [ARGUMENT...]
set -u
label=$1 log=$2 limit=$3
shift 3
SECONDS=0
timeout --foreground -k 30 "$limit" "$@" > "$log" 2>&1
code=$?
echo "== $label: $SECONDS s (log: $log)"
if [ $code -eq 124 ] || [ $code -eq 137 ]; then
	echo "   TIMED OUT: stopped after $limit s; its log:"
fi
if [ $code -ne 0 ]; then
	cat "$log"
else
	sed -n 's/^SKIPPED \[\([0-9]*\)\] [^ ]*: /\1 /p' "$log" |
		awk '{n=$1; $1=""; c[$0]+=n} END {for (r in c) print "  skipped", c[r] ":" r}'
	awk '/^=+ slowest/ {on=1} on && /^(=+ short test summary|[0-9]+ (passed|failed|skipped))/ {on=0} on' "$log"
	tail -n 1 "$log"
fi
exit $code
