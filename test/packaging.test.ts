/** The systemd units parse, order vfsx before smbd, and keep their hardening. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { DR_SITE_NODE_FLAGS, mallocTunablesSet, missingNodeFlags } from '../src/native/malloc-tunables';
import { REPO } from './helpers/service-harness';

const unit = (name: string) => join(REPO, 'packaging', 'systemd', name);

test('systemd-analyze verify accepts the three units', () => {
  const r = spawnSync('systemd-analyze', ['verify', unit('vfsx.service'), unit('vfsx-replicate.service'), unit('vfsx-dr-site.service')], { encoding: 'utf8' });
  // Only complaints about what this machine lacks (the install path, smbd, redis) are acceptable here.
  const problems = `${r.stdout}${r.stderr}`.split('\n').filter((l) => l.trim() && !/\/opt\/vfsx|smbd\.service|redis-server\.service|Failed to prepare filename/.test(l));
  assert.deepEqual(problems, []);
});

test('vfsx.service starts before smbd and after Redis; vfsx-replicate.service runs at a lower priority; every unit is hardened', () => {
  const serve = readFileSync(unit('vfsx.service'), 'utf8');
  assert.match(serve, /^Before=smbd\.service$/m);
  assert.match(serve, /^After=.*redis-server\.service/m);
  assert.match(serve, /^RequiredBy=smbd\.service$/m);
  const site = readFileSync(unit('vfsx-dr-site.service'), 'utf8');
  const repl = readFileSync(unit('vfsx-replicate.service'), 'utf8');
  for (const u of [serve, site, repl]) {
    for (const opt of ['ProtectSystem=strict', 'NoNewPrivileges=yes', 'PrivateTmp=yes', 'ProtectKernelModules=yes', 'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6']) {
      assert.ok(u.includes(opt), opt);
    }
  }
  assert.match(site, /^DynamicUser=yes$/m);
  // The replicator yields the cores and the disk to smbd and vfsx serve.
  assert.match(repl, /^CPUWeight=([1-9]|[1-9]\d)$/m);
  assert.match(repl, /^IOWeight=([1-9]|[1-9]\d)$/m);
  assert.match(repl, /^Nice=([1-9]|1\d)$/m);
  assert.match(repl, /^ExecStart=.* replicate --config /m);
  assert.doesNotMatch(serve, /^(Nice|CPUWeight)=/m);
  assert.match(site, /^CapabilityBoundingSet=$/m);
  // The units start the data movers as they would start themselves again: no restart under systemd.
  for (const [u, flags] of [[site, DR_SITE_NODE_FLAGS], [repl, []]] as Array<[string, string[]]>) {
    const exec = /^ExecStart=\/usr\/bin\/node (.*?) ?\/opt\/vfsx\/bin\/vfsx\.js /m.exec(u);
    assert.ok(exec, 'ExecStart runs node on bin/vfsx.js');
    assert.deepEqual(missingNodeFlags(flags, exec[1].split(' ').filter(Boolean)), []);
    const tunables = /^Environment=GLIBC_TUNABLES=(.*)$/m.exec(u)?.[1];
    assert.ok(tunables !== undefined && mallocTunablesSet({ GLIBC_TUNABLES: tunables }), tunables ?? 'no GLIBC_TUNABLES');
    assert.doesNotMatch(tunables, /hugetlb=1/, 'huge pages are opt-in (VFSX_HUGE_PAGES=1)');
  }
});
