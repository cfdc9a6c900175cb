// The shardps command-line program: `shardps <command> [flags]`.
#include <cstdio>
#include <cstring>
#include <string>

#include "commands.h"
#include "shardps/net/auth.h"

namespace {

void Usage(std::FILE* out) {
  std::fprintf(out,
               "usage: shardps <command> [flags]\n"
               "\n"
               "commands:\n"
               "  train     train a model: mpirun -np N shardps train --config run.prototxt [flags]\n"
               "  ckpt      list, verify, tag, untag, rollback, gc, export: the checkpoint registry\n"
               "  keygen    --out FILE: write a fresh shared secret for authenticated transports\n"
               "  bench     time synchronous push/pull rounds against MPI_Allreduce (run under mpirun)\n"
               "  datagen   --out DIR: synthetic click-style libsvm data with a known true model\n"
               "  secagg-bench  time and count the bytes of one secure-aggregation round (core/secagg)\n"
               "  fed-serve     coordinate federated averaging with real client processes over TCP\n"
               "  fed-client    one federated client process (its own data partition)\n"
               "  serve     serve a registry version or tag over KServe v2 (HTTP), hot swaps, fallback, /metrics\n"
               "  serve-bench  load a running `shardps serve` with infer requests: latency, throughput, versions seen\n"
               "  predict   batch inference of a checkpoint over a data file, to CSV (accuracy when labelled)\n"
               "  version   print the version\n"
               "\n"
               "`shardps <command> --help` lists a command's flags.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    Usage(stderr);
    return 2;
  }
  const std::string cmd = argv[1];
  if (cmd == "bench") return shardps::tools::BenchMain(argc - 1, argv + 1);
  if (cmd == "train") return shardps::tools::TrainMain(argc - 1, argv + 1);
  if (cmd == "ckpt") return shardps::tools::CkptMain(argc - 1, argv + 1);
  if (cmd == "datagen") return shardps::tools::DatagenMain(argc - 1, argv + 1);
  if (cmd == "secagg-bench") return shardps::tools::SecAggBenchMain(argc - 1, argv + 1);
  if (cmd == "fed-serve") return shardps::tools::FedServeMain(argc - 1, argv + 1);
  if (cmd == "fed-client") return shardps::tools::FedClientMain(argc - 1, argv + 1);
  if (cmd == "serve") return shardps::tools::ServeMain(argc - 1, argv + 1);
  if (cmd == "predict") return shardps::tools::PredictMain(argc - 1, argv + 1);
  if (cmd == "serve-bench") return shardps::tools::ServeBenchMain(argc - 1, argv + 1);
  if (cmd == "keygen") {
    // shardps keygen --out FILE: 32 random bytes, mode 0600, never overwriting.
    if (argc != 4 || std::strcmp(argv[2], "--out") != 0) {
      std::fprintf(stderr, "usage: shardps keygen --out FILE\n");
      return 2;
    }
    shardps::Status st = shardps::WriteNewSecret(argv[3]);
    if (!st.ok()) {
      std::fprintf(stderr, "shardps keygen: %s\n", st.message().c_str());
      return 1;
    }
    std::printf("wrote a 32-byte secret to %s (mode 600)\n", argv[3]);
    return 0;
  }
  if (cmd == "version" || cmd == "--version") {
    std::printf("shardps 0.1.0\n");
    return 0;
  }
  if (cmd == "help" || cmd == "--help" || cmd == "-h") {
    Usage(stdout);
    return 0;
  }
  std::fprintf(stderr, "shardps: unknown command '%s'\n\n", cmd.c_str());
  Usage(stderr);
  return 2;
}
