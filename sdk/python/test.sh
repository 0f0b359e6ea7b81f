#!/usr/bin/env bash
# The Python SDK's tests: a compile check of every file (and a parse with Python 3.9's grammar, the oldest the SDK
# supports), then unittest against a real `aetherium serve` on the Docker backend, started by the tests themselves.
# Binaries: AETHERIUM_BIN_DIR (default ../../bin, where `make build` puts them). PYTHON: the interpreter (python3).
# With AETHERIUM_SDK_PY39=auto (the default), the protocol and asyncio tests also run under a Python 3.9 when this
# machine has one (pyenv), at the same time; AETHERIUM_SDK_PY39=0 skips that.
set -euo pipefail
cd "$(dirname "$0")"
export AETHERIUM_BIN_DIR=$(cd "${AETHERIUM_BIN_DIR:-../../bin}" && pwd)
PY=${PYTHON:-python3}
export PYTHONDONTWRITEBYTECODE=1

echo "== python sdk: compile check ($($PY --version))"
files=$(find src tests -name '*.py' | sort)
# py_compile checks the syntax of the interpreter at hand; the ast pass checks 3.9's grammar (no match, no
# parenthesised context managers...) and that no annotation uses X | Y, which 3.9 cannot evaluate at run time.
$PY - $files <<'PYEOF'
import ast, py_compile, sys, tempfile, os
bad = 0
for path in sys.argv[1:]:
    with tempfile.TemporaryDirectory() as d:
        py_compile.compile(path, cfile=os.path.join(d, "x.pyc"), doraise=True)
    src = open(path, encoding="utf-8").read()
    tree = ast.parse(src, path, feature_version=(3, 9))
    for node in ast.walk(tree):
        ann = getattr(node, "annotation", None) or getattr(node, "returns", None)
        if ann is not None and any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(ann)):
            print("%s:%d: X | Y in an annotation (Python 3.10+)" % (path, node.lineno)); bad += 1
        if isinstance(node, ast.Match if hasattr(ast, "Match") else ()):
            print("%s:%d: match statement (Python 3.10+)" % (path, node.lineno)); bad += 1
print("%d files compiled" % len(sys.argv[1:]))
sys.exit(1 if bad else 0)
PYEOF

run() {
  local py=$1; shift
  echo "== python sdk: unittest with $($py --version) against aetherium serve (binaries in $AETHERIUM_BIN_DIR)"
  if [ $# = 0 ]; then
    (cd tests && "$py" -m unittest discover -s . -p 'test_*.py' -v)
  else
    (cd tests && "$py" -m unittest -v "$@")
  fi
}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
# The closing line in the plain "N passed, N failed" form, from unittest's own summary lines.
summary() {
  local ran failed skipped
  ran=$( (grep -ho '^Ran [0-9]* test' "$@" || true) | awk '{n += $2} END {print n + 0}')
  failed=$( (grep -ho '^FAILED (.*)' "$@" || true) | (grep -o '\(failures\|errors\)=[0-9]*' || true) | cut -d= -f2 | awk '{n += $1} END {print n + 0}')
  skipped=$( (grep -ho '^\(OK\|FAILED\) (.*skipped=[0-9]*' "$@" || true) | (grep -o 'skipped=[0-9]*' || true) | cut -d= -f2 | awk '{n += $1} END {print n + 0}')
  echo "python-sdk: $((ran - failed - skipped)) passed, $failed failed, $skipped skipped"
}
start=$(date +%s)
py39=""
if [ "${AETHERIUM_SDK_PY39:-auto}" != "0" ]; then
  for cand in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.9*/bin/python3 /usr/bin/python3.9 /usr/local/bin/python3.9; do
    # (a pyenv shim on PATH may exist without the version behind it: ask each candidate itself)
    if [ -x "$cand" ] && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 9))' 2>/dev/null; then
      py39=$cand; break
    fi
  done
fi
rc=0
if [ -z "$py39" ]; then
  [ "${AETHERIUM_SDK_PY39:-auto}" = "0" ] || echo "NOTE: no Python 3.9 on this machine; the 3.9 grammar check above still ran"
  run "$PY" 2>&1 | tee "$logs/main.log" || rc=1
else
  # Both interpreters at once (each suite starts its own servers on free ports): they mostly wait on the VMs.
  run "$PY" > "$logs/main.log" 2>&1 & main=$!
  # Under 3.9 the modules where versions differ most: the protocol code and models (typing, dataclasses) and the
  # asyncio client (asyncio's APIs moved between 3.9 and 3.11); the sync suite would repeat http.client only.
  run "$py39" test_protocol test_async > "$logs/py39.log" 2>&1 & old=$!
  wait $main || rc=1
  wait $old || rc=1
  cat "$logs/main.log" "$logs/py39.log"
fi
summary "$logs"/*.log
if [ $rc != 0 ]; then echo "== python sdk: FAILED"; exit 1; fi
echo "== python sdk: passed in $(( $(date +%s) - start )) s"
