#include "actors/stage.hpp"

#include <ATen/ATen.h>
#include <caf/all.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <optional>
#include <variant>
#include <vector>

#include "actors/group_ring.hpp"
#include "actors/model_identity.hpp"
#include "actors/router.hpp"
#include "actors/shard_cache.hpp"
#include "actors/tensor_frame.hpp"
#include "compute/cpu_threads.hpp"
#include "compute/error_text.hpp"
#include "compute/generation.hpp"
#include "compute/model_dir.hpp"
#include "compute/sampler.hpp"
#include "compute/scalar_type.hpp"
#include "compute/shard.hpp"
#include "messages/errors.hpp"
#include "messages/data_plane.hpp"
#include "messages/log.hpp"
#include "messages/types.hpp"

namespace orrery::actors {

namespace {

using clock_type = std::chrono::steady_clock;

// Written by the data plane's io thread when a send completes.
struct transfer_counters {
  std::atomic<std::uint64_t> nanoseconds{0};
  std::atomic<std::uint64_t> bytes{0};
};

struct request_state {
  /// One per shard, all of the same length: the sequence so far.
  std::vector<compute::kv_cache> caches;
  /// The stage holding the head: the sequence's tokens, for the sampler's
  /// repetition penalty (every frame carries its tokens along the pipeline).
  std::vector<compute::token_id> history;
  /// Guesses at the end of the caches the head has not verified yet (the
  /// last frame's drafts): the next frame may start up to this many
  /// positions earlier, dropping the guesses the head did not keep.
  int unverified = 0;
  /// The stage with the head (its leader): where a frame of guesses only may
  /// continue the sequence and the token it must start with (the token last
  /// sampled, after every guess before it was kept); -1: nowhere.
  int chain_position = -1;
  compute::token_id chain_token = 0;
};

struct stage_state {
  stage_context context;
  stage_assignment assignment;
  /// The stage's layers in order, as contiguous shards: a recovery extends a
  /// stage by loading only the layers it lacks, beside those it has.
  std::vector<std::shared_ptr<shared_shard>> shards;
  /// model_fingerprint of the model the shards belong to.
  std::string fingerprint;
  /// What the stage keeps of each request in flight.
  std::map<std::uint64_t, request_state> requests;
  /// Where results go: the next stage's members, or the driver. None from a
  /// group's other members: only the leader sends on.
  std::vector<std::shared_ptr<messages::link>> next;
  std::vector<next_hop> hops;
  bool wired = false;
  /// The stage's group, when it is a member of one (rank 0 leads).
  std::shared_ptr<group_ring> ring;
  /// Frames of any other deployment are from a pipeline layout that no
  /// longer exists (a resumed node's late output, say) and are dropped.
  std::uint64_t deployment = 0;
  std::uint64_t stale_frames = 0;
  driver_actor driver;
  std::uint64_t frames = 0;
  std::uint64_t sequence_parallel_frames = 0;
  /// Decode steps collected for the next batch, and whether its run_batch
  /// message is in the mailbox.
  std::vector<tensor_frame> pending;
  bool batch_due = false;
  std::uint64_t batched_frames = 0, batches = 0;
  double compute_ms = 0;
  std::shared_ptr<transfer_counters> transfers = std::make_shared<transfer_counters>();
  static inline const char* name = "orrery.stage";

  std::string where() const {
    return "node '" + context.node + "' stage " + std::to_string(assignment.stage) + " of session " +
           std::to_string(assignment.session) + " (layers [" + std::to_string(assignment.first_layer) + ", " +
           std::to_string(assignment.last_layer) + ")" +
           (ring ? ", rank " + std::to_string(ring->rank()) + " of a group of " + std::to_string(ring->size()) : "") + ")";
  }
  bool leads() const { return !ring || ring->rank() == 0; }
};

using stage_actor_ptr = stage_actor::stateful_pointer<stage_state>;

const logger& stage_log() {
  static const logger log("stage");
  return log;
}

/// The node's copy of the model is not the client's.
struct model_copy_differs : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws when the node's copy of the model is not the client's: a truncated,
// corrupt or other-version copy would compute other text with exit code 0.
void check_model_copy(const stage_assignment& assignment) {
  if (assignment.model_files.empty()) throw model_copy_differs("the assignment names no model files to check the copy against");
  const auto problem = model_difference(assignment.model_files, identify_model(assignment.model_dir));
  if (!problem.empty())
    throw model_copy_differs("its copy of the model at " + assignment.model_dir + " differs from the client's: " + problem);
}

// Gives the stage exactly the layers of `assignment`: its shards of the same
// model that lie inside the new range stay, the rest go, and the gaps between
// them come from the node's shard cache (shared with other sessions, or
// loaded from the model directory; a shard that only overlaps the new range
// is dropped and its part of the range loaded again). A failed load leaves
// the stage refusing frames until a load succeeds.
caf::result<stage_ready> load(stage_actor_ptr self, stage_assignment& assignment) {
  auto& s = self->state;
  s.pending.clear();  // decode steps of the layout being replaced: a recovery replays their requests
  const int first = assignment.first_layer, last = assignment.last_layer;
  const auto fingerprint = model_fingerprint(assignment.model_files);
  auto kept = [&](const std::shared_ptr<shared_shard>& held) {
    return s.fingerprint == fingerprint && held->shard().first_layer() >= first && held->shard().last_layer() <= last;
  };
  // What goes is released first: its bytes count against the node's budget.
  s.shards.erase(std::remove_if(s.shards.begin(), s.shards.end(), [&](const auto& held) { return !kept(held); }),
                 s.shards.end());
  s.fingerprint = fingerprint;
  // From here on frames of the old layout (say, the late output of a stage
  // that died) meet layers they were not computed for: drop them.
  s.deployment = assignment.deployment;
  s.requests.clear();  // requests are replayed into the new layout
  s.assignment = assignment;
  s.wired = false;
  const bool grouped = assignment.group.size() > 1;
  if (grouped && (assignment.rank < 0 || assignment.rank >= static_cast<int>(assignment.group.size())))
    return make_error(errc::invalid_request, s.where() + ": rank " + std::to_string(assignment.rank) + " of a group of " +
                                                 std::to_string(assignment.group.size()));
  // A group's shards are sliced: the whole-layer shards go, and back.
  auto sliced = [&](const std::shared_ptr<shared_shard>& held) { return held->shard().options().slice.has_value(); };
  if (grouped || std::any_of(s.shards.begin(), s.shards.end(), sliced)) s.shards.clear();
  int loaded_layers = 0;
  std::uint64_t loaded_bytes = 0;
  try {
    check_model_copy(assignment);
    compute::model_dir model(assignment.model_dir);
    compute::shard_options options{compute::device_from_name(s.context.device),
                                   compute::scalar_type_from_name(s.context.dtype),
                                   compute::configure_cpu_threads(std::max(1, assignment.threads))};
    if (grouped) options.slice = assignment.slice;
    std::vector<std::pair<int, int>> held;
    for (const auto& shard : s.shards) held.emplace_back(shard->shard().first_layer(), shard->shard().last_layer());
    std::sort(held.begin(), held.end());
    held.emplace_back(last, last);
    int at = first;
    for (const auto& [begin, end] : held) {
      if (at < begin) {
        bool loaded = false;
        s.shards.push_back(
            s.context.weights->acquire(fingerprint, model, at, begin, options, loaded, grouped ? assignment.session : 0));
        if (loaded) {  // what another session holds already did not have to move
          loaded_layers += begin - at;
          loaded_bytes += s.shards.back()->shard().weight_bytes();
        }
      }
      at = end;
    }
  } catch (const std::exception& e) {
    s.shards.clear();
    s.next.clear();
    s.ring.reset();
    // The device in the text: libtorch's own words may not name it ("invalid
    // device ordinal").
    const auto problem = "cannot load layers [" + std::to_string(first) + ", " + std::to_string(last) + ") on " +
                         s.context.device + ": " + compute::without_backtrace(e.what());
    stage_log().error(s.where() + ": " + problem);
    const bool differs = dynamic_cast<const model_copy_differs*>(&e) != nullptr;
    return make_error(differs ? errc::model_mismatch : errc::load_failed, problem);
  }
  std::sort(s.shards.begin(), s.shards.end(),
            [](const auto& a, const auto& b) { return a->shard().first_layer() < b->shard().first_layer(); });
  // The group's ring: its pieces reach it straight from the io thread,
  // since this stage's thread waits for them inside a forward pass.
  s.ring.reset();
  if (grouped) {
    s.ring = std::make_shared<group_ring>(group_ring::options{assignment.session, assignment.stage, assignment.rank,
                                                              assignment.group,
                                                              std::chrono::milliseconds(assignment.collective_deadline_ms),
                                                              s.context.announced_deployment,
                                                              assignment.collectives.tiles});
    s.context.routes->add_sink(router::handler_kind::group, assignment.session, assignment.stage,
                               [ring = std::weak_ptr<group_ring>(s.ring)](tensor_frame frame) {
                                 if (auto r = ring.lock()) r->deliver(std::move(frame));
                               });
  }
  std::uint64_t weight_bytes = 0;
  for (const auto& shard : s.shards) weight_bytes += shard->shard().weight_bytes();
  return stage_ready{caf::actor_cast<caf::actor>(self), assignment.stage, s.context.node, s.context.data_host,
                     s.context.data_port, weight_bytes, loaded_layers, loaded_bytes};
}

// What the stage keeps of a request that ended (its caches, its ring's pieces).
void forget_request(stage_state& s, std::uint64_t request) {
  s.requests.erase(request);
  if (s.ring) s.ring->forget(request);
}

// `transient`: the supervisor judges what went wrong (a group member that
// went silent): a recovery replays the request, else its deadline ends it.
void fail_request(stage_actor_ptr self, std::uint64_t request, const std::string& problem, bool transient = false) {
  forget_request(self->state, request);
  if (self->state.driver)
    self->send(self->state.driver, request_failure{request, self->state.where() + ": " + problem, transient});
}

bool holds_head(const stage_state& s) { return !s.shards.empty() && s.shards.back()->shard().has_head(); }

// The rows the stage with the head samples: one per guess and one more; a
// frame of guesses only (its first guess checked by the frame before it)
// one per token.
int sampled_rows_of(const messages::forward_route& route, int count) { return std::min(count, route.drafts + 1); }

// Whether a frame of guesses only continues what the head kept: the frame
// before it kept every guess and sampled the token this one starts with.
// One that does not was computed for a rejected guess and ends here.
bool continues_chain(const stage_state& s, const messages::forward_route& route, const tensor_frame& frame) {
  const auto& tokens = frame.tensor(messages::tensor_role::tokens);
  if (route.drafts != tokens.size(0)) return true;  // not a frame of guesses only
  const auto& r = s.requests.at(route.request);
  return r.chain_position == static_cast<int>(route.position) &&
         tokens[0].item<std::int64_t>() == std::int64_t{r.chain_token};
}

// What a pass hands on: hidden states, or from the stage with the head its
// logits (one row per token it samples); or, from a group's leader decoding
// greedily, each row's token itself.
struct pass_output {
  at::Tensor tensor;
  std::optional<std::vector<compute::token_id>> argmax;
};

// The group's logits put together for its leader to sample from. Where the
// leader only takes their argmax (greedy, no logits asked back), each member
// sends each row's best (value, vocabulary id) instead of its logits: 16
// bytes instead of 4 per vocabulary row, the same tokens (ties go to the
// lowest id: the first member in rank order holding the maximum, and within
// it the first column).
pass_output group_logits(stage_state& s, const messages::forward_route& route, const at::Tensor& mine) {
  // Gathered as the collective of a layer past the last.
  const collective_key key{route.request, route.step,
                           compute::collective_index(s.assignment.last_layer, compute::collective_point::attention),
                           route.position};
  const bool argmax_only = compute::sampler(sampling_params_of(route.sampling)).plain_argmax() && !route.sampling.return_logits;
  if (!argmax_only) return {s.ring->all_gather(mine, key, 1), std::nullopt};
  // The value's float32 bits and the id, as one int64 row: exact, and a
  // type frames carry.
  auto local = mine.to(at::kCPU, at::kFloat).contiguous();
  auto column = local.argmax(-1);
  auto value_bits = local.gather(-1, column.unsqueeze(-1)).squeeze(-1).view(at::kInt).to(at::kLong);
  auto best = at::stack({value_bits, column + s.assignment.slice.vocab_begin}, -1);  // [rows, 2]
  const auto rows = best.size(0);
  auto all = s.ring->all_gather(best, key, 0).view({-1, rows, 2});  // [members, rows, 2], rank order
  const auto winners = all.select(2, 0).to(at::kInt).view(at::kFloat).argmax(0);  // [rows]
  std::vector<compute::token_id> tokens;
  for (std::int64_t row = 0; row < rows; ++row)
    tokens.push_back(static_cast<compute::token_id>(all[winners[row].item<std::int64_t>()][row][1].item<std::int64_t>()));
  return {mine, std::move(tokens)};
}

// Runs the frame's tokens through the stage's layers, extending the
// request's KV caches. A frame at position 0 starts the sequence (a new
// request, or a replay after a recovery); any other must continue exactly
// where the caches end, or the stage would compute on a sequence it does
// not hold, unless it starts inside the unverified guesses of the frames
// before it: then the guesses from its position on are dropped first. A
// frame of guesses only (the next window, sent while the one before it is
// verified) continues where the caches end, its guesses unverified too.
pass_output forward(stage_state& s, const messages::forward_route& route, const tensor_frame& frame) {
  const auto& tokens = frame.tensor(messages::tensor_role::tokens);
  const int count = static_cast<int>(tokens.size(0));
  if (route.drafts > count)
    throw std::runtime_error("a frame of " + std::to_string(count) + " tokens with " + std::to_string(route.drafts) +
                             " guesses");
  const bool chained = route.drafts == count;
  auto& r = s.requests[route.request];
  if (route.fork_from != 0) {
    // A sequence that continues another's first tokens: copies of its caches.
    const auto source = s.requests.find(route.fork_from);
    const int source_held = source == s.requests.end() || source->second.caches.empty() ? -1 : source->second.caches.front().length();
    if (source_held < static_cast<int>(route.position))
      throw std::runtime_error("request " + std::to_string(route.request) + " continues the first " +
                               std::to_string(route.position) + " tokens of request " + std::to_string(route.fork_from) +
                               ", but the stage holds " +
                               (source_held < 0 ? std::string("none of it") : std::to_string(source_held) + " tokens of it"));
    r.caches.clear();
    for (const auto& cache : source->second.caches) r.caches.push_back(cache.copy_prefix(static_cast<int>(route.position), cache.capacity()));
    const auto& history = source->second.history;
    r.history.assign(history.begin(), history.begin() + std::min<std::ptrdiff_t>(route.position, history.size()));
    r.unverified = 0;
    r.chain_position = -1;
  } else if (route.position == 0) {
    r.caches.clear();
    for (const auto& shard : s.shards) r.caches.push_back(shard->shard().new_cache(shard->shard().config().max_position_embeddings));
    r.history.clear();
    r.unverified = 0;
    r.chain_position = -1;
  }
  const int held = r.caches.empty() ? 0 : r.caches.front().length();
  const int position = static_cast<int>(route.position);
  if (!chained && !r.caches.empty() && position < held && held - r.unverified <= position) {
    for (auto& cache : r.caches) cache.truncate(position);
    if (r.history.size() > route.position) r.history.resize(route.position);
  } else if (r.caches.empty() || held != position) {
    throw std::runtime_error("a frame " + std::string(chained ? "of guesses only " : "") + "at position " +
                             std::to_string(route.position) + " of request " + std::to_string(route.request) +
                             ", but the stage holds " +
                             (r.caches.empty() ? std::string("no KV cache for it")
                                               : std::to_string(held) + " tokens of it" +
                                                     (r.unverified > 0 ? " (the last " + std::to_string(r.unverified) + " unverified)" : "")));
  }
  r.unverified = chained ? r.unverified + count : route.drafts;
  at::Tensor x = s.shards.front()->shard().has_embedding() ? tokens : frame.tensor(messages::tensor_role::hidden);
  compute::layer_context context;
  if (s.ring) {
    // Each collective of the pass has its own number.
    auto key = [&route](int layer, compute::collective_point point) {
      return collective_key{route.request, route.step, compute::collective_index(layer, point), route.position};
    };
    const auto rows = proportional_rows(s.assignment.shares, count);
    const bool split = s.assignment.collectives.sequence_parallel &&
                       std::all_of(rows.begin(), rows.end(), [](std::int64_t r) { return r > 0; });
    if (split) {
      compute::sequence_split sequence;
      for (int m = 0; m < s.ring->rank(); ++m) sequence.row_begin += rows[static_cast<std::size_t>(m)];
      sequence.row_end = sequence.row_begin + rows[static_cast<std::size_t>(s.ring->rank())];
      sequence.reduce_scatter = [&s, key, rows](int layer, compute::collective_point point, const compute::partial_sum& partial) {
        return s.ring->reduce_scatter(partial, rows, key(layer, point));
      };
      sequence.all_gather = [&s, key](int layer, compute::collective_point point, const at::Tensor& mine) {
        return s.ring->all_gather(mine, key(layer, point));
      };
      context.sequence = std::move(sequence);
      ++s.sequence_parallel_frames;
    } else {
      // The attention's and the MLP's partial sums are added up over the
      // group; the connective blocks run whole on every member.
      context.collective = [&s, key](int layer, compute::collective_point point, const compute::partial_sum& partial) {
        return s.ring->all_reduce(partial, key(layer, point));
      };
    }
  }
  // The head's logits for every row it samples: the last, or each guess's
  // and the one after the last guess.
  const int sampled_rows = sampled_rows_of(route, count);
  for (std::size_t i = 0; i < s.shards.size(); ++i) {
    const auto rows = sampled_rows > 1 && i + 1 == s.shards.size() ? compute::logits_rows::all : compute::logits_rows::last;
    x = s.shards[i]->forward(x, {{&r.caches[i], count}}, context, rows);
  }
  if (!holds_head(s)) return {x, std::nullopt};
  auto ids = tokens.to(at::kLong).contiguous();
  r.history.insert(r.history.end(), ids.data_ptr<std::int64_t>(), ids.data_ptr<std::int64_t>() + ids.numel());
  if (sampled_rows > 1) x = x.narrow(0, x.size(0) - sampled_rows, sampled_rows);
  if (!route.sample) return {x, std::nullopt};
  // Each member computed its vocabulary rows' logits.
  if (s.ring) return group_logits(s, route, x);
  return {x, std::nullopt};
}

// The stage holding the head samples where the logits are (unless its
// group chose the tokens already) and sends the session the token ids (and
// the last kept row's logits only where it asked for them).
//
// A window of guesses is verified by sampling: row j's token is drawn at
// step + j exactly as the step-by-step loop would draw it (the same
// history, the same (seed, step) draw), and guess j is kept when that token
// equals it. The tokens kept are therefore the ones decoding without guesses
// gives. For a guess proposed with certainty (prompt lookup) this is
// rejection sampling: the guess is kept with probability p(guess), and on
// rejection the token comes from p without the guess.
std::vector<outgoing_tensor> sampled(stage_state& s, const messages::forward_route& route, const tensor_frame& frame,
                                     const pass_output& pass) {
  compute::sampler choose(sampling_params_of(route.sampling));
  auto& r = s.requests.at(route.request);
  const auto& history = r.history;
  auto ids = frame.tensor(messages::tensor_role::tokens).to(at::kLong).contiguous();
  const int count = static_cast<int>(ids.numel());
  const int rows = sampled_rows_of(route, count);
  // Row j's token is checked against the token after row j's.
  const auto* guesses = ids.data_ptr<std::int64_t>() + (count - rows + 1);
  std::vector<std::int64_t> kept;
  int row = 0;
  for (;; ++row) {
    compute::token_id token = 0;
    if (pass.argmax) {
      token = pass.argmax->at(static_cast<std::size_t>(row));
    } else if (rows == 1) {
      token = compute::sample(choose, pass.tensor, history, route.step);
    } else {  // the sequence as it stands at row `row`
      const std::vector<compute::token_id> seen(history.begin(), history.end() - (rows - 1 - row));
      token = compute::sample(choose, pass.tensor[row], seen, route.step + static_cast<std::uint32_t>(row));
    }
    kept.push_back(token);
    if (row + 1 == rows || token != guesses[row]) break;
  }
  // A window of guesses sent behind this frame holds if every guess here
  // was kept and it starts with the token sampled last.
  r.chain_position = static_cast<int>(kept.size()) == rows ? static_cast<int>(route.position) + count : -1;
  r.chain_token = static_cast<compute::token_id>(kept.back());
  std::vector<outgoing_tensor> out{{messages::tensor_role::tokens, at::tensor(kept, at::kLong)}};
  if (route.sampling.return_logits) out.push_back({messages::tensor_role::logits, pass.tensor.narrow(0, row, 1)});
  return out;
}

// Hands a pass's result on: hidden states (and the frame's tokens) to the
// next stage, or from the stage with the head the tokens it sampled to the
// session. A group's other members and a prompt's leading chunk end here.
void hand_on(stage_actor_ptr self, const messages::forward_route& route, const tensor_frame& frame, const pass_output& out) {
  auto& s = self->state;
  ++s.frames;
  if (!s.leads() || (holds_head(s) && (!route.sample || !continues_chain(s, route, frame)))) return;
  std::vector<outgoing_tensor> tensors;
  messages::frame_descriptor out_d;
  out_d.session = frame.descriptor.session;
  out_d.deployment = frame.descriptor.deployment;
  if (holds_head(s)) {
    tensors = sampled(s, route, frame, out);
    out_d.route = messages::session_route{route.request, route.step};
  } else {
    tensors = {{messages::tensor_role::hidden, out.tensor},
               {messages::tensor_role::tokens, frame.tensor(messages::tensor_role::tokens)}};
    auto next = route;
    next.stage = s.hops.front().stage;
    out_d.route = next;
  }
  auto sent = clock_type::now();
  std::uint64_t bytes = 0;
  for (const auto& t : tensors) bytes += static_cast<std::uint64_t>(t.tensor.nbytes());
  for (const auto& link : s.next)
    send_tensors(*link, out_d, tensors,
                 // Weak: a frame stuck in a dead link must not keep the driver alive.
                 [transfers = s.transfers, sent, bytes, weak = caf::actor_cast<caf::actor_addr>(s.driver),
                  request = route.request, where = s.where()](const std::string& error) {
                   transfers->nanoseconds += static_cast<std::uint64_t>(
                       std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now() - sent).count());
                   transfers->bytes += bytes;
                   if (auto driver = caf::actor_cast<driver_actor>(weak); driver && !error.empty())
                     caf::anon_send(driver, request_failure{request, where + ": " + error, true});
                 });
}

// One frame's pass, alone.
void run_alone(stage_actor_ptr self, const tensor_frame& frame) {
  auto& s = self->state;
  const auto& route = std::get<messages::forward_route>(frame.descriptor.route);
  try {
    const auto start = clock_type::now();
    auto out = forward(s, route, frame);
    s.compute_ms += std::chrono::duration<double, std::milli>(clock_type::now() - start).count();
    hand_on(self, route, frame, out);
  } catch (const ring_interrupted& e) {
    fail_request(self, route.request, e.what(), true);
  } catch (const std::exception& e) {
    fail_request(self, route.request, compute::without_backtrace(e.what()));
  }
}

// Whether a frame is one decode step that may run in a batch with other
// requests' (continuous batching): one token, no guesses, no fork, exactly
// where the request's caches end, outside a group (whose collectives are
// keyed by request). Anything else runs alone, through forward's checks.
bool batchable(const stage_state& s, const messages::forward_route& route, const tensor_frame& frame) {
  if (s.ring || route.drafts != 0 || route.fork_from != 0 || route.position == 0 || !route.sample) return false;
  if (frame.tensor(messages::tensor_role::tokens).size(0) != 1) return false;
  const auto r = s.requests.find(route.request);
  return r != s.requests.end() && !r->second.caches.empty() &&
         r->second.caches.front().length() == static_cast<int>(route.position);
}

// Runs the decode steps collected since the last batch as one pass: their
// rows packed into one input, each over its own KV caches, so the stage
// reads its weights once for all of them (decode is bound by reading
// weights). Each row is then handed on as its own frame. A batch of one is
// the frame alone, and on the CPU every batch gives each row bit for bit
// what it would alone (at most compute::llama_ops::max_gemv_rows rows: the gemv).
void run_batch(stage_actor_ptr self) {
  auto& s = self->state;
  auto frames = std::move(s.pending);
  s.pending.clear();
  if (frames.empty()) return;
  if (frames.size() == 1) return run_alone(self, frames.front());
  std::vector<const messages::forward_route*> routes;
  std::vector<at::Tensor> inputs;
  const bool embeds = s.shards.front()->shard().has_embedding();
  for (const auto& f : frames) {
    routes.push_back(&std::get<messages::forward_route>(f.descriptor.route));
    inputs.push_back(embeds ? f.tensor(messages::tensor_role::tokens) : f.tensor(messages::tensor_role::hidden));
  }
  pass_output all;
  try {
    const auto start = clock_type::now();
    at::Tensor x = at::cat(inputs, 0);
    for (std::size_t i = 0; i < s.shards.size(); ++i) {
      std::vector<compute::sequence_step> batch;
      for (const auto* route : routes) batch.push_back({&s.requests.at(route->request).caches[i], 1});
      x = s.shards[i]->forward(x, batch, compute::layer_context{}, compute::logits_rows::last);
    }
    all.tensor = x;
    s.compute_ms += std::chrono::duration<double, std::milli>(clock_type::now() - start).count();
  } catch (const std::exception& e) {
    for (const auto* route : routes) fail_request(self, route->request, compute::without_backtrace(e.what()));
    return;
  }
  s.batched_frames += frames.size();
  ++s.batches;
  for (std::size_t k = 0; k < frames.size(); ++k) {
    const auto& route = *routes[k];
    try {
      auto& r = s.requests.at(route.request);
      r.unverified = 0;
      if (holds_head(s)) r.history.push_back(static_cast<compute::token_id>(frames[k].tensor(messages::tensor_role::tokens)[0].item<std::int64_t>()));
      hand_on(self, route, frames[k], {all.tensor.narrow(0, static_cast<std::int64_t>(k), 1), std::nullopt});
    } catch (const std::exception& e) {
      fail_request(self, route.request, compute::without_backtrace(e.what()));
    }
  }
}

void process(stage_actor_ptr self, tensor_frame& frame) {
  auto& s = self->state;
  const auto& d = frame.descriptor;
  const auto* route = std::get_if<messages::forward_route>(&d.route);
  if (!route)  // the router hands a stage forward and backward routes
    return fail_request(self, std::get<messages::backward_route>(d.route).request,
                        "received a backward pass, but stages run inference only");
  if (d.deployment != s.deployment) {
    if (s.stale_frames++ == 0)
      stage_log().info(s.where() + ": dropping frames of deployment " + std::to_string(d.deployment) + " (now " +
                       std::to_string(s.deployment) + ")");
    return;
  }
  if (s.shards.empty() || !s.wired) return fail_request(self, route->request, "received a frame before it was deployed");
  if (!route->end && batchable(s, *route, frame)) {
    // Collected until the stage has read every frame waiting in its mailbox:
    // the batch message goes behind them.
    const bool again = std::any_of(s.pending.begin(), s.pending.end(), [&](const tensor_frame& f) {
      return std::get<messages::forward_route>(f.descriptor.route).request == route->request;
    });
    if (again) run_batch(self);
    s.pending.push_back(std::move(frame));
    // At most as many rows as the gemv takes: its rows keep their sum order
    // whatever their number, so a batched step is bitwise the step alone.
    if (s.pending.size() == static_cast<std::size_t>(compute::llama_ops::max_gemv_rows)) return run_batch(self);
    if (!std::exchange(s.batch_due, true)) self->send(self, run_batch_atom_v);
    return;
  }
  run_batch(self);  // a request's frames stay in order: what was collected goes first
  if (route->end) {  // after every frame of the request before it: free it, and pass it on
    forget_request(s, route->request);
    if (!s.leads() || holds_head(s)) return;
    messages::frame_descriptor on = d;
    auto next = *route;
    next.stage = s.hops.front().stage;
    on.route = next;
    for (const auto& link : s.next)
      send_tensors(*link, on, {{messages::tensor_role::tokens, frame.tensor(messages::tensor_role::tokens)}},
                   [](const std::string&) {});  // a link that broke since: its stage is gone with the request
    return;
  }
  run_alone(self, frame);
}

// The stage's links: to each next hop, and to the next member of its
// group. A link that is open to the same place is kept.
caf::result<void> wire(stage_actor_ptr self, std::vector<next_hop>& hops, const next_hop& ring_hop,
                       std::chrono::milliseconds timeout) {
  auto& s = self->state;
  auto same = [](const next_hop& a, const next_hop& b) { return a.host == b.host && a.port == b.port; };
  // `held`: the open link to `hop` the stage has, if any.
  auto reach = [&](const next_hop& hop, const std::shared_ptr<messages::link>& held,
                   const char* what) -> std::shared_ptr<messages::link> {
    if (held && held->is_open()) return held;
    try {
      return s.context.data_plane->connect(hop.host, hop.port, timeout);
    } catch (const std::exception& e) {
      throw std::runtime_error(s.where() + ": cannot reach its " + what + " at " + hop.host + ":" +
                               std::to_string(hop.port) + ": " + e.what());
    }
  };
  try {
    std::vector<std::shared_ptr<messages::link>> next;
    for (std::size_t i = 0; i < hops.size(); ++i) {
      auto held = std::find_if(s.hops.begin(), s.hops.end(), [&](const next_hop& h) { return same(h, hops[i]); });
      const auto index = static_cast<std::size_t>(held - s.hops.begin());
      next.push_back(reach(hops[i], held == s.hops.end() ? nullptr : s.next[index], "next hop"));
    }
    if (s.ring) {
      if (ring_hop.port == 0) throw std::runtime_error(s.where() + ": its group has no ring to wire");
      s.ring->connect(reach(ring_hop, nullptr, "next group member"), s.deployment);
    }
    s.next = std::move(next);
    s.hops = std::move(hops);
    s.wired = true;
  } catch (const std::exception& e) {
    s.next.clear();
    s.hops.clear();
    s.wired = false;
    return make_error(errc::unreachable, e.what());
  }
  return caf::unit;
}

stage_actor::behavior_type stage_behavior(stage_actor_ptr self, stage_context context) {
  self->state.context = std::move(context);
  return {
      [self](load_stage_atom, stage_assignment& assignment) { return load(self, assignment); },
      [self](connect_next_atom, std::uint64_t deployment, std::vector<next_hop>& hops, next_hop& ring_hop,
             caf::actor& driver, std::int64_t timeout_ms) -> caf::result<void> {
        auto& s = self->state;
        if (deployment != s.deployment) return make_error(errc::not_ready, s.where() + ": told to wire deployment " + std::to_string(deployment) +
                                                           " but loaded for " + std::to_string(s.deployment));
        s.driver = caf::actor_cast<driver_actor>(driver);
        return wire(self, hops, ring_hop, std::chrono::milliseconds(timeout_ms));
      },
      [self](tensor_frame& frame) { process(self, frame); },
      [self](run_batch_atom) {
        self->state.batch_due = false;
        run_batch(self);
      },
      [self](end_request_atom, std::uint64_t request) {
        run_batch(self);
        forget_request(self->state, request);
      },
      [self](stats_atom) {
        const auto& s = self->state;
        return stage_stats{s.assignment.stage,
                           s.context.node,
                           s.assignment.first_layer,
                           s.assignment.last_layer,
                           s.frames,
                           s.compute_ms,
                           static_cast<double>(s.transfers->nanoseconds.load()) / 1e6,
                           s.transfers->bytes.load(),
                           s.ring ? s.ring->bytes_sent() : 0,
                           s.sequence_parallel_frames,
                           s.ring ? s.ring->wait_ms() : 0,
                           s.requests.size(),
                           s.batched_frames,
                           s.batches};
      },
  };
}

}  // namespace

stage_actor spawn_stage(caf::actor_system& system, stage_context context) {
  return system.spawn<caf::detached>(stage_behavior, std::move(context));
}

}  // namespace orrery::actors
