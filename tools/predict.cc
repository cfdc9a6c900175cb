// shardps predict: batch inference of one checkpoint version over a data file.
//   shardps predict --model DIR[@VERSION|@TAG] --data FILE [--labels FILE] [--format auto|idx|libsvm|csv]
//                   [--out predictions.csv] [--no-labels]
// The CSV has one line per row: row, label (when the data has labels), predicted class, then the
// logits (shortest decimal that reads back as the same float32). With labels, accuracy and mean
// cross-entropy are printed and written to the summary line on stdout.
// The version is loaded and verified exactly as `shardps serve` loads it (serve/servable.h).
#include <algorithm>
#include <boost/program_options.hpp>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "commands.h"
#include "flags.h"
#include "shardps/serve/servable.h"
#include "shardps/storage/checkpoint_registry.h"
#include "shardps/worker/data.h"

namespace shardps::tools {
namespace {

namespace po = boost::program_options;

int Fail(const Status& s) {
  std::cerr << "shardps predict: " << s.message() << "\n";
  return 1;
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

int PredictMain(int argc, char** argv) {
  std::string model_spec, data, labels, format = "auto", out_path;
  bool no_labels = false;
  po::options_description desc("shardps predict: batch inference of a checkpoint over a data file");
  desc.add_options()
      ("model", po::value(&model_spec)->required(), "DIR, DIR@VERSION or DIR@TAG: the checkpoint version to run")
      ("data", po::value(&data)->required(), "IDX images (with --labels), libsvm, or CSV (label first, or --no-labels)")
      ("labels", po::value(&labels), "IDX labels file (idx format)")
      ("format", po::value(&format)->default_value(format), "auto (from the name: *idx*, *.csv, else libsvm), idx, libsvm, csv")
      ("no-labels", po::bool_switch(&no_labels), "csv: every column is a feature (no accuracy)")
      ("out", po::value(&out_path), "predictions CSV (default: none, only the summary)");
  if (int code = ParseFlags(argc, argv, desc, "predict"); code >= 0) return code;
  if (format == "auto") format = data.find("idx") != std::string::npos ? "idx" : EndsWith(data, ".csv") ? "csv" : "libsvm";
  if (format != "idx" && format != "libsvm" && format != "csv") {
    std::cerr << "shardps predict: --format '" << format << "': expected auto, idx, libsvm or csv\n";
    return 2;
  }
  if (format == "idx" && labels.empty()) {
    std::cerr << "shardps predict: IDX images need their --labels file (IDX labels)\n";
    return 2;
  }
  if (no_labels && format != "csv") {
    std::cerr << "shardps predict: --no-labels applies to csv data only\n";
    return 2;
  }

  auto v = ResolveCheckpoint(model_spec, [](const std::string& w) { std::cerr << "shardps predict: warning: " << w << "\n"; });
  if (!v.ok()) return Fail(v.status());
  const std::string version_path = v->path;
  auto servable = serve::LoadServable(std::move(*v), "primary");
  if (!servable.ok()) return Fail(servable.status());
  const serve::Servable& s = **servable;

  Result<worker::Dataset> ds = InvalidArgument("no data");
  if (format == "idx") ds = worker::ReadIdx(data, labels, s.num_classes());
  else if (format == "libsvm") ds = worker::ReadLibsvm(data, s.input_dim(), s.num_classes());
  else if (no_labels) ds = worker::ReadCsv(data, s.num_classes(), /*has_header=*/false, worker::kNoLabelColumn);
  else ds = worker::ReadCsv(data, s.num_classes(), /*has_header=*/false);
  if (!ds.ok()) return Fail(ds.status());
  if (ds->num_features != s.input_dim()) {
    return Fail(InvalidArgument("data '" + data + "' has " + std::to_string(ds->num_features) + " features per row; the model in " +
                                version_path + " takes " + std::to_string(s.input_dim())));
  }
  const bool labelled = !no_labels;
  const int c = s.num_classes();
  const int64_t n = ds->num_samples;
  std::vector<float> logits(static_cast<size_t>(n) * c);
  s.Logits(ds->features.data(), n, logits.data());

  std::ofstream out;
  const std::string tmp = out_path + ".tmp";
  if (!out_path.empty()) {
    out.open(tmp, std::ios::trunc);
    if (!out) return Fail(IoError("cannot create '" + tmp + "'"));
    out << "row" << (labelled ? ",label" : "") << ",predicted";
    for (int k = 0; k < c; ++k) out << ",logit_" << k;
    out << "\n";
  }
  int64_t correct = 0;
  double loss = 0;
  char buf[32];
  std::string line;
  for (int64_t r = 0; r < n; ++r) {
    const float* z = logits.data() + r * c;
    int best = 0;
    for (int k = 1; k < c; ++k) if (z[k] > z[best]) best = k;
    if (labelled) {
      const int y = ds->labels[r];
      correct += best == y;
      float mx = z[0];
      for (int k = 1; k < c; ++k) mx = std::max(mx, z[k]);
      double sum = 0;
      for (int k = 0; k < c; ++k) sum += std::exp(static_cast<double>(z[k] - mx));
      loss += std::log(sum) - static_cast<double>(z[y] - mx);
    }
    if (out.is_open()) {
      line = std::to_string(r);
      if (labelled) line += "," + std::to_string(ds->labels[r]);
      line += "," + std::to_string(best);
      for (int k = 0; k < c; ++k) {
        auto res = std::to_chars(buf, buf + sizeof(buf), z[k]);
        line += ',';
        line.append(buf, res.ptr);
      }
      line += '\n';
      out << line;
    }
  }
  if (out.is_open()) {
    out.close();
    if (!out || std::rename(tmp.c_str(), out_path.c_str()) != 0) return Fail(IoError("cannot write '" + out_path + "'"));
  }
  std::ostringstream summary;
  summary << "predict: " << n << " rows, model " << version_path << " (step " << s.step << ")";
  if (labelled && n > 0) {
    std::snprintf(buf, sizeof(buf), "%.4f", static_cast<double>(correct) / n);
    summary << ", accuracy " << buf << " (" << correct << "/" << n << ")";
    std::snprintf(buf, sizeof(buf), "%.4f", loss / n);
    summary << ", mean loss " << buf;
  }
  if (!out_path.empty()) summary << ", wrote " << out_path;
  std::cout << summary.str() << std::endl;
  return 0;
}

}  // namespace shardps::tools
