#!/usr/bin/env bash
# Refresh constraints.txt, the resolved set of every dependency (the dev extra included) that `make up`,
# `make test` and the Docker image install from. Run it after changing dependencies in pyproject.toml, or to
# take newer releases on purpose; then run `make test` and commit both files.
#
#   scripts/lock-deps.sh                 # re-resolve what changed, keep the other pins
#   scripts/lock-deps.sh --upgrade       # take the newest versions pyproject.toml allows
set -euo pipefail
cd "$(dirname "$0")/.."
uv=.venv/bin/uv
if [ ! -x "$uv" ]; then
  echo "fleetmon: no $uv yet; run \`make install\` first" >&2
  exit 1
fi
# Linux x86-64, CPython 3.11: the machines `make` and the Dockerfile install on.
"$uv" pip compile pyproject.toml --extra dev --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --custom-compile-command "scripts/lock-deps.sh" --quiet -o constraints.txt "$@"
echo "constraints.txt refreshed: $(grep -c '^[a-z0-9]' constraints.txt) pinned packages"
