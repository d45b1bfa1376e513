#!/usr/bin/env bash
# Runs a Windows program under Wine, as cargo's runner for x86_64-pc-windows-gnu
# (`make test-unit` runs the Windows unit tests with it):
#   tests/wine/run.sh PROGRAM.exe ARGS...
# The Wine prefix is made once, in target/wine-prefix, with Wine 8's missing
# bcryptprimitives.dll built from tests/wine/bcryptprimitives.c.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
export WINEPREFIX=$repo/target/wine-prefix WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
wine=/usr/lib/wine/wine64
if [ ! -f "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" ]; then
    mkdir -p "$WINEPREFIX"
    # No pipes: the wineserver and Wine's services stay up holding what they were given.
    "$wine" wineboot --init </dev/null >/dev/null 2>&1
    x86_64-w64-mingw32-gcc -O2 -shared -o "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" \
        "$repo/tests/wine/bcryptprimitives.c" -ladvapi32
fi
exec "$wine" "$@"
