#pragma once

namespace shardps::tools {

// Each returns the process exit code. argv[0] is the command name.
int BenchMain(int argc, char** argv);
int TrainMain(int argc, char** argv);
int CkptMain(int argc, char** argv);
int DatagenMain(int argc, char** argv);  // datagen.cc
int SecAggBenchMain(int argc, char** argv);  // bench_secagg.cc
int FedServeMain(int argc, char** argv);     // fed.cc
int FedClientMain(int argc, char** argv);    // fed.cc
int ServeMain(int argc, char** argv);        // serve.cc
int PredictMain(int argc, char** argv);      // predict.cc
int ServeBenchMain(int argc, char** argv);  // bench_serve.cc

}  // namespace shardps::tools
