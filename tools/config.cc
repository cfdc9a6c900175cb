#include "config.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "shardps/base/codec.h"
#include "shardps/ps/consistency.h"
#include "shardps/ps/server_options.h"
#include "shardps/worker/federated.h"

namespace shardps {
namespace {

namespace pb = google::protobuf;

// Collects text-format errors as "file:line:column: message".
class ErrorCollector : public pb::io::ErrorCollector {
 public:
  explicit ErrorCollector(std::string source) : source_(std::move(source)) {}
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    if (!errors_.empty()) errors_ += "; ";
    errors_ += source_ + ":" + std::to_string(line + 1) + ":" + std::to_string(column + 1) + ": " + message;
  }
  void AddWarning(int line, pb::io::ColumnNumber column, const std::string& message) override {}
  const std::string& errors() const { return errors_; }

 private:
  std::string source_;
  std::string errors_;
};

}  // namespace

Result<config::TrainConfig> ParseTrainConfig(const std::string& text, const std::string& source) {
  config::TrainConfig c;
  pb::TextFormat::Parser parser;
  ErrorCollector errors(source);
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &c)) {
    return InvalidArgument("config " + (errors.errors().empty() ? source + ": could not parse" : errors.errors()));
  }
  return c;
}

Result<config::TrainConfig> LoadTrainConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFound("config file '" + path + "' cannot be opened");
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return IoError("reading config file '" + path + "' failed");
  return ParseTrainConfig(ss.str(), path);
}

Status ApplyConfigOverride(config::TrainConfig* c, const std::string& assignment) {
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) {
    return InvalidArgument("override '" + assignment + "' is not of the form key=value");
  }
  const std::string key = assignment.substr(0, eq);
  const std::string value = assignment.substr(eq + 1);
  // Walk the dotted path to find the field and its type.
  std::vector<std::string> parts;
  for (size_t b = 0;;) {
    size_t d = key.find('.', b);
    parts.push_back(key.substr(b, d == std::string::npos ? std::string::npos : d - b));
    if (d == std::string::npos) break;
    b = d + 1;
  }
  const pb::Descriptor* desc = c->GetDescriptor();
  const pb::FieldDescriptor* field = nullptr;
  for (size_t i = 0; i < parts.size(); ++i) {
    field = desc->FindFieldByName(parts[i]);
    if (!field) return InvalidArgument("unknown config key '" + key + "' (no field '" + parts[i] + "' in " + desc->name() + ")");
    if (i + 1 < parts.size()) {
      if (field->type() != pb::FieldDescriptor::TYPE_MESSAGE) {
        return InvalidArgument("config key '" + key + "': '" + parts[i] + "' is not a message");
      }
      desc = field->message_type();
    }
  }
  if (field->type() == pb::FieldDescriptor::TYPE_MESSAGE) {
    return InvalidArgument("config key '" + key + "' names a message; set one of its fields");
  }
  // Build a text-format fragment "a { b: v }" and merge it: the parser checks the value's type.
  auto quote = [&](const std::string& v) {
    if (field->type() != pb::FieldDescriptor::TYPE_STRING) return v;
    std::string q = "\"";
    for (char ch : v) {
      if (ch == '"' || ch == '\\') q += '\\';
      q += ch;
    }
    return q + "\"";
  };
  std::string inner;
  if (field->is_repeated()) {
    std::string list;
    for (size_t b = 0; b <= value.size();) {
      size_t d = value.find(',', b);
      std::string item = value.substr(b, d == std::string::npos ? std::string::npos : d - b);
      if (!item.empty()) list += (list.empty() ? "" : ", ") + quote(item);
      if (d == std::string::npos) break;
      b = d + 1;
    }
    inner = parts.back() + ": [" + list + "]";
  } else {
    inner = parts.back() + ": " + quote(value);
  }
  std::string text = inner;
  for (size_t i = parts.size() - 1; i-- > 0;) text = parts[i] + " { " + text + " }";
  // Clear a repeated field first so the override replaces rather than appends.
  if (field->is_repeated()) {
    pb::Message* m = c;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      m = m->GetReflection()->MutableMessage(m, m->GetDescriptor()->FindFieldByName(parts[i]));
    }
    m->GetReflection()->ClearField(m, field);
  }
  pb::TextFormat::Parser parser;
  ErrorCollector errors("override '" + assignment + "'");
  parser.RecordErrorsTo(&errors);
  if (!parser.MergeFromString(text, c)) {
    return InvalidArgument("bad value for config key '" + key + "': " + errors.errors());
  }
  return Status::Ok();
}

namespace {

// Seven significant digits: what a float holds, so 0.1f prints as 0.1.
std::string FloatText(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.7g", v);
  return buf;
}

// Every float or double field of `m` (set or default, nested messages included) must be finite:
// a NaN or infinity in a training config can only turn the weights into NaN. Names the first
// offending key with its dotted path.
Status CheckFinite(const pb::Message& m, const std::string& prefix) {
  const pb::Descriptor* d = m.GetDescriptor();
  const pb::Reflection* r = m.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    const std::string key = prefix + f->name();
    const bool is_float = f->cpp_type() == pb::FieldDescriptor::CPPTYPE_FLOAT;
    const bool is_double = f->cpp_type() == pb::FieldDescriptor::CPPTYPE_DOUBLE;
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      if (f->is_repeated()) {
        for (int k = 0; k < r->FieldSize(m, f); ++k) {
          SHARDPS_RETURN_IF_ERROR(CheckFinite(r->GetRepeatedMessage(m, f, k), key + "[" + std::to_string(k) + "]."));
        }
      } else {
        SHARDPS_RETURN_IF_ERROR(CheckFinite(r->GetMessage(m, f), key + "."));
      }
      continue;
    }
    if (!is_float && !is_double) continue;
    auto value = [&](int k) -> double {
      if (f->is_repeated()) return is_float ? r->GetRepeatedFloat(m, f, k) : r->GetRepeatedDouble(m, f, k);
      return is_float ? r->GetFloat(m, f) : r->GetDouble(m, f);
    };
    const int n = f->is_repeated() ? r->FieldSize(m, f) : 1;
    for (int k = 0; k < n; ++k) {
      const double v = value(k);
      if (!std::isfinite(v)) {
        return InvalidArgument("config " + key + ": " + FloatText(v) + " is not a finite number");
      }
    }
  }
  return Status::Ok();
}

// Mode fedavg and its `federated` settings (docs/federated.md).
Status ValidateFederated(const config::TrainConfig& c) {
  auto bad = [](const std::string& key, const std::string& why) { return InvalidArgument("config " + key + ": " + why); };
  if (c.mode() != "fedavg") {
    if (c.has_federated()) return bad("federated", "applies to mode fedavg (mode is '" + c.mode() + "')");
    return Status::Ok();
  }
  const config::FederatedConfig& f = c.federated();
  if (f.clients() < 1) return bad("federated.clients", std::to_string(f.clients()) + ": at least 1");
  if (!(f.fraction() > 0 && f.fraction() <= 1)) return bad("federated.fraction", FloatText(f.fraction()) + " is outside (0, 1]");
  if (f.local_epochs() < 1) return bad("federated.local_epochs", std::to_string(f.local_epochs()) + ": at least 1");
  if (f.local_batch() < 0) return bad("federated.local_batch", std::to_string(f.local_batch()) + ": 0 (a client's whole partition) or more");
  if (f.rounds() < 1) return bad("federated.rounds", std::to_string(f.rounds()) + ": at least 1");
  if (f.eval_every_rounds() < 1) return bad("federated.eval_every_rounds", std::to_string(f.eval_every_rounds()) + ": at least 1");
  if (!worker::IsPartitioner(f.partitioner())) {
    return bad("federated.partitioner", "'" + f.partitioner() + "' is not one of " + worker::RegisteredPartitioners());
  }
  if (f.shards_per_client() < 1) return bad("federated.shards_per_client", std::to_string(f.shards_per_client()) + ": at least 1");
  if (!(f.dirichlet_alpha() > 0)) return bad("federated.dirichlet_alpha", FloatText(f.dirichlet_alpha()) + " must be positive");
  if (!(f.clip_norm() >= 0)) return bad("federated.clip_norm", FloatText(f.clip_norm()) + ": 0 (no clipping) or a positive L2 norm");
  if (!(f.noise_multiplier() >= 0)) return bad("federated.noise_multiplier", FloatText(f.noise_multiplier()) + " is negative");
  if (f.noise_multiplier() > 0 && f.clip_norm() == 0) {
    return bad("federated.noise_multiplier", FloatText(f.noise_multiplier()) + " needs federated.clip_norm > 0 (the noise is scaled by it)");
  }
  if (!(f.dp_delta() > 0 && f.dp_delta() < 1)) return bad("federated.dp_delta", FloatText(f.dp_delta()) + " is outside (0, 1)");
  if (f.secure_aggregation()) {
    const int m = static_cast<int>(worker::SampleClients(f.clients(), f.fraction(), c.seed(), 0).size());
    if (m < 2 || m > 255) {
      return bad("federated.secure_aggregation", "needs 2 to 255 clients per round; fraction " + FloatText(f.fraction()) +
                                                    " of " + std::to_string(f.clients()) + " clients gives " + std::to_string(m));
    }
    if (f.secagg_bits() < 2 || f.secagg_bits() > 32) return bad("federated.secagg_bits", std::to_string(f.secagg_bits()) + " is outside [2, 32]");
    if (!(f.secagg_clip() > 0) || !std::isfinite(f.secagg_clip())) {
      return bad("federated.secagg_clip", FloatText(f.secagg_clip()) + ": a positive bound on each update element");
    }
    if (f.secagg_threshold() != 0 && (f.secagg_threshold() < 2 || f.secagg_threshold() > m)) {
      return bad("federated.secagg_threshold", std::to_string(f.secagg_threshold()) + ": 0 (floor(2m/3) + 1) or in [2, " +
                                                   std::to_string(m) + "], the round's clients");
    }
    if (f.secagg_dropouts() < 0 || f.secagg_dropouts() > m) {
      return bad("federated.secagg_dropouts", std::to_string(f.secagg_dropouts()) + " is outside [0, " + std::to_string(m) + "]");
    }
    if (f.secagg_drop_phase() < 0 || f.secagg_drop_phase() > 3) {
      return bad("federated.secagg_drop_phase", std::to_string(f.secagg_drop_phase()) + " is outside [0, 3]");
    }
  } else if (f.secagg_dropouts() != 0) {
    return bad("federated.secagg_dropouts", "simulates dropouts of secure aggregation; set federated.secure_aggregation");
  }
  if (c.model() != "softmax" && c.model() != "mlp") return bad("mode", "fedavg trains the dense models (softmax, mlp)");
  if (c.codec() != "identity") return bad("codec", "'" + c.codec() + "' applies to mode sync; fedavg sends float32 updates");
  if (c.optimizer_on() != "servers") return bad("optimizer_on (--optimizer-on)", "fedavg's clients always run the optimizer");
  if (c.has_teacher()) return bad("teacher (--teacher)", "knowledge distillation applies to mode sync");
  if (c.consistency() != "bsp") return bad("consistency", "fedavg averages in rounds every worker completes (use bsp)");
  return Status::Ok();
}

}  // namespace

Result<OptimizerConfig> ToOptimizerConfig(const config::OptimizerConfig& c) {
  OptimizerConfig o;
  auto optimizer = LookupOptimizer(c.kind());
  if (!optimizer.ok()) return InvalidArgument("config optimizer.kind: " + optimizer.status().message());
  o.kind = c.kind();
  if (o.kind == OptimizerKind::kSum) return InvalidArgument("config optimizer.kind: 'sum' is not a training optimizer");
  // Values that make every update meaningless (NaN weights, no progress, division by zero) are
  // refused here, before any training, whoever builds the optimizer from a config.
  auto bad = [](const std::string& key, double v, const std::string& why) {
    return InvalidArgument("config optimizer." + key + " = " + FloatText(v) + ": " + why);
  };
  SHARDPS_RETURN_IF_ERROR(CheckFinite(c, "optimizer."));
  if (!(c.learning_rate() > 0)) return bad("learning_rate", c.learning_rate(), "must be a positive finite number");
  if (!(c.weight_decay() >= 0)) return bad("weight_decay", c.weight_decay(), "must be zero or positive");
  // Checked whatever the kind (the defaults are valid): a config that sets them means them.
  if (!(c.momentum() >= 0 && c.momentum() < 1)) {
    return bad("momentum", c.momentum(), "must be in [0, 1) (1 or more lets the velocity grow without bound)");
  }
  if (!(c.beta1() >= 0 && c.beta1() < 1)) return bad("beta1", c.beta1(), "must be in [0, 1)");
  if (!(c.beta2() >= 0 && c.beta2() < 1)) return bad("beta2", c.beta2(), "must be in [0, 1) (1 divides by a zero bias correction)");
  if (!(c.epsilon() > 0)) return bad("epsilon", c.epsilon(), "must be positive (adam divides by sqrt(v) + epsilon)");
  if (!(c.initial_accumulator() >= 0)) return bad("initial_accumulator", c.initial_accumulator(), "must be zero or positive");
  if (!(c.ftrl_beta() > 0)) {
    return bad("ftrl_beta", c.ftrl_beta(), "must be positive (ftrl divides by (ftrl_beta + sqrt(n)) / learning_rate + l2)");
  }
  if (!(c.l1() >= 0)) return bad("l1", c.l1(), "must be zero or positive");
  if (!(c.l2() >= 0)) return bad("l2", c.l2(), "must be zero or positive");
  o.learning_rate = c.learning_rate();
  o.momentum = c.momentum();
  o.beta1 = c.beta1();
  o.beta2 = c.beta2();
  o.epsilon = c.epsilon();
  o.weight_decay = c.weight_decay();
  o.initial_accumulator = c.initial_accumulator();
  o.ftrl_beta = c.ftrl_beta();
  o.l1 = c.l1();
  o.l2 = c.l2();
  return o;
}

Status ValidateTrainConfig(const config::TrainConfig& c) {
  auto bad = [](const std::string& key, const std::string& why) { return InvalidArgument("config " + key + ": " + why); };
  if (c.model() != "softmax" && c.model() != "mlp" && c.model() != "sparse_lr") {
    return bad("model", "'" + c.model() + "' is not softmax, mlp or sparse_lr");
  }
  if (c.model() == "sparse_lr") {
    // Logistic regression over a sparse table of feature ids (tools/train_sparse.cc).
    if (c.hidden_size() > 0) return bad("hidden", "sparse_lr has no hidden layers");
    if (c.data().format() != "libsvm") return bad("data.format", "sparse_lr reads libsvm files, not " + c.data().format());
    if (c.mode() != "sync") return bad("mode", "sparse_lr trains in sync mode (with consistency bsp, ssp or asp)");
    if (c.servers() < 1 && !c.colocated()) return bad("servers", "sparse_lr needs parameter servers (servers >= 1 or colocated)");
    if (c.optimizer().kind() == "sum") return bad("optimizer.kind", "'sum' is for reduction tables");
  }
  // Knowledge distillation: the keys name their flags too, which set them through overrides.
  if (c.has_teacher() && c.teacher().empty()) return bad("teacher (--teacher)", "an empty path");
  if (c.has_teacher() && c.model() == "sparse_lr") {
    return bad("teacher (--teacher)", "knowledge distillation applies to the dense models (softmax, mlp), not sparse_lr");
  }
  const std::string needs_teacher = "distillation settings need a teacher model (config teacher, --teacher FILE)";
  if (!c.has_teacher() && c.has_distill_temperature()) return bad("distill_temperature (--distill-temperature)", needs_teacher);
  if (!c.has_teacher() && c.has_distill_alpha()) return bad("distill_alpha (--distill-alpha)", needs_teacher);
  if (!(c.distill_temperature() > 0.0f)) {
    return bad("distill_temperature (--distill-temperature)", FloatText(c.distill_temperature()) + " must be a positive temperature");
  }
  if (!(c.distill_alpha() >= 0.0f && c.distill_alpha() <= 1.0f)) {
    return bad("distill_alpha (--distill-alpha)", FloatText(c.distill_alpha()) + " is outside [0, 1]");
  }
  if (c.model() == "mlp" && c.hidden_size() == 0) return bad("hidden", "an mlp needs at least one hidden layer");
  if (c.model() == "softmax" && c.hidden_size() > 0) return bad("hidden", "softmax regression has no hidden layers");
  for (int64_t h : c.hidden()) if (h < 1) return bad("hidden", "layer width " + std::to_string(h) + " is not positive");
  if (c.mode() != "sync" && c.mode() != "local_sgd" && c.mode() != "fedavg") {
    return bad("mode", "'" + c.mode() + "' is not sync, local_sgd or fedavg");
  }
  SHARDPS_RETURN_IF_ERROR(ValidateFederated(c));
  if (c.local_steps() < 0) return bad("local_steps", "must not be negative");
  if (c.epochs() < 1) return bad("epochs", "must be at least 1, got " + std::to_string(c.epochs()));
  if (c.batch_size() < 1) return bad("batch_size", "must be at least 1, got " + std::to_string(c.batch_size()));
  if (c.servers() < 0) return bad("servers", "must not be negative");
  if (c.chunk_floats() < 1) return bad("chunk_floats", "must be at least 1");
  if (c.timeout_ms() < 1 || c.timeout_ms() > 1000000000) return bad("timeout_ms", std::to_string(c.timeout_ms()) + " is outside 1..1000000000");
  if (c.log_every_steps() < 1) return bad("log_every_steps", "must be at least 1");
  if (c.eval_every_epochs() < 1) return bad("eval_every_epochs", "must be at least 1");
  const auto& d = c.data();
  if (d.format() != "idx" && d.format() != "libsvm" && d.format() != "csv") {
    return bad("data.format", "'" + d.format() + "' is not idx, libsvm or csv");
  }
  if (d.train().empty()) return bad("data.train", "no training data file given");
  if (d.test().empty()) return bad("data.test", "no test data file given");
  if (d.format() == "idx" && (d.train_labels().empty() || d.test_labels().empty())) {
    return bad("data.train_labels/test_labels", "idx data needs label files");
  }
  if (d.num_classes() < 2) return bad("data.num_classes", "must be at least 2");
  if (d.csv_label_column() < 0) {
    return bad("data.csv_label_column", std::to_string(d.csv_label_column()) + " must not be negative (training needs labels)");
  }
  if (d.train_limit() < 0 || d.test_limit() < 0) return bad("data.train_limit/test_limit", "must not be negative");
  if (c.checkpoint_every() < 0) return bad("checkpoint_every", "must not be negative");
  if (c.keep_last() < 0 || c.max_bytes() < 0) return bad("keep_last/max_bytes", "must not be negative");
  if (c.checkpoint_every() > 0 && c.checkpoint_dir().empty()) return bad("checkpoint_every", "needs checkpoint_dir");
  if (!c.checkpoint_dir().empty() && c.mode() == "local_sgd") {
    return bad("checkpoint_dir", "checkpoints of local_sgd runs (worker replicas) are not supported yet");
  }
  if (!c.checkpoint_dir().empty() && c.servers() == 0 && !c.colocated()) {
    return bad("checkpoint_dir", "checkpoints are written by parameter servers; --servers 0 has none");
  }
  if (c.optimizer_on() != "servers" && c.optimizer_on() != "workers") {
    return bad("optimizer_on (--optimizer-on)", "'" + c.optimizer_on() + "' is not servers or workers");
  }
  if (c.optimizer_on() == "workers" && (c.mode() != "sync" || c.model() == "sparse_lr")) {
    return bad("optimizer_on (--optimizer-on)", "'workers' applies to the dense models (softmax, mlp) in mode sync (local_sgd "
                                                "always runs the optimizer on the workers)");
  }
  if (auto p = ps::LookupConsistencyPolicy(c.consistency()); !p.ok()) return bad("consistency", p.status().message());
  if (auto k = LookupCodec(c.codec()); !k.ok()) return bad("codec", k.status().message());
  if (c.compress_after() < 0) return bad("compress_after", "must not be negative");
  if (!(c.codec_density() > 0.0f && c.codec_density() <= 1.0f)) {
    return bad("codec_density", std::to_string(c.codec_density()) + " is outside (0, 1]");
  }
  if (c.staleness() < 0 || c.staleness() > ps::kMaxStaleness) {
    return bad("staleness", std::to_string(c.staleness()) + " is outside 0.." + std::to_string(ps::kMaxStaleness));
  }
  if (c.staleness() != 0 && c.consistency() != ps::kSspConsistency) {
    return bad("staleness", std::to_string(c.staleness()) + " applies only to consistency 'ssp' (consistency is '" +
                                c.consistency() + "')");
  }
  if (c.consistency() != ps::kBspConsistency) {
    if (c.mode() == "local_sgd") {
      return bad("consistency", "'" + c.consistency() + "' applies to mode sync; local_sgd averages in rounds every worker completes (use bsp)");
    }
    if (!c.checkpoint_dir().empty()) {
      return bad("consistency", "checkpoints are taken with every chunk at the same step, which only 'bsp' guarantees ('" +
                                    c.consistency() + "' with checkpoint_dir is not supported)");
    }
  }
  SHARDPS_RETURN_IF_ERROR(CheckFinite(c, ""));
  SHARDPS_RETURN_IF_ERROR(ToOptimizerConfig(c.optimizer()).status());
  return Status::Ok();
}

std::string ConfigToText(const config::TrainConfig& c) {
  std::string out;
  pb::TextFormat::PrintToString(c, &out);
  return out;
}

}  // namespace shardps
