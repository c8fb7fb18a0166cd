#!/usr/bin/env bash
# `make test`: pytest in two runs over the same selection (the arguments, as PYTEST_ARGS gives
# them). Every test not marked `network` runs under scripts/loopback-only.sh (no address but
# 127.0.0.1); the `network` tests (they reach a package registry: pyproject.toml's markers) run as
# they are. Both runs always run; the exit status is the first failing one's. A run that selects
# no test (pytest's exit 5) counts as passed when the other one ran tests.
#   scripts/run-tests.sh [PYTEST_ARGS...]        (PY: the interpreter, default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PY:-.venv/bin/python}
# a -m EXPR of the caller's is combined with each run's own marker expression (a second -m would replace it)
user_m= args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -m) user_m=${2:?-m needs an expression}; shift 2 ;;
    -m?*) user_m=${1#-m}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
with() { if [ -n "$user_m" ]; then echo "($user_m) and ($1)"; else echo "$1"; fi; }

set +e
scripts/loopback-only.sh "$py" -m pytest -m "$(with "not network")" ${args[@]+"${args[@]}"}
guarded=$?
[ "$guarded" -eq 2 ] && { echo "run-tests.sh: the loopback-only run was interrupted (exit 2): no network run" >&2; exit 2; }
echo "== network-marked tests (outside the loopback-only namespace)"
"$py" -m pytest -m "$(with network)" ${args[@]+"${args[@]}"}
open=$?
set -e

echo "run-tests.sh: loopback-only run exit $guarded, network run exit $open"
if [ "$guarded" -eq 5 ] && [ "$open" -eq 5 ]; then exit 5; fi
for rc in "$guarded" "$open"; do
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
done
exit 0
