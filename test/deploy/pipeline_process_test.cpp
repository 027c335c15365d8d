// Pipelines of real `orrery node` processes over loopback: the same tokens
// and bitwise the same final logits as the single-device model, and clear
// failures for unreachable and misbehaving peers (killed ones:
// recovery_process_test.cpp).

#include <ATen/ATen.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>

#include "deploy/cluster/cluster.hpp"
#include "deploy/cluster/local_cluster.hpp"
#include "test/loopback_cluster.hpp"
#include "test/run_process.hpp"
#include "test/single_device.hpp"

using namespace orrery;
using orrery::test::greedy_request;
using orrery::test::model_fixture;
using orrery::test::single_device;
using orrery::test::temp_dir;
using orrery::test::write_topology;

TEST_CASE("1, 2 and 4 node processes give the single-device tokens and bitwise logits, also for 4 concurrent requests") {
  model_fixture f;
  const std::vector<std::string> prompts = {"over loopback", "b", "a third prompt here", "4th"};
  std::vector<test::reference_run> references;
  for (const auto& p : prompts) references.push_back(single_device(f.dir / "m", p, 33));
  const std::vector<std::vector<std::pair<int, int>>> placements = {{{0, 4}}, {{0, 2}, {2, 4}}, {{0, 1}, {1, 2}, {2, 3}, {3, 4}}};
  for (const auto& ranges : placements) {
    CAPTURE(ranges.size());
    auto t = deploy::load_topology(write_topology(f.dir, "p" + std::to_string(ranges.size()), ranges));
    deploy::local_cluster cluster(t, f.dir / "logs", test::orrery_binary());
    cluster.wait_ready(std::chrono::seconds(20));
    deploy::pipeline_client client(t);
    auto one = client.generate({greedy_request(prompts[0], 33)});
    CHECK(one[0].tokens == references[0].tokens);
    CHECK(one[0].final_logits == references[0].final_logits);
    std::vector<generate_request> requests;
    for (const auto& p : prompts) requests.push_back(greedy_request(p, 33));
    auto many = client.generate(requests);
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      CAPTURE(i);
      CHECK(many[i].tokens == references[i].tokens);
      CHECK(many[i].final_logits == references[i].final_logits);
    }
  }
}

TEST_CASE("tensor-parallel groups of node processes, alone and in a pipeline, give the single-device tokens and logits within 1e-5") {
  model_fixture f;
  const std::vector<std::string> prompts = {"groups over loopback", "b", "a third prompt"};
  std::vector<test::reference_run> references;
  for (const auto& p : prompts) references.push_back(single_device(f.dir / "m", p, 33));
  const std::vector<std::vector<std::vector<double>>> layouts = {{{1, 1}}, {{1, 2}, {1}}, {{1}, {1, 2, 1}}};
  for (std::size_t l = 0; l < layouts.size(); ++l) {
    CAPTURE(l);
    auto t = deploy::load_topology(test::write_group_topology(f.dir, "tp" + std::to_string(l), layouts[l]));
    deploy::local_cluster cluster(t, f.dir / "logs", test::orrery_binary());
    cluster.wait_ready(std::chrono::seconds(20));
    deploy::pipeline_client client(t);
    std::vector<generate_request> requests;
    for (const auto& p : prompts) requests.push_back(greedy_request(p, 33));
    auto summaries = client.generate(requests);
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      CAPTURE(i);
      CHECK(summaries[i].tokens == references[i].tokens);
      CHECK(test::relative_error(summaries[i].final_logits, references[i].final_logits) < 1e-5);
    }
  }
}

TEST_CASE("orrery up + orrery generate --topology stream the same text as local generation") {
  model_fixture f;
  auto file = write_topology(f.dir, "up", {{0, 1}, {1, 3}, {3, 4}});
  pid_t up = ::fork();
  if (up == 0) {
    ::execl(test::orrery_binary().c_str(), "orrery", "up", file.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  auto t = deploy::load_topology(file);
  for (const auto& n : t.nodes) {  // wait until every node listens
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (test::run_process({"/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/" + std::to_string(n.port)}, f.dir.path()).exit_code != 0 &&
           std::chrono::steady_clock::now() < deadline)
      ::usleep(50'000);
  }
  auto local = test::run_orrery({"generate", "--model", "m", "--prompt", "Hello", "--max-tokens", "24", "--threads", "1"}, f.dir.path());
  auto remote = test::run_orrery({"generate", "--topology", file.string(), "--prompt", "Hello", "--max-tokens", "24"}, f.dir.path());
  // Jupiter's prefill in chunks and guesses verified in one trip: the same
  // text, with the figures saying what they did. A prompt that repeats
  // itself, so prompt lookup has guesses to make.
  const std::string looping = "one two three, one two three, one two three, one two";
  const std::vector<std::string> ask = {"generate", "--topology", file.string(), "--prompt", looping, "--max-tokens", "48", "--ignore-eos"};
  auto with = [&](std::vector<std::string> flags) {
    auto argv = ask;
    argv.insert(argv.end(), flags.begin(), flags.end());
    return test::run_orrery(argv, f.dir.path());
  };
  auto plain = with({"--prefill-chunks", "1", "--speculate", "0"});
  auto jupiter = with({"--prefill-chunks", "3", "--speculate", "6"});
  auto outlined = with({"--outline", "4", "--outline-tokens", "16"});
  auto bad_chunks = with({"--prefill-chunks", "many"});
  auto too_many = with({"--prefill-chunks", "500"});
  ::kill(up, SIGINT);
  int status = 0;
  ::waitpid(up, &status, 0);
  REQUIRE(local.exit_code == 0);
  REQUIRE(remote.exit_code == 0);
  CHECK(remote.out == local.out);  // the text alone: figures go to stderr
  CHECK(remote.err.find("stage 2 on n2") != std::string::npos);
  REQUIRE(plain.exit_code == 0);
  REQUIRE(jupiter.exit_code == 0);
  CHECK(jupiter.out == plain.out);
  CHECK(jupiter.err.find("prefill in 3 chunks through the pipeline: 18, 18, 17 tokens") != std::string::npos);
  CHECK(jupiter.err.find("speculation: ") != std::string::npos);
  CHECK(plain.err.find("speculation: ") == std::string::npos);
  REQUIRE(outlined.exit_code == 0);
  CHECK(outlined.err.find("   outline: ") != std::string::npos);
  CHECK(bad_chunks.exit_code == 1);
  CHECK(bad_chunks.err.find("--prefill-chunks: 'many' is neither 'auto' nor a number of chunks") != std::string::npos);
  CHECK(too_many.exit_code == 1);
  CHECK(too_many.err.find("must be between 1 and the prompt's 53 tokens (with BOS)") != std::string::npos);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);  // Ctrl-C stops every node cleanly
}

TEST_CASE("an unreachable node is reported by name within the connect timeout") {
  model_fixture f;
  auto file = write_topology(f.dir, "gone", {{0, 2}, {2, 4}}, 1000);
  auto start = std::chrono::steady_clock::now();
  auto r = test::run_orrery({"generate", "--topology", file.string(), "--prompt", "x"}, f.dir.path());
  auto elapsed = std::chrono::steady_clock::now() - start;
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("node 'n0'") != std::string::npos);
  CHECK(elapsed < std::chrono::seconds(10));
}

TEST_CASE("malformed frames sent to a live node close only that link; the node keeps serving") {
  model_fixture f;
  auto t = deploy::load_topology(write_topology(f.dir, "junk", {{0, 2}, {2, 4}}));
  deploy::local_cluster cluster(t, f.dir / "logs", test::orrery_binary());
  cluster.wait_ready(std::chrono::seconds(20));
  deploy::pipeline_client client(t);
  auto reference = single_device(f.dir / "m", "still here", 8);
  for (const std::string& junk : {std::string("GET / HTTP/1.1\r\n\r\n"), std::string(64, '\xff'), std::string(3, 'x')}) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(t.nodes[1].data_port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
    CHECK(::write(fd, junk.data(), junk.size()) == static_cast<ssize_t>(junk.size()));
    ::close(fd);
  }
  auto after = client.generate({greedy_request("still here", 8)});
  CHECK(after[0].tokens == reference.tokens);
  CHECK(!cluster.exited_node().has_value());
}
