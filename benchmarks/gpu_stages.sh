# Sourced by the one-call GPU scripts (gpu_check.sh, gpu_sanitize.sh): the output folder DIR (the
# script's first argument, else $OUT), and stage deadlines cut from BUDGET seconds (default 480)
# so that a call ends well inside a 10-minute limit: `el NAME` prints a stage's start and the
# seconds since the call began, `left N` the seconds a stage may take (at most N, never past the
# deadline, at least 5).
DIR=${1:-${OUT:-}}
if [ -z "$DIR" ]; then
  echo "usage: bash $0 FOLDER (or set OUT)" >&2
  exit 2
fi
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
T0=$(date +%s)
DEADLINE=$((T0 + ${BUDGET:-480}))
el() { echo "=== [$(($(date +%s) - T0))s] $*"; }
left() {
  local r=$((DEADLINE - $(date +%s)))
  [ "$1" -lt "$r" ] && r=$1
  [ "$r" -lt 5 ] && r=5
  echo "$r"
}
