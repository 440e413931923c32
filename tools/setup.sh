#!/usr/bin/env bash
# Idempotent machine set-up for pbkfs on Debian 12 (run as root by `make setup`).
# Installs only what is missing, then keeps .venv in step with pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need_apt+=("$pkg")
done
if [ ! -x /usr/lib/postgresql/15/bin/postgres ]; then
    need_apt+=(postgresql-15 postgresql-contrib-15 postgresql-client-15)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${need_apt[@]}" >/dev/null 2>&1 || {
        apt-get update -q >/dev/null
        apt-get install -y -q "${need_apt[@]}" >/dev/null
    }
fi
# A fresh postgresql package starts a cluster we do not use; it is harmless but costs memory.
id postgres >/dev/null 2>&1 || useradd --system --home /var/lib/postgresql --shell /bin/bash postgres

# The interpreter of .venv (override with PYTHON=...): Debian's own python3 when it is 3.11 or
# newer, so that PostgreSQL's OS user can run .venv/bin/pbkfs (restore_command runs
# `pbkfs archive-get`): an interpreter under /root (pyenv and the like) is out of its reach.
# Otherwise the first python3 on PATH; PBKFS_PROGRAM then names a pbkfs the server can run.
if [ -z "${PYTHON:-}" ] && [ -x /usr/bin/python3 ] &&
        /usr/bin/python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' \
        2>/dev/null; then
    PY=/usr/bin/python3
else
    PY=${PYTHON:-python3}
fi
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PY" -m venv .venv
fi
stamp=.venv/.pbkfs-installed
want=$(cat pyproject.toml pbkfs/codecs/_native.c | sha256sum | cut -d' ' -f1)
# the built codec module lives in the tree (editable install): a `git clean` removes it
built=$(find pbkfs/codecs -maxdepth 1 -name '_native*.so' | head -1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ -z "$built" ]; then
    echo "setup: installing pbkfs (editable, with test extras) into .venv"
    # tests/core/test_install.py builds a wheel with this setuptools (no build isolation)
    # and installs it with `pip --python`: both must be current (setuptools >= 77 reads
    # the SPDX license of pyproject.toml).
    .venv/bin/pip install -q --upgrade pip 'setuptools>=77' >/dev/null
    .venv/bin/pip install -q -e '.[test]'
    echo "$want" > "$stamp"
fi
