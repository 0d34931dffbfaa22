/**
 * Policy: ordered allow/deny rules by share, user, operation, path glob and
 * file extension. The first rule that matches decides; no match allows.
 * Names are matched case-insensitively, as Windows clients expect.
 */
import { constants } from 'node:os';
import picomatch from 'picomatch';
import { PolicyRuleConfig } from '../config/schema';
import { VfsxError } from '../errors/vfsx-error';

export interface PolicyInput {
  share: string;
  user: string;
  op: string;
  /** Every share-relative name the operation touches (source and target). */
  paths: string[];
}

export interface PolicyDecision {
  errno: number;
  rule: string;
}

type Matcher = (s: string) => boolean;

interface CompiledRule {
  name: string;
  deny: boolean;
  errno: number;
  shares?: Matcher;
  users?: Matcher;
  ops?: Set<string>;
  paths?: Matcher;
  extensions?: Set<string>;
}

const glob = (patterns: string[] | undefined): Matcher | undefined =>
  patterns && patterns.length > 0 ? picomatch(patterns, { nocase: true, dot: true }) : undefined;

function extensionOf(path: string): string {
  const base = path.slice(path.lastIndexOf('/') + 1);
  const dot = base.lastIndexOf('.');
  return dot <= 0 ? '' : base.slice(dot).toLowerCase();
}

export class Policy {
  private readonly rules: CompiledRule[];

  constructor(rules: readonly PolicyRuleConfig[]) {
    this.rules = rules.map((r, i) => {
      const errno = (constants.errno as Record<string, number>)[r.errno];
      if (errno === undefined) {
        throw new VfsxError('VFSX_ERR_CONFIG_INVALID', `policy rule ${i}: unknown errno ${r.errno}`);
      }
      return {
        name: r.name ?? `rule ${i}`,
        deny: r.action === 'deny',
        errno,
        shares: glob(r.shares),
        users: glob(r.users),
        ops: r.ops && r.ops.length > 0 ? new Set(r.ops) : undefined,
        paths: glob(r.paths),
        extensions:
          r.extensions && r.extensions.length > 0
            ? new Set(r.extensions.map((e) => (e.startsWith('.') ? e : `.${e}`).toLowerCase()))
            : undefined,
      };
    });
  }

  get empty(): boolean {
    return this.rules.length === 0;
  }

  /**
   * The operations some deny rule can match: only these need a verdict
   * before they run ('*' when a deny rule names no operation).
   */
  verdictOps(): string[] | '*' {
    const ops = new Set<string>();
    for (const r of this.rules) {
      if (!r.deny) continue;
      if (!r.ops) return '*';
      for (const op of r.ops) ops.add(op);
    }
    return [...ops].sort();
  }

  /**
   * The policy in the form the module applies itself ("ERRNO/op,op/.ext,.ext;..."),
   * when every rule is a deny rule by operations and plain file extensions
   * only (no shares, users, paths or allow rules) and the whole fits in a
   * hello answer; otherwise null, and the module asks for every verdict.
   */
  localRules(): string | null {
    if (this.rules.length === 0) return null;
    const parts: string[] = [];
    for (const r of this.rules) {
      if (!r.deny || !r.ops || !r.extensions || r.shares || r.users || r.paths) return null;
      const exts = [...r.extensions];
      if (exts.length > 32 || !exts.every((e) => /^\.[a-z0-9_~-]{1,15}$/.test(e))) return null;
      parts.push(`${r.errno}/${[...r.ops].join(',')}/${exts.join(',')}`);
    }
    const s = parts.join(';');
    return parts.length <= 8 && s.length <= 160 ? s : null;
  }

  /** The deny decision for this operation, or null to let it proceed. */
  evaluate(input: PolicyInput): PolicyDecision | null {
    for (const r of this.rules) {
      if (r.ops && !r.ops.has(input.op)) continue;
      if (r.shares && !r.shares(input.share)) continue;
      if (r.users && !r.users(input.user)) continue;
      if (r.paths || r.extensions) {
        const hit = input.paths.some(
          (p) => (!r.paths || r.paths(p)) && (!r.extensions || r.extensions.has(extensionOf(p))),
        );
        if (!hit) continue;
      }
      return r.deny ? { errno: r.errno, rule: r.name } : null;
    }
    return null;
  }
}
