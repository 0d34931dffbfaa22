#!/usr/bin/env bash
# npm run bench: installs what it needs, then measures vfsx against a plain
# share on the same smbd (see bench/bench.ts). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
	echo "npm run bench: run as root (it starts smbd and installs the VFS module)" >&2
	exit 1
fi
bash scripts/setup.sh
node dist/bench/bench.js
node dist/bench/module-bench.js # diagnostic: the module alone, against a C stand-in for the service
node dist/bench/background-bench.js # diagnostic: what background work of a known size costs a plain share here
node dist/bench/sites-bench.js
node dist/bench/replication-bench.js
node dist/bench/commit-latency-bench.js
node dist/bench/scan-bench.js
node dist/bench/spool-bench.js
node dist/bench/ceph-bench.js
