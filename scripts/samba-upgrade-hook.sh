#!/usr/bin/env bash
# Run by dpkg after every apt run (DPkg::Post-Invoke, installed by
# scripts/build-module.sh as /etc/apt/apt.conf.d/90vfsx-samba): when the
# installed smbd is not the Samba the vfsx module was built for, rebuilds and
# reinstalls the module for it, so a Samba upgrade never leaves a vfsx share
# failing its tree connects. Says what happened in /var/log/vfsx/samba-hook.log,
# in the system log (tag vfsx) and in /var/lib/vfsx/samba-hook.json, which
# `vfsx doctor` reads. Never fails the apt run.
set -uo pipefail
cd "$(dirname "$0")/.."

state_dir=${VFSX_STATE_DIR:-/var/lib/vfsx}
log_dir=${VFSX_LOG_DIR:-/var/log/vfsx}
mkdir -p "$state_dir" "$log_dir"
log_file="$log_dir/samba-hook.log"

say() {
	printf '%s samba-hook: %s\n' "$(date -u +%FT%TZ)" "$*" >> "$log_file"
	logger -t vfsx "samba-hook: $*" 2>/dev/null || true
}

status() { # status OK SAMBA DETAIL
	python3 - "$state_dir/samba-hook.json" "$@" <<'PY'
import json, os, sys, time
path, ok, samba, detail = sys.argv[1:5]
tmp = path + ".tmp"
with open(tmp, "w") as f:
    json.dump({"ok": ok == "1", "samba": samba, "detail": detail, "at": int(time.time() * 1000)}, f)
os.replace(tmp, path)
PY
}

command -v smbd >/dev/null 2>&1 || exit 0
modules=$(smbd -b 2>/dev/null | awk '/MODULESDIR/ {print $2}')
so="$modules/vfsx.so"
[ -f "$so" ] || so="$modules/vfs/vfsx.so"
[ -f "$so" ] || exit 0 # vfsx is not installed for this smbd
running=$(smbd -V 2>/dev/null | sed -n 's/^Version \([0-9.]*\).*/\1/p') # 4.22.11-Debian-... -> 4.22.11, as the build id
built=$(grep -a -o 'vfsx-build: samba=[^ ]*' "$so" | head -n1 | sed 's/^vfsx-build: samba=//')
[ -n "$running" ] || exit 0
if [ "$running" = "$built" ]; then
	exit 0
fi

say "smbd is now $running, the vfsx module was built for ${built:-an unknown Samba}: rebuilding"
out=$(mktemp)
# The build tools were installed with vfsx; apt itself is still busy here.
if VFSX_NO_DEPS=1 bash scripts/build-module.sh >"$out" 2>&1; then
	say "rebuilt and installed $so for Samba $running"
	status 1 "$running" "rebuilt for Samba $running (was ${built:-unknown})"
else
	tail -n 20 "$out" >> "$log_file"
	say "FAILED to rebuild the vfsx module for Samba $running: vfsx shares fail their tree connects until it is rebuilt (npm run build:module); see $log_file"
	status 0 "$running" "could not rebuild the vfsx module for Samba $running (built for ${built:-unknown}): $(tail -n 1 "$out")"
fi
rm -f "$out"
exit 0
