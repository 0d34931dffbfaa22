#!/usr/bin/env bash
# Prepares a Debian chroot with another release's Samba and the vfsx module
# built against it, for the version matrix of `npm test`. The chroot is made
# once with debootstrap from the host's Debian mirror and cached outside the
# repository (~/.cache/vfsx/chroot-SUITE); the module is rebuilt inside it on
# every call (about 2 s once the headers are cached there).
#
# Usage: scripts/samba-chroot.sh SUITE      prints the chroot's path
#        scripts/samba-chroot.sh --run DIR CMD...   runs CMD in the chroot
#            with /proc, /dev and the host's /tmp mounted (in a private
#            mount namespace: nothing is left mounted afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'samba-chroot: %s\n' "$*" >&2; }

run_in() {
	local dir=$1
	shift
	# unshare -m: the mounts live and die with this one process tree.
	${VFSX_EXEC:-} unshare -m --propagation private -- /bin/sh -c '
		d=$1; shift
		mount -t proc proc "$d/proc"
		mount --rbind /dev "$d/dev"
		mount --bind /tmp "$d/tmp"
		exec chroot "$d" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
	' sh "$dir" "$@"
}

if [ "${1:-}" = "--run" ]; then
	shift
	# exec all the way down: the caller's PID becomes the command's (smbd's).
	VFSX_EXEC=exec run_in "$@"
fi

suite=${1:?usage: samba-chroot.sh SUITE}
case "$suite" in
*[!a-z0-9-]*) log "bad suite name: $suite"; exit 2 ;;
esac
cache=${VFSX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfsx}
dir="$cache/chroot-$suite"

if [ ! -f "$dir/.vfsx-chroot-ok" ]; then
	command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || {
		log "installing debootstrap"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
	}
	host_codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
	src=/etc/apt/sources.list.d/debian.sources
	mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$src" 2>/dev/null || true)
	mirror=${mirror:-http://deb.debian.org/debian}
	rm -rf "$dir"
	mkdir -p "$cache"
	log "debootstrap $suite from $mirror (once; about a minute)"
	/usr/sbin/debootstrap --variant=minbase "$suite" "$dir" "$mirror" >"$cache/chroot-$suite.log" 2>&1 ||
		{ tail -20 "$cache/chroot-$suite.log" >&2; exit 1; }
	# No daemon starts inside the chroot when packages are installed.
	printf '#!/bin/sh\nexit 101\n' > "$dir/usr/sbin/policy-rc.d"
	chmod 0755 "$dir/usr/sbin/policy-rc.d"
	cp -L /etc/resolv.conf "$dir/etc/resolv.conf" 2>/dev/null || true
	rm -f "$dir/etc/apt/sources.list"
	if [ -f "$src" ]; then
		sed -e "s/\b$host_codename\b/$suite/g" -e 's/^Types: deb$/Types: deb deb-src/' "$src" \
			> "$dir/etc/apt/sources.list.d/debian.sources"
	else
		printf 'Types: deb deb-src\nURIs: %s\nSuites: %s\nComponents: main\n' "$mirror" "$suite" \
			> "$dir/etc/apt/sources.list.d/debian.sources"
	fi
	log "installing samba and the build tools in the chroot"
	run_in "$dir" sh -c 'export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq &&
		apt-get install -y -qq --no-install-recommends samba samba-vfs-modules dpkg-dev flex bison \
			libparse-yapp-perl libkeyutils-dev gcc make perl python3 pkg-config libgnutls28-dev \
			zlib1g-dev libtirpc-dev libcrypt-dev xz-utils ca-certificates' >>"$cache/chroot-$suite.log" 2>&1 ||
		{ tail -20 "$cache/chroot-$suite.log" >&2; exit 1; }
	touch "$dir/.vfsx-chroot-ok"
fi

# Samba 4.17's configure needs distutils, a package of its own in Debian 12
# (gone from 13, whose Samba does not need it).
# Heimdal's header generator needs JSON.pm; headers from an upstream tarball
# (an upgrade to backports) are configured with MIT Kerberos.
run_in "$dir" sh -c 'want="libjson-perl libkrb5-dev"
	apt-cache policy python3-distutils 2>/dev/null | grep -q "Candidate: [0-9]" && want="$want python3-distutils"
	for p in $want; do dpkg -s "$p" >/dev/null 2>&1 ||
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" || exit 1; done' \
	>>"$cache/chroot-$suite.log" 2>&1 || { tail -20 "$cache/chroot-$suite.log" >&2; exit 1; }

# The module, built from this checkout against the chroot's own smbd.
rm -rf "$dir/opt/vfsx"
mkdir -p "$dir/opt/vfsx/scripts"
cp -r native "$dir/opt/vfsx/native"
rm -rf "$dir/opt/vfsx/native/build"
cp scripts/build-module.sh scripts/samba-headers.sh scripts/samba-upgrade-hook.sh "$dir/opt/vfsx/scripts/"
run_in "$dir" env VFSX_NO_DEPS=1 bash /opt/vfsx/scripts/build-module.sh >"$cache/chroot-$suite-module.log" 2>&1 ||
	{ tail -30 "$cache/chroot-$suite-module.log" >&2; exit 1; }
log "$(run_in "$dir" smbd -V) in $dir with vfsx built for it"
echo "$dir"
