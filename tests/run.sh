#!/usr/bin/env bash
# Install everything the tests need, then run them. The README's test command and .ci/run.
#
# The real-keyring tests need gnome-keyring and dbus: installed here through apt-get when run
# as root on Debian/Ubuntu; elsewhere they skip with a reason (and fail under CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v gnome-keyring-daemon >/dev/null || ! command -v dbus-daemon >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnome-keyring dbus >/dev/null
    else
        echo "note: gnome-keyring and dbus are missing; the real-keyring tests will skip" \
             "(install them with: apt-get install gnome-keyring dbus)" >&2
    fi
fi

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'

# In CI a skipped real-keyring test would hide a broken keystore: make it a failure.
if [ "${CI:-}" = "true" ]; then
    export NHIDEL_REQUIRE_KEYRING=1
fi
exec python3 -m pytest "$@"
