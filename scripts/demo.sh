#!/usr/bin/env bash
# npm run demo: builds and starts the whole system on loopback (redis-server,
# a RestFS DR site, vfsx serve, vfsx replicate at a lower priority, smbd with
# a vfsx share),
# drives it with smbclient as a Windows client would, shows the change
# journal, verifies the DR copy and restores from it. The system keeps
# running; `npm run demo -- stop` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
demo=${VFSX_DEMO_DIR:-/var/tmp/vfsx-demo}
port=${VFSX_DEMO_PORT:-4455}
user=vfsxdemo
pass=vfsx-Demo-pw1

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

stop_all() {
	[ -f "$demo/pid/smbd.pid" ] && kill "$(cat "$demo/pid/smbd.pid")" 2>/dev/null || true
	[ -f "$demo/vfsx.pid" ] && kill "$(cat "$demo/vfsx.pid")" 2>/dev/null || true
	[ -f "$demo/replicate.pid" ] && kill "$(cat "$demo/replicate.pid")" 2>/dev/null || true
	[ -f "$demo/dr.pid" ] && kill "$(cat "$demo/dr.pid")" 2>/dev/null || true
	[ -f "$demo/redis.pid" ] && kill "$(cat "$demo/redis.pid")" 2>/dev/null || true
	rm -f "$demo/vfsx.pid" "$demo/replicate.pid" "$demo/dr.pid"
}

if [ "${1:-}" = stop ]; then
	stop_all
	echo "demo stopped ($demo kept for inspection; the next npm run demo starts afresh)"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "npm run demo: run as root (it installs packages and the VFS module)" >&2
	exit 1
fi

say "Installing and building (Debian packages, npm packages, the Samba module)"
bash scripts/setup.sh

stop_all
sleep 0.5 # let them exit
# Each run starts from an empty share, journal and DR site.
case "$demo" in /|"") echo "npm run demo: refusing VFSX_DEMO_DIR=$demo" >&2; exit 1 ;; esac
rm -rf "$demo"
mkdir -p "$demo"/{share,private,lock,state,cache,pid,ncalrpc,spool,run,redis,dr}
chmod 755 "$demo"
chmod 777 "$demo/share"

say "Starting redis-server (AOF on, noeviction) on $demo/redis/redis.sock"
redis-server --port 0 --unixsocket "$demo/redis/redis.sock" --unixsocketperm 700 \
	--dir "$demo/redis" --appendonly yes --maxmemory-policy noeviction \
	--daemonize yes --pidfile "$demo/redis.pid" --logfile "$demo/redis/redis.log"

token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
drport=${VFSX_DEMO_DR_PORT:-7480}
httpport=${VFSX_DEMO_HTTP_PORT:-7481}
cat > "$demo/dr-site.json" <<JSON
{ "drSite": { "host": "127.0.0.1", "port": $drport, "token": "$token", "dataDir": "$demo/dr" } }
JSON
say "Starting the RestFS DR site (vfsx dr-site) on ws://127.0.0.1:$drport/"
nohup node "$repo/bin/vfsx.js" dr-site --config "$demo/dr-site.json" > "$demo/dr-site.log" 2>&1 &
echo $! > "$demo/dr.pid"
for _ in $(seq 100); do grep -q 'dr-site serving' "$demo/dr-site.log" && break; sleep 0.1; done

cat > "$demo/vfsx.json" <<JSON
{
  "replication": { "enabled": true, "siteUrl": "ws://127.0.0.1:$drport/", "token": "$token",
                   "passphraseFile": "$demo/dr-passphrase" },
  "socket": { "path": "$demo/run/vfsx.sock" },
  "redis": { "path": "$demo/redis/redis.sock" },
  "spool": { "dir": "$demo/spool" },
  "http": { "port": $httpport },
  "policy": { "rules": [
    { "name": "ransomware extensions", "action": "deny", "ops": ["create", "rename"],
      "extensions": [".locked", ".encrypted", ".crypt"] }
  ] }
}
JSON
say "Starting vfsx serve (log: $demo/vfsx.log)"
nohup node "$repo/bin/vfsx.js" serve --config "$demo/vfsx.json" > "$demo/vfsx.log" 2>&1 &
echo $! > "$demo/vfsx.pid"
for _ in $(seq 100); do grep -q '"journal ready"' "$demo/vfsx.log" && break; sleep 0.1; done
say "Starting vfsx replicate at nice 10, I/O best-effort 7 (log: $demo/replicate.log)"
nohup node "$repo/bin/vfsx.js" replicate --config "$demo/vfsx.json" > "$demo/replicate.log" 2>&1 &
echo $! > "$demo/replicate.pid"
for _ in $(seq 100); do grep -q '"vfsx replicating"' "$demo/replicate.log" && break; sleep 0.1; done

cat > "$demo/smb.conf" <<CONF
[global]
  interfaces = 127.0.0.1
  bind interfaces only = yes
  smb ports = $port
  disable netbios = yes
  server role = standalone server
  private dir = $demo/private
  lock directory = $demo/lock
  state directory = $demo/state
  cache directory = $demo/cache
  pid directory = $demo/pid
  ncalrpc dir = $demo/ncalrpc
  passdb backend = tdbsam:$demo/private/passdb.tdb
  load printers = no
  printcap name = /dev/null
[docs]
  path = $demo/share
  read only = no
  vfs objects = vfsx
  vfsx:socket = $demo/run/vfsx.sock
  vfsx:spool = $demo/spool
  vfsx:timeout = 1000
  vfsx:on_failure = allow
CONF
id "$user" >/dev/null 2>&1 || useradd -M -s /usr/sbin/nologin "$user"
printf '%s\n%s\n' "$pass" "$pass" | smbpasswd -c "$demo/smb.conf" -a -s "$user" >/dev/null
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
	echo "npm run demo: port $port is in use; set VFSX_DEMO_PORT to another port" >&2
	exit 1
fi
say "Starting smbd on 127.0.0.1:$port with share [docs] (vfs objects = vfsx)"
smbd -D -s "$demo/smb.conf"
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

smb() { smbclient "//127.0.0.1/docs" -p "$port" -U "$user%$pass" -c "$1" 2>&1 | grep -v '^putting\|^Try "help"' || true; }
printf 'Quarterly figures\n' > "$demo/report.txt"
say "A Windows user works on the share (smbclient)"
echo '> mkdir Projects; put report.txt "Projects/Q3 report, final.txt"; rename ... "Projects/Q3 report.txt"'
smb "mkdir Projects; put $demo/report.txt \"Projects/Q3 report, final.txt\"; rename \"Projects/Q3 report, final.txt\" \"Projects/Q3 report.txt\""
echo '> put report.txt Projects/report.txt.locked     (a ransomware-style name: policy denies it)'
smb "put $demo/report.txt Projects/report.txt.locked"

say "The change journal in Redis (vfsx journal --all: queued and recently replicated)"
sleep 1
node "$repo/bin/vfsx.js" journal --all --config "$demo/vfsx.json"

say "Replicated to the DR site: vfsx verify compares the share with it"
for _ in $(seq 100); do
	node "$repo/bin/vfsx.js" verify docs --config "$demo/vfsx.json" --source "$demo/share" >/dev/null 2>&1 && break
	sleep 0.2
done
node "$repo/bin/vfsx.js" verify docs --config "$demo/vfsx.json" --source "$demo/share"
say "End-to-end encrypted: the replicator made the new repository encrypted with a random passphrase in $demo/dr-passphrase"
node "$repo/bin/vfsx.js" key list --config "$demo/vfsx.json"
if grep -rqa -e 'Quarterly figures' -e 'Q3 report' "$demo/dr"; then
	echo "the DR site's data directory holds readable contents or names" >&2
	exit 1
fi
echo "grep -r 'Quarterly figures' / 'Q3 report' $demo/dr: nothing (contents and names are sealed before they leave this host)"
say "The saved file at the DR site: vfsx why docs \"Projects/Q3 report.txt\""
node "$repo/bin/vfsx.js" why docs "Projects/Q3 report.txt" --config "$demo/vfsx.json"
say "And back: vfsx restore docs $demo/restored"
rm -rf "$demo/restored"
node "$repo/bin/vfsx.js" restore docs "$demo/restored" --config "$demo/vfsx.json"
diff -r "$demo/share" "$demo/restored" && echo "diff -r: the restored tree is identical to the share"

say "vfsx doctor: every precondition of the running system"
node "$repo/bin/vfsx.js" doctor --config "$demo/vfsx.json" --smb-conf "$demo/smb.conf" || true
say "vfsx status: backlog, RPO age, DR site link, spool"
node "$repo/bin/vfsx.js" status --config "$demo/vfsx.json"

cat <<EOF2

The system is running:
  share        //127.0.0.1/docs  port $port  user $user  password $pass
  journal      node bin/vfsx.js journal --config $demo/vfsx.json [--all] [--json] [--follow]
  DR site      ws://127.0.0.1:$drport/  (data in $demo/dr, log $demo/dr-site.log)
  passphrase   $demo/dr-passphrase  (a restore on another machine needs it, the site's address and the token)
  verify       node bin/vfsx.js verify docs --config $demo/vfsx.json --source $demo/share
  status       node bin/vfsx.js status --config $demo/vfsx.json [--watch] [--json]
  events       node bin/vfsx.js events --config $demo/vfsx.json [--recent]
  dashboard    http://127.0.0.1:$httpport/   (loopback only; metrics at http://127.0.0.1:$httpport/metrics)
  logs         $demo/vfsx.log $demo/replicate.log
  stop         npm run demo -- stop
EOF2
