#include "shardps/net/auth.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdio>
#include <fstream>

#include "common/scratch_dir.h"

namespace shardps {
namespace {

Secret Key(uint8_t fill) { return Secret(32, fill); }

struct Transcript {
  std::vector<std::vector<uint8_t>> initiator_sent;
  Status initiator_status, acceptor_status;
};

// Runs a handshake between the two sides, recording what the initiator sent.
Transcript RunHandshake(Handshake& a, Handshake& b) {
  Transcript t;
  std::vector<uint8_t> to_b = a.Start();
  t.initiator_sent.push_back(to_b);
  for (int round = 0; round < 4; ++round) {
    auto rb = b.OnMessage(to_b);
    if (!rb.ok()) {
      t.acceptor_status = rb.status();
      return t;
    }
    if (!rb->has_value()) return t;
    auto ra = a.OnMessage(**rb);
    if (!ra.ok()) {
      t.initiator_status = ra.status();
      return t;
    }
    if (!ra->has_value()) return t;
    to_b = **ra;
    t.initiator_sent.push_back(to_b);
  }
  return t;
}

TEST(Auth, SharedSecretAuthenticatesBothSides) {
  Handshake a(Key(7), 3, Handshake::kInitiator), b(Key(7), 0, Handshake::kAcceptor);
  Transcript t = RunHandshake(a, b);
  EXPECT_TRUE(t.initiator_status.ok()) << t.initiator_status.ToString();
  EXPECT_TRUE(t.acceptor_status.ok()) << t.acceptor_status.ToString();
  EXPECT_TRUE(a.done());
  EXPECT_TRUE(b.done());
  EXPECT_EQ(a.peer_rank(), 0);
  EXPECT_EQ(b.peer_rank(), 3);
}

TEST(Auth, WrongSecretIsRefused) {
  Handshake a(Key(1), 3, Handshake::kInitiator), b(Key(2), 0, Handshake::kAcceptor);
  Transcript t = RunHandshake(a, b);
  EXPECT_FALSE(b.done());
  EXPECT_EQ(t.acceptor_status.code(), StatusCode::kUnavailable);
  EXPECT_NE(t.acceptor_status.message().find("does not know the shared secret"), std::string::npos);
  // A failed side stays failed.
  EXPECT_FALSE(b.OnMessage(std::vector<uint8_t>(Handshake::kProofBytes)).ok());
}

TEST(Auth, JobTagTellsOurOwnMisconfiguredProcessFromAStranger) {
  JobTag ours{}, theirs{};
  ours[0] = 1;
  theirs[0] = 2;
  {  // another secret, our configuration: one of our own processes
    Handshake a(Key(1), 3, Handshake::kInitiator, ours), b(Key(2), 0, Handshake::kAcceptor, ours);
    Transcript t = RunHandshake(a, b);
    EXPECT_FALSE(t.acceptor_status.ok());
    EXPECT_TRUE(b.peer_in_same_job());
  }
  {  // another secret, another configuration: a stranger
    Handshake a(Key(1), 3, Handshake::kInitiator, theirs), b(Key(2), 0, Handshake::kAcceptor, ours);
    Transcript t = RunHandshake(a, b);
    EXPECT_FALSE(t.acceptor_status.ok());
    EXPECT_FALSE(b.peer_in_same_job());
  }
  {  // no tag on either side never matches
    Handshake a(Key(1), 3, Handshake::kInitiator), b(Key(2), 0, Handshake::kAcceptor);
    RunHandshake(a, b);
    EXPECT_FALSE(b.peer_in_same_job());
  }
  {  // the tag is not part of the proof: the same secret authenticates across tags (the job
     // agreement, not the handshake, compares configurations, with a better message)
    Handshake a(Key(7), 3, Handshake::kInitiator, theirs), b(Key(7), 0, Handshake::kAcceptor, ours);
    Transcript t = RunHandshake(a, b);
    EXPECT_TRUE(t.acceptor_status.ok()) << t.acceptor_status.ToString();
    EXPECT_TRUE(a.done() && b.done());
    EXPECT_FALSE(b.peer_in_same_job());
  }
}

TEST(Auth, ReplayedHandshakeIsRefused) {
  Handshake a(Key(7), 3, Handshake::kInitiator), b(Key(7), 0, Handshake::kAcceptor);
  Transcript recorded = RunHandshake(a, b);
  ASSERT_TRUE(b.done());
  ASSERT_EQ(recorded.initiator_sent.size(), 2u);  // HELLO, PROOF
  // An eavesdropper replays the initiator's messages to a fresh acceptor: its nonce is new.
  Handshake b2(Key(7), 0, Handshake::kAcceptor);
  auto hello = b2.OnMessage(recorded.initiator_sent[0]);
  ASSERT_TRUE(hello.ok());
  auto proof = b2.OnMessage(recorded.initiator_sent[1]);
  EXPECT_FALSE(proof.ok());
  EXPECT_FALSE(b2.done());
}

TEST(Auth, MalformedMessagesAndReflectionAreRefused) {
  Handshake b(Key(7), 0, Handshake::kAcceptor);
  EXPECT_FALSE(b.OnMessage(std::vector<uint8_t>{1, 2, 3}).ok());
  Handshake b2(Key(7), 0, Handshake::kAcceptor);
  std::vector<uint8_t> junk(Handshake::kHelloBytes, 0xAB);
  EXPECT_FALSE(b2.OnMessage(junk).ok());
  // The initiator rejects a HELLO that echoes its own nonce.
  Handshake a(Key(7), 3, Handshake::kInitiator);
  std::vector<uint8_t> mine = a.Start();
  EXPECT_FALSE(a.OnMessage(mine).ok());
  // An acceptor's proof cannot stand in for an initiator's (the label differs): two acceptors
  // that are fed each other's messages never accept each other.
  Handshake x(Key(7), 3, Handshake::kInitiator), y(Key(7), 0, Handshake::kAcceptor);
  auto y_hello = y.OnMessage(x.Start());
  ASSERT_TRUE(y_hello.ok() && y_hello->has_value());
  EXPECT_EQ(x.expected_bytes(), Handshake::kHelloBytes);
  auto x_proof = x.OnMessage(**y_hello);
  ASSERT_TRUE(x_proof.ok() && x_proof->has_value());
  std::vector<uint8_t> reflected = **x_proof;  // the initiator's own proof, sent back to it
  EXPECT_FALSE(x.OnMessage(reflected).ok());
}

TEST(Auth, KeygenWritesAPrivateSecretAndLoadChecksIt) {
  testing::ScratchDir scratch("shardps_auth");
  const std::string dir = scratch.string();
  const std::string key = dir + "/job.key";
  ASSERT_TRUE(WriteNewSecret(key).ok());
  struct stat st;
  ASSERT_EQ(::stat(key.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto s = LoadSecret(key);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->size(), kMinSecretBytes);
  EXPECT_FALSE(WriteNewSecret(key).ok());  // never overwrites
  auto s2 = WriteNewSecret(dir + "/other.key");
  ASSERT_TRUE(s2.ok());
  EXPECT_NE(*LoadSecret(dir + "/other.key"), *s);  // fresh randomness
  // Too short, and readable by others.
  const std::string short_key = dir + "/short.key";
  { std::ofstream(short_key) << "tooshort"; }
  ::chmod(short_key.c_str(), 0600);
  EXPECT_EQ(LoadSecret(short_key).status().code(), StatusCode::kInvalidArgument);
  ::chmod(key.c_str(), 0644);
  EXPECT_EQ(LoadSecret(key).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(LoadSecret(dir + "/missing.key").status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace shardps
