#include "shardps/ps/consistency.h"

#include "policies.h"
#include "shardps/ps/server_options.h"

namespace shardps::ps {

std::span<const ConsistencyPolicy* const> RegisteredConsistencyPolicies() {
  // The registry. To add a policy, list it here. Built once, immutable after.
  static const ConsistencyPolicy* const all[] = {&BspPolicy()};
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
  return LookupConsistencyPolicy(options.consistency).status();
}

}  // namespace shardps::ps
