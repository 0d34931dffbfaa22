{
  "targets": [
    {
      "target_name": "vfsx_addon",
      "sources": ["vfsx_addon.cc", "beneath.cc", "tree_ops.cc", "block_crypto.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags": ["-Wall", "-Wextra"],
      "cflags_cc": ["-Wall", "-Wextra"]
    }
  ]
}
