// The `orrery` command line as a user runs it: real processes, real files.

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "compute/text/tokenizer.hpp"
#include "test/run_process.hpp"

using orrery::test::run_orrery;
using orrery::test::temp_dir;

namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

using expected_errors = std::vector<std::pair<std::vector<std::string>, std::string>>;

// Runs `orrery ARGS` for each row: exit code 1 and exactly one line, "orrery: error: MESSAGE".
void check_one_line_errors(const temp_dir& dir, const expected_errors& rows) {
  for (const auto& [args, message] : rows) {
    CAPTURE(args);
    auto r = run_orrery(args, dir.path());
    CHECK(r.exit_code == 1);
    CHECK(r.err == "orrery: error: " + message + "\n");
  }
}

}  // namespace

TEST_CASE("model init writes a model that generate streams text from, with its figures") {
  temp_dir dir;
  auto init = run_orrery({"model", "init", "--arch", "llama", "--preset", "tiny", "--seed", "3", "--out", "m"}, dir.path());
  REQUIRE(init.exit_code == 0);
  CHECK(contains(init.err, "writing weights: 100%"));

  auto info = run_orrery({"model", "info", "m"}, dir.path());
  CHECK(info.exit_code == 0);
  CHECK(contains(info.out, "4 layers, hidden 128"));

  auto gen = run_orrery({"generate", "--model", "m", "--prompt", "Hi", "--max-tokens", "8", "--threads", "1"}, dir.path());
  REQUIRE(gen.exit_code == 0);
  // stdout holds the text alone, so `generate … > out.txt` keeps just that:
  // the prompt, then the stream, then a newline; the figures go to stderr.
  CHECK(gen.out.rfind("Hi", 0) == 0);
  CHECK(gen.out.back() == '\n');
  CHECK(gen.out.find('\n') == gen.out.size() - 1);  // the tiny model prints escapes, never a newline
  CHECK(!contains(gen.out, "-- "));
  CHECK(!contains(gen.out, "loaded"));
  CHECK(contains(gen.err, "loaded m (4 layers"));
  CHECK(contains(gen.err, "-- 8 tokens | prefill"));
  CHECK(contains(gen.err, "ms/token"));
  CHECK(contains(gen.err, "tokens/s"));

  auto again = run_orrery({"generate", "--model", "m", "--prompt", "Hi", "--max-tokens", "8", "--threads", "2"}, dir.path());
  CHECK(again.out == gen.out);  // greedy output does not depend on the thread count
}

TEST_CASE("a sharded fp16 and a bf16 checkpoint generate") {
  temp_dir dir;
  for (const char* type : {"fp16", "bf16"}) {
    CAPTURE(type);
    auto init = run_orrery({"model", "init", "--preset", "tiny", "--dtype", type, "--max-file-mb", "1", "--out", type},
                           dir.path());
    REQUIRE(init.exit_code == 0);
    CHECK(std::filesystem::exists(dir / type / "model.safetensors.index.json"));
    auto gen = run_orrery({"generate", "--model", type, "--prompt", "x", "--max-tokens", "4"}, dir.path());
    CHECK(gen.exit_code == 0);
    CHECK(contains(gen.err, "-- 4 tokens"));
  }
}

TEST_CASE("bad input gets one clear error and exit code 1, never a crash") {
  temp_dir dir;
  REQUIRE(run_orrery({"model", "init", "--preset", "tiny", "--out", "m"}, dir.path()).exit_code == 0);

  SUBCASE("unknown preset") {
    auto r = run_orrery({"model", "init", "--preset", "huge", "--out", "x"}, dir.path());
    CHECK(r.exit_code == 1);
    CHECK(contains(r.err, "orrery: error: unknown model preset 'huge' (known: tiny, small, llama2-7b)"));
  }
  SUBCASE("missing model directory") {
    auto r = run_orrery({"generate", "--model", "nowhere", "--prompt", "x"}, dir.path());
    CHECK(r.exit_code == 1);
    CHECK(contains(r.err, "nowhere: not a model directory"));
  }
  SUBCASE("truncated weights") {
    std::filesystem::resize_file(dir / "m" / "model.safetensors", 1000);
    auto r = run_orrery({"generate", "--model", "m", "--prompt", "x"}, dir.path());
    CHECK(r.exit_code == 1);
    CHECK(contains(r.err, "model.safetensors"));
    CHECK(contains(r.err, "runs beyond the file"));
  }
  SUBCASE("prompt longer than the context") {
    auto r = run_orrery({"generate", "--model", "m", "--prompt", std::string(400, 'a')}, dir.path());
    CHECK(r.exit_code == 1);
    CHECK(r.out.empty());  // refused before the prompt is echoed
    CHECK(r.err == "orrery: error: prompt of 401 tokens (with BOS) plus 64 new tokens exceeds the model's context of "
                   "256 positions\n");
  }
  SUBCASE("out-of-range flag") {
    auto r = run_orrery({"generate", "--model", "m", "--prompt", "x", "--top-p", "1.5"}, dir.path());
    CHECK(r.exit_code != 0);
    CHECK(contains(r.err, "--top-p"));
  }
  SUBCASE("unknown model_type") {
    std::ofstream(dir / "m" / "config.json") << R"({"model_type": "bert"})";
    auto r = run_orrery({"generate", "--model", "m", "--prompt", "x"}, dir.path());
    CHECK(r.exit_code == 1);
    CHECK(contains(r.err, "unknown model_type 'bert'"));
  }
}

TEST_CASE("model score writes every position's logits and a greedy continuation that generate agrees with") {
  temp_dir dir;
  REQUIRE(run_orrery({"model", "init", "--preset", "tiny", "--out", "m"}, dir.path()).exit_code == 0);
  // BOS then the bytes of "Hi": what generate feeds for the prompt "Hi".
  auto r = run_orrery({"model", "score", "m", "--ids", "256,72,105", "--greedy", "6", "--logits", "l.f32"}, dir.path());
  REQUIRE(r.exit_code == 0);
  auto result = nlohmann::json::parse(r.out);
  CHECK(result.at("rows") == 3);
  CHECK(result.at("vocab") == 512);
  CHECK(std::filesystem::file_size(dir / "l.f32") == 3u * 512u * 4u);
  auto greedy = result.at("greedy").get<std::vector<int>>();
  REQUIRE(greedy.size() == 6);
  // generate --temperature 0 picks the same tokens over the whole vocabulary
  // (512 ids, 258 of them the tokenizer's), printing an id it cannot print
  // as <id>: its text is exactly the score's greedy tokens, piece by piece.
  auto text = run_orrery({"generate", "--model", "m", "--prompt", "Hi", "--max-tokens", "6", "--ignore-eos", "--temperature", "0"},
                         dir.path());
  REQUIRE(text.exit_code == 0);
  orrery::compute::byte_tokenizer tok;
  std::string expected = "Hi";
  for (int id : greedy) expected += orrery::compute::printable(tok.decode(id));
  CHECK(text.out.substr(0, expected.size()) == expected);
  auto bad = run_orrery({"model", "score", "m", "--ids", "256,9999"}, dir.path());
  CHECK(bad.exit_code == 1);
  CHECK(bad.err == "orrery: error: --ids: '9999' at index 1 is outside the vocabulary [0, 512)\n");
}

TEST_CASE("model score refuses an empty --ids or an empty item instead of scoring token 0") {
  temp_dir dir;
  REQUIRE(run_orrery({"model", "init", "--preset", "tiny", "--out", "m"}, dir.path()).exit_code == 0);
  for (const auto& [ids, message] : std::vector<std::pair<std::string, std::string>>{
           {"", "--ids: '' is empty: give token ids, comma separated (e.g. 256,72,105)"},
           {"1,,3", "--ids: '1,,3' holds '' at index 1, which is not a token id"},
           {"256,", "--ids: '256,' holds '' at index 1, which is not a token id"},
           {"256,x7", "--ids: '256,x7' holds 'x7' at index 1, which is not a token id"},
           {"-1", "--ids: '-1' at index 0 is outside the vocabulary [0, 512)"}}) {
    CAPTURE(ids);
    auto r = run_orrery({"model", "score", "m", "--ids", ids}, dir.path());
    CHECK(r.exit_code == 1);
    CHECK(r.out.empty());
    CHECK(r.err == "orrery: error: " + message + "\n");
  }
  auto greedy = run_orrery({"model", "score", "m", "--ids", "256", "--greedy", "-1"}, dir.path());
  CHECK(greedy.err == "orrery: error: --greedy: '-1' is not an integer >= 0\n");
}

TEST_CASE("--device names what is wrong with it") {
  temp_dir dir;
  REQUIRE(run_orrery({"model", "init", "--preset", "tiny", "--out", "m"}, dir.path()).exit_code == 0);
  auto r = run_orrery({"generate", "--model", "m", "--prompt", "x", "--device", "tpu"}, dir.path());
  CHECK(r.exit_code == 1);
  CHECK(contains(r.err, "device 'tpu' is neither cpu nor cuda:N"));
  auto t = run_orrery({"generate", "--model", "m", "--prompt", "x", "--dtype", "int3"}, dir.path());
  CHECK(t.exit_code == 1);
  CHECK(t.err == "orrery: error: --dtype: 'int3' is not one of fp32, fp16, bf16\n");
}

TEST_CASE("--dtype fp16 on a cpu without fp16 matmul and --max-tokens past the context get one line, no libtorch trace") {
  temp_dir dir;
  REQUIRE(run_orrery({"model", "init", "--preset", "tiny", "--out", "m"}, dir.path()).exit_code == 0);
  // Debian's libtorch 1.13 has no fp16 matmul on the CPU; a later one may,
  // and then fp16 simply runs.
  for (const char* command : {"generate", "score"}) {
    CAPTURE(command);
    auto r = std::string(command) == "generate"
                 ? run_orrery({"generate", "--model", "m", "--prompt", "Hi", "--max-tokens", "2", "--dtype", "fp16"}, dir.path())
                 : run_orrery({"model", "score", "m", "--ids", "256", "--dtype", "fp16"}, dir.path());
    if (r.exit_code == 0) continue;
    CHECK(r.exit_code == 1);
    CHECK(r.out.empty());
    CHECK(r.err.rfind("orrery: error: --dtype: 'fp16' is not supported on cpu by this libtorch (", 0) == 0);
    CHECK(contains(r.err, "); use fp32 or bf16\n"));
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  }
  auto bf16 = run_orrery({"generate", "--model", "m", "--prompt", "Hi", "--max-tokens", "2", "--dtype", "bf16"}, dir.path());
  CHECK(bf16.exit_code == 0);

  // 3 prompt tokens + 2147483646 overflowed an int past the context check,
  // and libtorch refused a cache of -2147483648 positions with its trace.
  auto huge = run_orrery({"generate", "--model", "m", "--prompt", "Hi", "--max-tokens", "2147483646"}, dir.path());
  CHECK(huge.exit_code == 1);
  CHECK(huge.out.empty());
  CHECK(huge.err == "orrery: error: prompt of 3 tokens (with BOS) plus 2147483646 new tokens exceeds the model's "
                    "context of 256 positions; use at most --max-tokens 254\n");
}

TEST_CASE("a numeric flag out of range is named with its value and the range it accepts") {
  temp_dir dir;
  REQUIRE(run_orrery({"model", "init", "--preset", "tiny", "--out", "m"}, dir.path()).exit_code == 0);
  const std::vector<std::string> generate = {"generate", "--model", "m", "--prompt", "x"};
  auto with = [](std::vector<std::string> args, std::initializer_list<std::string> more) {
    args.insert(args.end(), more);
    return args;
  };
  check_one_line_errors(dir, {
           {with(generate, {"--max-tokens", "0"}), "--max-tokens: '0' is not an integer >= 1"},
           {with(generate, {"--max-tokens", "1.5"}), "--max-tokens: '1.5' is not an integer >= 1"},
           {with(generate, {"--threads", "0"}), "--threads: '0' is not an integer >= 1"},
           {with(generate, {"--temperature", "-1"}), "--temperature: '-1' is not a number >= 0"},
           {with(generate, {"--top-k", "-1"}), "--top-k: '-1' is not an integer >= 0"},
           {with(generate, {"--top-p", "0"}), "--top-p: '0' is not a number in (0, 1]"},
           {with(generate, {"--top-p", "1.5"}), "--top-p: '1.5' is not a number in (0, 1]"},
           {with(generate, {"--repetition-penalty", "0"}), "--repetition-penalty: '0' is not a number > 0"},
           // CLI11 wraps a negative number into an unsigned one: seed 18446744073709551615.
           {with(generate, {"--seed", "-1"}), "--seed: '-1' is not an integer >= 0"},
           {{"model", "init", "--preset", "tiny", "--out", "x", "--seed", "-1"}, "--seed: '-1' is not an integer >= 0"},
           {{"model", "init", "--preset", "tiny", "--out", "x", "--max-file-mb", "-1"}, "--max-file-mb: '-1' is not an integer >= 0"},
           {{"demo", "--max-tokens", "0"}, "--max-tokens: '0' is not an integer >= 1"},
           {{"bench", "compute", "--model", "m", "--prompt-tokens", "1"}, "--prompt-tokens: '1' is not an integer in [2, 100000]"},
           {{"bench", "compute", "--model", "m", "--threads", "0"}, "--threads: '0' is not an integer >= 1"},
           {{"bench", "dataplane", "--credit-bytes", "0"}, "--credit-bytes: '0' is not an integer >= 1"},
           {{"plan", "--cluster", "nx,nx", "--model", "small", "--batch", "0"}, "--batch: '0' is not an integer >= 1"},
           {{"plan", "--cluster", "nx,nx", "--model", "small", "--output", "0"}, "--output: '0' is not an integer >= 1"},
           {{"profile", "--topology", "m/config.json", "--min-seconds", "0"}, "--min-seconds: '0' is not a number in [0.01, 60]"},
           {{"chaos", "--topology", "m/config.json", "--times", "0"}, "--times: '0' is not an integer >= 1"},
           {{"chaos", "--topology", "m/config.json", "--freeze-for", "0"}, "--freeze-for: '0' is not a number > 0"},
           {{"chaos", "--topology", "m/config.json", "--every", "-1"}, "--every: '-1' is not a number >= 0"},
           {{"up", "m/config.json", "--restart-after", "-1"}, "--restart-after: '-1' is not a number >= 0"},
           {{"testbed", "up", "m/config.json", "--ready-timeout", "0"}, "--ready-timeout: '0' is not a number > 0"}});
}

TEST_CASE("an unknown or missing command is named, with the commands there are") {
  temp_dir dir;
  const std::string top = "demo, model, node, up, chaos, testbed, generate, serve, tokenizer, train, profile, plan, bench";
  check_one_line_errors(dir, {
           {{"frobnicate"}, "unknown command 'frobnicate' (commands: " + top + ")"},
           {{"frobnicate", "--x"}, "unknown command 'frobnicate' (commands: " + top + ")"},
           {{"model", "frob"}, "unknown command 'model frob' (commands: init, score, info)"},
           {{}, "'orrery' needs a command (commands: " + top + ")"},
           {{"model"}, "'orrery model' needs a command (commands: init, score, info)"}});
}

TEST_CASE("a topology's host, model and file size are checked as it is loaded, naming FILE:LINE") {
  temp_dir dir;
  REQUIRE(run_orrery({"model", "init", "--preset", "tiny", "--out", "m"}, dir.path()).exit_code == 0);
  auto topology = [&](const std::string& model, const std::string& host) {
    std::ofstream(dir / "t.yaml") << "cluster: t\nmodel: " << model << "\nnodes:\n  - name: a\n    address: " << host
                                  << ":7411\n";
    return run_orrery({"generate", "--topology", "t.yaml", "--prompt", "x"}, dir.path());
  };
  // Before: CAF's bare "Invalid argument" once a node or the client used it.
  auto host = topology("m", "foo.invalid");
  CHECK(host.exit_code == 1);
  CHECK(host.err.rfind("orrery: error: t.yaml:5: node 'a': cannot resolve host 'foo.invalid': ", 0) == 0);
  // Before: "does not exist".
  auto file = topology("/etc/passwd", "127.0.0.1");
  CHECK(file.exit_code == 1);
  CHECK(file.err == "orrery: error: t.yaml:2: model '/etc/passwd' is a file, not a model directory (one holding "
                    "config.json and the weights)\n");
  std::filesystem::create_directories(dir / "empty");
  auto empty = topology("empty", "127.0.0.1");
  CHECK(empty.err == "orrery: error: t.yaml:2: model 'empty' (resolved to '" + (dir / "empty").string() +
                         "') has no config.json: it is not a model directory\n");

  // Before: a 50 MB file took 3.5 GB and 30 s to parse before its error.
  std::ofstream(dir / "big.yaml") << std::string((2u << 20) + 1, '#');
  auto big = run_orrery({"generate", "--topology", "big.yaml", "--prompt", "x"}, dir.path());
  CHECK(big.exit_code == 1);
  CHECK(big.err == "orrery: error: big.yaml: the topology file has 2097153 bytes (2.0 MiB), more than the 1.0 MiB a "
                   "topology file may have\n");
  // Before: the open of a FIFO without a writer blocked forever (bounded here by timeout).
  REQUIRE(::mkfifo((dir / "fifo.yaml").c_str(), 0600) == 0);
  auto fifo = orrery::test::run_process(
      {"/usr/bin/timeout", "20", orrery::test::orrery_binary(), "generate", "--topology", "fifo.yaml", "--prompt", "x"},
      dir.path());
  CHECK(fifo.exit_code == 1);
  CHECK(fifo.err == "orrery: error: fifo.yaml: is a FIFO, not a regular file\n");
}

TEST_CASE("the README's tour names files that exist, and testbed4.yaml says how to create its model") {
  const std::filesystem::path source = std::getenv("ORRERY_SOURCE_DIR")
                                           ? std::filesystem::path(std::getenv("ORRERY_SOURCE_DIR"))
                                           : std::filesystem::path(__FILE__).parent_path().parent_path().parent_path();
  std::ifstream readme(source / "README.md");
  REQUIRE(readme);
  std::string text((std::istreambuf_iterator<char>(readme)), std::istreambuf_iterator<char>());
  const auto tour = text.substr(text.find("## A short tour"));
  const auto block = tour.substr(0, tour.find("```\n", tour.find("```sh") + 5));
  std::set<std::string> files;
  std::istringstream words(block);
  for (std::string word; words >> word;)
    if (word.size() > 5 && word.compare(word.size() - 5, 5, ".yaml") == 0) files.insert(word);
  CHECK(files.count("deploy/topologies/cluster.yaml") == 1);
  for (const auto& file : files) {
    CAPTURE(file);
    CHECK(std::filesystem::is_regular_file(source / file));
  }

  // The repository's layout without models: run from elsewhere, the error
  // names where the model is looked for and how to create it.
  temp_dir repo, elsewhere;
  std::filesystem::create_directories(repo / "deploy" / "topologies");
  std::filesystem::copy_file(source / "deploy" / "topologies" / "testbed4.yaml", repo / "deploy" / "topologies" / "testbed4.yaml");
  const auto topology = (repo / "deploy" / "topologies" / "testbed4.yaml").string();
  auto r = run_orrery({"generate", "--topology", topology, "--prompt", "x"}, elsewhere.path());
  CHECK(r.exit_code == 1);
  const auto model = (repo / "models" / "small").string();
  CHECK(r.err == "orrery: error: " + topology + ":10: model '../../models/small' (resolved to '" + model +
                     "') does not exist (`orrery model init --preset tiny|small|llama2-7b --out " + model +
                     "` creates one)\n");
}

TEST_CASE("--help answers for every command") {
  temp_dir dir;
  for (auto args : std::vector<std::vector<std::string>>{
           {"--help"}, {"model", "init", "--help"}, {"generate", "--help"}, {"bench", "compute", "--help"}, {"demo", "--help"}, {"train", "--help"},
           {"serve", "--help"}, {"tokenizer", "train", "--help"}, {"tokenizer", "encode", "--help"}, {"bench", "serve", "--help"}}) {
    auto r = run_orrery(args, dir.path());
    CHECK(r.exit_code == 0);
    CHECK(contains(r.out, "Usage"));
  }
}

TEST_CASE("demo runs the bundled 4-node topology, speaks as the shipped model does on one device, and shuts it down") {
  temp_dir dir;
  auto r = run_orrery({"demo", "--max-tokens", "60"}, dir.path());
  REQUIRE(r.exit_code == 0);
  CHECK(contains(r.out, "4 node processes"));
  CHECK(contains(r.out, "trained by `orrery train` for 1000 steps on kjv.txt"));
  CHECK(contains(r.err, "-- 60 tokens"));  // figures on stderr, as generate's
  // The same greedy text as the model on one device: English of the King James Bible.
  const std::string model = std::string(std::getenv("ORRERY_SOURCE_DIR")) + "/deploy/models/kjv-tiny";
  auto single = run_orrery({"generate", "--model", model, "--prompt", "And God said", "--max-tokens", "60"}, dir.path());
  REQUIRE(single.exit_code == 0);
  CHECK(contains(r.out, single.out));
  CHECK(contains(single.out, " LORD "));
  CHECK(contains(r.err, "stage 3 on d"));
  CHECK(contains(r.out, "stopped all 4 nodes"));
}

TEST_CASE("plan works from catalog presets alone and names bad input") {
  temp_dir dir;
  auto r = run_orrery({"plan", "--cluster", "nano,nano,nx,tx2", "--link", "100mbit", "--model", "llama2-7b"}, dir.path());
  REQUIRE(r.exit_code == 0);
  // The planners count the embedding and the head as layers of their own.
  CHECK(contains(r.out, "model llama2-7b (34 planning layers: 32 transformer blocks + embedding + head) on 4 devices"));
  CHECK(contains(r.out, "chosen:"));
  CHECK(contains(r.out, "layers [0, "));
  CHECK(contains(r.out, "runner-ups:"));
  auto svg = run_orrery({"plan", "--cluster", "nx,nx", "--link", "1gbit", "--model", "small", "--objective", "throughput",
                         "--timeline", "t.svg"},
                        dir.path());
  CHECK(svg.exit_code == 0);
  CHECK(std::filesystem::file_size(dir / "t.svg") > 0);
  auto bad = run_orrery({"plan", "--cluster", "nano,foo", "--link", "100mbit", "--model", "llama2-7b"}, dir.path());
  CHECK(bad.exit_code == 1);
  CHECK(contains(bad.err, "unknown device 'foo'"));
}

TEST_CASE("serve refuses a missing model or topology, a taken port, and a bad flag, by name") {
  temp_dir dir;
  auto none = run_orrery({"serve"}, dir.path());
  CHECK(none.exit_code != 0);
  CHECK(contains(none.err, "serve needs --model DIR (this machine) or --topology FILE (a cluster)"));
  auto missing = run_orrery({"serve", "--model", "no-such-dir"}, dir.path());
  CHECK(missing.exit_code != 0);
  CHECK(contains(missing.err, "--model"));
  auto port = run_orrery({"serve", "--model", std::string(std::getenv("ORRERY_SOURCE_DIR")) + "/deploy/models/kjv-tiny", "--port", "70000"},
                         dir.path());
  CHECK(port.exit_code != 0);
  CHECK(contains(port.err, "--port"));
  // A port something listens on already: the error names the address.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
  REQUIRE(::listen(fd, 1) == 0);
  socklen_t length = sizeof address;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  const auto taken = std::to_string(ntohs(address.sin_port));
  auto busy = run_orrery({"serve", "--model", std::string(std::getenv("ORRERY_SOURCE_DIR")) + "/deploy/models/kjv-tiny", "--port", taken},
                         dir.path());
  ::close(fd);
  CHECK(busy.exit_code != 0);
  CHECK(contains(busy.err, "cannot listen on 127.0.0.1:" + taken));
}
