// vfsx_addon: the system calls Node.js has no API for.
//   peerCred(fd)          -> { pid, uid, gid }   (getsockopt SO_PEERCRED)
//   tryLock(fd)           -> true | false        (flock LOCK_EX|LOCK_NB)
//   openAt, statAt, ...   file-tree calls beneath a directory (tree_ops.cc)
//   execve(file, argv, env)  replaces this process (same PID); returns only on failure
//   readCached(fd, buf, pos) -> bytes read from the page cache without waiting for
//                            the disk, -1 when none are cached (preadv2 RWF_NOWAIT)
// Errors are thrown Node-style: an Error with code, errno and syscall.
#include <napi.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <csignal>
#include <vector>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include "block_crypto.h"
#include "tree_ops.h"

namespace {

Napi::Value ThrowErrno(Napi::Env env, int err, const char *syscall) {
  const char *name = "EUNKNOWN";
  switch (err) {
  case EBADF: name = "EBADF"; break;
  case EINVAL: name = "EINVAL"; break;
  case ENOTSOCK: name = "ENOTSOCK"; break;
  case ENOPROTOOPT: name = "ENOPROTOOPT"; break;
  case EINTR: name = "EINTR"; break;
  case ENOLCK: name = "ENOLCK"; break;
  case ENOENT: name = "ENOENT"; break;
  case EACCES: name = "EACCES"; break;
  case E2BIG: name = "E2BIG"; break;
  case ENOMEM: name = "ENOMEM"; break;
  case EIO: name = "EIO"; break;
  case EOPNOTSUPP: name = "EOPNOTSUPP"; break;
  case EISDIR: name = "EISDIR"; break;
  default: break;
  }
  std::string msg = std::string(name) + ": " + strerror(err) + ", " + syscall;
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, name));
  e.Set("errno", Napi::Number::New(env, -err));
  e.Set("syscall", Napi::String::New(env, syscall));
  e.ThrowAsJavaScriptException();
  return env.Undefined();
}

bool FdArg(const Napi::CallbackInfo &info, int *fd) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsNumber()) {
    Napi::TypeError::New(env, "expected one argument: a file descriptor")
        .ThrowAsJavaScriptException();
    return false;
  }
  double v = info[0].As<Napi::Number>().DoubleValue();
  if (v < 0 || v > 0x7fffffff || v != static_cast<int>(v)) {
    Napi::RangeError::New(env, "file descriptor out of range")
        .ThrowAsJavaScriptException();
    return false;
  }
  *fd = static_cast<int>(v);
  return true;
}

Napi::Value PeerCred(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = -1;
  if (!FdArg(info, &fd)) return env.Undefined();
  struct ucred cred;
  socklen_t len = sizeof(cred);
  memset(&cred, 0, sizeof(cred));
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
    return ThrowErrno(env, errno, "getsockopt");
  Napi::Object out = Napi::Object::New(env);
  out.Set("pid", Napi::Number::New(env, cred.pid));
  out.Set("uid", Napi::Number::New(env, cred.uid));
  out.Set("gid", Napi::Number::New(env, cred.gid));
  return out;
}

Napi::Value TryLock(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = -1;
  if (!FdArg(info, &fd)) return env.Undefined();
  int rc;
  do {
    rc = flock(fd, LOCK_EX | LOCK_NB);
  } while (rc != 0 && errno == EINTR);
  if (rc == 0) return Napi::Boolean::New(env, true);
  if (errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
  return ThrowErrno(env, errno, "flock");
}

// ioprio_set(IOPRIO_WHO_PROCESS, tid, class << 13 | level): one thread (glibc has no wrapper).
Napi::Value SetIoPriority(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() != 3 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber()) {
    Napi::TypeError::New(env, "setIoPriority(tid, class, level)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int tid = info[0].As<Napi::Number>().Int32Value();
  int cls = info[1].As<Napi::Number>().Int32Value();
  int level = info[2].As<Napi::Number>().Int32Value();
  if (tid < 0 || cls < 1 || cls > 3 || level < 0 || level > 7) {
    Napi::RangeError::New(env, "setIoPriority: tid >= 0, class 1..3, level 0..7").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (syscall(SYS_ioprio_set, 1 /* IOPRIO_WHO_PROCESS */, tid, (cls << 13) | level) != 0)
    return ThrowErrno(env, errno, "ioprio_set");
  return env.Undefined();
}

// preadv2(fd, buf, pos, RWF_NOWAIT): what of the range the page cache holds,
// read at once; -1 when its first page is not cached (EAGAIN), so the caller
// reads it on the thread pool instead of stalling its event loop on the
// disk. A file system without RWF_NOWAIT throws EOPNOTSUPP.
Napi::Value ReadCached(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() != 3 || !info[0].IsNumber() || !info[1].IsBuffer() || !info[2].IsNumber()) {
    Napi::TypeError::New(env, "readCached(fd, buffer, position)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  double fdv = info[0].As<Napi::Number>().DoubleValue();
  double pos = info[2].As<Napi::Number>().DoubleValue();
  if (fdv < 0 || fdv > 0x7fffffff || fdv != static_cast<int>(fdv) || pos < 0 || pos > 9007199254740991.0 || pos != static_cast<double>(static_cast<int64_t>(pos))) {
    Napi::RangeError::New(env, "readCached: a file descriptor and a position >= 0").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Buffer<uint8_t> buf = info[1].As<Napi::Buffer<uint8_t>>();
  struct iovec iov = {buf.Data(), buf.Length()};
  ssize_t n;
  do {
    n = preadv2(static_cast<int>(fdv), &iov, 1, static_cast<off_t>(pos), RWF_NOWAIT);
  } while (n < 0 && errno == EINTR);
  if (n >= 0) return Napi::Number::New(env, static_cast<double>(n));
  if (errno == EAGAIN) return Napi::Number::New(env, -1);
  return ThrowErrno(env, errno, "preadv2");
}

// execve(2) with the same PID: a supervisor (systemd, a test) keeps watching
// and signalling the process it started. Standard input, output and error
// stay open (Node marks them close-on-exec), the signal mask is cleared;
// handlers reset by themselves, and Node ignores SIGPIPE again on start.
Napi::Value Execve(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() != 3 || !info[0].IsString() || !info[1].IsArray() || !info[2].IsArray()) {
    Napi::TypeError::New(env, "execve(file, argv[], env[])").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string file = info[0].As<Napi::String>().Utf8Value();
  std::vector<std::string> store[2];
  for (int k = 0; k < 2; k++) {
    Napi::Array a = info[1 + k].As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); i++) {
      Napi::Value v = a.Get(i);
      if (!v.IsString()) {
        Napi::TypeError::New(env, "execve: argv and env hold strings").ThrowAsJavaScriptException();
        return env.Undefined();
      }
      std::string x = v.As<Napi::String>().Utf8Value();
      if (x.find('\0') != std::string::npos) {
        Napi::TypeError::New(env, "execve: a string holds a NUL byte").ThrowAsJavaScriptException();
        return env.Undefined();
      }
      store[k].push_back(std::move(x));
    }
  }
  std::vector<char *> ptrs[2];
  for (int k = 0; k < 2; k++) {
    for (auto &x : store[k]) ptrs[k].push_back(const_cast<char *>(x.c_str()));
    ptrs[k].push_back(nullptr);
  }
  int fdflags[3];
  for (int fd = 0; fd < 3; fd++) {
    fdflags[fd] = fcntl(fd, F_GETFD);
    if (fdflags[fd] > 0) fcntl(fd, F_SETFD, fdflags[fd] & ~FD_CLOEXEC);
  }
  sigset_t none;
  sigemptyset(&none);
  sigset_t old;
  sigprocmask(SIG_SETMASK, &none, &old);
  execve(file.c_str(), ptrs[0].data(), ptrs[1].data());
  int err = errno;
  sigprocmask(SIG_SETMASK, &old, nullptr);
  for (int fd = 0; fd < 3; fd++)
    if (fdflags[fd] > 0) fcntl(fd, F_SETFD, fdflags[fd]);
  return ThrowErrno(env, err, "execve");
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("execve", Napi::Function::New(env, Execve));
  exports.Set("setIoPriority", Napi::Function::New(env, SetIoPriority));
  exports.Set("peerCred", Napi::Function::New(env, PeerCred));
  exports.Set("tryLock", Napi::Function::New(env, TryLock));
  exports.Set("readCached", Napi::Function::New(env, ReadCached));
  vfsx::RegisterTreeOps(env, exports);
  vfsx::RegisterBlockCrypto(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(vfsx_addon, Init)
