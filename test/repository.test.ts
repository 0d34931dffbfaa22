/**
 * Unit tests of the encrypted repository's cipher and key records
 * (src/repository): what goes in comes out, and nothing altered, moved or
 * sealed with another key ever opens.
 */
import assert from 'node:assert/strict';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { RepoCipher, SEAL_OVERHEAD } from '../src/repository/repo-cipher';
import { KeyRecord, unwrapMasterKey, wrapMasterKey } from '../src/repository/key-record';
import { crc32 } from 'node:zlib';
import { crc32s, hashBlocks, openBlocks, sealBlocks } from '../src/native/addon';

const cipher = new RepoCipher(RepoCipher.newMasterKey());
const other = new RepoCipher(RepoCipher.newMasterKey());

test('a sealed block opens to its bytes; ids are keyed (another repository names the same bytes differently); nonces are random', () => {
  const plain = randomBytes(65536);
  const id = cipher.blockId(plain);
  assert.notEqual(id, other.blockId(plain));
  assert.match(id, /^[0-9a-f]{64}$/);
  const a = cipher.sealBlock(id, plain);
  const b = cipher.sealBlock(id, plain);
  assert.notDeepEqual(a, b, 'two seals of one block differ (random nonce)');
  assert.deepEqual(cipher.openBlock(id, a), plain);
  assert.deepEqual(cipher.openBlock(id, b), plain);
  // Every seal draws a new nonce (OpenSSL's RAND_bytes in the addon; metadata's from a pool of 512, across several refills).
  const small = randomBytes(100);
  const sid = cipher.blockId(small);
  const seals = Array.from({ length: 2000 }, () => cipher.sealBlock(sid, small, false));
  assert.equal(new Set(seals.map((x) => x.subarray(2, 14).toString('hex'))).size, 2000);
  for (const x of [seals[0], seals[511], seals[512], seals[1999]]) assert.deepEqual(cipher.openBlock(sid, x), small);
  const metas = new Set(Array.from({ length: 600 }, () => Buffer.from(cipher.sealMeta({ m: 1 }, 'b'), 'base64').subarray(0, 12).toString('hex')));
  assert.equal(metas.size, 600);
});

test("the addon names the blocks of a run as Node's own HMAC-SHA256 and SHA-256 do, on the thread pool and off it", async () => {
  const key = randomBytes(32);
  const data = randomBytes((1 << 20) + 3);
  // Runs below 256 KiB are hashed at once, larger ones on the thread pool; every shape of last block.
  for (const [len, bs] of [[1, 65536], [65535, 65536], [65536, 65536], [65537, 65536], [300_000, 65536], [(1 << 20) + 3, 65536], [(1 << 20) + 3, 4096], [5000, 1]] as const) {
    const run = data.subarray(0, len);
    const want: string[] = [];
    const wantSha: string[] = [];
    for (let o = 0; o < len; o += bs) {
      want.push(createHmac('sha256', key).update(run.subarray(o, o + bs)).digest('hex'));
      wantSha.push(createHash('sha256').update(run.subarray(o, o + bs)).digest('hex'));
    }
    assert.deepEqual(await hashBlocks(key, run, bs), want, `HMAC, ${len} bytes in blocks of ${bs}`);
    assert.deepEqual(await hashBlocks(Buffer.alloc(0), run, bs), wantSha, `SHA-256, ${len} bytes in blocks of ${bs}`);
  }
  const ids = await cipher.blockIds(data, 65536);
  assert.deepEqual(ids, Array.from({ length: 17 }, (_, i) => cipher.blockId(data.subarray(i * 65536, (i + 1) * 65536))));
  // Bad arguments are errors, never a crash.
  await assert.rejects(async () => hashBlocks(Buffer.alloc(5), data, 65536), /key empty or 32 bytes/);
  await assert.rejects(async () => hashBlocks(key, data, 0), /blockSize/);
  await assert.rejects(async () => hashBlocks(key, data, 1.5), /whole number/);
  assert.deepEqual(await hashBlocks(key, Buffer.alloc(0), 65536), []);
});

test("blocks sealed many at a time on the thread pool open one by one with Node's crypto; their ids are bound in", async () => {
  const text = Buffer.from('minutes of the meeting, quarterly figures, approved\n'.repeat(1300)).subarray(0, 65536);
  const plains = [randomBytes(65536), text, randomBytes(1), Buffer.from(text.subarray(0, 600)), randomBytes(65536)];
  const ids = plains.map((p) => cipher.blockId(p));
  const sealed = await cipher.sealBlocks(ids, plains);
  assert.equal(sealed.length, plains.length);
  assert.equal(sealed[0].length, 65536 + SEAL_OVERHEAD);
  assert.ok(sealed[1].length < text.length / 4, 'text is compressed first');
  sealed.forEach((s, i) => assert.deepEqual(cipher.openBlock(ids[i], s), plains[i], `block ${i}`));
  assert.throws(() => cipher.openBlock(ids[4], sealed[0]), /fails authentication/);
  const bad = Buffer.from(sealed[4]);
  bad[100] ^= 0x80;
  assert.throws(() => cipher.openBlock(ids[4], bad), (e: { code?: string }) => e.code === 'VFSX_ERR_DR_BAD_BLOCK');
  // Bad arguments are errors, never a crash.
  await assert.rejects(() => cipher.sealBlocks(['00'], [text]), /not a block id/);
  assert.throws(() => sealBlocks(Buffer.alloc(31), Buffer.alloc(32), [text], [0], SEAL_OVERHEAD, true), /32-byte key/);
  assert.throws(() => sealBlocks(Buffer.alloc(32), Buffer.alloc(64), [text], [0], SEAL_OVERHEAD, true), /one flag per body/);
  assert.throws(() => sealBlocks(Buffer.alloc(32), Buffer.alloc(32), [text], [0], 0, true), /as long as the sealed blocks/);
});

test('blocks open many at a time in the addon as openBlock opens them; an altered, foreign, misnamed or truncated one is refused', async () => {
  const text = Buffer.from('minutes of the meeting, quarterly figures, approved\n'.repeat(1300)).subarray(0, 65536);
  const plains = [randomBytes(65536), text, randomBytes(1), Buffer.from(text.subarray(0, 600)), randomBytes(65536)];
  const ids = plains.map((p) => cipher.blockId(p));
  const sealed = await cipher.sealBlocks(ids, plains);
  // Below 256 KiB of sealed bytes at once, 4 x 64 KiB and more on the thread pool.
  for (const copies of [1, 4]) {
    const many = Array.from({ length: copies }, () => sealed).flat();
    const manyIds = Array.from({ length: copies }, () => ids).flat();
    const opened = await cipher.openBlocks(manyIds, many);
    assert.equal(opened.length, many.length);
    opened.forEach((o, i) => assert.deepEqual(o, cipher.openBlock(manyIds[i], many[i]), `block ${i} of ${many.length}`));
  }
  const refused = async (blockIds: string[], blocks: Buffer[], why: RegExp, c = cipher) =>
    assert.rejects(() => c.openBlocks(blockIds, blocks), (e: { code?: string; message: string }) => e.code === 'VFSX_ERR_DR_BAD_BLOCK' && why.test(e.message));
  // A flipped byte anywhere: the version byte says it is not a sealed block; a flags byte that now says
  // "compressed" (flags are not authenticated) does not decompress; the rest fails authentication.
  for (const [at, why] of [[0, /is not a sealed block/], [1, /does not decompress/], [2, /fails authentication/], [14, /fails authentication/],
    [sealed[0].length >> 1, /fails authentication/], [sealed[0].length - 1, /fails authentication/]] as const) {
    const bad = Buffer.from(sealed[0]);
    bad[at] ^= 0x01;
    await refused([ids[4], ids[0]], [sealed[4], bad], why);
  }
  const offText = Buffer.from(sealed[1]);
  offText[1] ^= 0x01; // compressed text read as a plain body: authenticated, but not the block asked for
  await refused([ids[1]], [offText], /is not the block asked for/);
  await refused([ids[4]], [sealed[0]], /fails authentication/); // served under another id
  await refused([ids[0]], [sealed[0]], /fails authentication/, other); // sealed with another key
  await refused([ids[0]], [sealed[0].subarray(0, SEAL_OVERHEAD - 1)], /is not a sealed block/);
  await refused(['00'], [sealed[0]], /not a block id/);
  // Sealed under an id that is not its plaintext's: it authenticates, and is still refused.
  const [misnamed] = await cipher.sealBlocks([ids[4]], [plains[0]]);
  await refused([ids[4]], [misnamed], /is not the block asked for/);
  await refused(Array(8).fill(ids[4]), Array(8).fill(misnamed), /is not the block asked for/); // on the thread pool
  assert.deepEqual(await cipher.openBlocks([], []), []);
  // Bad arguments are errors, never a crash.
  await assert.rejects(() => openBlocks(Buffer.alloc(31), Buffer.alloc(32), Buffer.alloc(32), [sealed[0]], SEAL_OVERHEAD), /32-byte keys/);
  await assert.rejects(() => openBlocks(Buffer.alloc(32), Buffer.alloc(32), Buffer.alloc(64), [sealed[0]], SEAL_OVERHEAD), /32 bytes of id per sealed block/);
  await assert.rejects(() => openBlocks(Buffer.alloc(32), Buffer.alloc(32), Buffer.alloc(32), ['x' as unknown as Buffer], SEAL_OVERHEAD), /Buffers/);
});

test("the DR site's pack entry checksums, on the thread pool, are zlib's CRC-32", async () => {
  const big = randomBytes(70_000);
  const bufs = [Buffer.alloc(0), Buffer.from('a'), big, big.subarray(3, 65539), Buffer.from('123456789')];
  const got = await crc32s(bufs);
  assert.equal(got.length, 4 * bufs.length);
  bufs.forEach((b, i) => assert.equal(got.readUInt32BE(4 * i), crc32(b), `buffer ${i}`));
  assert.equal(got.readUInt32BE(16), 0xcbf43926, 'the CRC-32 check value');
  await assert.rejects(async () => crc32s([Buffer.alloc(1), 'x' as unknown as Buffer]), /every element must be a Buffer/);
});

test('compression: text shrinks before sealing, noise is stored at its size plus the seal, and a noise-prefixed block is not tried', () => {
  const text = Buffer.from('minutes of the meeting, quarterly figures, approved\n'.repeat(1300)).subarray(0, 65536);
  const sealedText = cipher.sealBlock(cipher.blockId(text), text);
  assert.ok(sealedText.length < text.length / 4, `${sealedText.length} bytes for 64 KiB of text`);
  assert.deepEqual(cipher.openBlock(cipher.blockId(text), sealedText), text);
  const noise = randomBytes(65536);
  assert.equal(cipher.sealBlock(cipher.blockId(noise), noise).length, noise.length + SEAL_OVERHEAD);
  const mixed = Buffer.concat([randomBytes(4096), text.subarray(0, 65536 - 4096)]);
  const sealedMixed = cipher.sealBlock(cipher.blockId(mixed), mixed);
  assert.equal(sealedMixed.length, mixed.length + SEAL_OVERHEAD, 'the probe of the first 4 KiB decides');
  assert.deepEqual(cipher.openBlock(cipher.blockId(mixed), sealedMixed), mixed);
});

test('a block altered anywhere, served under another id, or sealed with another key is refused (VFSX_ERR_DR_BAD_BLOCK)', () => {
  const plain = Buffer.from('the quarterly report '.repeat(200));
  const id = cipher.blockId(plain);
  const sealed = cipher.sealBlock(id, plain);
  for (const at of [0, 1, 2, 13, 14, sealed.length >> 1, sealed.length - 1]) {
    const bad = Buffer.from(sealed);
    bad[at] ^= 0x01;
    assert.throws(() => cipher.openBlock(id, bad), (e: { code?: string }) => e.code === 'VFSX_ERR_DR_BAD_BLOCK', `byte ${at}`);
  }
  const otherPlain = Buffer.from('another block');
  const otherId = cipher.blockId(otherPlain);
  assert.throws(() => cipher.openBlock(otherId, sealed), /fails authentication/);
  assert.throws(() => other.openBlock(id, sealed), /fails authentication/);
  assert.throws(() => cipher.openBlock(id, sealed.subarray(0, 10)), (e: { code?: string }) => e.code === 'VFSX_ERR_DR_BAD_BLOCK');
});

test('names seal per component, deterministically, and open again; an altered or foreign name is refused', () => {
  const names = ['Projects', 'Q3 report, final.txt', 'Ünïcödé 日本語 😀', 'a', 'x'.repeat(255), '.hidden'];
  for (const n of names) {
    const s = cipher.sealName(n);
    assert.equal(s, cipher.sealName(n));
    assert.match(s, /^[A-Za-z0-9_-]+$/);
    assert.ok(!s.includes(n) || n.length < 2);
    assert.equal(cipher.openName(s), n);
    assert.notEqual(s, other.sealName(n));
    assert.throws(() => other.openName(s), /fails authentication/);
  }
  assert.notEqual(cipher.sealName('a'), cipher.sealName('b'));
  const p = 'Projects/2026/Q3 report.txt';
  const sp = cipher.sealPath(p);
  assert.equal(sp.split('/').length, 3);
  assert.ok(sp.startsWith(`${cipher.sealName('Projects')}/`), 'a prefix seals to a prefix: listings and moves by subtree work');
  assert.equal(cipher.openPath(sp), p);
  const raw = Buffer.from(cipher.sealName('Projects'), 'base64url');
  raw[20] ^= 1;
  assert.throws(() => cipher.openName(raw.toString('base64url')), /fails authentication/);
  assert.throws(() => cipher.openName('not-a-sealed-name'), /fails authentication/);
});

test('metadata opens only with the kind and size it was bound to', () => {
  const meta = { mode: 0o644, uid: 1000, xattrs: { 'user.DOSATTRIB': 'AAA=' } };
  const s = cipher.sealMeta(meta, 'file\u0000100');
  assert.deepEqual(cipher.openMeta(s, 'file\u0000100', 'x'), meta);
  assert.throws(() => cipher.openMeta(s, 'file\u0000101', 'x'), /fails authentication/);
  assert.throws(() => other.openMeta(s, 'file\u0000100', 'x'), /fails authentication/);
  assert.ok(!Buffer.from(s, 'base64').toString('latin1').includes('DOSATTRIB'));
});

test('a key record unwraps with its passphrase only; a record altered at the site or with hostile scrypt costs is refused', async () => {
  const master = RepoCipher.newMasterKey();
  const rec = await wrapMasterKey(master, 'correct horse battery staple', 'test', { N: 1 << 14, r: 8, p: 1 });
  assert.deepEqual(await unwrapMasterKey(rec, 'correct horse battery staple'), master);
  assert.equal(await unwrapMasterKey(rec, 'correct horse battery stapler'), null);
  assert.equal(await unwrapMasterKey({ ...rec, id: '0123456789abcdef' }, 'correct horse battery staple'), null, 'the id is bound to the wrapped key');
  const raw = Buffer.from(rec.wrapped, 'base64');
  raw[20] ^= 1;
  assert.equal(await unwrapMasterKey({ ...rec, wrapped: raw.toString('base64') }, 'correct horse battery staple'), null);
  const hostile: KeyRecord = { ...rec, kdf: { ...rec.kdf, N: 1 << 24 } };
  await assert.rejects(unwrapMasterKey(hostile, 'correct horse battery staple'), /out of bounds/);
  await assert.rejects(unwrapMasterKey({ ...rec, kdf: { ...rec.kdf, p: 64 } }, 'x'), /out of bounds/);
  await assert.rejects(unwrapMasterKey({ ...rec, kdf: { ...rec.kdf, salt: 'AAAA' } }, 'x'), /salt/);
  await assert.rejects(unwrapMasterKey({ ...rec, wrapped: 'AAAA' }, 'x'), /malformed/);
});
