#include "beneath.h"

#include <cerrno>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace vfsx {

namespace {

bool force_walk = false;
bool no_openat2 = false;

int CloseKeepErrno(int fd, int ret) {
  if (fd >= 0) close(fd);
  return ret;
}

int Openat2(int dirfd, const char *path, int flags, int mode) {
  struct open_how how = {};
  how.flags = static_cast<unsigned long long>(flags);
  how.mode = (flags & (O_CREAT | O_TMPFILE)) ? static_cast<unsigned long long>(mode) : 0;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  long rc;
  do {
    rc = syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
  } while (rc < 0 && (errno == EINTR || errno == EAGAIN));
  return rc < 0 ? -errno : static_cast<int>(rc);
}

// One component at a time: every directory opened O_PATH|O_NOFOLLOW and
// checked to be a directory, so a symlink anywhere fails with -ELOOP.
int Walk(int rootfd, const std::string &rel, int flags, int mode) {
  int dirfd = fcntl(rootfd, F_DUPFD_CLOEXEC, 0);
  if (dirfd < 0) return -errno;
  size_t start = 0;
  for (;;) {
    size_t slash = rel.find('/', start);
    if (slash == std::string::npos) break;
    std::string comp = rel.substr(start, slash - start);
    int next = openat(dirfd, comp.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (next < 0) return CloseKeepErrno(dirfd, -errno);
    close(dirfd);
    dirfd = next;
    struct stat st;
    if (fstat(dirfd, &st) != 0) return CloseKeepErrno(dirfd, -errno);
    if (S_ISLNK(st.st_mode)) return CloseKeepErrno(dirfd, -ELOOP);
    if (!S_ISDIR(st.st_mode)) return CloseKeepErrno(dirfd, -ENOTDIR);
    start = slash + 1;
  }
  std::string last = rel.substr(start);
  int fd;
  do {
    fd = openat(dirfd, last.c_str(), flags, mode);
  } while (fd < 0 && errno == EINTR);
  int ret = fd < 0 ? -errno : fd;
  close(dirfd);
  return ret;
}

}  // namespace

void BeneathUseWalk(bool on) { force_walk = on; }

bool BeneathValidRel(const std::string &rel) {
  if (rel.empty()) return true;
  if (rel.find('\0') != std::string::npos || rel[0] == '/') return false;
  size_t start = 0;
  for (;;) {
    size_t slash = rel.find('/', start);
    std::string comp = rel.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (comp.empty() || comp == "." || comp == "..") return false;
    if (slash == std::string::npos) return true;
    start = slash + 1;
  }
}

int OpenBeneath(int rootfd, const std::string &rel, int flags, int mode) {
  if (!BeneathValidRel(rel)) return -EINVAL;
  flags |= O_NOFOLLOW | O_CLOEXEC;
  const std::string path = rel.empty() ? "." : rel;
  if (!force_walk && !no_openat2) {
    int fd = Openat2(rootfd, path.c_str(), flags, mode);
    if (fd != -ENOSYS) return fd;
    no_openat2 = true;
  }
  if (rel.empty()) {
    int fd = openat(rootfd, ".", flags & ~O_NOFOLLOW, mode);
    return fd < 0 ? -errno : fd;
  }
  return Walk(rootfd, path, flags, mode);
}

int OpenParentBeneath(int rootfd, const std::string &rel, std::string *name) {
  if (rel.empty() || !BeneathValidRel(rel)) return -EINVAL;
  size_t slash = rel.rfind('/');
  *name = slash == std::string::npos ? rel : rel.substr(slash + 1);
  std::string parent = slash == std::string::npos ? "" : rel.substr(0, slash);
  int fd = OpenBeneath(rootfd, parent, O_PATH | O_DIRECTORY, 0);
  if (fd < 0) return fd;
  struct stat st;
  if (fstat(fd, &st) != 0) return CloseKeepErrno(fd, -errno);
  if (S_ISLNK(st.st_mode)) return CloseKeepErrno(fd, -ELOOP);
  if (!S_ISDIR(st.st_mode)) return CloseKeepErrno(fd, -ENOTDIR);
  return fd;
}

}  // namespace vfsx
