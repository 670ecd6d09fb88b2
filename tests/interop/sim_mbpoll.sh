#!/bin/sh
# Read the documented registers of a running `alsentry sim` (normal.toml layout) with mbpoll
# (Debian package `mbpoll`) and check them against docs/SIMULATOR.md.
# Usage: tests/interop/sim_mbpoll.sh [host] [cell_port] [kiln_port]. Exit 77 = mbpoll missing.
set -u
HOST=${1:-127.0.0.1}
CELLS=${2:-5020}
KILNS=${3:-5021}
command -v mbpoll >/dev/null 2>&1 || { echo "SKIP: mbpoll is not installed (apt-get install mbpoll)"; exit 77; }
fail=0
val() { # print the value of the line "[ref]:  value"
  awk -v r="[$1]:" '$1 == r { print $2; exit }'
}
in_range() { awk -v x="$1" -v lo="$2" -v hi="$3" 'BEGIN { exit !(x != "" && x + 0 > lo && x + 0 < hi) }'; }
check() { if "$@"; then echo "ok   $*"; else echo "FAIL $*"; fail=1; fi; }

out=$(mbpoll -m tcp -p "$CELLS" -a 1 -0 -r 0 -c 2 -t 3:float -1 "$HOST")
v=$(echo "$out" | val 0); i=$(echo "$out" | val 2)
check in_range "$v" 3.85 4.45
check in_range "$i" 495 505
out=$(mbpoll -m tcp -p "$CELLS" -a 1 -0 -r 10 -c 1 -t 3:float -B -1 "$HOST")
check in_range "$(echo "$out" | val 10)" 495 505
out=$(mbpoll -m tcp -p "$CELLS" -a 1 -0 -r 0 -c 2 -t 4 -1 "$HOST")
check in_range "$(echo "$out" | val 0)" 3999 4251
check in_range "$(echo "$out" | val 1)" 4999 5001
out=$(mbpoll -m tcp -p "$CELLS" -a 1 -0 -r 18 -c 1 -t 3 -1 "$HOST" 2>&1)
has_illegal_address() { echo "$out" | grep -qi 'illegal data address'; }
check has_illegal_address
out=$(mbpoll -m tcp -p "$KILNS" -a 2 -0 -r 0 -c 2 -t 4 -1 "$HOST")
check in_range "$(echo "$out" | val 0)" 999 12501
exit $fail
