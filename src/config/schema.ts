/**
 * The one configuration schema of vfsx. Every key has a default that works
 * on loopback; unknown keys are errors.
 */
export const OPERATIONS = [
  'create', 'close', 'fsync', 'truncate', 'mkdir', 'rmdir', 'unlink', 'rename',
  'symlink', 'link', 'mknod', 'chmod', 'chown', 'utimes', 'chflags',
  'setxattr', 'removexattr', 'setdosattr', 'setacl',
] as const;

export const configSchema = {
  $id: 'https://vfsx.invalid/config.json',
  type: 'object',
  additionalProperties: false,
  properties: {
    socket: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        path: { type: 'string', minLength: 1, maxLength: 107, default: '/run/vfsx/vfsx.sock' },
        dirMode: { type: 'string', pattern: '^0?[0-7]{3}$', default: '0750' },
        socketMode: { type: 'string', pattern: '^0?[0-7]{3}$', default: '0660' },
        allowedUids: { type: 'array', items: { type: 'integer', minimum: 0 }, default: [0] },
        maxFrameBytes: { type: 'integer', minimum: 1024, maximum: 16777216, default: 65536 },
        maxConnections: { type: 'integer', minimum: 1, default: 4096 },
      },
    },
    redis: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        host: { type: 'string', default: '127.0.0.1' },
        port: { type: 'integer', minimum: 1, maximum: 65535, default: 6379 },
        path: { type: 'string', description: 'Unix socket; overrides host/port' },
        db: { type: 'integer', minimum: 0, default: 0 },
        password: { type: 'string' },
        prefix: { type: 'string', pattern: '^[A-Za-z0-9_.-]+$', default: 'vfsx' },
        writeTimeoutMs: { type: 'integer', minimum: 10, default: 800 },
      },
    },
    spool: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        dir: { type: 'string', minLength: 1, default: '/var/spool/vfsx' },
        scanIntervalMs: { type: 'integer', minimum: 50, default: 1000 },
      },
    },
    journal: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        queueName: { type: 'string', pattern: '^[A-Za-z0-9_-]+$', default: 'journal' },
        reconcileAfterMs: { type: 'integer', minimum: 100, default: 30000 },
        reconcileDelayMs: { type: 'integer', minimum: 0, default: 10000 },
        sweepIntervalMs: { type: 'integer', minimum: 50, default: 5000 },
        pumpIntervalMs: { type: 'integer', minimum: 0, maximum: 10000, default: 10 },
        groupCommitMs: { type: 'integer', minimum: 0, maximum: 50, default: 2, description: 'reports arriving within this window go to Redis as one write (strict verdicts do not wait for it)' },
        keepFailedOps: { type: 'integer', minimum: 0, default: 1000 },
        keepRecords: { type: 'integer', minimum: 0, maximum: 10000000, default: 100000, description: 'with replication off, the newest records kept for `vfsx journal` (nothing is queued then, so Redis does not grow)' },
      },
    },
    policy: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        rules: {
          type: 'array',
          default: [],
          items: {
            type: 'object',
            additionalProperties: false,
            required: ['action'],
            properties: {
              name: { type: 'string' },
              action: { enum: ['allow', 'deny'] },
              errno: { type: 'string', pattern: '^E[A-Z0-9]+$', default: 'EACCES' },
              shares: { type: 'array', items: { type: 'string' } },
              users: { type: 'array', items: { type: 'string' } },
              ops: { type: 'array', items: { enum: [...OPERATIONS] } },
              paths: { type: 'array', items: { type: 'string' } },
              extensions: { type: 'array', items: { type: 'string', pattern: '^\\.?[^/]+$' } },
            },
          },
        },
      },
    },
    replication: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        enabled: { type: 'boolean', default: false },
        siteUrl: { type: 'string', pattern: '^wss?://', default: 'ws://127.0.0.1:7480/' },
        token: { type: 'string', minLength: 16 },
        blockSize: { type: 'integer', minimum: 4096, maximum: 16777216, default: 65536 },
        encryption: { enum: ['on', 'off'], default: 'on', description: 'on: a new (empty) DR site repository is made encrypted end to end; an encrypted one is always used encrypted, a plaintext one (from before) stays plaintext' },
        passphraseFile: { type: 'string', minLength: 1, default: '/etc/vfsx/dr-passphrase', description: 'the repository passphrase (VFSX_PASSPHRASE overrides it); written with a random one when a new repository is made encrypted and it does not exist: keep a copy away from this host' },
        sites: {
          type: 'array',
          maxItems: 16,
          description: 'several DR sites, each with its own queue, progress, link, backlog, RPO and bandwidth limit; when absent, the one site of siteUrl/token (named "default")',
          items: {
            type: 'object',
            additionalProperties: false,
            required: ['name', 'url'],
            properties: {
              name: { type: 'string', pattern: '^[a-z0-9][a-z0-9_-]{0,31}$' },
              url: { type: 'string', pattern: '^wss?://' },
              token: { type: 'string', minLength: 16 },
              bwlimit: { type: 'string', minLength: 1, maxLength: 2000, description: 'this site\'s bandwidth limit (a rate or a timetable, as replication.bwlimit, which then limits all sites together)' },
              encryption: { enum: ['on', 'off'] },
              passphraseFile: { type: 'string', minLength: 1 },
            },
          },
        },
        bwlimit: { type: 'string', minLength: 1, maxLength: 2000, default: 'off', description: 'bandwidth limit on what goes to the DR site (blocks and metadata), bytes per second: "off", "5M", "512k" (k, M, G = 1024, 1024^2, 1024^3), or a timetable of them by time of day, optionally by weekday: "08:00,512k 18:00,off" or "Mon-08:00,2M Sat-00:00,off"; `vfsx bwlimit` changes it while running' },
        maxBackoffMs: { type: 'integer', minimum: 100, default: 30000 },
        concurrency: { type: 'integer', minimum: 1, maximum: 256, default: 8 },
        batchMax: { type: 'integer', minimum: 1, maximum: 5000, default: 500, description: "records of one share per queued job" },
        settleMs: { type: 'integer', minimum: 0, maximum: 10000, default: 500, description: 'the pump holds a share\'s records this long and queues them as one batch, so a file created and deleted, or written again, within it costs little or nothing at the site; keep well below alerts.rpoThresholdMs' },
        yieldMs: { type: 'integer', minimum: 0, maximum: 10000, default: 1000, description: 'while a share\'s changes come faster than yieldRate (a burst of user work), the pump holds them up to this much longer than settleMs, until the burst ends, so replication catches up in the gap after it rather than competing with it; 0: never' },
        yieldRate: { type: 'integer', minimum: 1, default: 250, description: 'changes per second of one share that make a burst (see yieldMs)' },
        nice: { type: 'integer', minimum: 0, maximum: 19, default: 10, description: 'CPU niceness of vfsx replicate (smbd and vfsx serve keep 0)' },
        ioClass: { enum: ['best-effort', 'idle'], default: 'best-effort', description: 'I/O scheduling class of vfsx replicate' },
        ioLevel: { type: 'integer', minimum: 0, maximum: 7, default: 7, description: 'I/O priority level within ioClass (7 = lowest)' },
        scrub: {
          type: 'object',
          additionalProperties: false,
          default: {},
          description: 'scheduled comparison of each share with the DR site; differences are repaired as ordinary replication',
          properties: {
            enabled: { type: 'boolean', default: true },
            startDelayMs: { type: 'integer', minimum: 0, default: 3600000 },
            intervalMs: { type: 'integer', minimum: 1000, default: 86400000 },
            contentIntervalMs: { type: 'integer', minimum: 1000, default: 604800000 },
            maxFilesPerSecond: { type: 'integer', minimum: 1, default: 20000 },
            maxBytesPerSecond: { type: 'integer', minimum: 1, default: 67108864 },
          },
        },
      },
    },
    drSite: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        host: { type: 'string', default: '127.0.0.1' },
        port: { type: 'integer', minimum: 0, maximum: 65535, default: 7480 },
        token: { type: 'string', minLength: 16, description: 'the admin token: clients send it as Authorization: Bearer <token>' },
        tokens: {
          type: 'array',
          default: [],
          description: 'tokens limited to some buckets: read (restore, verify) or write (a replicating server)',
          items: {
            type: 'object',
            additionalProperties: false,
            required: ['token', 'buckets', 'access'],
            properties: {
              token: { type: 'string', minLength: 16 },
              buckets: { type: 'array', minItems: 1, items: { type: 'string', pattern: '^[A-Za-z0-9._-]{1,64}$' } },
              access: { enum: ['read', 'write'] },
            },
          },
        },
        dataDir: { type: 'string', minLength: 1, default: '/var/lib/vfsx-dr' },
        maxFrameBytes: { type: 'integer', minimum: 8388608, default: 67108864 },
        tlsCert: { type: 'string' },
        tlsKey: { type: 'string' },
        retentionMs: { type: 'integer', minimum: 0, default: 30 * 24 * 3600 * 1000 },
        gcIntervalMs: { type: 'integer', minimum: 100, default: 3600 * 1000 },
        orphanGraceMs: { type: 'integer', minimum: 0, default: 3600 * 1000 },
        packBytes: { type: 'integer', minimum: 65536, maximum: 1073741824, default: 16777216, description: 'blocks are appended to pack files closed at this size' },
        compression: { enum: ['zstd', 'none'], default: 'zstd', description: 'zstd per block, kept only when it saves 1/16 or more' },
        repackBelow: { type: 'number', minimum: 0, maximum: 1, default: 0.5, description: 'retention rewrites a pack whose live fraction falls below this' },
        storage: {
          type: 'object',
          additionalProperties: false,
          default: {},
          description: 'where closed packs are kept: the data directory (local) or S3-compatible object storage (s3)',
          properties: {
            backend: { enum: ['local', 's3'], default: 'local' },
            uploadIdleMs: { type: 'integer', minimum: 100, default: 30000, description: 's3: an open pack idle this long is closed and uploaded' },
            indexCopySeconds: { type: 'integer', minimum: 1, maximum: 86400, default: 300, description: 's3: the site\'s index (meta.sqlite) is copied into the bucket this often when it changed (and before any pack object is deleted); a site whose data directory is lost recovers from the newest copy' },
            s3: {
              type: 'object',
              additionalProperties: false,
              required: ['endpoint', 'bucket'],
              properties: {
                endpoint: { type: 'string', pattern: '^https?://' },
                region: { type: 'string', default: 'us-east-1' },
                bucket: { type: 'string', minLength: 3, maxLength: 63 },
                prefix: { type: 'string', default: '', pattern: '^([^/].*/)?$', description: 'key prefix, empty or ending in /' },
                accessKeyId: { type: 'string', description: 'else AWS_ACCESS_KEY_ID' },
                secretAccessKey: { type: 'string', description: 'else AWS_SECRET_ACCESS_KEY' },
                forcePathStyle: { type: 'boolean', default: true },
                multipartBytes: { type: 'integer', minimum: 5242880, default: 67108864, description: 'packs above this go up in parts' },
              },
            },
          },
        },
      },
    },
    http: {
      type: 'object',
      additionalProperties: false,
      default: {},
      description: 'the operator listener of vfsx serve: /metrics, the dashboard and its API',
      properties: {
        enabled: { type: 'boolean', default: true },
        host: { type: 'string', default: '127.0.0.1' },
        port: { type: 'integer', minimum: 0, maximum: 65535, default: 7481 },
        token: { type: 'string', minLength: 16, description: 'required (Bearer or ?token=) from any client when set' },
        historySeconds: { type: 'integer', minimum: 60, default: 3600 },
      },
    },
    alerts: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        rpoThresholdMs: { type: 'integer', minimum: 1000, default: 300000 },
        checkIntervalMs: { type: 'integer', minimum: 100, default: 2000 },
        hooks: {
          type: 'array',
          default: [],
          items: {
            type: 'object',
            additionalProperties: false,
            properties: {
              events: { type: 'array', items: { enum: ['failed', 'site-down', 'site-up', 'fail-open', 'rpo-threshold-crossed', 'rpo-recovered', 'left-out', 'scrub-finished'] } },
              command: { type: 'string', minLength: 1, description: 'run with /bin/sh -c; the event is in $VFSX_EVENT (JSON)' },
              url: { type: 'string', pattern: '^https?://', description: 'POSTed the event as JSON' },
              timeoutMs: { type: 'integer', minimum: 100, default: 10000 },
            },
          },
        },
      },
    },
    log: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        level: { enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], default: 'info' },
      },
    },
  },
} as const;

export interface PolicyRuleConfig {
  name?: string;
  action: 'allow' | 'deny';
  errno: string;
  shares?: string[];
  users?: string[];
  ops?: string[];
  paths?: string[];
  extensions?: string[];
}

export interface VfsxConfig {
  socket: {
    path: string;
    dirMode: string;
    socketMode: string;
    allowedUids: number[];
    maxFrameBytes: number;
    maxConnections: number;
  };
  redis: {
    host: string;
    port: number;
    path?: string;
    db: number;
    password?: string;
    prefix: string;
    writeTimeoutMs: number;
  };
  spool: { dir: string; scanIntervalMs: number };
  journal: {
    queueName: string;
    reconcileAfterMs: number;
    reconcileDelayMs: number;
    sweepIntervalMs: number;
    /** Pause of the journal pump after a small read, so it moves records in batches. */
    pumpIntervalMs: number;
    /** Reports arriving within this window go to Redis as one stream entry. */
    groupCommitMs: number;
    keepFailedOps: number;
    keepRecords: number;
  };
  policy: { rules: PolicyRuleConfig[] };
  replication: {
    enabled: boolean;
    siteUrl: string;
    token?: string;
    /** Block size of new objects at the DR site. */
    blockSize: number;
    /** Whether a new repository is made encrypted (src/repository). */
    encryption: 'on' | 'off';
    passphraseFile: string;
    /** Bandwidth limit: a rate or a timetable of rates (src/site-link/bandwidth.ts); with several sites, on all of them together. */
    bwlimit: string;
    /** Several DR sites (absent: the one of siteUrl/token, named "default"); see sitesOf(). */
    sites?: SiteConfigEntry[];
    /** Cap of the retry backoff while the DR site is unreachable. */
    maxBackoffMs: number;
    /** Records replicated at once; records of related paths still run in journal order. */
    concurrency: number;
    /** Records of one share per queued job. */
    batchMax: number;
    /** How long a batch waits before it is replicated (coalescing window; bounded by the RPO target). */
    settleMs: number;
    /** How much longer than settleMs a share's records wait while a burst of its changes goes on (0: never). */
    yieldMs: number;
    /** Changes per second of one share that make a burst. */
    yieldRate: number;
    /** CPU niceness and I/O class/level `vfsx replicate` lowers itself to. */
    nice: number;
    ioClass: 'best-effort' | 'idle';
    ioLevel: number;
    scrub: ScrubConfig;
  };
  drSite: {
    host: string;
    port: number;
    token?: string;
    tokens: Array<{ token: string; buckets: string[]; access: 'read' | 'write' }>;
    dataDir: string;
    maxFrameBytes: number;
    tlsCert?: string;
    tlsKey?: string;
    /** Versions and tombstones older than this are dropped unless a restore needs them. */
    retentionMs: number;
    gcIntervalMs: number;
    /** Unreferenced blocks younger than this are kept (an upload may be under way). */
    orphanGraceMs: number;
    packBytes: number;
    compression: 'zstd' | 'none';
    repackBelow: number;
    storage: DrStorageConfig;
  };
  http: { enabled: boolean; host: string; port: number; token?: string; historySeconds: number };
  alerts: {
    /** rpo-threshold-crossed fires when a share's oldest uncommitted change is older than this. */
    rpoThresholdMs: number;
    checkIntervalMs: number;
    hooks: AlertHookConfig[];
  };
  log: { level: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent' };
}

export interface SiteConfigEntry {
  name: string;
  url: string;
  token?: string;
  bwlimit?: string;
  encryption?: 'on' | 'off';
  passphraseFile?: string;
}

/** One DR site as the replicator uses it (every field resolved). */
export interface SiteConfig {
  name: string;
  url: string;
  token: string;
  /** This site's own limit ("off": only the global replication.bwlimit). */
  bwlimit: string;
  encryption: 'on' | 'off';
  passphraseFile: string;
}

/** The site of a configuration without replication.sites. */
export const DEFAULT_SITE = 'default';

/**
 * The DR sites to replicate to: replication.sites, or the one site of
 * siteUrl/token named "default" (whose Redis keys and queue are those of
 * a single-site system, so upgrading keeps its progress). A listed site's
 * passphrase file defaults to passphraseFile with "-NAME" appended, so two
 * encrypted sites never share one by accident.
 */
export function sitesOf(r: VfsxConfig['replication']): SiteConfig[] {
  if (!r.sites || r.sites.length === 0) {
    return [{ name: DEFAULT_SITE, url: r.siteUrl, token: r.token ?? '', bwlimit: 'off', encryption: r.encryption, passphraseFile: r.passphraseFile }];
  }
  return r.sites.map((s) => ({
    name: s.name, url: s.url, token: s.token ?? r.token ?? '', bwlimit: s.bwlimit ?? 'off', encryption: s.encryption ?? r.encryption,
    passphraseFile: s.passphraseFile ?? (s.name === DEFAULT_SITE ? r.passphraseFile : `${r.passphraseFile}-${s.name}`),
  }));
}

/** A site by name (undefined: the first); throws a clear error for an unknown one. */
export function siteNamed(r: VfsxConfig['replication'], name?: string): SiteConfig {
  const all = sitesOf(r);
  if (name === undefined) return all[0];
  const s = all.find((x) => x.name === name);
  if (!s) throw new Error(`no DR site named "${name}" (configured: ${all.map((x) => x.name).join(', ')})`);
  return s;
}

export interface DrStorageConfig {
  backend: 'local' | 's3';
  uploadIdleMs: number;
  indexCopySeconds: number;
  s3?: {
    endpoint: string;
    region: string;
    bucket: string;
    prefix: string;
    accessKeyId?: string;
    secretAccessKey?: string;
    forcePathStyle: boolean;
    multipartBytes: number;
  };
}

export interface ScrubConfig {
  enabled: boolean;
  /** The first pass this long after the service starts. */
  startDelayMs: number;
  /** Metadata passes (type, size, mode, mtime, xattrs of every entry) this often. */
  intervalMs: number;
  /** Content passes (every source block's hash against the site's ids) this often. */
  contentIntervalMs: number;
  /** Throttles: entries checked per second, and source bytes read per second in a content pass. */
  maxFilesPerSecond: number;
  maxBytesPerSecond: number;
}

export interface AlertHookConfig {
  /** Event types that trigger the hook (default: site-down, site-up, fail-open, rpo-threshold-crossed, rpo-recovered, left-out). */
  events?: string[];
  command?: string;
  url?: string;
  timeoutMs: number;
}
