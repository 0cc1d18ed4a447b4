#!/usr/bin/env bash
# Install everything the tests need, lint, then run the tests. The README's test command and
# .ci/run.
#
# The real-keyring tests need gnome-keyring and dbus, the shell-completion tests bash, zsh and
# fish, the man page lint groff, the HTTP broker's tests curl: installed here through apt-get when run as root on
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
exec python3 -m pytest "$@"
