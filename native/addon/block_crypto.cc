// Block ids, block sealing and opening for the replicator and restore, and the DR site's pack
// entry checksums, with the OpenSSL and zlib that Node itself links (their
// symbols are resolved from the node binary, or from the system's libcrypto
// and libz where Node uses those).
//
// They run on the libuv thread pool: the bytes of an initial sync are
// hashed and encrypted beside the event loop, which meanwhile reads the
// next run and sends the last frame (the site: receives the next frame).
// Sealing writes every block of a frame into one buffer, where Node's
// crypto allocates an output per call.
//
// The formats are those of src/repository/repo-cipher.ts, which opens what
// is sealed here (and is the reference for it):
//   id      HMAC-SHA256(idKey, plaintext) or SHA-256(plaintext), 32 bytes
//   sealed  version(1) flags(1) nonce(12) AES-256-GCM(body, aad = id) tag(16)
#include "block_crypto.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <zlib.h>

#include <functional>
#include <string>
#include <vector>

namespace vfsx {
namespace {

constexpr size_t kIdBytes = 32;
constexpr size_t kKeyBytes = 32;
constexpr size_t kNonce = 12;
constexpr size_t kTag = 16;
constexpr size_t kHead = 2 + kNonce;
constexpr uint8_t kBlockVersion = 1;

struct Bytes {
  const uint8_t *data = nullptr;
  size_t len = 0;
};

bool BufferArg(const Napi::Value &v, Bytes *out) {
  if (!v.IsBuffer()) return false;
  auto b = v.As<Napi::Buffer<uint8_t>>();
  out->data = b.Data();
  out->len = b.Length();
  return true;
}

// Ids of the blocks of one run: key empty means SHA-256, else HMAC-SHA256.
bool IdsOf(const Bytes &key, const Bytes &run, size_t bs, uint8_t *out, std::string *err) {
  for (size_t off = 0, i = 0; off < run.len; off += bs, i++) {
    size_t n = run.len - off < bs ? run.len - off : bs;
    unsigned int len = 0;
    bool ok = key.len == 0
                  ? EVP_Digest(run.data + off, n, out + i * kIdBytes, &len, EVP_sha256(), nullptr) == 1
                  : HMAC(EVP_sha256(), key.data, static_cast<int>(key.len), run.data + off, n,
                         out + i * kIdBytes, &len) != nullptr;
    if (!ok || len != kIdBytes) {
      *err = "block id: OpenSSL failed";
      return false;
    }
  }
  return true;
}

// Runs work on the libuv thread pool, then settles a promise on the JS thread: with `result` (a buffer
// the work filled), or with the error the work reported. Every JS value the work reads is held (no GC)
// until then.
class PoolWorker : public Napi::AsyncWorker {
 public:
  using Work = std::function<bool(std::string *err)>;

  PoolWorker(Napi::Env env, const Napi::Value &result, Work work)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), work_(std::move(work)) {
    result_ = Napi::Persistent(result.As<Napi::Object>());
  }
  void Hold(const Napi::Value &v) { held_.push_back(Napi::Persistent(v.As<Napi::Object>())); }
  Napi::Promise Start() {
    Napi::Promise p = deferred_.Promise();
    Queue();
    return p;
  }

  void Execute() override {
    std::string err;
    if (!work_(&err)) SetError(err);
  }
  void OnOK() override { deferred_.Resolve(result_.Value()); }
  void OnError(const Napi::Error &e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Work work_;
  Napi::ObjectReference result_;
  std::vector<Napi::ObjectReference> held_;
};

// Runs work at once (its result, or its error thrown) or, when async, on the thread pool (a promise of
// it), holding `held` (the JS values the work reads) until it is done.
Napi::Value RunWork(Napi::Env env, bool async, const Napi::Value &result, PoolWorker::Work work,
                    const std::vector<Napi::Value> &held) {
  if (!async) {
    std::string err;
    if (!work(&err)) {
      Napi::Error::New(env, err).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    return result;
  }
  auto *w = new PoolWorker(env, result, std::move(work));
  for (const Napi::Value &v : held) w->Hold(v);
  return w->Start();
}
// blockIds(key: Buffer (empty: SHA-256), run: Buffer, blockSize, async): Buffer | Promise<Buffer>
Napi::Value BlockIds(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Bytes key, run;
  if (info.Length() != 4 || !BufferArg(info[0], &key) || !BufferArg(info[1], &run) || !info[2].IsNumber() ||
      !info[3].IsBoolean()) {
    Napi::TypeError::New(env, "blockIds(key, run, blockSize, async)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  double bs = info[2].As<Napi::Number>().DoubleValue();
  if (!(bs >= 1 && bs <= (1 << 30)) || bs != static_cast<double>(static_cast<size_t>(bs)) ||
      (key.len != 0 && key.len != kKeyBytes)) {
    Napi::RangeError::New(env, "blockIds: blockSize a whole number 1..2^30, key empty or 32 bytes").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  size_t count = (run.len + static_cast<size_t>(bs) - 1) / static_cast<size_t>(bs);
  auto out = Napi::Buffer<uint8_t>::New(env, count * kIdBytes);
  return RunWork(env, info[3].As<Napi::Boolean>().Value(), out,
                 [key, run, bs = static_cast<size_t>(bs), o = out.Data()](std::string *err) { return IdsOf(key, run, bs, o, err); },
                 {info[0], info[1]});
}

struct SealItem {
  Bytes body;
  const uint8_t *id;
  uint8_t flags;
  uint8_t *out;
};

// Seals each item into its place in one output buffer.
bool SealAll(const Bytes &key, const std::vector<SealItem> &items, std::string *err) {
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  if (!ctx || EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, key.data, nullptr) != 1) {
    EVP_CIPHER_CTX_free(ctx);
    *err = "seal: OpenSSL cannot set up AES-256-GCM";
    return false;
  }
  for (const SealItem &it : items) {
    uint8_t *o = it.out;
    o[0] = kBlockVersion;
    o[1] = it.flags;
    int aad = 0;
    int n = 0;
    int fin = 0;
    // A fresh random nonce per block; the id is the associated data.
    bool ok = RAND_bytes(o + 2, kNonce) == 1 && EVP_EncryptInit_ex(ctx, nullptr, nullptr, nullptr, o + 2) == 1 &&
              EVP_EncryptUpdate(ctx, nullptr, &aad, it.id, kIdBytes) == 1 &&
              (it.body.len == 0 ||
               EVP_EncryptUpdate(ctx, o + kHead, &n, it.body.data, static_cast<int>(it.body.len)) == 1) &&
              EVP_EncryptFinal_ex(ctx, o + kHead + n, &fin) == 1 && static_cast<size_t>(n + fin) == it.body.len &&
              EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, kTag, o + kHead + it.body.len) == 1;
    if (!ok) {
      EVP_CIPHER_CTX_free(ctx);
      *err = "seal: OpenSSL failed";
      return false;
    }
  }
  EVP_CIPHER_CTX_free(ctx);
  return true;
}

// sealBlocks(key: Buffer(32), ids: Buffer(32 * n), bodies: Buffer[n], flags: number[n], out: Buffer, async):
//   out | Promise<out>, holding the n sealed blocks back to back (each its body's length + 30
//   bytes; out must be exactly that long). The caller allocates out: a buffer made here would be
//   zero-filled first, which measured more of the event loop than the sealing saved.

Napi::Value SealBlocks(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Bytes key, ids, outBytes;
  if (info.Length() != 6 || !BufferArg(info[0], &key) || !BufferArg(info[1], &ids) || !info[2].IsArray() ||
      !info[3].IsArray() || !BufferArg(info[4], &outBytes) || !info[5].IsBoolean()) {
    Napi::TypeError::New(env, "sealBlocks(key, ids, bodies, flags, out, async)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto bodies = info[2].As<Napi::Array>();
  auto flags = info[3].As<Napi::Array>();
  uint32_t n = bodies.Length();
  if (key.len != kKeyBytes || flags.Length() != n || ids.len != static_cast<size_t>(n) * kIdBytes) {
    Napi::RangeError::New(env, "sealBlocks: a 32-byte key, 32 bytes of id and one flag per body")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::vector<SealItem> items(n);
  size_t total = 0;
  for (uint32_t i = 0; i < n; i++) {
    Napi::Value b = bodies[i];
    Napi::Value f = flags[i];
    if (!BufferArg(b, &items[i].body) || !f.IsNumber() || items[i].body.len > (1u << 30)) {
      Napi::TypeError::New(env, "sealBlocks: bodies are Buffers of at most 1 GiB, flags numbers")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    items[i].flags = static_cast<uint8_t>(f.As<Napi::Number>().Uint32Value());
    items[i].id = ids.data + static_cast<size_t>(i) * kIdBytes;
    total += kHead + items[i].body.len + kTag;
  }
  if (outBytes.len != total) {
    Napi::RangeError::New(env, "sealBlocks: out must be as long as the sealed blocks").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto out = info[4].As<Napi::Buffer<uint8_t>>();
  size_t off = 0;
  for (SealItem &it : items) {
    it.out = out.Data() + off;
    off += kHead + it.body.len + kTag;
  }
  std::vector<Napi::Value> held{info[0], info[1]};
  for (uint32_t i = 0; i < n; i++) held.push_back(bodies[i]);
  return RunWork(env, info[5].As<Napi::Boolean>().Value(), out,
                 [key, items = std::move(items)](std::string *err) { return SealAll(key, items, err); }, held);
}

// What openBlocks says of each block.
enum OpenStatus : uint8_t {
  kOpened = 0,       // authenticated, and its plaintext has the id asked for
  kNotSealed = 1,    // too short, or not this version's layout
  kAuthFailed = 2,   // altered, damaged, or sealed with another key
  kWrongId = 3,      // authenticated, but its plaintext is not the block asked for
  kCompressed = 4,   // authenticated; the caller decompresses it and checks the id
};

constexpr uint8_t kFlagZstd = 1;

struct OpenItem {
  Bytes sealed;
  const uint8_t *id;
  uint8_t *out;  // the body's place in the output (sealed.len - kHead - kTag bytes)
};

// Opens each item into its place in one output buffer; one status byte per item.
bool OpenAll(const Bytes &blockKey, const Bytes &idKey, const std::vector<OpenItem> &items, uint8_t *status,
             std::string *err) {
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  if (!ctx || EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, blockKey.data, nullptr) != 1) {
    EVP_CIPHER_CTX_free(ctx);
    *err = "open: OpenSSL cannot set up AES-256-GCM";
    return false;
  }
  for (size_t i = 0; i < items.size(); i++) {
    const OpenItem &it = items[i];
    const uint8_t *s = it.sealed.data;
    if (it.sealed.len < kHead + kTag || s[0] != kBlockVersion) {
      status[i] = kNotSealed;
      continue;
    }
    size_t bodyLen = it.sealed.len - kHead - kTag;
    int aad = 0;
    int n = 0;
    int fin = 0;
    // The tag is set before the final call, which checks it: nothing unauthenticated is reported as opened.
    bool ok = EVP_DecryptInit_ex(ctx, nullptr, nullptr, nullptr, s + 2) == 1 &&
              EVP_DecryptUpdate(ctx, nullptr, &aad, it.id, kIdBytes) == 1 &&
              (bodyLen == 0 || EVP_DecryptUpdate(ctx, it.out, &n, s + kHead, static_cast<int>(bodyLen)) == 1) &&
              EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, kTag, const_cast<uint8_t *>(s + kHead + bodyLen)) == 1 &&
              EVP_DecryptFinal_ex(ctx, it.out + n, &fin) == 1 && static_cast<size_t>(n + fin) == bodyLen;
    if (!ok) {
      status[i] = kAuthFailed;
      continue;
    }
    if (s[1] & kFlagZstd) {
      status[i] = kCompressed;
      continue;
    }
    uint8_t mac[kIdBytes];
    unsigned int len = 0;
    if (HMAC(EVP_sha256(), idKey.data, static_cast<int>(idKey.len), it.out, bodyLen, mac, &len) == nullptr ||
        len != kIdBytes) {
      EVP_CIPHER_CTX_free(ctx);
      *err = "open: OpenSSL failed";
      return false;
    }
    status[i] = CRYPTO_memcmp(mac, it.id, kIdBytes) == 0 ? kOpened : kWrongId;
  }
  EVP_CIPHER_CTX_free(ctx);
  return true;
}

// openBlocks(blockKey: Buffer(32), idKey: Buffer(32), ids: Buffer(32 * n), sealed: Buffer[n], out: Buffer, async):
//   status | Promise<status>, a Buffer of n OpenStatus bytes. Each block's body goes to out, back to back
//   (each sealed length - 30 bytes; out must be exactly that long, allocated by the caller as for sealBlocks).
//   Only a block whose status is kOpened (or kCompressed, for the caller to finish) has meaningful bytes there.
Napi::Value OpenBlocks(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Bytes blockKey, idKey, ids, outBytes;
  if (info.Length() != 6 || !BufferArg(info[0], &blockKey) || !BufferArg(info[1], &idKey) ||
      !BufferArg(info[2], &ids) || !info[3].IsArray() || !BufferArg(info[4], &outBytes) || !info[5].IsBoolean()) {
    Napi::TypeError::New(env, "openBlocks(blockKey, idKey, ids, sealed, out, async)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto sealed = info[3].As<Napi::Array>();
  uint32_t n = sealed.Length();
  if (blockKey.len != kKeyBytes || idKey.len != kKeyBytes || ids.len != static_cast<size_t>(n) * kIdBytes) {
    Napi::RangeError::New(env, "openBlocks: 32-byte keys and 32 bytes of id per sealed block")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::vector<OpenItem> items(n);
  size_t total = 0;
  for (uint32_t i = 0; i < n; i++) {
    Napi::Value b = sealed[i];
    if (!BufferArg(b, &items[i].sealed) || items[i].sealed.len > (1u << 30)) {
      Napi::TypeError::New(env, "openBlocks: sealed blocks are Buffers of at most 1 GiB").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    items[i].id = ids.data + static_cast<size_t>(i) * kIdBytes;
    if (items[i].sealed.len >= kHead + kTag) total += items[i].sealed.len - kHead - kTag;
  }
  if (outBytes.len != total) {
    Napi::RangeError::New(env, "openBlocks: out must be as long as the blocks' bodies").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto out = info[4].As<Napi::Buffer<uint8_t>>();
  size_t off = 0;
  for (OpenItem &it : items) {
    it.out = out.Data() + off;
    if (it.sealed.len >= kHead + kTag) off += it.sealed.len - kHead - kTag;
  }
  auto status = Napi::Buffer<uint8_t>::New(env, n);
  std::vector<Napi::Value> held{info[0], info[1], info[2], info[4]};
  for (uint32_t i = 0; i < n; i++) held.push_back(sealed[i]);
  return RunWork(env, info[5].As<Napi::Boolean>().Value(), status,
                 [blockKey, idKey, items = std::move(items), st = status.Data()](std::string *err) {
                   return OpenAll(blockKey, idKey, items, st, err);
                 },
                 held);
}

// crc32s(bufs: Buffer[]): Promise<Buffer>: zlib's CRC-32 of each, 4 bytes big-endian each.
Napi::Value Crc32s(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsArray()) {
    Napi::TypeError::New(env, "crc32s(buffers)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto arr = info[0].As<Napi::Array>();
  std::vector<Bytes> bufs(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value b = arr[i];
    if (!BufferArg(b, &bufs[i])) {
      Napi::TypeError::New(env, "crc32s: every element must be a Buffer").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  auto out = Napi::Buffer<uint8_t>::New(env, 4 * bufs.size());
  std::vector<Napi::Value> held;
  for (uint32_t i = 0; i < arr.Length(); i++) held.push_back(arr[i]);
  return RunWork(env, true, out, [bufs = std::move(bufs), o = out.Data()](std::string *) {
    for (size_t i = 0; i < bufs.size(); i++) {
      uint32_t c = static_cast<uint32_t>(crc32_z(crc32_z(0, Z_NULL, 0), bufs[i].data, bufs[i].len));
      uint8_t *at = o + 4 * i;  // big-endian, as the pack entry header holds it
      at[0] = static_cast<uint8_t>(c >> 24);
      at[1] = static_cast<uint8_t>(c >> 16);
      at[2] = static_cast<uint8_t>(c >> 8);
      at[3] = static_cast<uint8_t>(c);
    }
    return true;
  }, held);
}

}  // namespace

void RegisterBlockCrypto(Napi::Env env, Napi::Object exports) {
  exports.Set("blockIds", Napi::Function::New(env, BlockIds));
  exports.Set("sealBlocks", Napi::Function::New(env, SealBlocks));
  exports.Set("openBlocks", Napi::Function::New(env, OpenBlocks));
  exports.Set("crc32s", Napi::Function::New(env, Crc32s));
}

}  // namespace vfsx
