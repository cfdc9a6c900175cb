// Config values that make training meaningless are refused before training, naming the key and
// the value: non-finite numbers anywhere, a non-positive learning rate, epsilon <= 0, betas and
// momentum outside [0, 1), a negative weight decay, AdaGrad's and FTRL's out-of-range values, an
// optimizer name that is not registered (the error lists the registered ones), an unknown
// consistency policy, a staleness out of range or without ssp, ssp/asp with local_sgd or
// checkpoints, a gradient codec that is not registered (the error lists the registered ones), a
// negative compress_after, a codec_density outside (0, 1], and knowledge distillation's keys (a
// temperature <= 0, an alpha outside [0, 1], distillation keys without a teacher, an empty teacher
// path, a teacher for sparse_lr). Reached from a config file's text and from overrides (what
// `shardps train --lr inf` and `--set` turn into).
#include <gtest/gtest.h>

#include <string>

#include "config.h"
#include "shardps/base/codec.h"
#include "shardps/base/optimizer.h"

namespace shardps {
namespace {

constexpr const char* kBase = R"(
model: "softmax"
data { format: "idx" train: "a" train_labels: "b" test: "c" test_labels: "d" }
)";

config::TrainConfig Base() {
  auto c = ParseTrainConfig(kBase, "base");
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return *c;
}

// The status of validating the base config with `overrides` applied (an override that does not
// parse fails the test).
Status WithOverrides(std::initializer_list<std::string> overrides) {
  config::TrainConfig c = Base();
  for (const auto& o : overrides) {
    Status s = ApplyConfigOverride(&c, o);
    EXPECT_TRUE(s.ok()) << o << ": " << s.ToString();
    if (!s.ok()) return s;
  }
  return ValidateTrainConfig(c);
}

void ExpectRefused(std::initializer_list<std::string> overrides, const std::string& key, const std::string& value) {
  Status s = WithOverrides(overrides);
  ASSERT_FALSE(s.ok()) << *overrides.begin() << " was accepted";
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find(key), std::string::npos) << "the error does not name " << key << ": " << s.ToString();
  EXPECT_NE(s.message().find(value), std::string::npos) << "the error does not name the value " << value << ": " << s.ToString();
}

TEST(ConfigValidation, BaseAndSensibleValuesAreAccepted) {
  EXPECT_TRUE(WithOverrides({}).ok());
  EXPECT_TRUE(WithOverrides({"optimizer.kind=adam", "optimizer.epsilon=1e-7", "optimizer.beta1=0", "optimizer.beta2=0.99"}).ok());
  EXPECT_TRUE(WithOverrides({"optimizer.kind=momentum", "optimizer.momentum=0", "optimizer.weight_decay=0.01"}).ok());
  // Large but finite: accepted here (it may diverge; the trainer stops it then).
  EXPECT_TRUE(WithOverrides({"optimizer.learning_rate=1e30"}).ok());
}

TEST(ConfigValidation, NegativeCsvLabelColumnIsRefused) {
  ExpectRefused({"data.csv_label_column=-1"}, "data.csv_label_column", "-1");
}

TEST(ConfigValidation, NonFiniteLearningRateIsRefused) {
  ExpectRefused({"optimizer.learning_rate=inf"}, "optimizer.learning_rate", "inf");
  ExpectRefused({"optimizer.learning_rate=-inf"}, "optimizer.learning_rate", "-inf");
  ExpectRefused({"optimizer.learning_rate=nan"}, "optimizer.learning_rate", "nan");
}

TEST(ConfigValidation, NonPositiveLearningRateIsRefused) {
  ExpectRefused({"optimizer.learning_rate=0"}, "optimizer.learning_rate", "0");
  ExpectRefused({"optimizer.learning_rate=-0.1"}, "optimizer.learning_rate", "-0.1");
}

TEST(ConfigValidation, EpsilonMustBePositive) {
  ExpectRefused({"optimizer.kind=adam", "optimizer.epsilon=0"}, "optimizer.epsilon", "0");
  ExpectRefused({"optimizer.kind=adam", "optimizer.epsilon=-1e-8"}, "optimizer.epsilon", "-1e-08");
  ExpectRefused({"optimizer.kind=adam", "optimizer.epsilon=nan"}, "optimizer.epsilon", "nan");
  ExpectRefused({"optimizer.epsilon=0"}, "optimizer.epsilon", "0");  // whatever the kind
}

TEST(ConfigValidation, WeightDecayMustBeFiniteAndNotNegative) {
  ExpectRefused({"optimizer.weight_decay=nan"}, "optimizer.weight_decay", "nan");
  ExpectRefused({"optimizer.weight_decay=inf"}, "optimizer.weight_decay", "inf");
  ExpectRefused({"optimizer.weight_decay=-0.5"}, "optimizer.weight_decay", "-0.5");
}

TEST(ConfigValidation, BetasAndMomentumMustBeInUnitInterval) {
  ExpectRefused({"optimizer.kind=adam", "optimizer.beta1=1"}, "optimizer.beta1", "1");
  ExpectRefused({"optimizer.kind=adam", "optimizer.beta2=1"}, "optimizer.beta2", "1");
  ExpectRefused({"optimizer.kind=adam", "optimizer.beta2=-0.5"}, "optimizer.beta2", "-0.5");
  ExpectRefused({"optimizer.kind=adam", "optimizer.beta1=nan"}, "optimizer.beta1", "nan");
  ExpectRefused({"optimizer.kind=momentum", "optimizer.momentum=1.5"}, "optimizer.momentum", "1.5");
  ExpectRefused({"optimizer.kind=momentum", "optimizer.momentum=-0.1"}, "optimizer.momentum", "-0.1");
}

TEST(ConfigValidation, NanInAConfigFileIsRefusedWithItsKey) {
  auto c = ParseTrainConfig(std::string(kBase) + "optimizer { kind: \"adam\" beta2: nan }", "run.prototxt");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  Status s = ValidateTrainConfig(*c);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("optimizer.beta2"), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("nan"), std::string::npos) << s.ToString();
}

TEST(ConfigValidation, ToOptimizerConfigRefusesTheSameValues) {
  config::OptimizerConfig o;
  o.set_learning_rate(std::numeric_limits<float>::infinity());
  EXPECT_FALSE(ToOptimizerConfig(o).ok());
  o.set_learning_rate(0.1f);
  EXPECT_TRUE(ToOptimizerConfig(o).ok());
  o.set_kind("adam");
  o.set_epsilon(0);
  auto r = ToOptimizerConfig(o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("optimizer.epsilon"), std::string::npos) << r.status().ToString();
}

TEST(ConfigValidation, UnknownOptimizerNamesTheKey) {
  ExpectRefused({"optimizer.kind=rmsprop"}, "optimizer.kind", "rmsprop");
}

TEST(ConfigValidation, UnknownOptimizerListsTheRegisteredNames) {
  for (const std::string name : {"rmsprop", "Adam", "ada_grad", ""}) {
    Status s = WithOverrides({"optimizer.kind=" + name});
    ASSERT_FALSE(s.ok()) << "'" << name << "' accepted";
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
    EXPECT_NE(s.message().find("optimizer.kind"), std::string::npos) << s.ToString();
    EXPECT_NE(s.message().find("'" + name + "'"), std::string::npos) << s.ToString();
    // Every registered name is listed, so the message stays right as optimizers are added.
    for (const Optimizer* o : RegisteredOptimizers()) {
      EXPECT_NE(s.message().find(std::string(o->name())), std::string::npos) << o->name() << ": " << s.ToString();
    }
  }
}

TEST(ConfigValidation, SumIsNotATrainingOptimizer) {
  ExpectRefused({"optimizer.kind=sum"}, "optimizer.kind", "sum");
}

TEST(ConfigValidation, AdaGradAndFtrlAreAcceptedWithTheirHyperparameters) {
  EXPECT_TRUE(WithOverrides({"optimizer.kind=adagrad"}).ok());
  EXPECT_TRUE(WithOverrides({"optimizer.kind=adagrad", "optimizer.initial_accumulator=0", "optimizer.epsilon=1e-6"}).ok());
  EXPECT_TRUE(WithOverrides({"optimizer.kind=ftrl"}).ok());
  EXPECT_TRUE(WithOverrides({"optimizer.kind=ftrl", "optimizer.ftrl_beta=0.5", "optimizer.l1=0.01", "optimizer.l2=0.1"}).ok());
  config::OptimizerConfig o;
  o.set_kind("ftrl");
  o.set_learning_rate(0.05f);
  o.set_ftrl_beta(2.0f);
  o.set_l1(0.25f);
  o.set_l2(0.5f);
  o.set_initial_accumulator(0.125f);
  auto r = ToOptimizerConfig(o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->kind, "ftrl");
  EXPECT_EQ(r->learning_rate, 0.05f);
  EXPECT_EQ(r->ftrl_beta, 2.0f);
  EXPECT_EQ(r->l1, 0.25f);
  EXPECT_EQ(r->l2, 0.5f);
  EXPECT_EQ(r->initial_accumulator, 0.125f);
  o.set_kind("adagrad");
  r = ToOptimizerConfig(o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->kind, "adagrad");
  EXPECT_EQ(OptimizerSlots(r->kind), 1);
}

TEST(ConfigValidation, AdaGradAndFtrlHyperparametersAreChecked) {
  ExpectRefused({"optimizer.kind=adagrad", "optimizer.initial_accumulator=-0.1"}, "optimizer.initial_accumulator", "-0.1");
  ExpectRefused({"optimizer.kind=adagrad", "optimizer.initial_accumulator=nan"}, "optimizer.initial_accumulator", "nan");
  ExpectRefused({"optimizer.kind=adagrad", "optimizer.epsilon=0"}, "optimizer.epsilon", "0");
  ExpectRefused({"optimizer.kind=ftrl", "optimizer.ftrl_beta=0"}, "optimizer.ftrl_beta", "0");
  ExpectRefused({"optimizer.kind=ftrl", "optimizer.ftrl_beta=-1"}, "optimizer.ftrl_beta", "-1");
  ExpectRefused({"optimizer.kind=ftrl", "optimizer.l1=-0.5"}, "optimizer.l1", "-0.5");
  ExpectRefused({"optimizer.kind=ftrl", "optimizer.l2=-0.5"}, "optimizer.l2", "-0.5");
  ExpectRefused({"optimizer.kind=ftrl", "optimizer.l2=inf"}, "optimizer.l2", "inf");
}

TEST(ConfigValidation, ConsistencyAndStalenessAreChecked) {
  EXPECT_TRUE(WithOverrides({"consistency=bsp"}).ok());
  EXPECT_TRUE(WithOverrides({"consistency=ssp", "staleness=0"}).ok());
  EXPECT_TRUE(WithOverrides({"consistency=ssp", "staleness=1000"}).ok());
  EXPECT_TRUE(WithOverrides({"consistency=asp"}).ok());
  EXPECT_TRUE(WithOverrides({"consistency=ssp", "staleness=3", "servers=0"}).ok());  // one worker: as bsp
  ExpectRefused({"consistency=stale"}, "consistency", "'stale'");
  ExpectRefused({"consistency=stale"}, "consistency", "ssp");  // the registered names are listed
  ExpectRefused({"consistency=ssp", "staleness=-1"}, "staleness", "-1");
  ExpectRefused({"consistency=ssp", "staleness=1001"}, "staleness", "1001");
  ExpectRefused({"staleness=2"}, "staleness", "'ssp'");  // bsp has no staleness
  ExpectRefused({"consistency=asp", "staleness=2"}, "staleness", "'asp'");
  ExpectRefused({"consistency=asp", "mode=local_sgd"}, "consistency", "local_sgd");
  ExpectRefused({"consistency=ssp", "checkpoint_dir=/tmp/x"}, "consistency", "checkpoint");
}

TEST(ConfigValidation, UnknownCodecIsRefusedListingTheRegisteredOnes) {
  for (const std::string name : {"gzip", "FP16", "top_k", ""}) {
    Status s = WithOverrides({"codec=" + name});
    ASSERT_FALSE(s.ok()) << "codec '" << name << "' accepted";
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
    EXPECT_NE(s.message().find("codec"), std::string::npos) << s.ToString();
    EXPECT_NE(s.message().find("'" + name + "'"), std::string::npos) << s.ToString();
    // The codecs this build ships, and whatever else is registered, are all listed.
    for (const std::string registered : {"identity", "fp16", "int8", "sign", "topk", "randomk"}) {
      EXPECT_NE(s.message().find(registered), std::string::npos) << registered << ": " << s.ToString();
    }
    for (const Codec* c : RegisteredCodecs()) {
      EXPECT_NE(s.message().find(std::string(c->name())), std::string::npos) << c->name() << ": " << s.ToString();
    }
  }
}

TEST(ConfigValidation, EveryRegisteredCodecIsAccepted) {
  EXPECT_TRUE(WithOverrides({"codec=identity"}).ok());  // the default, set explicitly
  for (const Codec* c : RegisteredCodecs()) {
    const std::string name(c->name());
    Status s = WithOverrides({"codec=" + name});
    EXPECT_TRUE(s.ok()) << name << ": " << s.ToString();
    s = WithOverrides({"codec=" + name, "error_feedback=false", "compress_after=100", "codec_density=0.5"});
    EXPECT_TRUE(s.ok()) << name << ": " << s.ToString();
  }
  // The registry holds at least the codecs the docs and config.proto promise.
  for (const std::string name : {"identity", "fp16", "int8", "sign", "topk", "randomk"}) {
    EXPECT_NE(FindCodec(name), nullptr) << name;
    Status s = WithOverrides({"codec=" + name});
    EXPECT_TRUE(s.ok()) << name << ": " << s.ToString();
  }
}

TEST(ConfigValidation, CompressAfterMustNotBeNegative) {
  EXPECT_TRUE(WithOverrides({"compress_after=0"}).ok());
  EXPECT_TRUE(WithOverrides({"codec=int8", "compress_after=1000"}).ok());
  ExpectRefused({"compress_after=-1"}, "compress_after", "negative");
  ExpectRefused({"codec=topk", "compress_after=-1"}, "compress_after", "negative");
}

TEST(ConfigValidation, CodecDensityMustBeInHalfOpenUnitInterval) {
  EXPECT_TRUE(WithOverrides({"codec=topk", "codec_density=1"}).ok());
  EXPECT_TRUE(WithOverrides({"codec=randomk", "codec_density=0.01"}).ok());
  EXPECT_TRUE(WithOverrides({"codec_density=1"}).ok());
  ExpectRefused({"codec=topk", "codec_density=0"}, "codec_density", "0");
  ExpectRefused({"codec=topk", "codec_density=-0.5"}, "codec_density", "-0.5");
  ExpectRefused({"codec=randomk", "codec_density=1.5"}, "codec_density", "1.5");
  ExpectRefused({"codec=topk", "codec_density=nan"}, "codec_density", "nan");
  // Checked whatever the codec (a config that sets it means it).
  ExpectRefused({"codec_density=0"}, "codec_density", "0");
  ExpectRefused({"codec_density=1.5"}, "codec_density", "1.5");
}

TEST(ConfigValidation, DistillationWithATeacherIsAccepted) {
  EXPECT_TRUE(WithOverrides({"teacher=/tmp/teacher.safetensors"}).ok());
  EXPECT_TRUE(WithOverrides({"model=mlp", "hidden=32", "teacher=/tmp/teacher.safetensors", "distill_temperature=2",
                             "distill_alpha=0.5"})
                  .ok());
  // The bounds: any positive temperature, alpha 0 (labels only) and 1 (soft targets only).
  EXPECT_TRUE(WithOverrides({"teacher=t.safetensors", "distill_temperature=0.01"}).ok());
  EXPECT_TRUE(WithOverrides({"teacher=t.safetensors", "distill_alpha=0"}).ok());
  EXPECT_TRUE(WithOverrides({"teacher=t.safetensors", "distill_alpha=1"}).ok());
}

TEST(ConfigValidation, DistillTemperatureMustBePositive) {
  ExpectRefused({"teacher=t.safetensors", "distill_temperature=0"}, "distill_temperature", "0");
  ExpectRefused({"teacher=t.safetensors", "distill_temperature=-1"}, "distill_temperature", "-1");
  ExpectRefused({"teacher=t.safetensors", "distill_temperature=nan"}, "distill_temperature", "nan");
  // The key names its flag, which sets it through an override.
  ExpectRefused({"teacher=t.safetensors", "distill_temperature=-1"}, "distill_temperature", "--distill-temperature");
}

TEST(ConfigValidation, DistillAlphaMustBeInUnitInterval) {
  ExpectRefused({"teacher=t.safetensors", "distill_alpha=-0.1"}, "distill_alpha", "-0.1");
  ExpectRefused({"teacher=t.safetensors", "distill_alpha=1.5"}, "distill_alpha", "1.5");
  ExpectRefused({"teacher=t.safetensors", "distill_alpha=nan"}, "distill_alpha", "nan");
  ExpectRefused({"teacher=t.safetensors", "distill_alpha=1.5"}, "distill_alpha", "--distill-alpha");
}

TEST(ConfigValidation, DistillationKeysNeedATeacher) {
  // Valid values, but nothing to distill from: refused rather than silently ignored.
  ExpectRefused({"distill_temperature=2"}, "distill_temperature", "teacher");
  ExpectRefused({"distill_alpha=0.5"}, "distill_alpha", "teacher");
  // Set to their defaults still counts as set.
  ExpectRefused({"distill_temperature=4"}, "distill_temperature", "teacher");
  ExpectRefused({"distill_alpha=0.9"}, "distill_alpha", "teacher");
}

TEST(ConfigValidation, OptimizerOnIsServersOrWorkersOfADenseSyncModel) {
  EXPECT_TRUE(WithOverrides({"optimizer_on=servers"}).ok());
  EXPECT_TRUE(WithOverrides({"optimizer_on=workers"}).ok());
  EXPECT_TRUE(WithOverrides({"optimizer_on=workers", "codec=sign", "optimizer.kind=adam"}).ok());
  ExpectRefused({"optimizer_on=worker"}, "optimizer_on", "'worker' is not servers or workers");
  ExpectRefused({"optimizer_on="}, "optimizer_on", "not servers or workers");
  ExpectRefused({"optimizer_on=workers", "mode=local_sgd"}, "optimizer_on", "mode sync");
  ExpectRefused({"optimizer_on=workers", "model=sparse_lr", "data.format=libsvm"}, "optimizer_on", "dense models");
}

TEST(ConfigValidation, TeacherMustBeAPathForADenseModel) {
  ExpectRefused({"teacher="}, "teacher", "empty path");
  // sparse_lr is accepted as such, and refused only with a teacher.
  const std::initializer_list<std::string> sparse = {"model=sparse_lr", "data.format=libsvm"};
  ASSERT_TRUE(WithOverrides(sparse).ok()) << WithOverrides(sparse).ToString();
  ExpectRefused({"model=sparse_lr", "data.format=libsvm", "teacher=t.safetensors"}, "teacher", "sparse_lr");
}

TEST(ConfigValidation, FederatedSettingsBelongToFedavgAndAreInRange) {
  EXPECT_TRUE(WithOverrides({"mode=fedavg"}).ok()) << WithOverrides({"mode=fedavg"}).ToString();
  EXPECT_TRUE(WithOverrides({"mode=fedavg", "federated.partitioner=dirichlet", "federated.dirichlet_alpha=0.1"}).ok());
  EXPECT_TRUE(WithOverrides({"mode=fedavg", "federated.local_batch=0", "federated.local_epochs=1"}).ok());  // FedSGD
  ExpectRefused({"mode=fedsgd"}, "mode", "'fedsgd' is not sync, local_sgd or fedavg");
  ExpectRefused({"federated.clients=10"}, "federated", "mode fedavg");
  ExpectRefused({"mode=fedavg", "federated.clients=0"}, "federated.clients", "0");
  ExpectRefused({"mode=fedavg", "federated.fraction=0"}, "federated.fraction", "outside (0, 1]");
  ExpectRefused({"mode=fedavg", "federated.fraction=1.5"}, "federated.fraction", "1.5");
  ExpectRefused({"mode=fedavg", "federated.local_epochs=0"}, "federated.local_epochs", "0");
  ExpectRefused({"mode=fedavg", "federated.local_batch=-1"}, "federated.local_batch", "-1");
  ExpectRefused({"mode=fedavg", "federated.rounds=0"}, "federated.rounds", "0");
  ExpectRefused({"mode=fedavg", "federated.partitioner=pathological"}, "federated.partitioner", "'pathological'");
  ExpectRefused({"mode=fedavg", "federated.dirichlet_alpha=0"}, "federated.dirichlet_alpha", "positive");
  ExpectRefused({"mode=fedavg", "federated.shards_per_client=0"}, "federated.shards_per_client", "0");
  ExpectRefused({"mode=fedavg", "codec=int8"}, "codec", "fedavg");
  ExpectRefused({"mode=fedavg", "consistency=asp"}, "consistency", "bsp");
  ExpectRefused({"mode=fedavg", "optimizer_on=workers"}, "optimizer_on", "fedavg");
  ExpectRefused({"mode=fedavg", "model=sparse_lr", "data.format=libsvm"}, "mode", "sparse_lr");
  // Differential privacy.
  EXPECT_TRUE(WithOverrides({"mode=fedavg", "federated.clip_norm=1", "federated.noise_multiplier=0.5"}).ok());
  ExpectRefused({"mode=fedavg", "federated.clip_norm=-1"}, "federated.clip_norm", "-1");
  ExpectRefused({"mode=fedavg", "federated.noise_multiplier=1"}, "federated.noise_multiplier", "needs federated.clip_norm");
  ExpectRefused({"mode=fedavg", "federated.clip_norm=1", "federated.noise_multiplier=-0.5"}, "federated.noise_multiplier", "-0.5");
  ExpectRefused({"mode=fedavg", "federated.clip_norm=1", "federated.dp_delta=0"}, "federated.dp_delta", "outside (0, 1)");
  // Secure aggregation (the default: 100 clients, fraction 0.1, so m = 10 per round).
  EXPECT_TRUE(WithOverrides({"mode=fedavg", "federated.secure_aggregation=true", "federated.secagg_threshold=7",
                             "federated.secagg_dropouts=3"}).ok());
  EXPECT_TRUE(WithOverrides({"mode=fedavg", "federated.secure_aggregation=true", "federated.clip_norm=1"}).ok());
  ExpectRefused({"mode=fedavg", "federated.secure_aggregation=true", "federated.fraction=0.01"}, "federated.secure_aggregation",
                "gives 1");
  ExpectRefused({"mode=fedavg", "federated.secure_aggregation=true", "federated.clients=1000", "federated.fraction=0.3"},
                "federated.secure_aggregation", "gives 300");
  ExpectRefused({"mode=fedavg", "federated.secure_aggregation=true", "federated.secagg_threshold=11"}, "federated.secagg_threshold",
                "[2, 10]");
  ExpectRefused({"mode=fedavg", "federated.secure_aggregation=true", "federated.secagg_threshold=1"}, "federated.secagg_threshold", "1");
  ExpectRefused({"mode=fedavg", "federated.secure_aggregation=true", "federated.secagg_bits=40"}, "federated.secagg_bits", "[2, 32]");
  ExpectRefused({"mode=fedavg", "federated.secure_aggregation=true", "federated.secagg_clip=0"}, "federated.secagg_clip", "positive");
  ExpectRefused({"mode=fedavg", "federated.secure_aggregation=true", "federated.secagg_dropouts=11"}, "federated.secagg_dropouts",
                "[0, 10]");
  ExpectRefused({"mode=fedavg", "federated.secure_aggregation=true", "federated.secagg_drop_phase=4"}, "federated.secagg_drop_phase",
                "[0, 3]");
  ExpectRefused({"mode=fedavg", "federated.secagg_dropouts=2"}, "federated.secagg_dropouts", "federated.secure_aggregation");
}

}  // namespace
}  // namespace shardps
