#!/usr/bin/env bash
# npm test: installs what the tests need, then runs every test (unit,
# integration and end to end with real smbd, smbclient, smbtorture and
# redis-server). Ends with "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
	echo "npm test: run as root (the tests start smbd and install the VFS module)" >&2
	exit 1
fi
bash scripts/setup.sh

tap=$(mktemp)
trap 'rm -f "$tap"' EXIT
status=0
node --test --test-concurrency=1 --test-timeout=1500000 \
	--test-reporter=spec --test-reporter-destination=stdout \
	--test-reporter=tap --test-reporter-destination="$tap" \
	dist/test/*.test.js || status=$?

pass=$(awk '/^# pass /{print $3}' "$tap")
fail=$(awk '/^# fail /{print $3}' "$tap")
echo
echo "${pass:-0} passed, ${fail:-0} failed"
if [ "${pass:-0}" = 0 ]; then
	exit 1
fi
exit "$status"
