#!/usr/bin/env bash
# Prepares a configured Samba source tree matching the installed smbd, enough
# to compile an out-of-tree VFS module. Cached outside the repository, keyed by
# the Samba package version. Prints the tree's path on stdout.
set -euo pipefail

log() { printf 'samba-headers: %s\n' "$*" >&2; }

ver=$(dpkg-query -W -f='${Version}' samba 2>/dev/null) ||
	{ log "samba is not installed (run scripts/install-deps.sh)"; exit 1; }
cache=${VFSX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfsx}
tree="$cache/samba-${ver//[:+~]/_}"
stamp="$tree/.vfsx-headers-ok"

if [ -f "$stamp" ]; then
	cat "$stamp"
	exit 0
fi

add_deb_src() {
	local src=/etc/apt/sources.list.d/debian.sources
	local dst=/etc/apt/sources.list.d/vfsx-deb-src.sources
	[ -f "$dst" ] && return 0
	grep -Rqs '^Types:.*deb-src\|^deb-src ' /etc/apt/sources.list /etc/apt/sources.list.d/ && return 0
	[ -f "$src" ] || { log "no $src to derive deb-src entries from"; return 1; }
	log "adding deb-src entries ($dst)"
	sed 's/^Types: deb$/Types: deb-src/' "$src" > "$dst"
	apt-get update -qq
}

# Downloads and unpacks samba_<upstream>.orig.tar.xz from the first mirror
# in apt's sources that has it.
fetch_orig() {
	local upstream=${ver#*:}
	upstream=${upstream%-*}
	local name="samba_${upstream}.orig.tar.xz" uri
	for uri in $(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}') \
		$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '$1 == "deb" {print $2}'); do
		case "$uri" in *security*) continue ;; esac
		python3 - "${uri%/}/pool/main/s/samba/${name//+/%2B}" "$name" <<'PY' || continue
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=60) as r, open(sys.argv[2], "wb") as f:
    while chunk := r.read(1 << 20):
        f.write(chunk)
PY
		log "fetched $name from $uri"
		tar xf "$name" && rm -f "$name" && return 0
	done
	return 1
}

mkdir -p "$tree"
cd "$tree"
if [ ! -f .vfsx-fetched ]; then
	log "fetching Samba source $ver (once; cached in $cache)"
	add_deb_src
	rm -rf src ./*.dsc ./*.tar.* ./*.debian.*
	if ! apt-get source -qq "samba=$ver" >apt.log 2>&1; then
		# Backports' source packages are not always in the archive (404),
		# while their upstream tarball is: Debian's patches do not touch the
		# VFS interface, so upstream's headers serve.
		log "apt-get source failed ($(tail -n1 apt.log)); trying the upstream tarball"
		fetch_orig || { cat apt.log >&2; exit 1; }
		touch .vfsx-orig
	fi
	dir=$(find . -mindepth 1 -maxdepth 1 -type d -name 'samba-*' | head -n1)
	[ -n "$dir" ] || { log "apt-get source produced no tree"; exit 1; }
	mv "$dir" src
	rm -f ./*.tar.* ./*.dsc
	touch .vfsx-fetched
fi

cd src
export PYTHONHASHSEED=1
if [ ! -f ../.vfsx-configured ]; then
	log "configuring (about 1-3 minutes)"
	./configure --enable-fhs --prefix=/usr --sysconfdir=/etc --localstatedir=/var \
		--disable-python --without-ad-dc --without-ldap --without-ads \
		--without-pam --without-acl-support --without-json --without-libarchive \
		--disable-cups --disable-iprint --without-systemd --without-winbind \
		--without-ldb-lmdb '--with-shared-modules=!vfs_snapper' \
		$([ -f ../.vfsx-orig ] && echo --with-system-mitkrb5) \
		>../configure.log 2>&1 || { tail -30 ../configure.log >&2; exit 1; }
	touch ../.vfsx-configured
fi

log "generating headers (about 1-2 minutes)"
# A "+dfsg" upstream tarball lacks files Debian cannot ship (RFC texts that
# embedded Heimdal's generators read; hence MIT Kerberos above, as Debian
# builds it). waf cannot even list its targets then; none of those
# generators is needed for the VFS headers, so empty stand-ins do.
for _ in $(seq 1 30); do
	missing=$({ ./buildtools/bin/waf list 2>&1 || true; } | sed -n "s/^source not found: '\([^']*\)' in bld.*path=\([^,]*\),.*/\2\/\1/p" | head -n1)
	[ -n "$missing" ] || break
	log "stand-in for ${missing#"$PWD"/} (not in this tarball)"
	mkdir -p "$(dirname "$missing")"
	: > "$missing"
done
targets=$({ ./buildtools/bin/waf list 2>/dev/null || true; } | awk '$1 ~ /^PIDL_/ {print $1}' | tr '\n' ',')
[ -n "$targets" ] || { log "waf list found no targets"; { ./buildtools/bin/waf list 2>&1 || true; } | tail -5 >&2; exit 1; }
targets="${targets}param_local.h,param_global.h,param_functions.h"
targets="${targets},lib/param/param_proto.h,s3_param_proto_h"
targets="${targets},ntstatus_generated,werror_generated"
./buildtools/bin/waf build "--targets=$targets" >../build.log 2>&1 ||
	{ tail -30 ../build.log >&2; exit 1; }

echo "$tree/src" > "$stamp"
echo "$tree/src"
