// File-tree operations beneath a directory fd, never through a symlink:
// what restore writes and what the replicator reads go through these, so
// neither a hostile DR site nor a local user swapping a directory for a
// symlink can make a root process read or write outside its tree.
#include "tree_ops.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <string>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <utility>
#include <vector>

#include "beneath.h"

namespace vfsx {

namespace {

Napi::Error MakeError(Napi::Env env, int err, const char *syscall, const std::string &path) {
  const char *name = strerrorname_np(err);
  std::string code = name ? name : "EUNKNOWN";
  std::string msg = code + ": " + strerror(err) + ", " + syscall + " '" + path + "'";
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  e.Set("errno", Napi::Number::New(env, -err));
  e.Set("syscall", Napi::String::New(env, syscall));
  e.Set("path", Napi::String::New(env, path));
  return e;
}

Napi::Value Throw(Napi::Env env, int err, const char *syscall, const std::string &path) {
  MakeError(env, err, syscall, path).ThrowAsJavaScriptException();
  return env.Undefined();
}

bool ArgInt(const Napi::CallbackInfo &info, size_t i, long long *out) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + ": expected an integer")
        .ThrowAsJavaScriptException();
    return false;
  }
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (v != static_cast<double>(static_cast<long long>(v)) || v < -1 || v > 0xffffffffLL) {
    Napi::RangeError::New(info.Env(), "argument " + std::to_string(i) + ": out of range")
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = static_cast<long long>(v);
  return true;
}

// A name or path: a string (its UTF-8), or a Buffer of its bytes (a name
// that is not UTF-8, src/protocol/byte-names.ts). Neither may hold a NUL.
bool ArgStr(const Napi::CallbackInfo &info, size_t i, std::string *out) {
  if (info.Length() > i && info[i].IsBuffer()) {
    Napi::Buffer<char> b = info[i].As<Napi::Buffer<char>>();
    out->assign(b.Data(), b.Length());
  } else if (info.Length() > i && info[i].IsString()) {
    *out = info[i].As<Napi::String>().Utf8Value();
  } else {
    Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + ": expected a string or a Buffer")
        .ThrowAsJavaScriptException();
    return false;
  }
  if (out->find('\0') != std::string::npos) {
    Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + ": holds a NUL byte").ThrowAsJavaScriptException();
    return false;
  }
  return true;
}

bool ArgFdRel(const Napi::CallbackInfo &info, int *fd, std::string *rel) {
  long long v = 0;
  if (!ArgInt(info, 0, &v) || !ArgStr(info, 1, rel)) return false;
  if (v < 0) {
    Napi::RangeError::New(info.Env(), "not a file descriptor").ThrowAsJavaScriptException();
    return false;
  }
  *fd = static_cast<int>(v);
  return true;
}

std::string ProcPath(int fd) { return "/proc/self/fd/" + std::to_string(fd); }

std::string Ns(const struct timespec &ts) {
  return std::to_string(static_cast<long long>(ts.tv_sec) * 1000000000LL + ts.tv_nsec);
}

const char *KindOf(mode_t m) {
  if (S_ISREG(m)) return "file";
  if (S_ISDIR(m)) return "dir";
  if (S_ISLNK(m)) return "symlink";
  return "other";
}

using Xattrs = std::vector<std::pair<std::string, std::string>>;

// Every xattr of the inode at p, a /proc/self/fd path: of an O_PATH fd of a
// file or directory (follow: the magic link itself is the last component),
// or of a directory fd plus a name (not follow: a symlink swapped in is not
// followed). Returns 0 or -errno; no xattr support gives an empty list.
// Makes no N-API call: runs on the thread pool too.
int ReadXattrs(const std::string &p, bool follow, Xattrs *out) {
  std::vector<char> names(4096);
  ssize_t n;
  for (;;) {
    n = follow ? listxattr(p.c_str(), names.data(), names.size()) : llistxattr(p.c_str(), names.data(), names.size());
    if (n >= 0) break;
    if (errno == ENOTSUP) return 0;
    if (errno != ERANGE) return -errno;
    names.resize(names.size() * 4);
  }
  std::vector<char> val(4096);
  for (ssize_t off = 0; off < n;) {
    const char *name = names.data() + off;
    off += static_cast<ssize_t>(strlen(name)) + 1;
    ssize_t vn;
    for (;;) {
      vn = follow ? getxattr(p.c_str(), name, val.data(), val.size()) : lgetxattr(p.c_str(), name, val.data(), val.size());
      if (vn >= 0 || errno != ERANGE) break;
      vn = follow ? getxattr(p.c_str(), name, nullptr, 0) : lgetxattr(p.c_str(), name, nullptr, 0);
      if (vn < 0) break;
      val.resize(static_cast<size_t>(vn) + 1);
    }
    if (vn < 0) {
      if (errno == ENODATA || errno == ENOTSUP) continue;  // removed meanwhile
      return -errno;
    }
    out->emplace_back(name, std::string(val.data(), static_cast<size_t>(vn)));
  }
  return 0;
}

// The target of the symlink name in dirfd ("" with an O_PATH fd of the link
// itself). Returns 0 or -errno. Makes no N-API call.
int ReadTarget(int dirfd, const char *name, const struct stat &st, std::string *target) {
  std::vector<char> buf(static_cast<size_t>(st.st_size > 0 ? st.st_size : 255) + 1);
  ssize_t n = readlinkat(dirfd, name, buf.data(), buf.size());
  if (n < 0) return -errno;
  target->assign(buf.data(), static_cast<size_t>(n));
  return 0;
}

Napi::Object EntryOf(Napi::Env env, const struct stat &st) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("kind", KindOf(st.st_mode));
  o.Set("mode", Napi::Number::New(env, st.st_mode & 07777));
  o.Set("uid", Napi::Number::New(env, st.st_uid));
  o.Set("gid", Napi::Number::New(env, st.st_gid));
  o.Set("size", Napi::Number::New(env, static_cast<double>(st.st_size)));
  o.Set("ino", Napi::String::New(env, std::to_string(st.st_ino)));
  o.Set("dev", Napi::String::New(env, std::to_string(st.st_dev)));
  o.Set("mtimeNs", Napi::String::New(env, Ns(st.st_mtim)));
  o.Set("ctimeNs", Napi::String::New(env, Ns(st.st_ctim)));
  return o;
}

Napi::Value UseWalk(const Napi::CallbackInfo &info) {
  BeneathUseWalk(info.Length() > 0 && info[0].ToBoolean().Value());
  return info.Env().Undefined();
}

Napi::Value OpenRoot(const Napi::CallbackInfo &info) {
  std::string path;
  if (!ArgStr(info, 0, &path)) return info.Env().Undefined();
  int fd = open(path.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Throw(info.Env(), errno, "open", path);
  return Napi::Number::New(info.Env(), fd);
}

Napi::Value OpenAt(const Napi::CallbackInfo &info) {
  int root;
  std::string rel;
  long long flags = 0, mode = 0;
  if (!ArgFdRel(info, &root, &rel) || !ArgInt(info, 2, &flags) || !ArgInt(info, 3, &mode))
    return info.Env().Undefined();
  int fd = OpenBeneath(root, rel, static_cast<int>(flags), static_cast<int>(mode));
  if (fd < 0) return Throw(info.Env(), -fd, "openat2", rel);
  return Napi::Number::New(info.Env(), fd);
}

// statAt(root, rel, xattrs) -> entry, or null when rel is not in the tree
// (gone, or below something that is not a directory: a symlink, a file).
Napi::Value StatAt(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int root;
  std::string rel;
  if (!ArgFdRel(info, &root, &rel)) return env.Undefined();
  bool want_xattrs = info.Length() > 2 && info[2].ToBoolean().Value();
  int fd = OpenBeneath(root, rel, O_PATH, 0);
  if (fd == -ENOENT || fd == -ENOTDIR || fd == -ELOOP) return env.Null();
  if (fd < 0) return Throw(env, -fd, "openat2", rel);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return Throw(env, e, "fstat", rel);
  }
  Napi::Object o = EntryOf(env, st);
  int rc = 0;
  const char *call = "";
  if (S_ISLNK(st.st_mode)) {
    std::string target;
    rc = ReadTarget(fd, "", st, &target);
    call = "readlinkat";
    if (rc == 0) o.Set("target", Napi::Buffer<char>::Copy(env, target.data(), target.size()));
  } else if (want_xattrs && (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode))) {
    Xattrs xs;
    rc = ReadXattrs(ProcPath(fd), true, &xs);
    call = "getxattr";
    if (rc == 0) {
      Napi::Object x = Napi::Object::New(env);
      for (const auto &kv : xs) x.Set(kv.first, Napi::Buffer<char>::Copy(env, kv.second.data(), kv.second.size()));
      o.Set("xattrs", x);
    }
  }
  close(fd);
  if (rc < 0) return Throw(env, -rc, call, rel);
  return o;
}

// What one directory's scan found, packed for the JS side to unpack
// (src/native/tree.ts, unpackScan): making a JS object per entry here cost
// most of a scan's time.
//   text: per entry its name, ino, dev, mtimeNs, ctimeNs, then each xattr's
//         name, each ending in NUL (a name holds no NUL);
//   nums: per entry st_mode, uid, gid, size, the target's length (-1: not a
//         symlink), the count of xattrs (-1: not read), then each xattr
//         value's length;
//   bin:  per entry the target's bytes, then each xattr's value.
struct ScanResult {
  bool found = true;  // false: rel is not a directory of the tree
  int err = 0;
  const char *call = "";
  std::string text;
  std::vector<double> nums;
  std::string bin;
};

void Field(std::string *text, const std::string &v) {
  text->append(v);
  text->push_back('\0');
}

// Every entry of the directory rel (one open of the directory, fstatat and
// l*xattr per entry, nothing followed). An entry gone between readdir and
// fstatat is left out. Makes no N-API call: runs on the thread pool too.
void ScanInto(int root, const std::string &rel, bool want_xattrs, ScanResult *r) {
  int fd = OpenBeneath(root, rel, O_RDONLY | O_DIRECTORY, 0);
  if (fd == -ENOENT || fd == -ENOTDIR || fd == -ELOOP) {
    r->found = false;
    return;
  }
  if (fd < 0) {
    r->err = -fd;
    r->call = "openat2";
    return;
  }
  DIR *d = fdopendir(fd);
  if (!d) {
    r->err = errno;
    r->call = "fdopendir";
    close(fd);
    return;
  }
  const std::string base = ProcPath(fd) + "/";
  std::string target;
  Xattrs xs;
  errno = 0;
  while (struct dirent *e = readdir(d)) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    struct stat st;
    if (fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) {
        errno = 0;
        continue;
      }
      r->err = errno;
      r->call = "fstatat";
      break;
    }
    bool link = S_ISLNK(st.st_mode);
    bool read_xattrs = !link && want_xattrs && (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode));
    xs.clear();
    int rc = link ? ReadTarget(fd, e->d_name, st, &target) : read_xattrs ? ReadXattrs(base + e->d_name, false, &xs) : 0;
    if (rc == -ENOENT) {
      errno = 0;
      continue;
    }
    if (rc < 0) {
      r->err = -rc;
      r->call = link ? "readlinkat" : "getxattr";
      break;
    }
    Field(&r->text, e->d_name);
    Field(&r->text, std::to_string(st.st_ino));
    Field(&r->text, std::to_string(st.st_dev));
    Field(&r->text, Ns(st.st_mtim));
    Field(&r->text, Ns(st.st_ctim));
    r->nums.insert(r->nums.end(), {static_cast<double>(st.st_mode), static_cast<double>(st.st_uid),
                                   static_cast<double>(st.st_gid), static_cast<double>(st.st_size),
                                   link ? static_cast<double>(target.size()) : -1.0,
                                   read_xattrs ? static_cast<double>(xs.size()) : -1.0});
    if (link) r->bin.append(target);
    for (const auto &kv : xs) {
      Field(&r->text, kv.first);
      r->nums.push_back(static_cast<double>(kv.second.size()));
      r->bin.append(kv.second);
    }
    errno = 0;
  }
  if (r->err == 0 && errno != 0) {
    r->err = errno;
    r->call = "readdir";
  }
  closedir(d);
}

// [text, nums, bin] of a scan (text a Buffer), null when rel is not a directory of the tree.
Napi::Value ScanValue(Napi::Env env, const ScanResult &r) {
  if (!r.found) return env.Null();
  Napi::Float64Array nums = Napi::Float64Array::New(env, r.nums.size());
  if (!r.nums.empty()) memcpy(nums.Data(), r.nums.data(), r.nums.size() * sizeof(double));
  Napi::Array out = Napi::Array::New(env, 3);
  // Bytes: a name need not be UTF-8 (the JS side decodes; src/native/tree.ts).
  out.Set(0u, Napi::Buffer<char>::Copy(env, r.text.data(), r.text.size()));
  out.Set(1u, nums);
  out.Set(2u, Napi::Buffer<char>::Copy(env, r.bin.data(), r.bin.size()));
  return out;
}

// A scan on the thread pool: the event loop keeps running while a large
// directory's entries are read (a cold one waits on the disk per inode).
// It scans through its own duplicate of the root fd, so a tree closed
// meanwhile (and its fd number reused) cannot redirect it.
class ScanWorker : public Napi::AsyncWorker {
 public:
  ScanWorker(Napi::Env env, int root, std::string rel, bool want_xattrs)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), root_(root), rel_(std::move(rel)),
        want_xattrs_(want_xattrs) {}
  ~ScanWorker() override {
    if (root_ >= 0) close(root_);
  }
  Napi::Promise Start() {
    Napi::Promise p = deferred_.Promise();
    Queue();
    return p;
  }
  void Execute() override { ScanInto(root_, rel_, want_xattrs_, &r_); }
  void OnOK() override {
    Napi::Env env = Env();
    if (r_.err != 0) {
      deferred_.Reject(MakeError(env, r_.err, r_.call, rel_).Value());
      return;
    }
    deferred_.Resolve(ScanValue(env, r_));
  }

 private:
  Napi::Promise::Deferred deferred_;
  int root_;
  std::string rel_;
  bool want_xattrs_;
  ScanResult r_;
};

// scanDir(root, rel, xattrs, async) -> [text, nums, bin] (see ScanResult)
// or null when rel is not a directory of the tree; a promise of it when async.
Napi::Value ScanDir(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int root;
  std::string rel;
  if (!ArgFdRel(info, &root, &rel)) return env.Undefined();
  bool want_xattrs = info.Length() > 2 && info[2].ToBoolean().Value();
  if (info.Length() > 3 && info[3].ToBoolean().Value()) {
    int own = fcntl(root, F_DUPFD_CLOEXEC, 0);
    if (own < 0) return Throw(env, errno, "fcntl", rel);
    return (new ScanWorker(env, own, rel, want_xattrs))->Start();
  }
  ScanResult r;
  ScanInto(root, rel, want_xattrs, &r);
  if (r.err != 0) return Throw(env, r.err, r.call, rel);
  return ScanValue(env, r);
}

// Runs fn(parentfd, name) on rel's parent directory beneath root.
template <typename Fn>
Napi::Value AtParent(const Napi::CallbackInfo &info, int root, const std::string &rel, const char *call, Fn fn) {
  std::string name;
  int dirfd = OpenParentBeneath(root, rel, &name);
  if (dirfd < 0) return Throw(info.Env(), -dirfd, "openat2", rel);
  int rc = fn(dirfd, name.c_str());
  int e = errno;
  close(dirfd);
  if (rc < 0) return Throw(info.Env(), e, call, rel);
  return info.Env().Undefined();
}

// mkdirAt(root, rel, mode) -> true when made, false when a directory is there already.
Napi::Value MkdirAt(const Napi::CallbackInfo &info) {
  int root;
  std::string rel;
  long long mode = 0;
  if (!ArgFdRel(info, &root, &rel) || !ArgInt(info, 2, &mode)) return info.Env().Undefined();
  bool made = true;
  Napi::Value r = AtParent(info, root, rel, "mkdirat", [&](int dirfd, const char *name) {
    if (mkdirat(dirfd, name, static_cast<mode_t>(mode)) == 0) return 0;
    if (errno != EEXIST) return -1;
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return -1;
    if (!S_ISDIR(st.st_mode)) {
      errno = S_ISLNK(st.st_mode) ? ELOOP : ENOTDIR;
      return -1;
    }
    made = false;
    return 0;
  });
  if (info.Env().IsExceptionPending()) return r;
  return Napi::Boolean::New(info.Env(), made);
}

Napi::Value SymlinkAt(const Napi::CallbackInfo &info) {
  int root;
  std::string rel, target;
  if (!ArgFdRel(info, &root, &rel) || !ArgStr(info, 2, &target)) return info.Env().Undefined();
  return AtParent(info, root, rel, "symlinkat", [&](int dirfd, const char *name) {
    return symlinkat(target.c_str(), dirfd, name);
  });
}

Napi::Value UnlinkAt(const Napi::CallbackInfo &info) {
  int root;
  std::string rel;
  if (!ArgFdRel(info, &root, &rel)) return info.Env().Undefined();
  bool dir = info.Length() > 2 && info[2].ToBoolean().Value();
  return AtParent(info, root, rel, "unlinkat", [&](int dirfd, const char *name) {
    return unlinkat(dirfd, name, dir ? AT_REMOVEDIR : 0);
  });
}

Napi::Value RenameAt(const Napi::CallbackInfo &info) {
  int root;
  std::string from, to;
  if (!ArgFdRel(info, &root, &from) || !ArgStr(info, 2, &to)) return info.Env().Undefined();
  std::string to_name;
  int to_dir = OpenParentBeneath(root, to, &to_name);
  if (to_dir < 0) return Throw(info.Env(), -to_dir, "openat2", to);
  Napi::Value r = AtParent(info, root, from, "renameat", [&](int dirfd, const char *name) {
    return renameat(dirfd, name, to_dir, to_name.c_str());
  });
  close(to_dir);
  return r;
}

Napi::Value ChownAt(const Napi::CallbackInfo &info) {
  int root;
  std::string rel;
  long long uid = 0, gid = 0;
  if (!ArgFdRel(info, &root, &rel) || !ArgInt(info, 2, &uid) || !ArgInt(info, 3, &gid))
    return info.Env().Undefined();
  return AtParent(info, root, rel, "fchownat", [&](int dirfd, const char *name) {
    return fchownat(dirfd, name, static_cast<uid_t>(uid), static_cast<gid_t>(gid), AT_SYMLINK_NOFOLLOW);
  });
}

// utimesAt(root, rel, mtimeNs): access and modification time, the link itself for a symlink.
Napi::Value UtimesAt(const Napi::CallbackInfo &info) {
  int root;
  std::string rel, ns;
  if (!ArgFdRel(info, &root, &rel) || !ArgStr(info, 2, &ns)) return info.Env().Undefined();
  char *end = nullptr;
  errno = 0;
  long long v = strtoll(ns.c_str(), &end, 10);
  if (ns.empty() || *end != '\0' || errno != 0) {
    Napi::RangeError::New(info.Env(), "mtimeNs: not an integer").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  struct timespec ts[2];
  ts[0].tv_sec = ts[1].tv_sec = v / 1000000000LL;
  ts[0].tv_nsec = ts[1].tv_nsec = v % 1000000000LL;
  if (ts[0].tv_nsec < 0) {
    ts[0].tv_sec = ts[1].tv_sec -= 1;
    ts[0].tv_nsec = ts[1].tv_nsec += 1000000000LL;
  }
  return AtParent(info, root, rel, "utimensat", [&](int dirfd, const char *name) {
    return utimensat(dirfd, name, ts, AT_SYMLINK_NOFOLLOW);
  });
}

// Opens rel O_PATH and refuses a symlink: for calls that would follow one.
int OpenNotLink(int root, const std::string &rel) {
  int fd = OpenBeneath(root, rel, O_PATH, 0);
  if (fd < 0) return fd;
  struct stat st;
  if (fstat(fd, &st) != 0 || S_ISLNK(st.st_mode)) {
    int e = S_ISLNK(st.st_mode) ? ELOOP : errno;
    close(fd);
    return -e;
  }
  return fd;
}

Napi::Value ChmodAt(const Napi::CallbackInfo &info) {
  int root;
  std::string rel;
  long long mode = 0;
  if (!ArgFdRel(info, &root, &rel) || !ArgInt(info, 2, &mode)) return info.Env().Undefined();
  int fd = OpenNotLink(root, rel);
  if (fd < 0) return Throw(info.Env(), -fd, "openat2", rel);
  int rc = chmod(ProcPath(fd).c_str(), static_cast<mode_t>(mode));
  int e = errno;
  close(fd);
  if (rc != 0) return Throw(info.Env(), e, "chmod", rel);
  return info.Env().Undefined();
}

Napi::Value SetXattrAt(const Napi::CallbackInfo &info) {
  int root;
  std::string rel, name;
  if (!ArgFdRel(info, &root, &rel) || !ArgStr(info, 2, &name)) return info.Env().Undefined();
  if (info.Length() < 4 || !info[3].IsBuffer()) {
    Napi::TypeError::New(info.Env(), "argument 3: expected a Buffer").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  Napi::Buffer<char> v = info[3].As<Napi::Buffer<char>>();
  int fd = OpenNotLink(root, rel);
  if (fd < 0) return Throw(info.Env(), -fd, "openat2", rel);
  int rc = setxattr(ProcPath(fd).c_str(), name.c_str(), v.Data(), v.Length(), 0);
  int e = errno;
  close(fd);
  if (rc != 0) return Throw(info.Env(), e, "setxattr", rel);
  return info.Env().Undefined();
}

}  // namespace

void RegisterTreeOps(Napi::Env env, Napi::Object exports) {
  static const struct {
    const char *name;
    Napi::Value (*fn)(const Napi::CallbackInfo &);
  } table[] = {
      {"useWalk", UseWalk},     {"openRoot", OpenRoot},   {"openAt", OpenAt},
      {"statAt", StatAt},       {"scanDir", ScanDir},     {"mkdirAt", MkdirAt},
      {"symlinkAt", SymlinkAt}, {"unlinkAt", UnlinkAt},   {"renameAt", RenameAt},
      {"chownAt", ChownAt},     {"utimesAt", UtimesAt},   {"chmodAt", ChmodAt},
      {"setXattrAt", SetXattrAt},
  };
  for (const auto &t : table) exports.Set(t.name, Napi::Function::New(env, t.fn));
}

}  // namespace vfsx
