#!/usr/bin/env bash
# Install everything the tests need, lint, then run the tests. The README's test command and
# .ci/run.
#
# The real-keyring tests need gnome-keyring and dbus, the shell-completion tests bash, zsh and
# fish, the man page lint groff, the HTTP broker's tests curl, the MCP gateway's tests node and
# npm: installed here through apt-get when run as root on
# Debian/Ubuntu; elsewhere those tests skip with a reason (all of them fail under CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=no
for program in gnome-keyring-daemon dbus-daemon zsh fish groff curl; do
    command -v "$program" >/dev/null || missing=yes
done
if [ "$missing" = yes ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnome-keyring dbus zsh fish groff-base curl \
            >/dev/null
    else
        echo "note: some of gnome-keyring, dbus, zsh, fish, groff and curl are missing; their" \
             "tests will skip or fail (install them with:" \
             "apt-get install gnome-keyring dbus zsh fish groff-base curl)" >&2
    fi
fi

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'

# The MCP reference servers the gateway's tests run, at the versions package-lock.json pins
# (installed once; again only when the lock changed). Needs node and npm.
if ! command -v npm >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
if command -v npm >/dev/null; then
    stamp=tests/mcp_servers/node_modules/.installed-from-lock
    if ! cmp -s tests/mcp_servers/package-lock.json "$stamp" 2>/dev/null; then
        npm ci --silent --no-audit --no-fund --prefix tests/mcp_servers
        cp tests/mcp_servers/package-lock.json "$stamp"
    fi
else
    echo "note: npm is missing; the MCP gateway's tests will skip (install nodejs and npm)" >&2
fi

# In CI a skipped real-keyring, real-shell or groff test would hide a broken keystore,
# completion script or man page: make it a failure.
if [ "${CI:-}" = "true" ]; then
    export NHIDEL_REQUIRE_KEYRING=1 NHIDEL_REQUIRE_SHELLS=1
fi
# Lint first: it takes seconds, and a tree that fails it does not land.
lint_paths=(nhidel tests tools benchmarks)
python3 -m ruff check "${lint_paths[@]}"
python3 -m ruff format --check "${lint_paths[@]}"
python3 -m mypy --strict
# Two workers per core, at most 4 (each starts its own keyrings, daemons and servers): many
# tests wait on child processes, so one per core left a core idle a third of the time.
workers=$(( $(nproc 2>/dev/null || echo 1) * 2 ))
[ "$workers" -le 4 ] || workers=4
exec python3 -m pytest -n "$workers" --dist loadgroup "$@"
