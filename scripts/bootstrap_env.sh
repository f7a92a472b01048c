#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv) idempotently.
# A second run with unchanged dependency files does nothing: the hash of pyproject.toml and
# requirements.txt is stored in .venv/.lavila-deps and compared before installing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${LAVILA_VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=${LAVILA_EXTRAS:-dev,bench}

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
    echo "error: $PYTHON is missing or older than 3.10; set PYTHON=/path/to/python3.10+" >&2
    exit 1
fi

stamp="$VENV/.lavila-deps"
want=$(cat pyproject.toml requirements.txt | "$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest() + " " + sys.argv[1])' "$EXTRAS")

if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0  # up to date
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo ">> creating virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi
echo ">> installing lavila[$EXTRAS] into $VENV (first run takes a few minutes: torch is large)"
# pip (not uv/poetry): on machines with local wheel folders only pip sees them. The filter hides pip's
# noise about unused local index folders; PIPESTATUS keeps pip's own exit status.
set +e
"$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]" 2>&1 | grep -v -e "^WARNING: Location 'file://" -e "BuildBackendWarning"
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
    echo "error: pip could not install lavila[$EXTRAS] into $VENV (exit $status; see its output above)" >&2
    exit "$status"
fi
echo "$want" > "$stamp"
echo ">> environment ready: $VENV"
