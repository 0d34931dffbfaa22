/**
 * A one-host Ceph cluster with radosgw (S3) on loopback, from Debian's own
 * packages, in a directory of its own: one monitor, one BlueStore OSD on a
 * sparse file, one gateway. No manager (radosgw does not need one; it
 * would add ~300 MiB). The daemons run in the foreground as children of
 * this process, so a kill is seen (and reaped) here before a restart.
 */
import { ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CreateBucketCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { freePort } from './ports';
import { waitFor } from './wait-for';

const run = promisify(execFile);

export interface S3Target {
  endpoint: string;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
}

/**
 * Where this system's RADOS object classes are (radosgw needs cls_rgw,
 * cls_version, ... in the OSD). Debian 13's Ceph 18 compiles its default in
 * as a relative path (lib/x86_64-linux-gnu/rados-classes), which the OSD
 * resolves against its working directory: every class call then fails with
 * EOPNOTSUPP and radosgw cannot start. Null when none is found (Ceph's
 * own default then).
 */
function radosClassDir(): string | null {
  const multiarch = readdirSync('/usr/lib').filter((d) => d.includes('-linux-')).map((d) => `/usr/lib/${d}/rados-classes`);
  return [...multiarch, '/usr/lib64/rados-classes', '/usr/lib/rados-classes'].find((d) => existsSync(join(d, 'libcls_rgw.so'))) ?? null;
}

export class CephHarness {
  readonly dir: string;
  readonly conf: string;
  readonly accessKeyId = randomBytes(10).toString('hex').toUpperCase();
  readonly secretAccessKey = randomBytes(20).toString('base64url');
  rgwPort = 0;
  private procs = new Map<string, ChildProcess>();

  private constructor(dir: string) {
    this.dir = dir;
    this.conf = join(dir, 'ceph.conf');
  }

  static available(): boolean {
    return ['/usr/bin/ceph-mon', '/usr/bin/ceph-osd', '/usr/bin/radosgw'].every((f) => existsSync(f));
  }

  /** Makes and starts the cluster and its gateway; resolves once a bucket can be created. */
  static async start(): Promise<CephHarness> {
    const h = new CephHarness(await mkdtemp(join(tmpdir(), 'vfsx-ceph-')));
    try {
      await h.bringUp();
    } catch (err) {
      await h.destroy();
      throw err;
    }
    return h;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.rgwPort}`;
  }

  /** An S3 bucket of its own (created here) for one test's DR site. */
  async bucket(name = `vfsx-${randomBytes(4).toString('hex')}`): Promise<S3Target> {
    const s3 = this.client();
    try {
      await s3.send(new CreateBucketCommand({ Bucket: name }));
    } finally {
      s3.destroy();
    }
    return { endpoint: this.endpoint, bucket: name, accessKeyId: this.accessKeyId, secretAccessKey: this.secretAccessKey };
  }

  client(): S3Client {
    // The SDK's notice that releases after January 2027 need Node 22 (the version is pinned).
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    return new S3Client({
      endpoint: this.endpoint, region: 'us-east-1', forcePathStyle: true,
      credentials: { accessKeyId: this.accessKeyId, secretAccessKey: this.secretAccessKey },
      requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED',
    });
  }

  /** The objects of a bucket: key and ETag (a multipart upload's ETag ends in -N, N parts). */
  async keys(bucket: string): Promise<Array<{ key: string; etag: string }>> {
    const s3 = this.client();
    const out: Array<{ key: string; etag: string }> = [];
    try {
      let token: string | undefined;
      do {
        const r = await s3.send(new ListObjectsV2Command({ Bucket: bucket, ContinuationToken: token }));
        for (const o of r.Contents ?? []) out.push({ key: o.Key as string, etag: o.ETag ?? '' });
        token = r.NextContinuationToken;
      } while (token);
    } finally {
      s3.destroy();
    }
    return out;
  }

  /** Every RADOS object in the cluster's pools, read raw (what the OSD's disk holds, before BlueStore). */
  async rawObjects(): Promise<Array<{ pool: string; name: string; data: Buffer }>> {
    const out: Array<{ pool: string; name: string; data: Buffer }> = [];
    const pools = (await this.ceph(['osd', 'pool', 'ls'])).split('\n').filter(Boolean);
    for (const pool of pools) {
      const { stdout } = await run('rados', ['-c', this.conf, '-p', pool, '--all', 'ls'], { maxBuffer: 64 << 20 });
      for (const line of stdout.split('\n').filter(Boolean)) {
        const [ns, name] = line.includes('\t') ? line.split('\t') : ['', line];
        const file = join(this.dir, 'raw-object');
        await run('rados', ['-c', this.conf, '-p', pool, ...(ns ? ['-N', ns] : []), 'get', name, file]);
        const { readFile } = await import('node:fs/promises');
        out.push({ pool, name, data: await readFile(file) });
      }
    }
    return out;
  }

  async ceph(args: string[]): Promise<string> {
    const { stdout } = await run('ceph', ['-c', this.conf, '--connect-timeout', '20', ...args], { maxBuffer: 16 << 20 });
    return stdout;
  }

  private daemon(name: string, argv: string[]): ChildProcess {
    const p = spawn(argv[0], [...argv.slice(1), '-f', '-c', this.conf], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr?.on('data', (c: Buffer) => { err = (err + c.toString()).slice(-4000); });
    p.on('exit', (code, sig) => {
      if (this.procs.get(name) === p) this.procs.delete(name);
      if (code && code !== 0) process.stderr.write(`# ceph ${name} exited ${code} ${sig ?? ''}: ${err}\n`);
    });
    this.procs.set(name, p);
    return p;
  }

  private async bringUp(): Promise<void> {
    const d = this.dir;
    const [v2, v1, rgw, base] = [await freePort(), await freePort(), await freePort(), 20000 + Math.floor(Math.random() * 40000)];
    this.rgwPort = rgw;
    const fsid = randomUUID();
    for (const sub of ['mon', 'osd/ceph-0', 'run', 'log', 'crash', 'rgw']) await mkdir(join(d, sub), { recursive: true });
    const monAddr = `[v2:127.0.0.1:${v2},v1:127.0.0.1:${v1}]`;
    const classDir = radosClassDir();
    await writeFile(this.conf, `[global]
fsid = ${fsid}
mon host = ${monAddr}
mon initial members = a
public addr = 127.0.0.1
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = ${d}/keyring
run dir = ${d}/run
admin socket = ${d}/run/$name.asok
crash dir = ${d}/crash
log file = ${d}/log/$name.log
pid file = ${d}/run/$name.pid
ms bind port min = ${base}
ms bind port max = ${base + 99}
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd crush chooseleaf type = 0
mon warn on pool no redundancy = false
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
paxos propose interval = 0.05
paxos min wait = 0.01
mon data avail warn = 2
mon data avail crit = 1
osd client watch timeout = 10
[mon]
mon data = ${d}/mon/$cluster-$id
[osd]
osd data = ${d}/osd/$cluster-$id
osd objectstore = bluestore
bluestore block create = true
bluestore block size = 10737418240
osd memory target = 939524096
${classDir ? `osd class dir = ${classDir}\n` : ''}[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:${rgw}
rgw data = ${d}/rgw
objecter tick interval = 1
objecter timeout = 2
rgw gc obj min wait = 30
rgw gc processor period = 30
rgw gc processor max time = 30
`);
    const kr = join(d, 'keyring');
    await run('ceph-authtool', ['--create-keyring', kr, '--gen-key', '-n', 'mon.', '--cap', 'mon', 'allow *']);
    await run('ceph-authtool', [kr, '--gen-key', '-n', 'client.admin', '--cap', 'mon', 'allow *', '--cap', 'osd', 'allow *', '--cap', 'mgr', 'allow *']);
    await run('ceph-authtool', [kr, '--gen-key', '-n', 'osd.0', '--cap', 'mon', 'allow profile osd', '--cap', 'mgr', 'allow profile osd', '--cap', 'osd', 'allow *']);
    await run('ceph-authtool', [kr, '--gen-key', '-n', 'client.rgw.a', '--cap', 'mon', 'allow rw', '--cap', 'osd', 'allow rwx', '--cap', 'mgr', 'allow rw']);
    await run('monmaptool', ['--create', '--fsid', fsid, '--addv', 'a', monAddr, '--set-min-mon-release', '16', '--enable-all-features', join(d, 'monmap')]);
    await run('ceph-mon', ['-c', this.conf, '--mkfs', '-i', 'a', '--monmap', join(d, 'monmap'), '--keyring', kr]);
    this.daemon('mon', ['ceph-mon', '-i', 'a']);
    const uuid = randomUUID();
    const id = (await this.ceph(['osd', 'new', uuid])).trim();
    if (id !== '0') throw new Error(`ceph osd new gave ${id}`);
    await run('ceph-osd', ['-c', this.conf, '-i', '0', '--mkfs', '--osd-uuid', uuid]);
    await this.startOsd();
    await run('radosgw-admin', ['-c', this.conf, 'user', 'create', '--uid=vfsx', '--display-name=vfsx',
      `--access-key=${this.accessKeyId}`, `--secret-key=${this.secretAccessKey}`], { timeout: 120000 });
    await this.startRgw();
  }

  async startOsd(): Promise<void> {
    const p = this.daemon('osd', ['ceph-osd', '-i', '0']);
    await waitFor('the Ceph OSD to be up', async () => {
      if (p.exitCode !== null) throw new Error(`ceph-osd exited ${p.exitCode}`);
      return JSON.parse(await this.ceph(['osd', 'dump', '--format', 'json'])).osds?.[0]?.up === 1;
    }, 60000, 200);
  }

  async startRgw(): Promise<void> {
    // A killed gateway leaves watches behind; bucket operations would wait on them.
    await this.blocklistStaleWatchers();
    const p = this.daemon('rgw', ['radosgw', '-n', 'client.rgw.a']);
    await waitFor('radosgw to answer S3', async () => {
      if (p.exitCode !== null) throw new Error(`radosgw exited ${p.exitCode}`);
      const s3 = this.client();
      try {
        await s3.send(new ListObjectsV2Command({ Bucket: 'vfsx-probe-none' }));
        return true;
      } catch (err) {
        return (err as { name?: string }).name === 'NoSuchBucket';
      } finally {
        s3.destroy();
      }
    }, 60000, 200);
  }

  private async blocklistStaleWatchers(): Promise<void> {
    const pools = (await this.ceph(['osd', 'pool', 'ls'])).split('\n');
    if (!pools.includes('default.rgw.control')) return;
    const addrs = new Set<string>();
    for (let i = 0; i < 8; i++) {
      const r = await run('rados', ['-c', this.conf, '-p', 'default.rgw.control', 'listwatchers', `notify.${i}`]).catch(() => ({ stdout: '' }));
      for (const m of r.stdout.matchAll(/watcher=(\S+)/g)) addrs.add(m[1]);
    }
    for (const a of addrs) await this.ceph(['osd', 'blocklist', 'add', a]).catch(() => undefined);
  }

  /** SIGKILLs a daemon and waits until it is reaped (its pid-file lock is free again). */
  async kill(name: 'rgw' | 'osd'): Promise<void> {
    const p = this.procs.get(name);
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      p.once('exit', () => resolve());
      p.kill('SIGKILL');
    });
  }

  get pids(): Record<string, number | undefined> {
    return Object.fromEntries([...this.procs].map(([k, p]) => [k, p.pid]));
  }

  async stop(): Promise<void> {
    for (const name of ['rgw', 'osd', 'mon']) {
      const p = this.procs.get(name);
      if (!p || p.exitCode !== null || p.signalCode !== null) continue;
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => p.kill('SIGKILL'), 10000);
        p.once('exit', () => {
          clearTimeout(t);
          resolve();
        });
        p.kill('SIGTERM');
      });
    }
  }

  async destroy(): Promise<void> {
    await this.stop();
    await rm(this.dir, { recursive: true, force: true });
  }
}
