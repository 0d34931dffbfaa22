/**
 * Loads, validates (every error listed) and freezes the configuration.
 * The only module that reads process.env.
 */
import { readFileSync } from 'node:fs';
import Ajv from 'ajv';
import { Schedule } from './bwlimit';
import { VfsxError } from '../errors/vfsx-error';
import { configSchema, VfsxConfig } from './schema';

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object') {
    for (const v of Object.values(o as object)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}

/** Validates a plain object (after applying defaults) and returns it frozen. */
export function validateConfig(raw: unknown): VfsxConfig {
  const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: true });
  const validate = ajv.compile(configSchema);
  const copy = JSON.parse(JSON.stringify(raw ?? {}));
  if (!validate(copy)) {
    const lines = (validate.errors ?? []).map(
      (e) => `  ${e.instancePath || '/'} ${e.message}${e.params ? ' ' + JSON.stringify(e.params) : ''}`,
    );
    throw new VfsxError('VFSX_ERR_CONFIG_INVALID', `invalid configuration:\n${lines.join('\n')}`);
  }
  const hooks = (copy as VfsxConfig).alerts.hooks;
  const bad = hooks.findIndex((h) => Boolean(h.command) === Boolean(h.url));
  if (bad >= 0) throw new VfsxError('VFSX_ERR_CONFIG_INVALID', `invalid configuration:\n  /alerts/hooks/${bad} needs exactly one of command and url`);
  const c = copy as VfsxConfig;
  // The settle window delays every change on its way to the site: it must stay well inside the RPO target.
  if (c.replication.settleMs * 4 > c.alerts.rpoThresholdMs) {
    throw new VfsxError('VFSX_ERR_CONFIG_INVALID', `invalid configuration:\n  /replication/settleMs (${c.replication.settleMs}) must be at most a quarter of /alerts/rpoThresholdMs (${c.alerts.rpoThresholdMs})`);
  }
  const limits: Array<[string, string | undefined]> = [['/replication/bwlimit', c.replication.bwlimit]];
  (c.replication.sites ?? []).forEach((s, i) => limits.push([`/replication/sites/${i}/bwlimit`, s.bwlimit]));
  for (const [where, text] of limits) {
    try {
      if (text !== undefined) Schedule.parse(text);
    } catch (err) {
      throw new VfsxError('VFSX_ERR_CONFIG_INVALID', `invalid configuration:\n  ${where} ${(err as Error).message}`);
    }
  }
  const names = (c.replication.sites ?? []).map((s) => s.name);
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup !== undefined) throw new VfsxError('VFSX_ERR_CONFIG_INVALID', `invalid configuration:\n  /replication/sites: the name "${dup}" is used twice`);
  return deepFreeze(c);
}

/** Reads FILE (or $VFSX_CONFIG, or nothing: all defaults). */
export function loadConfig(file?: string): VfsxConfig {
  const path = file ?? process.env.VFSX_CONFIG;
  if (!path) return validateConfig({});
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new VfsxError('VFSX_ERR_CONFIG_READ', `cannot read config ${path}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new VfsxError('VFSX_ERR_CONFIG_INVALID', `config ${path} is not JSON: ${(err as Error).message}`, {
      cause: err,
    });
  }
  return validateConfig(raw);
}
