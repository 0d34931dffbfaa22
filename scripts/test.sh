#!/usr/bin/env bash
# npm test: installs what the tests need, then runs every test (unit,
# integration and end to end with real smbd, smbclient, smbtorture and
# redis-server), then the Samba-facing ones again against the other Debian
# release's Samba in a chroot. Ends with "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
	echo "npm test: run as root (the tests start smbd and install the VFS module)" >&2
	exit 1
fi
bash scripts/setup.sh

taps=$(mktemp -d)
trap 'rm -rf "$taps"' EXIT
status=0
run() { # run NAME [node --test options and files]: spec to stdout, TAP kept for the count
	local name=$1
	shift
	node --test --test-concurrency=1 --test-timeout=1500000 \
		--test-reporter=spec --test-reporter-destination=stdout \
		--test-reporter=tap --test-reporter-destination="$taps/$name.tap" \
		"$@" || status=$?
}
run host dist/test/*.test.js

# The version matrix: the Samba-facing tests again, against the other Debian
# release's Samba (12: 4.17, 13: 4.22) in a chroot made with debootstrap and
# cached in ~/.cache/vfsx. VFSX_MATRIX=0 skips it.
if [ "${VFSX_MATRIX:-1}" != 0 ]; then
	case "$(. /etc/os-release && echo "${VERSION_CODENAME:-}")" in
	trixie) other=bookworm ;;
	*) other=trixie ;;
	esac
	echo
	echo "Samba version matrix: Debian $other"
	if root=$(bash scripts/samba-chroot.sh "$other"); then
		export VFSX_SAMBA_CHROOT=$root
		run matrix-bridge dist/test/samba-versions.test.js dist/test/e2e-bridge.test.js dist/test/smbtorture.test.js
		run matrix-replication \
			--test-name-pattern='scripted workload|stream renamed|odd characters|random workload' \
			dist/test/e2e-replication.test.js
		unset VFSX_SAMBA_CHROOT
	else
		echo "✖ the Debian $other chroot with its Samba and vfsx could not be prepared"
		printf '# pass 0\n# fail 1\n' > "$taps/matrix-setup.tap"
		status=1
	fi
fi

pass=$(cat "$taps"/*.tap | awk '/^# pass /{n += $3} END {print n + 0}')
fail=$(cat "$taps"/*.tap | awk '/^# fail /{n += $3} END {print n + 0}')
echo
echo "$pass passed, $fail failed"
if [ "$pass" = 0 ]; then
	exit 1
fi
exit "$status"
