// Internal to core/storage: file helpers the checkpoint writer (checkpoint.cc) and the registry
// (checkpoint_registry.cc) share.
#pragma once

#include <cstdint>
#include <string>

#include "shardps/base/status.h"
#include "shardps/storage/file_system.h"

namespace shardps::storage_internal {

// "what: <strerror(errno)>".
std::string Errno(const std::string& what);
// fsync of a directory (after a rename into it), as IO_ERROR naming it.
Status SyncDir(FileSystem& fsys, const std::string& dir);
// The whole file, refused (DATA_LOSS) if larger than max_bytes.
Result<std::string> ReadFile(const std::string& path, uint64_t max_bytes);

}  // namespace shardps::storage_internal
