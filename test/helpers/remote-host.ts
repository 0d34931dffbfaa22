/**
 * A stand-in for a remote DR site: a network namespace joined to this host
 * by a veth pair, each direction shaped with tc tbf (netem is not available
 * everywhere). Created by the bench or a test and removed after it; traffic
 * never leaves the machine.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

export interface RemoteHost {
  netns: string;
  /** The namespace's address (this host is .1). */
  host: string;
  rateMbit: number;
  /** The namespace's end of the veth pair. */
  iface: string;
  remove(): void;
}

/**
 * Bytes received so far on `iface` as seen by the process `pid` running in
 * the namespace (its /proc/PID/net/dev): what arrived at the remote host.
 */
export function receivedBytes(pid: number, iface: string): number {
  for (const line of readFileSync(`/proc/${pid}/net/dev`, 'utf8').split('\n')) {
    const m = /^\s*([^:\s]+):\s*(\d+)/.exec(line);
    if (m && m[1] === iface) return Number(m[2]);
  }
  throw new Error(`no interface ${iface} in /proc/${pid}/net/dev`);
}

const sh = (args: string[]) => execFileSync(args[0], args.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });

/**
 * A namespace a killed run left on this subnet: its host end keeps the
 * route to the address, so a new namespace's site would be unreachable
 * (connection refused) behind it. Removed, with its veth pair.
 */
function removeStale(net: string): void {
  const out = execFileSync('ip', ['-o', 'addr', 'show', 'to', `${net}.0/30`], { encoding: 'utf8' });
  for (const line of out.split('\n')) {
    const iface = /^\d+:\s+(vfsx\w+)a(@\S+)?\s/.exec(line);
    if (!iface) continue;
    try {
      sh(['ip', 'netns', 'del', iface[1]]);
    } catch {
      sh(['ip', 'link', 'del', `${iface[1]}a`]); // the namespace is gone, the host end is not
    }
  }
}

/** `subnet` (0-255) picks 10.213.SUBNET.0/30, so several remote hosts can exist at once. */
export function createRemoteHost(rateMbit = 1000, name = `vfsxb${process.pid % 10000}`, subnet = 0): RemoteHost {
  const net = `10.213.${subnet}`;
  const hostIf = `${name}a`;
  const nsIf = `${name}b`;
  const remove = () => {
    try {
      sh(['ip', 'netns', 'del', name]); // takes the veth pair with it
    } catch {
      // already gone
    }
  };
  remove();
  removeStale(net);
  try {
    sh(['ip', 'netns', 'add', name]);
    sh(['ip', 'link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf]);
    sh(['ip', 'link', 'set', nsIf, 'netns', name]);
    sh(['ip', 'addr', 'add', `${net}.1/30`, 'dev', hostIf]);
    sh(['ip', 'link', 'set', hostIf, 'up']);
    const inNs = (args: string[]) => sh(['ip', 'netns', 'exec', name, ...args]);
    inNs(['ip', 'addr', 'add', `${net}.2/30`, 'dev', nsIf]);
    inNs(['ip', 'link', 'set', nsIf, 'up']);
    inNs(['ip', 'link', 'set', 'lo', 'up']);
    const tbf = ['root', 'tbf', 'rate', `${rateMbit}mbit`, 'burst', '256kb', 'latency', '50ms'];
    sh(['tc', 'qdisc', 'add', 'dev', hostIf, ...tbf]);
    inNs(['tc', 'qdisc', 'add', 'dev', nsIf, ...tbf]);
  } catch (err) {
    remove();
    throw err;
  }
  return { netns: name, host: `${net}.2`, rateMbit, iface: nsIf, remove };
}
