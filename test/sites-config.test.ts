/** Unit tests of the DR sites' configuration (replication.sites) and their Redis keys. */
import test from 'node:test';
import assert from 'node:assert/strict';
import { validateConfig } from '../src/config/load-config';
import { siteNamed, sitesOf } from '../src/config/schema';
import { queueNameOf, stateKeys } from '../src/journal/redis-connection';

const TOKEN = 'a-token-of-16-chars-or-more';

test('without replication.sites there is one site, "default", with the keys and queue of a single-site system', () => {
  const c = validateConfig({ replication: { siteUrl: 'ws://10.0.0.1:7480/', token: TOKEN } });
  assert.deepEqual(sitesOf(c.replication).map((s) => [s.name, s.url, s.token, s.bwlimit]), [['default', 'ws://10.0.0.1:7480/', TOKEN, 'off']]);
  assert.equal(queueNameOf('journal', 'default'), 'journal');
  assert.equal(stateKeys('vfsx').rpo('docs'), 'vfsx:rpo:docs');
  assert.equal(stateKeys('vfsx', 'default').site, 'vfsx:state:site');
});

test('listed sites: own queue and keys, tokens and passphrase files resolved, unknown names and duplicates refused', () => {
  const c = validateConfig({
    replication: {
      token: TOKEN, passphraseFile: '/etc/vfsx/pass', bwlimit: '10M',
      sites: [{ name: 'near', url: 'ws://10.0.0.1:7480/' }, { name: 'far', url: 'wss://dr.example:7480/', token: `${TOKEN}-far`, bwlimit: '08:00,1M 18:00,off', encryption: 'off' }],
    },
  });
  const [near, far] = sitesOf(c.replication);
  assert.deepEqual([near.token, near.passphraseFile, near.bwlimit, near.encryption], [TOKEN, '/etc/vfsx/pass-near', 'off', 'on']);
  assert.deepEqual([far.token, far.passphraseFile, far.bwlimit, far.encryption], [`${TOKEN}-far`, '/etc/vfsx/pass-far', '08:00,1M 18:00,off', 'off']);
  assert.equal(siteNamed(c.replication).name, 'near', 'the first is the default for commands');
  assert.throws(() => siteNamed(c.replication, 'moon'), /no DR site named "moon" \(configured: near, far\)/);
  assert.equal(queueNameOf('journal', 'far'), 'journal@far');
  assert.equal(stateKeys('vfsx', 'far').rpo('docs'), 'vfsx:rpo@far:docs');
  assert.notEqual(stateKeys('vfsx', 'far').share('docs'), stateKeys('vfsx', 'near').share('docs'));
  assert.equal(stateKeys('vfsx', 'far').shares, stateKeys('vfsx', 'near').shares, 'the set of shares is one for all sites');

  const twice = { replication: { sites: [{ name: 'a', url: 'ws://x/' }, { name: 'a', url: 'ws://y/' }] } };
  assert.throws(() => validateConfig(twice), /the name "a" is used twice/);
  assert.throws(() => validateConfig({ replication: { sites: [{ name: 'A b', url: 'ws://x/' }] } }), /sites\/0\/name/);
  assert.throws(() => validateConfig({ replication: { sites: [{ name: 'a', url: 'ws://x/', bwlimit: 'fast' }] } }), /sites\/0\/bwlimit.*not a rate/s);
});
