#!/usr/bin/env bash
# Runs the README's quick start on a fresh Debian system of another release:
# a debootstrap'd SUITE (made once in $VFSX_FRESH_DIR/SUITE, default
# /var/tmp/vfsx-fresh) with only what a new user adds first (Debian's own
# nodejs and npm, git), the repository's HEAD cloned into it, then
# `npm run demo` or `npm test` inside, as root. It shares this machine's
# kernel and network (no daemon starts when packages are installed there)
# and has its own /, packages and Samba. For checking the two commands on
# Debian 13 from a Debian 12 machine; not part of npm test.
#
# Usage: scripts/fresh-debian.sh SUITE demo|test|stop|shell [--fresh]
#   --fresh   makes the system again from nothing first
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
usage='usage: fresh-debian.sh SUITE demo|test|stop|shell [--fresh]'
suite=${1:?$usage}
what=${2:?$usage}
case "$suite" in *[!a-z0-9-]*) echo "bad suite: $suite" >&2; exit 2 ;; esac
base=${VFSX_FRESH_DIR:-/var/tmp/vfsx-fresh}/$suite
root=$base/root
log() { printf 'fresh-debian: %s\n' "$*" >&2; }

# Runs a command in the system: /proc, /sys, /dev, /run and /tmp mounted in
# a private mount namespace (nothing stays mounted), / a mount point of its
# own (`ip netns` needs one).
inside() {
	unshare -m --propagation private -- /bin/sh -c '
		r=$0
		mount --bind "$r" "$r"
		mount -t proc proc "$r/proc"; mount -t sysfs sys "$r/sys"; mount --rbind /dev "$r/dev"
		mount -t tmpfs tmpfs "$r/run"; mount --bind "$r/../tmp" "$r/tmp"
		exec chroot "$r" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
			PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
			NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt "$@"
	' "$root" "$@"
}

if [ "${3:-}" = --fresh ]; then rm -rf "$base"; fi
if [ ! -f "$base/.ok" ]; then
	rm -rf "$base"
	mkdir -p "$base/tmp"
	chmod 1777 "$base/tmp"
	mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
	mirror=${mirror:-http://deb.debian.org/debian}
	log "debootstrap $suite from $mirror"
	debootstrap --variant=minbase "$suite" "$root" "$mirror" > "$base/debootstrap.log" 2>&1 ||
		{ tail -20 "$base/debootstrap.log" >&2; exit 1; }
	# apt's sources as a fresh install writes them (deb822, no deb-src: the build adds those).
	rm -f "$root/etc/apt/sources.list"
	printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
		"$mirror" "$suite" "$suite" "$suite" > "$root/etc/apt/sources.list.d/debian.sources"
	# No daemon starts there: it would run in this machine's network.
	printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
	chmod 0755 "$root/usr/sbin/policy-rc.d"
	cp -L /etc/resolv.conf "$root/etc/resolv.conf"
	# This machine's own CAs (a proxy in its way to the npm registry may need them).
	mkdir -p "$root/usr/local/share/ca-certificates"
	cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
	log "installing nodejs, npm and git (what a new user adds before the quick start)"
	inside sh -c 'export DEBIAN_FRONTEND=noninteractive; apt-get update -qq &&
		apt-get install -y -qq --no-install-recommends nodejs npm git ca-certificates >/dev/null && update-ca-certificates >/dev/null' ||
		exit 1
	inside node -e 'const [a, b] = process.versions.node.split(".").map(Number); if (a < 20 || (a === 20 && b < 15)) { console.error(`Debian ${process.argv[1]} has Node ${process.version}; vfsx needs 20.15 or later`); process.exit(1); }' "$suite"
	touch "$base/.ok"
fi

case "$what" in
stop) inside sh -c 'cd /root/vfsx && npm run demo -- stop' ;;
shell) inside bash ;;
demo | test)
	cmd=$([ "$what" = demo ] && echo "npm run demo" || echo "npm test")
	rm -rf "$root/root/vfsx"
	git clone -q "$repo" "$root/root/vfsx"
	log "$(git -C "$root/root/vfsx" log --oneline -1) in Debian $suite: $cmd"
	inside sh -c "cd /root/vfsx && $cmd"
	;;
*) echo "$usage" >&2; exit 2 ;;
esac
