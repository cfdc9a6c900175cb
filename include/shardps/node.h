// Node: one process of a shardps job, wiring a transport, its communication thread, a server (if
// the rank serves) and a KV client (if the rank works).
//
//   SHARDPS_ASSIGN_OR_RETURN(Cluster cluster, Cluster::Create(size, rank, {.num_servers = 2}));
//   SHARDPS_ASSIGN_OR_RETURN(TableLayout layout, TableLayout::Create({{.name = "w", .size = n}}, cluster.num_servers()));
//   SHARDPS_ASSIGN_OR_RETURN(auto transport, CreateMpiTransport(MPI_COMM_WORLD));
//   SHARDPS_ASSIGN_OR_RETURN(auto node, Node::Start(std::move(transport), cluster, layout, {}));
//   if (node->client()) { ... node->client()->PushPull(...).wait(timeout) ... }
//   SHARDPS_RETURN_IF_ERROR(node->Finish());   // workers say goodbye; servers wait for them
//
// Thread safety: client() is thread-safe (see KVClient); Start/Finish from one thread.
#pragma once

#include <chrono>
#include <functional>
#include <memory>

#include "shardps/base/cluster.h"
#include "shardps/net/endpoint.h"
#include "shardps/base/layout.h"
#include "shardps/base/status.h"
#include "shardps/ps/server.h"
#include "shardps/worker/kv_client.h"

namespace shardps {

struct NodeOptions {
  EndpointOptions endpoint;
  ps::ServerOptions server;
  worker::ClientOptions client;
  // Longest Start() waits for every server to confirm the layout, and Finish() for the goodbyes.
  std::chrono::milliseconds startup_timeout{60000};
  std::chrono::milliseconds finish_timeout{600000};
  // Runs on a serving rank after its server is built and before it serves (e.g. Restore).
  std::function<Status(ps::Server&)> prepare_server;
};

class Node {
 public:
  static Result<std::unique_ptr<Node>> Start(std::unique_ptr<Transport> transport, const Cluster& cluster,
                                             const TableLayout& layout, NodeOptions options = {}) {
    if (transport->size() != cluster.size() || transport->rank() != cluster.rank()) {
      return InvalidArgument("transport is rank " + std::to_string(transport->rank()) + " of " +
                             std::to_string(transport->size()) + " but the cluster says rank " +
                             std::to_string(cluster.rank()) + " of " + std::to_string(cluster.size()));
    }
    if (layout.num_servers() != cluster.num_servers()) {
      return InvalidArgument("layout is for " + std::to_string(layout.num_servers()) + " servers, the cluster has " +
                             std::to_string(cluster.num_servers()));
    }
    std::unique_ptr<Node> n(new Node(options));
    EndpointOptions eo = options.endpoint;
    if (!eo.describe_rank) eo.describe_rank = [cluster](int r) { return cluster.Describe(r); };
    n->endpoint_ = std::make_unique<Endpoint>(std::move(transport), eo);
    if (cluster.is_server()) {
      n->server_ = std::make_unique<ps::Server>(*n->endpoint_, cluster, layout, options.server);
      n->endpoint_->SetServerHandler(n->server_.get());
      if (options.prepare_server) SHARDPS_RETURN_IF_ERROR(options.prepare_server(*n->server_));
    }
    if (cluster.is_worker()) {
      n->client_ = std::make_unique<worker::KVClient>(*n->endpoint_, cluster, layout, options.client);
      n->endpoint_->SetClientHandler(n->client_.get());
    }
    SHARDPS_RETURN_IF_ERROR(n->endpoint_->Start());
    if (n->client_) SHARDPS_RETURN_IF_ERROR(n->client_->Hello().wait(options.startup_timeout));
    return n;
  }

  ~Node() {
    if (endpoint_) endpoint_->Stop(std::chrono::milliseconds(0));
  }

  worker::KVClient* client() { return client_.get(); }
  ps::Server* server() { return server_.get(); }
  Endpoint& endpoint() { return *endpoint_; }

  // Workers send SHUTDOWN to every server; servers wait until every worker has; then the
  // communication thread says goodbye to every peer and stops. On failure it tells every peer why
  // instead: peers that detect lost ranks (TCP) see this one as lost, with its reason, and fail too.
  Status Finish() {
    Status s;
    if (client_) s = client_->Shutdown().wait(options_.finish_timeout);
    if (server_ && s.ok()) s = server_->WaitForWorkers(options_.finish_timeout);
    if (s.ok()) s = endpoint_->lost();  // a peer failed meanwhile: the job did not succeed
    if (s.ok()) endpoint_->Leave();
    else endpoint_->Abort(s);
    return s;
  }

  // Stops after a failure: no goodbye, but the reason goes to every peer (see Finish).
  void Abandon(const Status& why) { endpoint_->Abort(why); }

 private:
  explicit Node(NodeOptions options) : options_(std::move(options)) {}

  NodeOptions options_;
  std::unique_ptr<Endpoint> endpoint_;
  std::unique_ptr<ps::Server> server_;
  std::unique_ptr<worker::KVClient> client_;
};

}  // namespace shardps
