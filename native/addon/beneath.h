// Path resolution that stays beneath a directory and never follows a
// symbolic link: openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) where the
// kernel has it (Linux 5.6+), else a walk one component at a time with
// O_NOFOLLOW. Helpers return a file descriptor or -errno.
#pragma once

#include <string>

namespace vfsx {

// Force the component walk even where openat2 exists (tests of the fallback).
void BeneathUseWalk(bool on);

// Validates rel: relative, no empty, "." or ".." components, no NUL.
// The empty string names root itself.
bool BeneathValidRel(const std::string &rel);

// Opens rel beneath rootfd with flags (O_NOFOLLOW and O_CLOEXEC added).
// With O_PATH the final component may be a symlink: the fd names the link.
// Any symlink in a directory component fails with -ELOOP.
int OpenBeneath(int rootfd, const std::string &rel, int flags, int mode);

// Opens the directory holding rel's final component (O_PATH) and returns it;
// *name receives the final component. rel must not be empty.
int OpenParentBeneath(int rootfd, const std::string &rel, std::string *name);

}  // namespace vfsx
