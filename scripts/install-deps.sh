#!/usr/bin/env bash
# Installs the Debian packages vfsx needs to build, run and test. Idempotent.
# Usage: scripts/install-deps.sh
set -euo pipefail

PKGS=(samba samba-vfs-modules smbclient samba-testsuite redis-server
      dpkg-dev flex bison libparse-yapp-perl libkeyutils-dev libjson-perl libkrb5-dev
      gcc g++ make perl python3 pkg-config libgnutls28-dev zlib1g-dev libtirpc-dev
      libssl-dev  # the addon's block sealing, where Node's own headers lack OpenSSL's
      rsync sqlite3 util-linux procps iproute2
      debootstrap python3-impacket  # the Samba version matrix; SMB2 stream renames
      chromium  # the dashboard test drives it with playwright-core
      ceph-mon ceph-mgr ceph-osd radosgw ceph-common uuid-runtime)  # a one-host Ceph cluster for the S3 backend's tests

# Samba 4.17's configure needs distutils: its own package on Debian 12, gone from 13.
if apt-cache policy python3-distutils 2>/dev/null | grep -q "Candidate: [0-9]"; then PKGS+=(python3-distutils); fi

missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
		missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "install-deps: missing packages (${missing[*]}); run as root" >&2
		exit 1
	fi
	echo "install-deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-upgrade --no-install-recommends "${missing[@]}" >/dev/null
	# The Debian packages start daemons we do not use; our tests run their own.
	for svc in smbd nmbd samba-ad-dc winbind redis-server ceph-mon ceph-mgr ceph-osd radosgw ceph.target; do
		systemctl disable --now "$svc" >/dev/null 2>&1 || true
		service "$svc" stop >/dev/null 2>&1 || true
	done
fi
