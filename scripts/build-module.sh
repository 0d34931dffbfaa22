#!/usr/bin/env bash
# Builds native/vfsx.so against the installed Samba and installs it into
# smbd's MODULESDIR/vfs. Usage: scripts/build-module.sh [--no-install]
set -euo pipefail
cd "$(dirname "$0")/.."

install=1
[ "${1:-}" = "--no-install" ] && install=0

# VFSX_NO_DEPS=1: the packages are there already (a test chroot).
[ "${VFSX_NO_DEPS:-}" = 1 ] || bash scripts/install-deps.sh
tree=$(bash scripts/samba-headers.sh)
out=native/build
mkdir -p "$out"

inc=()
for d in bin/default/include bin/default . source3 source3/include lib/replace \
	lib/talloc lib/tevent lib/tdb/include; do
	inc+=("-I$tree/$d")
done
srcs=(native/vfsx_module.c native/vfsx_report.c native/vfsx_hooks_ns.c
      native/vfsx_hooks_data.c native/vfsx_link.c native/vfsx_msg.c)
libdir=$(dirname "$(smbd -b | awk '/MODULESDIR/ {print $2}')")
gcc -shared -fPIC -O2 -g -Wall -Wextra -Wno-unused-parameter \
	-Wno-missing-field-initializers -Wno-sign-compare \
	-fvisibility=hidden -Wl,-z,defs \
	-D_SAMBA_BUILD_=4 -DHAVE_CONFIG_H=1 -D_GNU_SOURCE=1 \
	-D_XOPEN_SOURCE_EXTENDED=1 -D__STDC_WANT_LIB_EXT1__=1 \
	"${inc[@]}" -Inative "${srcs[@]}" -o "$out/vfsx.so" \
	-L"$libdir" -L"$libdir/samba" \
	$(cd "$libdir/samba" && ls *.so.0 | sed -E 's/^lib(.*)\.so\.0$/-l:lib\1.so.0/') \
	-l:libtalloc.so.2 -l:libtevent.so.0 -l:libsamba-util.so.0 -l:libsmbconf.so.0 -l:libsamba-errors.so.1 -Wl,-rpath-link,"$libdir/samba"
echo "build-module: built $out/vfsx.so" >&2

if [ "$install" = 1 ]; then
	dir="$(smbd -b | awk '/MODULESDIR/ {print $2}')/vfs"
	install -D -m 0644 "$out/vfsx.so" "$dir/vfsx.so"
	echo "build-module: installed $dir/vfsx.so" >&2
	# A Samba upgrade rebuilds the module (scripts/samba-upgrade-hook.sh).
	if [ -d /etc/apt/apt.conf.d ] && [ "${VFSX_NO_HOOK:-}" != 1 ]; then
		hook="$(pwd)/scripts/samba-upgrade-hook.sh"
		printf '// vfsx: rebuild the Samba VFS module when smbd changes (%s)\nDPkg::Post-Invoke { "if [ -x %s ]; then %s || true; fi"; };\n' \
			"$(pwd)" "$hook" "$hook" > /etc/apt/apt.conf.d/90vfsx-samba
	fi
fi
