// Sparse libsvm (ReadLibsvmSparse) and sparse batches (MakeSparseBatch): see data.h.
#include "shardps/worker/data.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string_view>

#include "file_input.h"

namespace shardps::worker {

using input::At;
using input::ForEachLine;
using input::IsSpace;
using input::ParseNumber;
using input::Quoted;
using input::ReadAll;
using input::Trim;

namespace {

std::string PairAt(const std::string& path, int64_t line, size_t pair, std::string_view tok) {
  return At(path, line) + "pair " + std::to_string(pair) + " ('" + std::string(tok) + "'): ";
}

const char* LabelFormatText(LabelFormat f) {
  switch (f) {
    case LabelFormat::kAuto: return "0/1 or -1/+1";
    case LabelFormat::kZeroOne: return "0/1";
    case LabelFormat::kPlusMinusOne: return "-1/+1";
  }
  return "?";
}

}  // namespace

Result<SparseDataset> ReadLibsvmSparse(const std::string& path, const SparseReadOptions& options) {
  SHARDPS_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, ReadAll(path));
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  SparseDataset d;
  d.source = path;
  // The label convention in force: options.labels, or once a file line has shown it (0 or -1),
  // that one (`convention_line` names the line that fixed it).
  LabelFormat convention = options.labels;
  int64_t convention_line = 0;
  Status st = Status::Ok();
  try {
    // Upper bounds of the sizes ('\n' and ':' counts), so the arrays are allocated once.
    const size_t lines = static_cast<size_t>(std::count(text.begin(), text.end(), '\n')) + 1;
    const size_t colons = static_cast<size_t>(std::count(text.begin(), text.end(), ':'));
    d.row_offsets.reserve(lines + 1);
    d.labels.reserve(lines);
    d.ids.reserve(colons);
    d.values.reserve(colons);
    st = ForEachLine(text, [&](int64_t line_no, std::string_view line) -> Status {
      line = Trim(line);
      if (line.empty() || line.front() == '#') return Status::Ok();
      size_t p = 0;
      auto next_token = [&]() -> std::string_view {
        while (p < line.size() && IsSpace(line[p])) ++p;
        const size_t b = p;
        while (p < line.size() && !IsSpace(line[p])) ++p;
        return line.substr(b, p - b);
      };
      // The label.
      const std::string_view label_tok = next_token();
      double lv = 0;
      if (!ParseNumber(label_tok, &lv) || !(lv == 0 || lv == 1 || lv == -1)) {
        return InvalidArgument(At(path, line_no) + "label '" + std::string(label_tok) + "' is not a binary label (" +
                               LabelFormatText(convention) + ")");
      }
      if (lv != 1) {
        const LabelFormat needs = lv == 0 ? LabelFormat::kZeroOne : LabelFormat::kPlusMinusOne;
        if (convention == LabelFormat::kAuto) {
          convention = needs;
          convention_line = line_no;
        } else if (convention != needs) {
          std::string why = convention_line > 0 ? "line " + std::to_string(convention_line) + " uses " : "the labels are ";
          return InvalidArgument(At(path, line_no) + "label '" + std::string(label_tok) + "' but " + why +
                                 LabelFormatText(convention) + " (a file uses 0/1 or -1/+1, not both)");
        }
      }
      const float label = lv == 1 ? 1.0f : 0.0f;
      // The pairs.
      uint64_t prev = 0;
      size_t pair = 0;
      for (std::string_view tok = next_token(); !tok.empty(); tok = next_token()) {
        if (tok.front() == '#') break;  // trailing comment
        ++pair;
        const size_t colon = tok.find(':');
        if (colon == std::string_view::npos) {
          return InvalidArgument(PairAt(path, line_no, pair, tok) + "not <id>:<value>");
        }
        const std::string_view id_text = tok.substr(0, colon);
        uint64_t id = 0;
        if (!ParseNumber(id_text, &id)) {
          return InvalidArgument(PairAt(path, line_no, pair, tok) + "feature id '" + std::string(id_text) +
                                 "' is not an integer in [1, 2^64 - 1]");
        }
        if (id == 0) return InvalidArgument(PairAt(path, line_no, pair, tok) + "feature id 0: ids are 1-based");
        if (id <= prev) {
          return InvalidArgument(PairAt(path, line_no, pair, tok) + "feature id " + std::to_string(id) +
                                 (id == prev ? " repeats the id of pair " : " is below the id of pair ") +
                                 std::to_string(pair - 1) + " (" + std::to_string(prev) +
                                 "); ids within a line must be strictly increasing");
        }
        if (options.max_feature_id != 0 && id > options.max_feature_id) {
          return InvalidArgument(PairAt(path, line_no, pair, tok) + "feature id " + std::to_string(id) +
                                 " exceeds the largest allowed id " + std::to_string(options.max_feature_id));
        }
        const std::string_view value_text = tok.substr(colon + 1);
        float v = 0;
        if (!ParseNumber(value_text, &v)) {
          return InvalidArgument(PairAt(path, line_no, pair, tok) + "value '" + std::string(value_text) +
                                 "' is not a finite number");
        }
        prev = id;
        d.ids.push_back(id);
        d.values.push_back(v);
      }
      if (prev > d.max_id) d.max_id = prev;
      d.labels.push_back(label);
      d.row_offsets.push_back(d.ids.size());
      return Status::Ok();
    });
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("out of memory reading " + Quoted(path) + " (" + std::to_string(d.labels.size()) + " rows, " +
                             std::to_string(d.ids.size()) + " nonzeros read)");
  }
  SHARDPS_RETURN_IF_ERROR(st);
  if (d.labels.empty()) return InvalidArgument(Quoted(path) + " holds no samples");
  return d;
}

Status MakeSparseBatch(const SparseDataset& data, std::span<const int64_t> rows, const SparseBatchOptions& options,
                       SparseBatch* out) {
  const int64_t n = data.num_rows();
  const uint64_t extra = options.bias_key ? 1 : 0;
  uint64_t total = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const int64_t r = rows[i];
    if (r < 0 || r >= n) {
      return InvalidArgument("batch entry " + std::to_string(i) + " is row " + std::to_string(r) + ", outside [0, " +
                             std::to_string(n) + ") of " + Quoted(data.source));
    }
    const size_t ru = static_cast<size_t>(r);
    total += data.row_offsets[ru + 1] - data.row_offsets[ru] + extra;
  }
  try {
    out->row_offsets.resize(rows.size() + 1);
    out->labels.resize(rows.size());
    out->slots.resize(total);
    out->values.resize(total);
    out->scratch.resize(total);
    out->keys.clear();
    // Every nonzero as (id, position); sorting the pairs orders the ids and, among equal ids, the
    // positions, so the result depends on nothing but the input.
    uint64_t j = 0;
    out->row_offsets[0] = 0;
    for (size_t i = 0; i < rows.size(); ++i) {
      const size_t r = static_cast<size_t>(rows[i]);
      if (options.bias_key) {
        out->scratch[j] = {kSparseBiasKey, j};
        out->values[j] = 1.0f;
        ++j;
      }
      for (uint64_t k = data.row_offsets[r]; k < data.row_offsets[r + 1]; ++k, ++j) {
        out->scratch[j] = {data.ids[k], j};
        out->values[j] = data.values[k];
      }
      out->row_offsets[i + 1] = j;
      out->labels[i] = data.labels[r];
    }
    std::sort(out->scratch.begin(), out->scratch.end());
    for (const auto& [id, pos] : out->scratch) {
      if (out->keys.empty() || out->keys.back() != id) {
        if (out->keys.size() == std::numeric_limits<uint32_t>::max()) {
          return ResourceExhausted("a batch of " + std::to_string(rows.size()) + " rows touches more than 2^32 - 1 distinct keys");
        }
        out->keys.push_back(id);
      }
      out->slots[pos] = static_cast<uint32_t>(out->keys.size() - 1);
    }
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("out of memory for a batch of " + std::to_string(rows.size()) + " rows (" +
                             std::to_string(total) + " nonzeros) of " + Quoted(data.source));
  }
  return Status::Ok();
}

}  // namespace shardps::worker
