#!/usr/bin/env bash
# Everything vfsx needs before it can run or be tested, on a fresh Debian 12
# machine as root: Debian packages, npm packages (and the native addon),
# the Samba module (built against the installed smbd and installed into its
# MODULESDIR), and the compiled TypeScript. Idempotent and quick when done.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

lock_hash=$(sha256sum package-lock.json | cut -c1-16)
if [ ! -f node_modules/.vfsx-lock-hash ] || [ "$(cat node_modules/.vfsx-lock-hash)" != "$lock_hash" ] ||
	[ ! -f native/addon/build/Release/vfsx_addon.node ]; then
	echo "setup: installing npm packages" >&2
	npm ci --no-fund --no-audit --loglevel=error >&2
	echo "$lock_hash" > node_modules/.vfsx-lock-hash
fi
# The native addon again when its source changed since it was built.
addon_hash=$(cat native/addon/*.cc native/addon/*.h native/addon/binding.gyp | sha256sum | cut -c1-16)
if [ "$(cat native/addon/build/.vfsx-src-hash 2>/dev/null)" != "$addon_hash" ]; then
	echo "setup: building the native addon" >&2
	npm run --silent install >&2
	echo "$addon_hash" > native/addon/build/.vfsx-src-hash
fi

bash scripts/build-module.sh >&2
echo "setup: compiling TypeScript" >&2
npx tsc -p tsconfig.json
