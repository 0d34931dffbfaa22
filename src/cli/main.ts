/**
 * The `vfsx` command line. The only process entry: builds every object,
 * wires signals, and prints for humans (or JSON with --json).
 *
 * Each command loads only the modules it uses: with all of them loaded up
 * front, `vfsx --help` took 0.6 s (bullmq, ioredis, the AWS SDK), and the
 * DR site carried the queue's and Redis's code in the heap every garbage
 * collection walks.
 */
import { parseArgs } from 'node:util';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { loadConfig } from '../config/load-config';
import { VfsxError } from '../errors/vfsx-error';
import { DR_SITE_NODE_FLAGS, restartWithTunables } from '../native/malloc-tunables';
import { siteNamed, sitesOf } from '../config/schema';

const HELP = `vfsx - Samba VFS bridge sidecar for disaster recovery

Usage:
  vfsx serve [--config FILE]
      Run the service: the Unix socket smbd's vfsx module connects to, the
      policy, the durable change journal in Redis, spool ingestion.
  vfsx replicate [--config FILE] [--site NAME[,NAME]]
      Run a replicator: takes the journal's changes from the queue and makes
      the DR site match the share (also the scheduled scrub). Lowers itself
      to replication.nice and replication.ioClass/ioLevel so smbd and vfsx
      serve always win the cores and the disk. Several may run at once.
      With replication.sites, one replicator per site (each its own queue,
      link, progress and limit); --site runs only those sites. A site new
      to a system with history gets a full sync first.
  vfsx site list|remove [NAME] [--config FILE] [--json]
      The DR sites the journal feeds (configured, or left over). remove
      stops feeding a site no longer configured and drops its queue and
      state (its DR site itself is untouched).
  vfsx journal [--config FILE] [--share NAME] [--pending|--all|--failed] [--json] [--follow]
      Print queued change records, oldest first (--pending: records still
      awaiting their outcome; --all: also the recently replicated ones;
      --failed: operations smbd attempted that failed or were refused, the
      newest journal.keepFailedOps, never replicated).
      --json prints one JSON record per line.
      --follow keeps printing records as they are added.
  vfsx dr-site [--config FILE]
      Run a RestFS disaster-recovery site: JSON-RPC 2.0 over WebSocket on
      drSite.host:drSite.port (wss with drSite.tlsCert/tlsKey), blocks and
      metadata under drSite.dataDir. drSite.token (admin) is required;
      drSite.tokens adds tokens limited to buckets, read or write.
      Blocks are stored zstd-compressed in pack files (drSite.packBytes).
  vfsx dr-site migrate [--config FILE] [--json]
      Move a v1 site's blocks (one file each) into packs, with progress.
      The running site does this in the background after an upgrade; this
      does it at once, with the site stopped (it refuses while the site
      runs). Each block is re-indexed before its file is deleted.
  vfsx resync SHARE [--config FILE] [--source DIR] [--site NAME] [--json]
      Make the DR site match the share: push what it lacks (blocks it has
      are not sent again), delete what the source no longer has.
  vfsx verify SHARE [--config FILE] [--source DIR] [--content|--deep] [--bwlimit RATE] [--site NAME] [--json]
      Compare the share with the DR site (type, size, mode, mtime, xattrs,
      symlink targets); list every difference. Exit 0 only when identical.
      --content also compares every source block's sha256 with the site's
      block ids (nothing is downloaded); --deep also downloads every block
      of every head at the site and checks its bytes against its id;
      --bwlimit limits what it downloads, as for restore.
      The share's path comes from --source or from smbd's configuration.
  vfsx restore SHARE DEST [--config FILE] [--at TIME] [--force] [--bwlimit RATE] [--passphrase-file FILE] [--site NAME] [--json]
      Rebuild the share from the DR site into DEST (latest, or as it was at
      TIME: ISO 8601 or ms since the epoch), with contents, owners, modes,
      mtimes and xattrs. Nothing is written outside DEST and no symlink is
      followed; every block is checked against its id. DEST must be empty
      unless --force. Exit 1 when any object was refused or failed.
      --bwlimit limits the blocks read from the site (5M, 512k, or a
      timetable as replication.bwlimit); by default a restore takes the
      whole link (the replication limits do not apply to it).
      An encrypted repository needs its passphrase: --passphrase-file,
      VFSX_PASSPHRASE, or replication.passphraseFile (also for resync and
      verify). On a fresh machine the site's address, a token and the
      passphrase are all a restore needs.
  vfsx key list|add|remove [ID] [--config FILE] [--label TEXT] [--new-passphrase-file FILE] [--json]
      The passphrases of an encrypted DR repository. add wraps the master
      key with a new passphrase (--new-passphrase-file or
      VFSX_NEW_PASSPHRASE), unlocked by the current one; remove ID drops
      another passphrase's key (never the last, never your own). add and
      remove need the site's admin token.
  vfsx bwlimit [RATE|TIMETABLE|config] [--site NAME] [--config FILE] [--json]
      Shows the bandwidth limit on what goes to the DR site, or sets one
      while running (kept until "vfsx bwlimit config" returns to
      replication.bwlimit): 5M, 512k, off, or "08:00,512k 18:00,off".
      --site: that site's own limit (replication.sites[].bwlimit); without
      it, the limit on all sites together.
  vfsx status [--config FILE] [--json] [--watch]
      Per share: backlog (records, files, dirty bytes), RPO age (oldest
      change not yet at the DR site), throughput over the last minute,
      records being retried and their error, paths left out (the site
      cannot take them); the DR site link; fail-open spooling. --watch redraws every 2 s; --json prints one object (a line
      per refresh with --watch).
  vfsx why SHARE PATH [--config FILE] [--source DIR] [--site NAME] [--json]
      Everything known about one path: the source's state, the journal's
      records of it, what holds it back, the DR site's versions.
  vfsx events [--config FILE] [--json] [--recent]
      Follow replication events live (committed, failed, left-out,
      site-down/up, fail-open, rpo-threshold-crossed/recovered,
      scrub-finished/repaired); --recent first prints the
      last ones kept (all but commits).
  vfsx doctor [--config FILE] [--json] [--modules-dir DIR] [--smb-conf FILE] [--hook-status FILE]
      Check the module (installed, built for this smbd), the shares using
      it, the socket, Redis (AOF, noeviction), the DR site, the dashboard
      and /metrics listener, and the spool.
      Exit 1 when a check fails; each failure says how to fix it.
  vfsx --help
      This text.

Configuration: one JSON file (--config, or $VFSX_CONFIG); every key has a
default that works on loopback. See samba-conf/README.md and docs/.
`;

/**
 * A long-running command: on SIGINT or SIGTERM, close() once, flush the
 * log and exit; unhandled rejections are logged, never fatal. Never resolves.
 */
function runUntilSignal(logger: Logger, close: () => Promise<void>): Promise<number> {
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'stopping');
    void close().catch((err) => logger.error({ err }, 'stop failed')).finally(() => {
      logger.flush();
      process.exit(0);
    });
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('unhandledRejection', (err) => logger.error({ err }, 'unhandled rejection'));
  return new Promise<number>(() => undefined);
}

async function serve(configFile: string | undefined): Promise<number> {
  const config = loadConfig(configFile);
  const { createLogger } = await import('../service/create-logger');
  const { VfsxService } = await import('../service/vfsx-service');
  const logger = createLogger(config.log.level);
  const service = new VfsxService(config, logger);
  const running = runUntilSignal(logger, () => service.close());
  await service.start();
  logger.info({ socket: config.socket.path, spool: config.spool.dir }, 'vfsx serving');
  return running;
}

async function replicate(configFile: string | undefined, only?: string): Promise<number> {
  const config = loadConfig(configFile);
  const r = config.replication;
  if (!r.enabled) throw new VfsxError('VFSX_ERR_CONFIG_INVALID', 'replication.enabled is false: nothing to replicate');
  const { createLogger } = await import('../service/create-logger');
  const { lowerPriority } = await import('../native/addon');
  const { Bandwidth } = await import('../site-link/bandwidth');
  const { Replicator } = await import('../replication/replicator');
  const logger = createLogger(config.log.level).child({ c: 'replicator' });
  lowerPriority(r.nice, r.ioClass, r.ioLevel);
  // One replicator per DR site: each its own queue, link, progress and limit; the limit on all sites together is shared.
  const allSites = new Bandwidth(r.bwlimit);
  // Shared with every other replicator process through Redis (one process per site keeps to it together).
  const { stateKeys } = await import('../journal/redis-connection');
  allSites.shareThroughRedis(config.redis, stateKeys(config.redis.prefix).bwBucket);
  // --site NAME[,NAME]: only those (a replicator per site in its own unit; a site added while the others run).
  const picked = only === undefined ? sitesOf(r) : only.split(',').map((n) => siteNamed(r, n.trim()));
  const replicators = picked.map((site) => new Replicator({
    redis: config.redis, queueName: config.journal.queueName, replication: r, site, allSites,
    logger: sitesOf(r).length > 1 ? logger.child({ site: site.name }) : logger,
  }));
  const running = runUntilSignal(logger, async () => {
    await Promise.all(replicators.map((x) => x.close()));
    allSites.close();
  });
  await Promise.all(replicators.map((x) => x.start()));
  logger.info({ sites: picked.map((x) => `${x.name} ${x.url}`), nice: r.nice, io: `${r.ioClass}/${r.ioLevel}` }, 'vfsx replicating');
  return running;
}

/**
 * vfsx dr-site migrate: moves a v1 site's one-file-per-block store into
 * packs (the running site does the same in the background; this does it now,
 * with progress). Refused while the site runs (one writer per data
 * directory). Each block is re-indexed before its file goes.
 */
async function drSiteMigrate(configFile: string | undefined, json: boolean): Promise<number> {
  const d = loadConfig(configFile).drSite;
  const { MetaStore } = await import('../dr-site/meta-store');
  const { PackStore } = await import('../dr-site/pack-store');
  const { packRemoteOf } = await import('../dr-site/s3-packs');
  const meta = new MetaStore(join(d.dataDir, 'meta.sqlite'));
  const log = (msg: string, o: object) => process.stderr.write(`${msg} ${JSON.stringify(o)}\n`);
  const store = new PackStore({ dir: d.dataDir, meta, packBytes: d.packBytes, compression: d.compression, remote: await packRemoteOf(d.storage, log), log });
  try {
    await store.init();
    const total = meta.looseCount();
    let failed = 0;
    const t0 = Date.now();
    const moved = await store.migrateLoose(
      (done) => { if (!json) process.stderr.write(`\r${done}/${total} blocks moved into packs`); },
      (hash, err) => { failed++; process.stderr.write(`\nblock ${hash} not moved: ${err.message}\n`); },
    );
    await store.flushUploads();
    const s = store.stats();
    const out = { moved, failed, seconds: (Date.now() - t0) / 1000, packs: s.packs, packBytes: s.packBytes, rawBytes: s.rawBytes, looseBlocks: s.looseBlocks };
    process.stdout.write(json ? `${JSON.stringify(out)}\n` : `\n${moved} blocks moved into packs in ${out.seconds.toFixed(1)} s; ${failed} could not be read; ${s.looseBlocks} v1 blocks left\n`);
    return failed === 0 ? 0 : 1;
  } finally {
    await store.close();
    meta.close();
  }
}

async function drSite(configFile: string | undefined): Promise<number> {
  const config = loadConfig(configFile);
  const d = config.drSite;
  if (!d.token) throw new VfsxError('VFSX_ERR_CONFIG_INVALID', 'drSite.token is required (16 characters or more)');
  if (Boolean(d.tlsCert) !== Boolean(d.tlsKey)) throw new VfsxError('VFSX_ERR_CONFIG_INVALID', 'drSite.tlsCert and drSite.tlsKey go together');
  const { createLogger } = await import('../service/create-logger');
  const { packRemoteOf } = await import('../dr-site/s3-packs');
  const { DrSiteServer } = await import('../dr-site/dr-site-server');
  const logger = createLogger(config.log.level).child({ c: 'dr-site' });
  const remote = await packRemoteOf(d.storage, (msg, o) => logger.warn(o, msg));
  if (remote) logger.info({ where: remote.where }, 'closed packs go to object storage');
  const site = await DrSiteServer.create({
    remote, uploadIdleMs: d.storage.uploadIdleMs, indexCopyMs: d.storage.indexCopySeconds * 1000,
    host: d.host, port: d.port, token: d.token, tokens: d.tokens, dataDir: d.dataDir, maxFrameBytes: d.maxFrameBytes, logger,
    retentionMs: d.retentionMs, gcIntervalMs: d.gcIntervalMs, orphanGraceMs: d.orphanGraceMs,
    packBytes: d.packBytes, compression: d.compression, repackBelow: d.repackBelow,
    tls: d.tlsCert && d.tlsKey ? { cert: d.tlsCert, key: d.tlsKey } : undefined,
  });
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    void site.close().finally(() => process.exit(0));
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  await site.listen();
  logger.info({ port: site.port }, 'vfsx dr-site serving');
  return new Promise<number>(() => undefined); // runs until a signal
}

/** Set by run(): this process is the vfsx command itself, not a caller of main(). */
let ownProcess = false;

/**
 * The commands that move file data run with glibc's malloc tunables
 * (src/native/malloc-tunables.ts), the DR site with a larger first heap
 * limit (`nodeFlags`): when this process is the command, it starts itself
 * again with them first.
 */
function tunables(nodeFlags: string[] = []): void {
  if (!ownProcess) return;
  try {
    restartWithTunables(nodeFlags);
  } catch (err) {
    process.stderr.write(`vfsx: running without its malloc tunables: ${(err as Error).message}\n`);
  }
}

export async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      config: { type: 'string', short: 'c' },
      share: { type: 'string' },
      json: { type: 'boolean', default: false },
      follow: { type: 'boolean', short: 'f', default: false },
      pending: { type: 'boolean', default: false },
      all: { type: 'boolean', default: false },
      failed: { type: 'boolean', default: false },
      source: { type: 'string' },
      at: { type: 'string' },
      content: { type: 'boolean', default: false },
      deep: { type: 'boolean', default: false },
      force: { type: 'boolean', default: false },
      'passphrase-file': { type: 'string' },
      'new-passphrase-file': { type: 'string' },
      label: { type: 'string' },
      site: { type: 'string' },
      bwlimit: { type: 'string' },
      watch: { type: 'boolean', short: 'w', default: false },
      recent: { type: 'boolean', default: false },
      'modules-dir': { type: 'string' },
      'smb-conf': { type: 'string' },
      'hook-status': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  const [command] = positionals;
  if (values.help || command === undefined || command === 'help') {
    process.stdout.write(HELP);
    return command === undefined && !values.help ? 2 : 0;
  }
  switch (command) {
    case 'serve':
      return serve(values.config);
    case 'replicate':
      tunables();
      return replicate(values.config, values.site);
    case 'dr-site':
      tunables(DR_SITE_NODE_FLAGS);
      if (positionals[1] === 'migrate') return drSiteMigrate(values.config, values.json === true);
      if (positionals[1] !== undefined) {
        process.stderr.write(`vfsx dr-site: unknown subcommand ${positionals[1]}\n\n${HELP}`);
        return 2;
      }
      return drSite(values.config);
    case 'resync':
    case 'verify':
    case 'restore': {
      const [, share, dest] = positionals;
      if (!share || (command === 'restore' && !dest)) {
        process.stderr.write(`vfsx ${command}: missing ${share ? 'DEST' : 'SHARE'}\n\n${HELP}`);
        return 2;
      }
      tunables();
      const cfg = loadConfig(values.config);
      const o = {
        json: values.json === true, source: values.source, at: values.at,
        content: values.content === true, deep: values.deep === true, force: values.force === true,
        passphraseFile: values['passphrase-file'], site: values.site, bwlimit: values.bwlimit,
      };
      const { restoreCommand, resyncCommand, verifyCommand } = await import('./dr-commands');
      if (command === 'resync') return resyncCommand(cfg, share, o);
      if (command === 'verify') return verifyCommand(cfg, share, o);
      return restoreCommand(cfg, share, dest as string, o);
    }
    case 'key':
      return (await import('./key-commands')).keyCommand(loadConfig(values.config), positionals[1], positionals[2], {
        json: values.json === true, passphraseFile: values['passphrase-file'], newPassphraseFile: values['new-passphrase-file'], label: values.label, site: values.site,
      });
    case 'status':
      return (await import('./ops-commands')).statusCommand(loadConfig(values.config), { json: values.json === true, watch: values.watch === true });
    case 'bwlimit':
      return (await import('./ops-commands')).bwlimitCommand(loadConfig(values.config), positionals.slice(1), { json: values.json === true, site: values.site });
    case 'site':
      return (await import('./ops-commands')).siteCommand(loadConfig(values.config), positionals[1], positionals[2], { json: values.json === true });
    case 'why': {
      const [, share, path] = positionals;
      if (!share || path === undefined) {
        process.stderr.write(`vfsx why: missing ${share ? 'PATH' : 'SHARE'}\n\n${HELP}`);
        return 2;
      }
      return (await import('./ops-commands')).whyCommand(loadConfig(values.config), share, path, { json: values.json === true, source: values.source, site: values.site });
    }
    case 'events':
      return (await import('./ops-commands')).eventsCommand(loadConfig(values.config), { json: values.json === true, recent: values.recent === true });
    case 'doctor':
      return (await import('./doctor')).doctorCommand(loadConfig(values.config), { json: values.json === true, modulesDir: values['modules-dir'], smbConf: values['smb-conf'], hookStatus: values['hook-status'] });
    case 'journal':
      return (await import('./journal-command')).journalCommand(loadConfig(values.config), {
        share: values.share,
        json: values.json === true,
        follow: values.follow === true,
        pending: values.pending === true,
        all: values.all === true,
        failed: values.failed === true,
      });
    default:
      process.stderr.write(`vfsx: unknown command ${command}\n\n${HELP}`);
      return 2;
  }
}

export function run(): void {
  ownProcess = true;
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err) => {
      const code = err instanceof VfsxError ? ` [${err.code}]` : '';
      process.stderr.write(`vfsx: ${(err as Error).message}${code}\n`);
      // Exit now: a half-built service (a Redis client already connecting) would keep the process alive.
      process.exit(1);
    },
  );
}
