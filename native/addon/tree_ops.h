// File-tree operations beneath a directory fd (see tree_ops.cc).
#pragma once

#include <napi.h>

namespace vfsx {

void RegisterTreeOps(Napi::Env env, Napi::Object exports);

}  // namespace vfsx
