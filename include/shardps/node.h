// Node: one process of a shardps job, wiring a transport, its communication thread, a server (if
// the rank serves) and a KV client (if the rank works).
//
//   SHARDPS_ASSIGN_OR_RETURN(Cluster cluster, Cluster::Create(size, rank, {.num_servers = 2}));
//   SHARDPS_ASSIGN_OR_RETURN(TableLayout layout, TableLayout::Create({{.name = "w", .size = n}}, cluster.num_servers()));
//   SHARDPS_ASSIGN_OR_RETURN(auto transport, CreateTcpTransport({.host = coordinator, .port = 29500,
//                                                                .rank = rank, .size = size, .secret = key}));
//   SHARDPS_ASSIGN_OR_RETURN(auto node, Node::Start(std::move(transport), cluster, layout, {}));
//   if (node->client()) { ... node->client()->PushPull(...).wait(timeout) ... }
//   SHARDPS_RETURN_IF_ERROR(node->Finish());   // workers say goodbye; servers wait for them
//
// Checkpoints: worker::CheckpointDriver (shardps/worker/checkpoint_driver.h) writes them from a
// worker; NodeOptions::restore_from starts the servers from one.
//
// Thread safety: client() is thread-safe (see KVClient); Start/Finish from one thread.
#pragma once

#include <chrono>
#include <functional>
#include <memory>

#include "shardps/base/cluster.h"
#include "shardps/base/layout.h"
#include "shardps/base/status.h"
#include "shardps/net/endpoint_options.h"
#include "shardps/net/transport.h"
#include "shardps/ps/server_options.h"
#include "shardps/storage/checkpoint_registry.h"
#include "shardps/storage/safetensors.h"
#include "shardps/worker/kv_client.h"

namespace shardps {

class Endpoint;
namespace ps {
class Server;
}

struct NodeOptions {
  EndpointOptions endpoint;
  ps::ServerOptions server;
  worker::ClientOptions client;
  // Longest Start() waits for every server to confirm the layout, and Finish() for the goodbyes.
  std::chrono::milliseconds startup_timeout{60000};
  std::chrono::milliseconds finish_timeout{600000};
  // Where a serving rank's tables start, instead of their initialisers (at most one of the two;
  // both outlive Start): a checkpoint version (its shard of every checkpointed table, whatever
  // server count wrote it, at the version's step; the workers go on from
  // reader.checkpoint().manifest.step()), or a model file (tensor names = table names; optimizer
  // state starts at zero).
  CheckpointReader* restore_from = nullptr;
  const SafetensorsFile* init_from = nullptr;
};

class Node {
 public:
  // Checks that transport, cluster and layout agree, starts the communication thread and, on a
  // working rank, confirms the layout with every server (within options.startup_timeout).
  static Result<std::unique_ptr<Node>> Start(std::unique_ptr<Transport> transport, const Cluster& cluster,
                                             const TableLayout& layout, NodeOptions options = {});
  ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // The KV client of a working rank; null on a rank that only serves.
  worker::KVClient* client() { return client_.get(); }

  // Workers send SHUTDOWN to every server; servers wait until every worker has; then the
  // communication thread says goodbye to every peer and stops. On failure it tells every peer why
  // instead: peers that detect lost ranks (TCP) see this one as lost, with its reason, and fail too.
  Status Finish();

  // Stops after a failure: no goodbye, but the reason goes to every peer (see Finish).
  void Abandon(const Status& why);

  // Internal parts, for shardps' own programs and tests (their classes are not installed): the
  // server of a serving rank (null otherwise) and the communication thread.
  ps::Server* server() { return server_.get(); }
  Endpoint& endpoint() { return *endpoint_; }

 private:
  explicit Node(NodeOptions options);

  NodeOptions options_;
  std::unique_ptr<Endpoint> endpoint_;
  std::unique_ptr<ps::Server> server_;
  std::unique_ptr<worker::KVClient> client_;
};

}  // namespace shardps
