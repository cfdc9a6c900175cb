#include "shardps/ps/consistency.h"

#include "policies.h"
#include "shardps/base/optimizer.h"
#include "shardps/ps/server_options.h"

namespace shardps::ps {

std::span<const ConsistencyPolicy* const> RegisteredConsistencyPolicies() {
  // The registry. To add a policy, list it here. Built once, immutable after.
  static const ConsistencyPolicy* const all[] = {&BspPolicy(), &SspPolicy(), &AspPolicy()};
  return all;
}

Result<const ConsistencyPolicy*> LookupConsistencyPolicy(std::string_view name) {
  std::string names;
  for (const ConsistencyPolicy* p : RegisteredConsistencyPolicies()) {
    if (p->name() == name) return p;
    names += (names.empty() ? "" : ", ") + std::string(p->name());
  }
  return InvalidArgument("unknown consistency policy '" + std::string(name) + "' (registered: " + names + ")");
}

Status ValidateServerOptions(const ServerOptions& options) {
  SHARDPS_RETURN_IF_ERROR(LookupConsistencyPolicy(options.consistency).status());
  if (options.staleness < 0 || options.staleness > kMaxStaleness) {
    return InvalidArgument("ServerOptions::staleness " + std::to_string(options.staleness) + " is outside 0.." +
                           std::to_string(kMaxStaleness));
  }
  if (!options.worker_optimizer.empty()) {
    SHARDPS_RETURN_IF_ERROR(LookupOptimizer(options.worker_optimizer).status().WithContext("ServerOptions::worker_optimizer"));
  }
  return Status::Ok();
}

}  // namespace shardps::ps
