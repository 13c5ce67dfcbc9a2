#!/usr/bin/env bash
# Set up everything the tests need and run them: one command on a fresh machine.
#   bash tests/run.sh [pytest args...]
# Creates .venv (the package, editable, with every extra) and .venv-localstack (LocalStack in host
# mode, no Docker), then runs pytest. Backend servers are started by the tests on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# the install is skipped while pyproject.toml is unchanged since the last one (the package is editable, so
# code changes need none): a rerun starts testing at once. BATCHBRIDGE_REINSTALL=1 installs regardless.
stamp=.venv/.batchbridge-installed
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "${BATCHBRIDGE_REINSTALL:-0}" = "1" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi

# the normalising path compiled with mypyc (setup.py) sits beside its sources in this editable checkout:
# after an edit to one of them it no longer matches and the package runs them all from source
# (core/speedups.py), so rebuild it here -- the tests exercise what `pip install .` ships
if .venv/bin/python -c 'import sys, batchbridge.core.speedups as s; sys.exit(0 if s.needs_rebuild() else 1)'; then
  echo "tests/run.sh: a compiled module's source changed: rebuilding the compiled normalising path" >&2
  .venv/bin/python setup.py -q build_ext --inplace
fi

if [ "${BATCHBRIDGE_SKIP_LOCALSTACK:-0}" != "1" ] && [ -f localstack/install-host-localstack.sh ]; then
  # LocalStack needs Python >= 3.12, the project only >= 3.10: without one, say so and test the rest
  if ! bash localstack/install-host-localstack.sh; then
    if [ "${BATCHBRIDGE_REQUIRE_LOCALSTACK:-0}" = "1" ]; then
      echo "tests/run.sh: LocalStack is required (BATCHBRIDGE_REQUIRE_LOCALSTACK=1) and could not be installed" >&2
      exit 1
    fi
    echo "tests/run.sh: LocalStack (host mode) is not installed (see above): the @localstack tests will be" \
         "skipped. To run them: install Python >= 3.12 and rerun (PYTHON=/path/to/python3.12 bash" \
         "localstack/install-host-localstack.sh), or point BATCHBRIDGE_LOCALSTACK_URL at a running one." >&2
  fi
fi

export GRPC_VERBOSITY=ERROR
# bytecode is cached (__pycache__, ignored by git) even where the environment turns that off
# (PYTHONDONTWRITEBYTECODE=1, as in many CI images): otherwise every xdist worker compiles and
# rewrites every test module again (collection: 8 s of CPU per worker, 4 s cached), and every serve,
# relay and CLI process that a test starts compiles batchbridge again
unset PYTHONDONTWRITEBYTECODE
# Four pytest-xdist workers: the suite spends most of its time waiting on servers, SDK handshakes and
# processes (two workers kept a 2-core machine 55 % busy; 9 min 14 s, three 8 min 22 s, four 6 min 47 s
# there under the same background load), so more workers than cores still cut the wall time
# (tests/conftest.py keeps LocalStack and the Pub/Sub emulator on one worker).
# BATCHBRIDGE_TEST_WORKERS=0 runs it in one process; an -n of your own wins.
workers=${BATCHBRIDGE_TEST_WORKERS:-4}
xdist=()
alone=()
if [ "$workers" != "0" ] && ! printf '%s\n' "$@" | grep -qE '^(-n|--numprocesses|no:xdist$|-pno:xdist$)'; then
  xdist=(-n "$workers" --dist loadgroup)
  alone=(-n 0)
fi
# then the @solo tests (latency, memory, recovery timed under load: tests/conftest.py), alone; a phase that
# selects nothing (pytest's exit code 5) is not a failure unless both do
set +e
BATCHBRIDGE_SOLO_PHASE=skip .venv/bin/python -m pytest "$@" ${xdist[@]+"${xdist[@]}"}
rest=$?
BATCHBRIDGE_SOLO_PHASE=only .venv/bin/python -m pytest "$@" ${alone[@]+"${alone[@]}"}
solo=$?
set -e
if [ "$rest" -eq 5 ] && [ "$solo" -eq 5 ]; then exit 5; fi
for rc in "$rest" "$solo"; do
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
done
exit 0
