// Block ids and sealing on the thread pool (see block_crypto.cc).
#pragma once

#include <napi.h>

namespace vfsx {

void RegisterBlockCrypto(Napi::Env env, Napi::Object exports);

}  // namespace vfsx
