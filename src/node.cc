// Node: the wiring of a process's endpoint, server and client (include/shardps/node.h).
#include "shardps/node.h"

#include <string>
#include <utility>

#include "shardps/net/endpoint.h"
#include "shardps/ps/server.h"

namespace shardps {

Node::Node(NodeOptions options) : options_(std::move(options)) {}

Node::~Node() {
  if (endpoint_) endpoint_->Stop(std::chrono::milliseconds(0));
}

Result<std::unique_ptr<Node>> Node::Start(std::unique_ptr<Transport> transport, const Cluster& cluster,
                                          const TableLayout& layout, NodeOptions options) {
  if (transport->size() != cluster.size() || transport->rank() != cluster.rank()) {
    return InvalidArgument("transport is rank " + std::to_string(transport->rank()) + " of " +
                           std::to_string(transport->size()) + " but the cluster says rank " +
                           std::to_string(cluster.rank()) + " of " + std::to_string(cluster.size()));
  }
  if (layout.num_servers() != cluster.num_servers()) {
    return InvalidArgument("layout is for " + std::to_string(layout.num_servers()) + " servers, the cluster has " +
                           std::to_string(cluster.num_servers()));
  }
  // Options the server or client would refuse, refused before anything starts.
  SHARDPS_RETURN_IF_ERROR(ps::ValidateServerOptions(options.server));
  SHARDPS_RETURN_IF_ERROR(worker::ValidateClientOptions(options.client));
  if (options.restore_from && options.init_from) {
    return InvalidArgument("NodeOptions: restore_from and init_from both set; the tables can start from one of them");
  }
  std::unique_ptr<Node> n(new Node(options));
  EndpointOptions eo = options.endpoint;
  if (!eo.describe_rank) eo.describe_rank = [cluster](int r) { return cluster.Describe(r); };
  n->endpoint_ = std::make_unique<Endpoint>(std::move(transport), eo);
  if (cluster.is_server()) {
    n->server_ = std::make_unique<ps::Server>(*n->endpoint_, cluster, layout, options.server);
    n->endpoint_->SetServerHandler(n->server_.get());
    if (options.restore_from) SHARDPS_RETURN_IF_ERROR(n->server_->Restore(*options.restore_from));
    if (options.init_from) SHARDPS_RETURN_IF_ERROR(n->server_->InitFrom(*options.init_from));
  }
  if (cluster.is_worker()) {
    n->client_ = std::make_unique<worker::KVClient>(*n->endpoint_, cluster, layout, options.client);
    n->endpoint_->SetClientHandler(n->client_->frame_handler());
  }
  SHARDPS_RETURN_IF_ERROR(n->endpoint_->Start());
  if (n->client_) SHARDPS_RETURN_IF_ERROR(n->client_->Hello().wait(options.startup_timeout));
  return n;
}

Status Node::Finish() {
  Status s;
  if (client_) s = client_->Shutdown().wait(options_.finish_timeout);
  if (server_ && s.ok()) s = server_->WaitForWorkers(options_.finish_timeout);
  if (s.ok()) s = endpoint_->lost();  // a peer failed meanwhile: the job did not succeed
  if (s.ok()) endpoint_->Leave();
  else endpoint_->Abort(s);
  return s;
}

void Node::Abandon(const Status& why) { endpoint_->Abort(why); }

}  // namespace shardps
