/**
 * npm run bench, part: the whole system feeding two DR sites, each in a
 * network namespace of its own behind a veth link (hosts the bench creates
 * and removes), run at nice 19 as remote machines; "far" is rate-limited.
 * Side by side with a plain share on the same smbd, rounds interleaved:
 * the SMB-path ratios with two sites, close -> committed p50/p99 per site,
 * and the rate "far" received (measured at the site) against its limit.
 * Not a test: nothing here asserts a speed.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { validateConfig } from '../src/config/load-config';
import { sitesOf } from '../src/config/schema';
import { EventBus } from '../src/journal/events';
import { JournalReader } from '../src/operator/journal-reader';
import { DrSiteHarness } from '../test/helpers/dr-site-harness';
import { RedisHarness } from '../test/helpers/redis-harness';
import { createRemoteHost, RemoteHost } from '../test/helpers/remote-host';
import { ServiceHarness } from '../test/helpers/service-harness';
import { SiteMeter } from '../test/helpers/site-meter';
import { SMB_PASS, SMB_USER, SmbdHarness } from '../test/helpers/smbd-harness';
import { bigFile, median, ms } from './bench-util';

const ROUNDS = Number(process.env.VFSX_BENCH_ROUNDS ?? 3);
const FAR_LIMIT = process.env.VFSX_BENCH_FAR_LIMIT ?? '8M';
const MiB = 1024 * 1024;
const pct = (xs: number[], p: number) => (xs.length === 0 ? NaN : [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]);

function smb(port: number, share: string, cmds: string): Promise<number> {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    execFile('smbclient', [`//127.0.0.1/${share}`, '-p', String(port), '-U', `${SMB_USER}%${SMB_PASS}`, '-c', cmds], { maxBuffer: 64 << 20, timeout: 900000 }, (err, out, errOut) => {
      if (err) reject(new Error(`smbclient failed: ${errOut || out}`));
      else resolve(ms(t0));
    });
  });
}

async function main(): Promise<void> {
  const redis = await RedisHarness.start();
  const hosts: RemoteHost[] = [];
  const drs: DrSiteHarness[] = [];
  let svc: ServiceHarness | null = null;
  let smbd: SmbdHarness | null = null;
  const local = await mkdtemp(join(tmpdir(), 'vfsx-sites-bench-'));
  try {
    for (const [i, name] of ['near', 'far'].entries()) {
      const host = createRemoteHost(1000, `vfsxn${i}${process.pid % 1000}`, 10 + i);
      hosts.push(host);
      drs.push(await DrSiteHarness.start({}, { netns: host.netns, host: host.host, nice: 19 }));
      void name;
    }
    const entry = (name: string, d: DrSiteHarness, extra: object = {}) => ({ name, url: d.replication.siteUrl, token: d.replication.token, passphraseFile: d.replication.passphraseFile, ...extra });
    svc = await ServiceHarness.create({
      redisSocket: redis.socket,
      policy: [{ name: 'ransomware', action: 'deny', ops: ['create', 'rename'], extensions: ['.locked', '.crypt'] }],
      extra: { journal: {}, replication: { enabled: true, sites: [entry('near', drs[0]), entry('far', drs[1], { bwlimit: FAR_LIMIT })] } },
    });
    (svc.config.redis as Record<string, unknown>).prefix = svc.prefix;
    // The spool scan at its deployed default (the harness scans every 100 ms for tests).
    Object.assign(svc.config.spool as object, { scanIntervalMs: 1000 });
    await svc.rewriteConfig();
    await svc.start();
    smbd = await SmbdHarness.start([{ name: 'plain' }, { name: 'vfsx', vfsx: { socket: svc.socket, spool: svc.spool } }]);
    const cfg = validateConfig(svc.config);
    const reader = new JournalReader({ redis: cfg.redis, queueName: cfg.journal.queueName, sites: sitesOf(cfg.replication).map((s) => s.name) });
    const drained = async () => {
      for (const until = Date.now() + 900_000; Date.now() < until;) {
        const b = await reader.backlog();
        if (b.queued + b.pending + b.unpumped === 0) return;
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error('replication did not catch up within 15 minutes');
    };
    const commits = new Map<string, number[]>();
    let recording = false;
    const unsubscribe = await EventBus.subscribe(cfg.redis, (e) => {
      if (!recording || e.type !== 'committed' || e.latencyMs === undefined) return;
      const s = e.site ?? 'default';
      if (!commits.has(s)) commits.set(s, []);
      commits.get(s)?.push(e.latencyMs);
    });
    const port = smbd.port;
    const small = join(local, 'small.bin');
    await writeFile(small, randomBytes(4096));
    const rows: string[] = [];
    try {
      const sideBySide = async (name: string, perOp: number, cmds: (i: number) => string) => {
        const r: Record<string, number[]> = { plain: [], vfsx: [] };
        for (const s of ['near', 'far']) commits.set(s, []);
        for (let i = 0; i < ROUNDS; i++) {
          for (const share of i % 2 === 0 ? ['plain', 'vfsx'] : ['vfsx', 'plain']) {
            await drained();
            recording = share === 'vfsx';
            r[share].push((await smb(port, share, cmds(i))) / perOp);
            // Until both sites have it (the limited one takes longer): never timed.
            await drained();
            recording = false;
          }
        }
        const [p, v] = [median(r.plain), median(r.vfsx)];
        const lat = (s: string) => `${Math.round(pct(commits.get(s) ?? [], 0.5))} / ${Math.round(pct(commits.get(s) ?? [], 0.99))} ms`;
        rows.push(`| ${name} | ${p.toFixed(3)} ms/op | ${v.toFixed(3)} ms/op | ${(p / v).toFixed(2)}x | ${lat('near')} | ${lat('far')} |`);
        process.stderr.write(`sites-bench: ${name}: plain ${p.toFixed(3)} vfsx ${v.toFixed(3)} ms/op\n`);
      };
      await sideBySide('1000 x mkdir', 1000, (i) => Array.from({ length: 1000 }, (_, k) => `mkdir m${i}_${k}`).join('; '));
      await sideBySide('1000 x 4 KiB put', 1000, (i) => [`mkdir p${i}`, ...Array.from({ length: 1000 }, (_, k) => `put ${small} p${i}/f${k}`)].join('; '));

      // A 64 MiB file: what each site received, measured at the site.
      const big = join(local, 'big.bin');
      bigFile(big, 64);
      await drained();
      const meters = { near: new SiteMeter(drs[0].pid as number, hosts[0].iface), far: new SiteMeter(drs[1].pid as number, hosts[1].iface) };
      const t0 = Date.now();
      await smb(port, 'vfsx', `put ${big} big.bin`);
      await drained();
      const secs = (Date.now() - t0) / 1000;
      meters.near.stop();
      meters.far.stop();
      const limit = cfg.replication.sites?.[1].bwlimit ?? FAR_LIMIT;
      rows.push('', `| 64 MiB file, ${secs.toFixed(1)} s until both sites had it | near (no limit) | far (limit ${limit}/s) |`, '|---|---|---|');
      rows.push(`| highest rate received over any 5 s window, at the site | ${(meters.near.maxRate(5000) / MiB).toFixed(2)} MiB/s | ${(meters.far.maxRate(5000) / MiB).toFixed(2)} MiB/s |`);
      rows.push(`| highest rate received over any 1 s window, at the site | ${(meters.near.maxRate(1000) / MiB).toFixed(2)} MiB/s | ${(meters.far.maxRate(1000) / MiB).toFixed(2)} MiB/s |`);
      rows.push(`| bytes received | ${(meters.near.total / MiB).toFixed(1)} MiB | ${(meters.far.total / MiB).toFixed(1)} MiB |`);
    } finally {
      await unsubscribe();
      await reader.close();
    }
    const date = new Date().toISOString().slice(0, 16).replace('T', ' ');
    const out = [
      `Two DR sites, measured ${date} on ${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB RAM: the whole system (vfsx serve, vfsx replicate with a replicator per site, Redis, the README's policy), each site in its own network namespace behind a 1000 Mbit/s veth link at nice 19 (remote machines), "far" limited to ${FAR_LIMIT}/s; medians of ${ROUNDS} interleaved rounds; both sites caught up (untimed) after every round.`,
      '',
      '| workload | plain share | vfsx | vfsx / plain | change -> committed at near, p50 / p99 | at far (limited), p50 / p99 |',
      '|---|---|---|---|---|---|',
      ...rows,
    ];
    process.stdout.write(`${out.join('\n')}\n`);
  } finally {
    await smbd?.destroy();
    await svc?.destroy();
    for (const d of drs) await d.destroy();
    for (const h of hosts) h.remove();
    await redis.stop();
    await rm(local, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`sites bench failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
