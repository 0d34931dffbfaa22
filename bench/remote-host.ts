/**
 * A stand-in for a remote DR site: a network namespace joined to this host
 * by a veth pair, each direction shaped with tc tbf (netem is not available
 * everywhere). Created by the bench and removed after it; traffic never
 * leaves the machine.
 */
import { execFileSync } from 'node:child_process';

export interface RemoteHost {
  netns: string;
  /** The namespace's address (this host is .1). */
  host: string;
  rateMbit: number;
  remove(): void;
}

const sh = (args: string[]) => execFileSync(args[0], args.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });

export function createRemoteHost(rateMbit = 1000, name = `vfsxb${process.pid % 10000}`): RemoteHost {
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
  try {
    sh(['ip', 'netns', 'add', name]);
    sh(['ip', 'link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf]);
    sh(['ip', 'link', 'set', nsIf, 'netns', name]);
    sh(['ip', 'addr', 'add', '10.213.0.1/30', 'dev', hostIf]);
    sh(['ip', 'link', 'set', hostIf, 'up']);
    const inNs = (args: string[]) => sh(['ip', 'netns', 'exec', name, ...args]);
    inNs(['ip', 'addr', 'add', '10.213.0.2/30', 'dev', nsIf]);
    inNs(['ip', 'link', 'set', nsIf, 'up']);
    inNs(['ip', 'link', 'set', 'lo', 'up']);
    const tbf = ['root', 'tbf', 'rate', `${rateMbit}mbit`, 'burst', '256kb', 'latency', '50ms'];
    sh(['tc', 'qdisc', 'add', 'dev', hostIf, ...tbf]);
    inNs(['tc', 'qdisc', 'add', 'dev', nsIf, ...tbf]);
  } catch (err) {
    remove();
    throw err;
  }
  return { netns: name, host: '10.213.0.2', rateMbit, remove };
}
