/**
 * A seeded random workload through real SMB clients: smbclient for create,
 * overwrite, rename, delete, mkdir, rmdir and Office-style saves;
 * libsmbclient (smbc_ops.py) for appends and truncation, which smbclient has
 * no working command for. It keeps a model of the tree it means to build, so every
 * command is valid and the share can be checked against the model afterwards.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { REPO } from './service-harness';
import { SMB_PASS, SMB_USER } from './smbd-harness';
import { q, smbclient } from './smbclient';

/** mulberry32: small, fast, good enough to pick operations reproducibly. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Name stems that exercise the codec and the site's path handling (no `"` or `;`: smbclient's parser). */
const STEMS = ['plain', 'with space', 'comma, here', 'per%cent', 'hash#tag', 'amp & and', 'Ünïcödé', '日本語', 'emoji 😀', "it's", '(paren) [br]', 'dots.in.name'];

type Step = { smb: string } | { smbc: unknown[] };

export interface WorkloadResult {
  ops: number;
  counts: Record<string, number>;
  /** What the share's subtree should hold: relative path -> sha256 of the content, or 'dir'. */
  expected: Map<string, string>;
}

export class RandomWorkload {
  private readonly rand: () => number;
  private readonly dirs = new Set<string>();
  private readonly files = new Map<string, Buffer>();
  private readonly steps: Step[] = [];
  private readonly counts: Record<string, number> = {};
  private seq = 0;
  private localSeq = 0;

  /** `root` is a directory in the share (created first); `local` a scratch directory for source files. */
  constructor(readonly seed: number, private readonly root: string, private readonly local: string) {
    this.rand = prng(seed);
    this.dirs.add(root);
  }

  private pick<T>(xs: T[]): T {
    return xs[Math.floor(this.rand() * xs.length)];
  }

  private name(ext: string): string {
    const stem = this.pick(STEMS);
    const long = this.rand() < 0.02 ? 'L'.repeat(180) : '';
    return `${stem}${long} ${++this.seq}${ext}`;
  }

  private content(): Buffer {
    const r = this.rand();
    const size = r < 0.05 ? 0 : r < 0.7 ? Math.floor(this.rand() * 65536) : r < 0.97 ? 65536 + Math.floor(this.rand() * 400_000) : 1_000_000 + Math.floor(this.rand() * 2_000_000);
    const b = Buffer.allocUnsafe(size);
    // Cheap pseudo-random bytes, with a repeated block now and then so dedup has work.
    const fill = Math.floor(this.rand() * 256);
    for (let i = 0; i < size; i += 4096) b.fill((fill + i / 4096) & 0xff, i, Math.min(size, i + 4096));
    for (let i = 0; i < size; i += 97) b[i] = Math.floor(this.rand() * 256);
    return b;
  }

  private localFile(data: Buffer): { path: string; data: Buffer } {
    return { path: join(this.local, `src-${this.seed}-${++this.localSeq}`), data };
  }

  private readonly pendingLocal: Array<{ path: string; data: Buffer }> = [];

  private put(remote: string, data: Buffer): string {
    const f = this.localFile(data);
    this.pendingLocal.push(f);
    return `put ${f.path} ${q(remote)}`;
  }

  private count(op: string): void {
    this.counts[op] = (this.counts[op] ?? 0) + 1;
  }

  private smb(cmd: string): void {
    this.steps.push({ smb: cmd });
  }

  private under(prefix: string, p: string): boolean {
    return p === prefix || p.startsWith(`${prefix}/`);
  }

  /** Plans one operation against the model. */
  private step(): void {
    const fileList = [...this.files.keys()];
    const dirList = [...this.dirs];
    // Parents for new names stay shallow enough that paths keep well below PATH_MAX.
    const shallow = dirList.filter((d) => d.split('/').length < 7);
    const r = this.rand();
    if (r < 0.22 || fileList.length < 5) {
      const path = `${this.pick(shallow)}/${this.name(this.pick(['.txt', '.bin', '.docx', '']))}`;
      const data = this.content();
      this.smb(this.put(path, data));
      this.files.set(path, data);
      this.count('create');
    } else if (r < 0.34) {
      const path = this.pick(fileList);
      const data = this.content();
      this.smb(this.put(path, data));
      this.files.set(path, data);
      this.count('overwrite');
    } else if (r < 0.42) {
      const path = this.pick(fileList);
      const old = this.files.get(path) as Buffer;
      const tail = this.content().subarray(0, 1 + Math.floor(this.rand() * 100_000));
      const data = Buffer.concat([old, tail]);
      // smbclient's reput does not append on 4.17 (measured): write at the end through libsmbclient.
      this.steps.push({ smbc: ['write', path, old.length, tail.toString('hex')] });
      this.files.set(path, data);
      this.count('append');
    } else if (r < 0.47) {
      const path = this.pick(fileList);
      const old = this.files.get(path) as Buffer;
      const size = Math.floor(this.rand() * (old.length + 70_000));
      this.steps.push({ smbc: ['truncate', path, size] });
      const data = Buffer.alloc(size);
      old.copy(data, 0, 0, Math.min(size, old.length));
      this.files.set(path, data);
      this.count('truncate');
    } else if (r < 0.57) {
      const from = this.pick(fileList);
      const to = `${this.pick(shallow)}/${this.name('.moved')}`;
      this.smb(`rename ${q(from)} ${q(to)}`);
      this.files.set(to, this.files.get(from) as Buffer);
      this.files.delete(from);
      this.count('rename file');
    } else if (r < 0.62 && dirList.length > 1) {
      const from = this.pick(dirList.filter((d) => d !== this.root));
      const parent = this.pick(shallow.filter((d) => !this.under(from, d)));
      const to = `${parent}/${this.name('.dir')}`;
      this.smb(`rename ${q(from)} ${q(to)}`);
      const move = (p: string) => (this.under(from, p) ? to + p.slice(from.length) : p);
      for (const d of dirList) {
        this.dirs.delete(d);
        this.dirs.add(move(d));
      }
      for (const [p, data] of [...this.files]) {
        this.files.delete(p);
        this.files.set(move(p), data);
      }
      this.count('rename dir');
    } else if (r < 0.72) {
      const path = this.pick(fileList);
      this.smb(`del ${q(path)}`);
      this.files.delete(path);
      this.count('delete');
    } else if (r < 0.82) {
      const path = `${this.pick(shallow)}/${this.name('')}`;
      this.smb(`mkdir ${q(path)}`);
      this.dirs.add(path);
      this.count('mkdir');
    } else if (r < 0.88) {
      const empty = dirList.filter((d) => d !== this.root && !dirList.some((o) => o !== d && this.under(d, o)) && !fileList.some((f) => this.under(d, f)));
      if (empty.length === 0) return this.step();
      const path = this.pick(empty);
      this.smb(`rmdir ${q(path)}`);
      this.dirs.delete(path);
      this.count('rmdir');
    } else {
      // Office-style save: write a temp file, move the original away, move the temp in, delete the backup.
      const path = this.pick(fileList);
      const dir = path.slice(0, path.lastIndexOf('/'));
      const tmp = `${dir}/~WRL${++this.seq}.tmp`;
      const bak = `${dir}/~WRL${++this.seq}.tmp`;
      const old = this.files.get(path) as Buffer;
      const data = Buffer.concat([old.subarray(0, Math.floor(old.length / 2)), this.content().subarray(0, 5000)]);
      this.smb(this.put(tmp, data));
      this.smb(`rename ${q(path)} ${q(bak)}`);
      this.smb(`rename ${q(tmp)} ${q(path)}`);
      this.smb(`del ${q(bak)}`);
      this.files.set(path, data);
      this.count('office save');
    }
  }

  /** Plans `ops` operations; returns the steps' count. */
  plan(ops: number): number {
    this.smb(`mkdir ${q(this.root)}`);
    for (let i = 0; i < ops; i++) this.step();
    return this.steps.length;
  }

  /** Runs the plan: consecutive smbclient commands in sessions of up to `batch`. */
  async run(port: number, share: string, batch = 60): Promise<WorkloadResult> {
    await mkdir(this.local, { recursive: true });
    await Promise.all(this.pendingLocal.map((f) => writeFile(f.path, f.data)));
    for (let i = 0; i < this.steps.length;) {
      const s = this.steps[i];
      if ('smb' in s) {
        const cmds: string[] = [];
        while (i < this.steps.length && cmds.length < batch && 'smb' in this.steps[i]) cmds.push((this.steps[i++] as { smb: string }).smb);
        const r = await smbclient(port, share, cmds.join('; '));
        if (r.statuses.length > 0 || r.code !== 0) throw new Error(`seed ${this.seed}: smbclient failed (${r.statuses.join(', ')}) in: ${cmds.join('; ')}\n${r.stdout}${r.stderr}`);
      } else {
        const lines: string[] = [];
        while (i < this.steps.length && 'smbc' in this.steps[i]) lines.push(JSON.stringify((this.steps[i++] as { smbc: unknown[] }).smbc));
        await smbcBatch(port, share, lines.join('\n'));
      }
    }
    const expected = new Map<string, string>();
    for (const d of this.dirs) expected.set(d, 'dir');
    for (const [p, data] of this.files) expected.set(p, createHash('sha256').update(data).digest('hex'));
    const ops = Object.values(this.counts).reduce((a, b) => a + b, 0);
    return { ops, counts: { ...this.counts }, expected };
  }
}

function smbcBatch(port: number, share: string, input: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = execFile('/usr/bin/python3', [join(REPO, 'test/helpers/smbc_ops.py'), `smb://127.0.0.1:${port}/${share}`, SMB_USER, SMB_PASS, 'batch'],
      { timeout: 120000 }, (err, _out, stderr) => (err ? reject(new Error(`smbc_ops batch: ${stderr}`)) : resolve()));
    p.stdin?.end(input);
  });
}

/** Differences between a directory on disk (the share) and a workload's expected subtree. */
export async function treeDiffers(shareRoot: string, subdir: string, expected: Map<string, string>): Promise<string[]> {
  const seen = new Map<string, string>();
  const walk = async (rel: string): Promise<void> => {
    seen.set(rel, 'dir');
    for (const e of await readdir(join(shareRoot, rel), { withFileTypes: true })) {
      const p = `${rel}/${e.name}`;
      if (e.isDirectory()) await walk(p);
      else seen.set(p, createHash('sha256').update(await readFile(join(shareRoot, p))).digest('hex'));
    }
  };
  await walk(subdir);
  const out: string[] = [];
  for (const [p, h] of expected) if (seen.get(p) !== h) out.push(`${p}: expected ${h === 'dir' ? 'a directory' : 'a file'}, ${seen.has(p) ? 'content differs' : 'missing'}`);
  for (const p of seen.keys()) if (!expected.has(p)) out.push(`${p}: not expected`);
  return out;
}
