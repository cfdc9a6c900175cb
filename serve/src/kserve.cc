#include "shardps/serve/kserve.h"


#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <vector>

#include "shardps/base/json.h"

namespace shardps::serve {
namespace {

using json = nlohmann::json;

std::vector<std::string> Segments(const std::string& path) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < path.size()) {
    if (path[i] == '/') {
      ++i;
      continue;
    }
    const size_t j = path.find('/', i);
    out.push_back(path.substr(i, j == std::string::npos ? std::string::npos : j - i));
    if (j == std::string::npos) break;
    i = j;
  }
  return out;
}

HttpResponse Json(int status, std::string body) { return HttpResponse{status, "application/json", std::move(body)}; }

void AppendFloat(std::string* out, float v) {
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  out->append(buf, r.ptr);
}

// Flattens `data` (numbers, or arrays of them nested at most `depth` deep: the tensor's rank)
// into `out`; false on anything else. The depth bound also bounds the recursion, whatever the
// request sends.
bool Flatten(const json& data, std::vector<float>* out, size_t limit, int depth, std::string* why) {
  if (data.is_number()) {
    if (out->size() >= limit) {
      *why = "more values than the shape holds";
      return false;
    }
    const double d = data.get<double>();
    const float f = static_cast<float>(d);
    if (!std::isfinite(f)) {
      *why = "value " + std::to_string(out->size()) + " is not a finite FP32 number";
      return false;
    }
    out->push_back(f);
    return true;
  }
  if (!data.is_array()) {
    *why = "\"data\" must hold numbers (flat or nested arrays), found " + std::string(data.type_name());
    return false;
  }
  if (depth == 0) {
    *why = "arrays nested deeper than the shape's rank";
    return false;
  }
  for (const auto& e : data) {
    if (!Flatten(e, out, limit, depth - 1, why)) return false;
  }
  return true;
}

}  // namespace

KServeHandler::KServeHandler(ModelStore& store, metrics::Registry& metrics, KServeOptions options)
    : store_(store),
      metrics_(metrics),
      options_(std::move(options)),
      requests_(metrics.AddCounter("shardps_serve_requests_total", "HTTP requests answered, by endpoint",
                                   {"model", "version", "endpoint", "code"})),
      errors_(metrics.AddCounter("shardps_serve_request_errors_total", "Requests answered with an error status",
                                 {"model", "endpoint", "code"})),
      latency_(metrics.AddHistogram("shardps_serve_request_duration_seconds",
                                    "Time from the parsed request to the response, by endpoint", metrics::LatencyBuckets(),
                                    {"model", "version", "endpoint"})),
      rows_(metrics.AddCounter("shardps_serve_infer_rows_total", "Rows run through the model", {"model", "version"})),
      rss_(metrics.AddGauge("process_resident_memory_bytes", "Resident memory size in bytes").With({})) {}

HttpResponse KServeHandler::Handle(const HttpRequest& request) {
  const auto start = std::chrono::steady_clock::now();
  std::string endpoint = "other", version;
  HttpResponse r = Route(request, &endpoint, &version);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::string& model = store_.options().model_name;
  const std::string code = std::to_string(r.status);
  // Update (under the family's lock): PruneVersions may drop series at the same time.
  requests_.Update({model, version, endpoint, code}, [](metrics::Counter& c) { c.Inc(); });
  if (r.status >= 400) errors_.With({model, endpoint, code}).Inc();
  if (endpoint != "metrics") latency_.Update({model, version, endpoint}, [&](metrics::Histogram& h) { h.Observe(seconds); });
  PruneVersions(version);
  return r;
}

void KServeHandler::PruneVersions(const std::string& version) {
  if (version.empty()) return;
  std::lock_guard<std::mutex> l(versions_mu_);
  if (std::find(recent_versions_.begin(), recent_versions_.end(), version) != recent_versions_.end()) return;
  recent_versions_.push_back(version);
  if (recent_versions_.size() <= kKeptVersions) return;
  recent_versions_.erase(recent_versions_.begin());
  // Series of versions served before the last kKeptVersions go: a server that follows a registry
  // for months does not grow /metrics with every version it ever served.
  auto gone = [this](const std::string& v) {
    return !v.empty() && std::find(recent_versions_.begin(), recent_versions_.end(), v) == recent_versions_.end();
  };
  requests_.RemoveWhere("version", gone);
  latency_.RemoveWhere("version", gone);
  rows_.RemoveWhere("version", gone);
}

HttpResponse KServeHandler::Route(const HttpRequest& request, std::string* endpoint, std::string* version) {
  const std::string path = request.target.substr(0, request.target.find('?'));
  const std::vector<std::string> seg = Segments(path);
  const bool get = request.method == "GET" || request.method == "HEAD";  // HEAD: the server sends no body
  auto method_not_allowed = [&](const char* allowed) {
    return HttpError(405, "method " + request.method + " not allowed on " + path + " (use " + allowed + ")");
  };
  if (path == "/metrics") {
    *endpoint = "metrics";
    return get ? Metrics() : method_not_allowed("GET");
  }
  if (seg.size() >= 1 && seg[0] == "v2") {
    if (seg.size() == 1) {
      *endpoint = "server_metadata";
      if (!get) return method_not_allowed("GET");
      return Json(200, "{\"name\": \"shardps\", \"version\": " + JsonQuote(options_.server_version) + ", \"extensions\": []}\n");
    }
    if (seg.size() == 3 && seg[1] == "health" && (seg[2] == "live" || seg[2] == "ready")) {
      *endpoint = "health_" + seg[2];
      if (!get) return method_not_allowed("GET");
      if (seg[2] == "live") return Json(200, "{\"live\": true}\n");
      return Ready();
    }
    if (seg.size() >= 3 && seg[1] == "models") {
      const std::string& name = seg[2];
      if (name != store_.options().model_name) {
        *endpoint = "unknown";
        return HttpError(404, "unknown model '" + name + "' (this server serves '" + store_.options().model_name + "')");
      }
      size_t i = 3;
      std::string want;  // "" = the version served
      if (seg.size() >= 5 && seg[3] == "versions") {
        want = seg[4];
        i = 5;
      }
      const std::string action = i < seg.size() ? seg[i] : "";
      if (i + 1 < seg.size() || (seg.size() == 4 && seg[3] == "versions")) {
        *endpoint = "unknown";
        return HttpError(404, "no such endpoint: " + path);
      }
      if (action == "infer") {
        *endpoint = "infer";
        if (request.method != "POST") return method_not_allowed("POST");
        return Infer(request, want, version);
      }
      *endpoint = action.empty() ? "model_metadata" : action == "ready" ? "model_ready" : "unknown";
      if (*endpoint == "unknown") return HttpError(404, "no such endpoint: " + path);
      if (!get) return method_not_allowed("GET");
      const std::shared_ptr<const Servable> s = store_.Current();
      if (!s) return HttpError(503, "model '" + name + "' has no version loaded");
      *version = std::to_string(s->version);
      if (!want.empty() && want != *version) {
        return HttpError(404, "version " + want + " of model '" + name + "' is not loaded (serving version " + *version + ")");
      }
      if (action == "ready") return Json(200, "{\"name\": " + JsonQuote(name) + ", \"version\": \"" + *version + "\", \"ready\": true}\n");
      return ModelMetadata(*s);
    }
  }
  return HttpError(404, "no such endpoint: " + path + " (KServe v2: /v2/health/live, /v2/health/ready, /v2/models/" +
                            store_.options().model_name + "[/versions/V][/ready|/infer], /metrics)");
}

HttpResponse KServeHandler::ModelMetadata(const Servable& s) const {
  const std::string& name = store_.options().model_name;
  std::string hidden;
  for (int64_t h : s.model->spec().hidden) hidden += (hidden.empty() ? "" : ", ") + std::to_string(h);
  return Json(200, "{\"name\": " + JsonQuote(name) + ", \"versions\": [\"" + std::to_string(s.version) +
                       "\"], \"platform\": \"shardps_" + s.model->name() + "\", \"inputs\": [{\"name\": \"input\", \"datatype\": \"FP32\", "
                       "\"shape\": [-1, " + std::to_string(s.input_dim()) + "]}], \"outputs\": [{\"name\": \"logits\", \"datatype\": \"FP32\", "
                       "\"shape\": [-1, " + std::to_string(s.num_classes()) + "]}, {\"name\": \"probabilities\", \"datatype\": \"FP32\", "
                       "\"shape\": [-1, " + std::to_string(s.num_classes()) + "]}, {\"name\": \"label\", \"datatype\": \"INT64\", "
                       "\"shape\": [-1]}], \"parameters\": {\"step\": " + std::to_string(s.step) + ", \"source\": " + JsonQuote(s.source) +
                       ", \"registry\": " + JsonQuote(s.registry) + ", \"hidden\": [" + hidden + "]}}\n");
}

HttpResponse KServeHandler::Ready() const {
  const ModelHealth h = store_.health();
  std::string body = "{\"ready\": " + std::string(h.ready ? "true" : "false") + ", \"models\": [";
  if (h.ready) {
    body += "{\"name\": " + JsonQuote(store_.options().model_name) + ", \"version\": \"" + std::to_string(h.version) +
            "\", \"source\": " + JsonQuote(h.source) + ", \"registry\": " + JsonQuote(h.registry) + "}";
  }
  body += "], \"swaps\": " + std::to_string(h.swaps) + ", \"fallbacks\": " + std::to_string(h.fallbacks);
  body += ", \"problem\": " + (h.problem.empty() ? std::string("null") : JsonQuote(h.problem)) + "}\n";
  return Json(h.ready ? 200 : 503, std::move(body));
}

HttpResponse KServeHandler::Metrics() {
  if (options_.before_scrape) options_.before_scrape();
  rss_.Set(static_cast<double>(metrics::ResidentBytes()));
  return HttpResponse{200, metrics::kContentType, metrics_.Render()};
}

HttpResponse KServeHandler::Infer(const HttpRequest& request, const std::string& want, std::string* served) {
  const std::string& name = store_.options().model_name;
  // The version this request is answered by, held until the response is written.
  const std::shared_ptr<const Servable> s = store_.Current();
  if (!s) return HttpError(503, "model '" + name + "' has no version loaded");
  *served = std::to_string(s->version);
  if (!want.empty() && want != *served) {
    return HttpError(404, "version " + want + " of model '" + name + "' is not loaded (serving version " + *served + ")");
  }
  const json j = json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return HttpError(400, "request body is not valid JSON");
  if (!j.is_object()) return HttpError(400, "request body must be a JSON object with \"inputs\"");
  const auto inputs = j.find("inputs");
  if (inputs == j.end() || !inputs->is_array() || inputs->size() != 1) {
    return HttpError(400, "\"inputs\" must be an array of exactly one tensor (the model's input, FP32 [N, " +
                              std::to_string(s->input_dim()) + "])");
  }
  const json& in = (*inputs)[0];
  if (!in.is_object()) return HttpError(400, "inputs[0] must be an object with name, datatype, shape and data");
  const auto dt = in.find("datatype");
  if (dt == in.end() || !dt->is_string() || dt->get<std::string>() != "FP32") {
    return HttpError(400, "inputs[0].datatype must be \"FP32\"");
  }
  const auto shape = in.find("shape");
  if (shape == in.end() || !shape->is_array() || shape->empty() || shape->size() > 2) {
    return HttpError(400, "inputs[0].shape must be [N, " + std::to_string(s->input_dim()) + "] or [" +
                              std::to_string(s->input_dim()) + "]");
  }
  std::vector<int64_t> dims;
  for (const auto& d : *shape) {
    if (!d.is_number_integer() || d.get<int64_t>() < 1) return HttpError(400, "inputs[0].shape must hold positive integers");
    dims.push_back(d.get<int64_t>());
  }
  const int64_t rows = dims.size() == 2 ? dims[0] : 1;
  const int64_t width = dims.back();
  if (width != s->input_dim()) {
    return HttpError(400, "inputs[0].shape gives rows of " + std::to_string(width) + " values; model '" + name + "' version " +
                              *served + " takes " + std::to_string(s->input_dim()));
  }
  if (rows > options_.max_batch_rows) {
    return HttpError(400, "inputs[0] has " + std::to_string(rows) + " rows; at most " + std::to_string(options_.max_batch_rows) +
                              " per request");
  }
  const auto data = in.find("data");
  if (data == in.end()) return HttpError(400, "inputs[0] has no \"data\"");
  const size_t n = static_cast<size_t>(rows * width);
  std::vector<float> x;
  x.reserve(n);
  std::string why;
  if (!Flatten(*data, &x, n, static_cast<int>(dims.size()), &why)) return HttpError(400, "inputs[0].data: " + why);
  if (x.size() != n) {
    return HttpError(400, "inputs[0].data holds " + std::to_string(x.size()) + " values; shape [" + std::to_string(rows) + ", " +
                              std::to_string(width) + "] needs " + std::to_string(n));
  }
  bool want_logits = true, want_probs = false, want_label = true;
  if (const auto outs = j.find("outputs"); outs != j.end()) {
    if (!outs->is_array() || outs->empty()) return HttpError(400, "\"outputs\" must be a non-empty array of {\"name\": ...}");
    want_logits = want_probs = want_label = false;
    for (const auto& o : *outs) {
      const auto on = o.is_object() ? o.find("name") : o.end();
      const std::string oname = (o.is_object() && on != o.end() && on->is_string()) ? on->get<std::string>() : "";
      if (oname == "logits") want_logits = true;
      else if (oname == "probabilities") want_probs = true;
      else if (oname == "label") want_label = true;
      else return HttpError(400, "unknown output '" + oname + "' (logits, probabilities, label)");
    }
  }
  const int c = s->num_classes();
  std::vector<float> logits(static_cast<size_t>(rows) * c);
  s->Logits(x.data(), rows, logits.data());
  for (size_t k = 0; k < logits.size(); ++k) {
    if (!std::isfinite(logits[k])) {
      return HttpError(400, "row " + std::to_string(k / static_cast<size_t>(c)) +
                                "'s logits are not finite float32 numbers (its input values are too large for the model)");
    }
  }
  rows_.Update({name, *served}, [rows](metrics::Counter& c) { c.Inc(static_cast<double>(rows)); });

  std::string body;
  body.reserve(64 + static_cast<size_t>(rows) * c * 14 * (want_logits + want_probs) + rows * 4);
  body += "{\"model_name\": " + JsonQuote(name) + ", \"model_version\": \"" + *served + "\"";
  if (const auto id = j.find("id"); id != j.end() && id->is_string()) body += ", \"id\": " + JsonQuote(id->get<std::string>());
  body += ", \"outputs\": [";
  bool first = true;
  auto tensor_head = [&](const char* oname, const char* dtype, bool matrix) {
    if (!first) body += ", ";
    first = false;
    body += "{\"name\": \"";
    body += oname;
    body += "\", \"datatype\": \"";
    body += dtype;
    body += "\", \"shape\": [" + std::to_string(rows) + (matrix ? ", " + std::to_string(c) : "") + "], \"data\": [";
  };
  if (want_logits) {
    tensor_head("logits", "FP32", true);
    for (size_t k = 0; k < logits.size(); ++k) {
      if (k) body += ',';
      AppendFloat(&body, logits[k]);
    }
    body += "]}";
  }
  if (want_probs) {
    tensor_head("probabilities", "FP32", true);
    for (int64_t r = 0; r < rows; ++r) {
      const float* z = logits.data() + r * c;
      float mx = z[0];
      for (int k = 1; k < c; ++k) mx = std::max(mx, z[k]);
      double sum = 0;
      for (int k = 0; k < c; ++k) sum += std::exp(static_cast<double>(z[k] - mx));
      for (int k = 0; k < c; ++k) {
        if (r || k) body += ',';
        AppendFloat(&body, static_cast<float>(std::exp(static_cast<double>(z[k] - mx)) / sum));
      }
    }
    body += "]}";
  }
  if (want_label) {
    tensor_head("label", "INT64", false);
    for (int64_t r = 0; r < rows; ++r) {
      const float* z = logits.data() + r * c;
      int best = 0;
      for (int k = 1; k < c; ++k) if (z[k] > z[best]) best = k;
      if (r) body += ',';
      body += std::to_string(best);
    }
    body += "]}";
  }
  body += "]}\n";
  return Json(200, std::move(body));
}

}  // namespace shardps::serve
