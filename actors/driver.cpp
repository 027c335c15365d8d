#include "actors/driver.hpp"

#include <ATen/ATen.h>
#include <caf/all.hpp>

#include <algorithm>
#include <map>
#include <random>
#include <variant>

#include "actors/error_text.hpp"
#include "actors/model_identity.hpp"
#include "actors/router.hpp"
#include "actors/supervisor.hpp"
#include "actors/tensor_frame.hpp"
#include "compute/dtype.hpp"
#include "compute/generation.hpp"
#include "compute/llama_config.hpp"
#include "compute/sampler.hpp"
#include "messages/errors.hpp"
#include "messages/frame.hpp"
#include "messages/log.hpp"
#include "compute/tokenizer.hpp"
#include "messages/data_plane.hpp"
#include "messages/types.hpp"
#include "planning/migration.hpp"

namespace orrery::actors {

namespace {

using clock_type = std::chrono::steady_clock;

/// A failed layout change is retried this many times (after two heartbeat
/// deadlines, by when a node that failed it has a verdict) before the driver
/// gives up.
constexpr int layout_retries = 3;

struct active_request {
  std::vector<compute::token_id> prompt;
  std::vector<compute::token_id> history;  // prompt + generated
  std::vector<compute::token_id> generated;
  /// Travels with every frame: the last stage samples.
  messages::sampling_settings sampling;
  caf::typed_response_promise<generation_summary> promise;
  token_listener sink;  // whoever asked
  clock_type::time_point started;
  clock_type::time_point decode_started;
  clock_type::time_point deadline;  // the current step fails if no answer arrives by then
  double prefill_ms = 0;
  int max_new_tokens = 0;
  bool stop_at_eos = true;
  std::uint32_t step = 0;
  std::uint64_t tag = 0;
  /// Index into recoveries of the replay this request waits on, or -1.
  int replayed_by = -1;
};

/// A node of the cluster, in the order the placement lists them; its index
/// is also the id of the one stage it runs.
struct cluster_node {
  placement_stage spec;
  bool alive = true;
  std::uint64_t memory_bytes = 0;
  /// The dtype it holds weights in, as it reported (fp32 until it has).
  std::string dtype = "fp32";
};

struct driver_state {
  driver_config config;
  /// This client session's id on every node: its stages, frames and
  /// incarnations are its own. Drawn at random, never 0 (link probes).
  std::uint64_t session = 0;
  /// The content of the model as this client holds it; every node checks its
  /// own copy against it before loading a layer.
  std::vector<model_file> model_files;
  compute::llama_config model;
  std::shared_ptr<compute::tokenizer> tok;
  /// Takes the session's sampled tokens off the driver's data plane.
  std::shared_ptr<router> routes;
  std::shared_ptr<messages::data_plane> plane;
  std::vector<cluster_node> nodes;
  /// The layout serving now (device = node index), and its loaded stages.
  std::vector<planning::stage> layout;
  std::vector<stage_ready> ready;
  std::shared_ptr<messages::link> first_link;
  /// Every layout change takes the next number; answers to an older change
  /// and frames of an older layout are ignored.
  std::uint64_t deployment = 0;
  bool deployed = false;
  bool switching = false;  // a layout change is under way: hold requests
  int retries_left = layout_retries;
  std::string broken;  // why the pipeline cannot serve any more, while it cannot
  bool awaiting_nodes = false;  // too few nodes: requests are held for a grace period
  std::vector<recovery_event> recoveries;
  std::uint64_t next_request = 1;
  std::map<std::uint64_t, active_request> requests;
  bool watching_deadlines = false;
  static inline const char* name = "orrery.driver";
};

using driver_ptr = driver_actor::stateful_pointer<driver_state>;

/// The driver's logger; every line names the session.
const logger& log(driver_ptr self) {
  static const logger driver_log("driver");
  return driver_log;
}

std::string session_of(driver_ptr self) { return "session " + std::to_string(self->state.session) + ": "; }

caf::error driver_error(errc code, const std::string& text) { return make_error(code, text); }

std::string describe(const placement_stage& s) {
  if (s.host.empty()) return "node '" + s.node_name + "'";
  return "node '" + s.node_name + "' (" + s.host + ":" + std::to_string(s.port) + ")";
}

std::string explain(const caf::error& e, const placement_stage& s, std::chrono::milliseconds timeout) {
  if (e == caf::sec::request_timeout)
    return describe(s) + " did not answer within " + std::to_string(timeout.count()) + " ms";
  return describe(s) + ": " + error_text(e);
}

// `e` from node `s` as an orrery error naming the node: a node's own error
// keeps its code (a copy that differs stays model_mismatch); CAF's (a
// timeout, a lost connection) means the node cannot be reached.
caf::error explained(const caf::error& e, const placement_stage& s, std::chrono::milliseconds timeout) {
  const auto code = e.category() == caf::atom("orrery") ? static_cast<errc>(e.code()) : errc::unreachable;
  return make_error(code, explain(e, s, timeout));
}

void finish(driver_ptr self, std::uint64_t id, caf::expected<generation_summary> outcome) {
  auto it = self->state.requests.find(id);
  if (it == self->state.requests.end()) return;
  for (const auto& stage : self->state.ready) self->send(caf::actor_cast<stage_actor>(stage.stage), end_request_atom_v, id);
  if (outcome)
    it->second.promise.deliver(std::move(*outcome));
  else
    it->second.promise.deliver(outcome.error());
  self->state.requests.erase(it);
}

void fail_all(driver_ptr self, const std::string& why) {
  std::vector<std::uint64_t> ids;
  for (const auto& [id, r] : self->state.requests) ids.push_back(id);
  for (auto id : ids) finish(self, id, driver_error(errc::request_failed, why));
}

// How often the driver checks request deadlines while requests are in flight.
// One periodic check rather than a timer per step: a scheduled message keeps
// its receiver alive until it fires, so per-step timers of request_timeout
// would hold a stopped driver (and its actor system) that long.
constexpr auto deadline_check = std::chrono::milliseconds(250);

void watch_deadlines(driver_ptr self) {
  if (std::exchange(self->state.watching_deadlines, true)) return;
  self->delayed_send(self, deadline_check, orrery::request_timeout_atom_v);
}

void check_deadlines(driver_ptr self) {
  auto& s = self->state;
  s.watching_deadlines = false;
  std::vector<std::uint64_t> late;
  if (!s.switching)  // a replay re-arms every deadline
    for (const auto& [id, r] : s.requests)
      if (clock_type::now() > r.deadline) late.push_back(id);
  for (auto id : late)
    finish(self, id, driver_error(errc::request_failed, "no answer from the pipeline within " + std::to_string(s.config.request_timeout.count()) + " ms"));
  if (!s.requests.empty()) watch_deadlines(self);
}

// Sends the next input of request `id` into the pipeline (`tokens` after the
// `position` tokens its stages hold) and arms its deadline.
void send_step(driver_ptr self, std::uint64_t id, const std::vector<compute::token_id>& tokens, std::uint32_t position) {
  auto& r = self->state.requests.at(id);
  std::vector<std::int64_t> wide(tokens.begin(), tokens.end());
  messages::frame_descriptor d;
  d.session = self->state.session;
  d.deployment = self->state.deployment;
  d.route = messages::forward_route{static_cast<std::uint16_t>(self->state.layout.front().device), id, r.step, position,
                                    r.sampling};
  send_tensors(*self->state.first_link, d,
               {{messages::tensor_role::tokens, at::tensor(wide, at::TensorOptions().dtype(at::kLong))}},
               // Weak: a frame stuck in a dead link must not keep the driver alive.
               [weak = caf::actor_cast<caf::actor_addr>(self), id](const std::string& error) {
                 if (auto driver = caf::actor_cast<driver_actor>(weak); driver && !error.empty())
                   caf::anon_send(driver, request_failure{id, "first stage: " + error, true});
               });
  r.deadline = clock_type::now() + self->state.config.request_timeout;
  watch_deadlines(self);
}

// The last stage's token for a request: streamed, then fed back in.
void on_sampled(driver_ptr self, tensor_frame& frame) {
  auto& s = self->state;
  const auto* route = std::get_if<messages::session_route>(&frame.descriptor.route);
  if (!route) return;  // the router hands a session only its own routes
  const auto id = route->request;
  auto it = s.requests.find(id);
  if (it == s.requests.end() || s.switching || frame.descriptor.session != s.session ||
      frame.descriptor.deployment != s.deployment || route->step != it->second.step)
    return;  // finished, from a layout that is gone, or not this session's
  auto& r = it->second;
  compute::token_id next = 0;
  std::vector<float> logits;
  try {
    next = static_cast<compute::token_id>(frame.tensor(messages::tensor_role::tokens).item<std::int64_t>());
    if (r.sampling.return_logits) {
      auto row = frame.tensor(messages::tensor_role::logits).to(at::kFloat).contiguous();
      logits.assign(row.data_ptr<float>(), row.data_ptr<float>() + row.numel());
    }
  } catch (const std::exception& e) {
    return finish(self, id, driver_error(errc::request_failed, "the last stage's answer is malformed: " + std::string(e.what())));
  }
  if (r.replayed_by >= 0) {
    auto& event = s.recoveries.at(static_cast<std::size_t>(r.replayed_by));
    if (event.recover_ms < 0) event.recover_ms = static_cast<double>(unix_ms_now() - event.verdict_unix_ms);
    r.replayed_by = -1;
  }
  r.history.push_back(next);
  r.generated.push_back(next);
  if (r.step == 0) {
    r.prefill_ms = std::chrono::duration<double, std::milli>(clock_type::now() - r.started).count();
    r.decode_started = clock_type::now();
  }
  if (r.sink) self->send(r.sink, token_event{r.tag, next, s.tok->decode(next)});
  const bool eos = next == s.tok->eos();
  if (static_cast<int>(r.generated.size()) >= r.max_new_tokens || (r.stop_at_eos && eos)) {
    generation_summary summary{r.tag, r.prompt, r.generated, r.prefill_ms,
                               std::chrono::duration<double, std::milli>(clock_type::now() - r.decode_started).count(),
                               eos, std::move(logits)};
    return finish(self, id, std::move(summary));
  }
  ++r.step;
  send_step(self, id, {next}, static_cast<std::uint32_t>(r.history.size() - 1));
}

caf::result<generation_summary> start_request(driver_ptr self, generate_request& request) {
  auto& s = self->state;
  if (!s.broken.empty()) return driver_error(errc::no_capacity, s.broken);
  if (!s.deployed) return driver_error(errc::not_ready, "the driver has not deployed its placement yet (send deploy_atom first)");
  if (request.max_new_tokens < 1) return driver_error(errc::invalid_request, "max-tokens must be at least 1");
  compute::sampling_params params{request.temperature, request.top_k, request.top_p, request.repetition_penalty,
                                  request.seed};
  auto prompt = compute::prompt_tokens(*s.tok, request.prompt);
  try {
    params.validate();
    compute::check_fits_context(static_cast<int>(prompt.size()), request.max_new_tokens, s.model.max_position_embeddings);
  } catch (const std::exception& e) {
    return driver_error(errc::invalid_request, e.what());
  }
  const auto id = s.next_request++;
  // Read the sender first: making the promise takes it out of the message.
  auto sink = caf::actor_cast<token_listener>(self->current_sender());
  auto promise = self->make_response_promise<generation_summary>();
  const messages::sampling_settings sampling{request.temperature, request.top_k, request.top_p,
                                             request.repetition_penalty, request.seed, request.return_logits};
  active_request r{prompt, prompt, {}, sampling, promise, sink, clock_type::now(), {}, {}, 0,
                   request.max_new_tokens, request.stop_at_eos, 0, request.tag};
  r.deadline = clock_type::now() + s.config.request_timeout;
  s.requests.emplace(id, std::move(r));
  if (!s.switching) send_step(self, id, prompt, 0);  // else it starts with the replay
  return promise;
}

planning::cluster_state cluster_state_of(driver_ptr self) {
  const auto& s = self->state;
  planning::cluster_state state;
  // Layer bytes are counted in the first node's dtype; a node of another
  // dtype stores each of those bytes at the ratio of the element sizes.
  auto element_size = [](const std::string& dtype) {
    return static_cast<double>(compute::dtype_size(compute::dtype_from_name(dtype).value_or(compute::dtype::f32)));
  };
  const double source_size = element_size(s.nodes.front().dtype);
  for (const auto& n : s.nodes) {
    state.alive.push_back(n.alive);
    state.memory_bytes.push_back(n.memory_bytes);
    state.state_scale.push_back(element_size(n.dtype) / source_size);
  }
  for (int layer = 0; layer < s.model.num_layers; ++layer)
    state.layer_bytes.push_back(static_cast<std::uint64_t>(static_cast<double>(s.model.parameter_count(layer, layer + 1)) * source_size));
  return state;
}

// The layer ranges the placement gave each node.
std::vector<planning::stage> placed_layout(driver_ptr self) {
  const auto& nodes = self->state.nodes;
  std::vector<planning::stage> layout;
  for (std::size_t i = 0; i < nodes.size(); ++i)
    layout.push_back({i, static_cast<std::size_t>(nodes[i].spec.first_layer), static_cast<std::size_t>(nodes[i].spec.last_layer)});
  return layout;
}

/// The end of a layout change: the stages loaded and wired, or (no stages) the error.
using layout_done = std::function<void(driver_ptr, std::vector<stage_ready>, caf::error)>;

// Wires each stage to the next (the last to this driver) under deployment
// `d`, then points the driver's own link at the first stage.
void wire(driver_ptr self, std::uint64_t d, std::vector<planning::stage> target, std::vector<stage_ready> ready,
          layout_done done) {
  const auto timeout = self->state.config.request_timeout;
  // A stage connects to its next hop within the connect timeout: a frozen
  // neighbour must not hold the stage (and the next recovery) for long.
  const auto connect_ms = static_cast<std::int64_t>(self->state.config.connect_timeout.count());
  const auto n = ready.size();
  auto wired = std::make_shared<std::size_t>(0);
  for (std::size_t k = 0; k < n; ++k) {
    next_hop hop = k + 1 < n ? next_hop{ready[k + 1].data_host, ready[k + 1].data_port, ready[k + 1].stage_index}
                             : next_hop{self->state.config.advertise_host, self->state.plane->port(), 0};
    self->request(caf::actor_cast<stage_actor>(ready[k].stage), timeout, connect_next_atom_v, d, hop,
                  caf::actor_cast<caf::actor>(self), connect_ms)
        .then(
            [self, d, wired, n, target, ready, done]() {
              auto& s = self->state;
              if (s.deployment != d || ++*wired < n) return;
              const auto& first = ready.front();
              try {
                s.first_link = s.plane->connect(first.data_host, first.data_port, s.config.connect_timeout);
              } catch (const std::exception& e) {
                return done(self, {},
                            make_error(errc::unreachable, std::string("cannot reach the first stage's data plane: ") + e.what()));
              }
              s.layout = target;
              s.ready = ready;
              s.switching = false;
              done(self, ready, caf::none);
            },
            [self, d, k, target, done](caf::error& e) {
              auto& s = self->state;
              if (s.deployment != d) return;
              done(self, {}, explained(e, s.nodes[target[k].device].spec, s.config.request_timeout));
            });
  }
}

// Moves the pipeline to `target`: every stage gets its layers (a stage that
// has them loads nothing), then everything is rewired. `done` runs once,
// unless a newer layout change overtakes this one.
void switch_layout(driver_ptr self, std::vector<planning::stage> target, layout_done report) {
  auto& s = self->state;
  const auto d = ++s.deployment;
  // Several stages may fail one change: the first failure reports it.
  auto reported = std::make_shared<bool>(false);
  layout_done done = [reported, report](driver_ptr self, std::vector<stage_ready> ready, caf::error error) {
    if (!std::exchange(*reported, true)) report(self, std::move(ready), std::move(error));
  };
  s.switching = true;
  const auto n = target.size();
  auto ready = std::make_shared<std::vector<stage_ready>>(n);
  auto loaded = std::make_shared<std::size_t>(0);
  for (std::size_t i = 0; i < n; ++i) {
    const auto& node = s.nodes[target[i].device].spec;
    stage_assignment assignment{s.session,
                                d,
                                static_cast<std::uint16_t>(target[i].device),
                                static_cast<std::int32_t>(target[i].begin),
                                static_cast<std::int32_t>(target[i].end),
                                s.config.model.string(),
                                s.model_files,
                                "",
                                node.threads};
    self->request(node.node, s.config.request_timeout, load_stage_atom_v, assignment)
        .then(
            [self, d, i, n, ready, loaded, target, done](stage_ready& r) {
              if (self->state.deployment != d) return;
              (*ready)[i] = std::move(r);
              if (++*loaded == n) wire(self, d, target, *ready, done);
            },
            [self, d, i, target, done](caf::error& e) {
              auto& s = self->state;
              if (s.deployment != d) return;
              done(self, {}, explained(e, s.nodes[target[i].device].spec, s.config.request_timeout));
            });
  }
}

void start_supervisor(driver_ptr self) {
  const auto& c = self->state.config;
  supervisor_config sc;
  sc.session = self->state.session;
  for (const auto& n : self->state.nodes) sc.nodes.push_back({n.spec.node_name, n.spec.host, n.spec.port, n.spec.node});
  sc.heartbeat_interval = c.heartbeat_interval;
  sc.heartbeat_deadline = c.heartbeat_deadline;
  sc.connect_timeout = c.connect_timeout;
  sc.subscriber = caf::actor_cast<verdict_listener>(self);
  self->link_to(spawn_supervisor(self->system(), std::move(sc)));
}

// The names of the nodes alive (or, with `alive` false, of those not), joined by ", ".
std::string node_names(driver_ptr self, bool alive) {
  std::string names;
  for (const auto& n : self->state.nodes)
    if (n.alive == alive) names += (names.empty() ? "" : ", ") + n.spec.node_name;
  return names;
}

// " a [0, 2) b [2, 4)": which node runs which layers.
std::string describe_layout(driver_ptr self, const std::vector<planning::stage>& stages) {
  std::string text;
  for (const auto& st : stages)
    text += " " + self->state.nodes[st.device].spec.node_name + " [" + std::to_string(st.begin) + ", " +
            std::to_string(st.end) + ")";
  return text;
}

// The first layout: the placement's when every node is there, else the
// placement with the missing nodes' layers moved as a recovery would move
// them. Throws infeasible_error when the nodes there cannot hold the model.
std::vector<planning::stage> first_layout(driver_ptr self) {
  const auto& nodes = self->state.nodes;
  if (std::all_of(nodes.begin(), nodes.end(), [](const auto& n) { return n.alive; })) return placed_layout(self);
  auto plan = planning::plan_after_loss(placed_layout(self), cluster_state_of(self));
  log(self).info(session_of(self) + "planned around " + node_names(self, false) + " (" + plan.how +
                 "):" + describe_layout(self, plan.stages));
  return plan.stages;
}

// Asks every node counted alive for its memory budget and dtype; one that
// does not answer is counted dead from here on (its handle dropped, so the
// supervisor redials it). Then `then(self, lost)` runs with how many were.
void survey(driver_ptr self, std::function<void(driver_ptr, int)> then) {
  auto& s = self->state;
  auto remaining = std::make_shared<std::size_t>(
      static_cast<std::size_t>(std::count_if(s.nodes.begin(), s.nodes.end(), [](const auto& n) { return n.alive; })));
  auto lost = std::make_shared<int>(0);
  if (*remaining == 0) return then(self, 0);
  for (std::size_t k = 0; k < s.nodes.size(); ++k) {
    if (!s.nodes[k].alive) continue;
    auto answered = [remaining, lost, then](driver_ptr self) {
      if (--*remaining == 0) then(self, *lost);
    };
    self->request(s.nodes[k].spec.node, s.config.request_timeout, info_atom_v)
        .then(
            [self, k, answered](node_info& info) {
              self->state.nodes[k].memory_bytes = info.memory_bytes;
              self->state.nodes[k].dtype = info.dtype;
              answered(self);
            },
            [self, k, lost, answered](caf::error& e) {
              auto& n = self->state.nodes[k];
              log(self).info(session_of(self) + explain(e, n.spec, self->state.config.request_timeout) +
                             "; planning around it");
              n.alive = false;
              n.spec.node = nullptr;
              ++*lost;
              answered(self);
            });
  }
}

// Loads and wires the first layout over the nodes alive. When that fails, the
// nodes are asked again: a node lost meanwhile (killed while the client
// deployed) is planned around, up to `attempts` times; a failure with every
// node still there (a copy that differs, a device the node lacks) is the
// answer.
void place(driver_ptr self, caf::response_promise promise, int attempts) {
  if (std::none_of(self->state.nodes.begin(), self->state.nodes.end(), [](const auto& n) { return n.alive; }))
    return promise.deliver(driver_error(errc::unreachable, "no node of the placement is there"));
  std::vector<planning::stage> layout;
  try {
    layout = first_layout(self);
  } catch (const planning::infeasible_error& e) {
    return promise.deliver(
        driver_error(errc::no_capacity, "the nodes there (" + node_names(self, true) + ") cannot hold the model: " + e.what()));
  }
  switch_layout(self, layout, [promise, attempts](driver_ptr self, std::vector<stage_ready>, caf::error error) mutable {
    if (!error) {
      self->state.deployed = true;
      start_supervisor(self);
      return promise.deliver(caf::unit);
    }
    survey(self, [promise, attempts, error](driver_ptr self, int lost) mutable {
      if (lost == 0 || attempts == 0) {
        self->state.switching = false;
        return promise.deliver(error);
      }
      place(self, promise, attempts - 1);
    });
  });
}

// Nodes the client could not reach start dead: the supervisor redials them,
// and they rejoin as a recovery would see them.
void deploy(driver_ptr self, caf::response_promise promise) {
  for (auto& n : self->state.nodes) n.alive = static_cast<bool>(n.spec.node);
  survey(self, [promise](driver_ptr self, int) mutable { place(self, promise, layout_retries); });
}

void recover(driver_ptr self, bool grace_over);

// Every request in flight is sent again whole (prompt and the tokens generated
// so far) into the new layout, which rebuilds its KV caches; its next token is
// the one the lost step would have produced.
void replay(driver_ptr self, std::size_t event_index, const std::vector<stage_ready>& ready) {
  auto& s = self->state;
  auto& event = s.recoveries.at(event_index);
  for (const auto& r : ready) {
    event.layers_moved += r.layers_loaded;
    event.bytes_moved += r.bytes_loaded;
  }
  event.deployment = s.deployment;
  event.requests_replayed = static_cast<std::int32_t>(s.requests.size());
  log(self).info(session_of(self) + "pipeline rewired as deployment " + std::to_string(s.deployment) + " (" +
                 std::to_string(event.layers_moved) + " layers loaded), replaying " + std::to_string(s.requests.size()) +
                 " request(s)");
  for (auto& [id, r] : s.requests) {
    r.replayed_by = static_cast<int>(event_index);
    send_step(self, id, r.history, 0);
  }
}

// What a recovery's layout change does when it ends; `event_index` is the
// recovery_event it serves.
layout_done after_switch(std::size_t event_index) {
  return [event_index](driver_ptr self, std::vector<stage_ready> ready, caf::error error) {
    auto& s = self->state;
    if (!error) {
      s.retries_left = layout_retries;
      s.awaiting_nodes = false;
      s.broken.clear();
      return replay(self, event_index, ready);
    }
    // Most often a node the new layout needs died during the change: its
    // verdict is on the way and starts a newer change. Otherwise try again.
    log(self).warn(session_of(self) + "layout change " + std::to_string(s.deployment) + " failed: " + error_text(error));
    if (s.retries_left-- > 0) {
      self->delayed_send(self, s.config.heartbeat_deadline * 2, retry_atom_v, s.deployment, false);
      return;
    }
    s.switching = false;
    s.broken = "cannot rebuild the pipeline: " + error_text(error);
    fail_all(self, s.broken);
  };
}

// A death verdict: move the lost layers and replay. When the survivors
// cannot hold the model, hold what is in flight while dead nodes may still
// return (a client that stood still past the connection timeout sees every
// node "die" at once, and finds them again on redial); fail it after that,
// and keep waiting for nodes. Only the end of that grace period
// (`grace_over`) fails requests; verdicts during it keep holding them.
void recover(driver_ptr self, bool grace_over) {
  auto& s = self->state;
  planning::migration plan;
  try {
    plan = planning::plan_after_loss(s.layout, cluster_state_of(self));
  } catch (const planning::infeasible_error& e) {
    ++s.deployment;  // whatever change was under way is void
    const auto alive = node_names(self, true);
    const std::string why = std::string("the surviving nodes (") + (alive.empty() ? "none" : alive) +
                            ") cannot hold the model: " + e.what();
    s.switching = true;
    if (!grace_over) {
      if (!std::exchange(s.awaiting_nodes, true)) {
        const auto grace = s.config.heartbeat_deadline * 3;
        log(self).warn(session_of(self) + why + "; holding requests " + std::to_string(grace.count()) +
                       " ms for nodes to return");
        self->delayed_send(self, grace, retry_atom_v, std::uint64_t{0}, true);
      }
      return;
    }
    s.awaiting_nodes = false;
    s.switching = false;
    s.broken = why + "; waiting for nodes to return";
    log(self).error(session_of(self) + s.broken);
    return fail_all(self, s.broken);
  }
  log(self).info(session_of(self) + "moving layers by " + plan.how + ":" + describe_layout(self, plan.stages));
  switch_layout(self, plan.stages, after_switch(s.recoveries.size() - 1));
}

void on_verdict(driver_ptr self, node_verdict& verdict) {
  auto& s = self->state;
  auto node = std::find_if(s.nodes.begin(), s.nodes.end(), [&](const auto& n) { return n.spec.node_name == verdict.node; });
  if (node == s.nodes.end()) return;
  s.recoveries.push_back({verdict.node, verdict.reason, unix_ms_now(), -1, 0, 0, 0, 0});
  s.retries_left = layout_retries;
  if (!verdict.alive) {
    node->alive = false;
    const auto device = static_cast<std::size_t>(node - s.nodes.begin());
    const bool serving = std::any_of(s.layout.begin(), s.layout.end(), [&](const auto& st) { return st.device == device; });
    // A node the pipeline does not use (a standby that rejoined) costs nothing.
    if (!serving && !s.switching && s.broken.empty()) return;
    return recover(self, false);
  }
  node->alive = true;
  node->spec.node = caf::actor_cast<node_actor>(verdict.handle);
  node->memory_bytes = verdict.info.memory_bytes;  // unknown until now for a node unreachable at deploy
  node->dtype = verdict.info.dtype;
  if (s.broken.empty() && !s.awaiting_nodes && !s.config.rebalance_on_join) return;
  // Back to the topology's placement once every node is back; until then an
  // even spread over the nodes alive.
  std::vector<planning::stage> target;
  if (std::all_of(s.nodes.begin(), s.nodes.end(), [](const auto& n) { return n.alive; })) {
    target = placed_layout(self);
  } else {
    try {
      target = planning::even_layout(cluster_state_of(self));
    } catch (const planning::infeasible_error&) {
      return;  // still too few: keep waiting
    }
  }
  switch_layout(self, target, after_switch(s.recoveries.size() - 1));
}

std::uint64_t fresh_session() {
  static std::random_device entropy;
  std::uint64_t id = 0;
  while (id == 0) id = (std::uint64_t{entropy()} << 32) | entropy();
  return id;
}

driver_actor::behavior_type driver_behavior(driver_ptr self, driver_config config, compute::llama_config model,
                           std::shared_ptr<compute::tokenizer> tok, std::vector<model_file> files) {
  auto& s = self->state;
  s.session = fresh_session();
  s.model_files = std::move(files);
  s.config = std::move(config);
  s.model = std::move(model);
  s.tok = std::move(tok);
  for (const auto& spec : s.config.stages) s.nodes.push_back({spec});
  messages::data_plane_options options;
  options.bind_address = s.config.advertise_host;
  auto weak = caf::actor_cast<caf::actor_addr>(self);
  s.routes = std::make_shared<router>("driver");
  s.routes->add(router::handler_kind::session, s.session, 0, self->address());
  s.plane = std::make_shared<messages::data_plane>(
      options, tensor_allocator(), router::handler_of(s.routes),
      [weak](const std::string& peer, const std::string& problem) {
        if (auto driver = caf::actor_cast<driver_actor>(weak))
          caf::anon_send(driver, request_failure{0, "data plane link from " + peer + " closed: " + problem, true});
      });
  return {
      [self](deploy_atom) -> caf::result<void> {
        if (self->state.deployed || self->state.switching)
          return driver_error(errc::not_ready, "the driver is already deployed (or deploying): spawn another driver for another placement");
        if (self->state.nodes.empty()) return driver_error(errc::invalid_request, "the placement has no stages");
        auto promise = self->make_response_promise();
        deploy(self, promise);
        return promise;
      },
      [self](generate_request& request) { return start_request(self, request); },
      [self](tensor_frame& frame) { on_sampled(self, frame); },
      [self](request_failure& failure) {
        // A broken link is the supervisor's to judge: its verdict starts a
        // recovery that replays the request, and the deadline still holds.
        if (!failure.transient) finish(self, failure.request, driver_error(errc::request_failed, failure.problem));
      },
      [self](node_verdict& verdict) { on_verdict(self, verdict); },
      [self](retry_atom, std::uint64_t deployment, bool grace_over) {
        auto& s = self->state;
        if (grace_over ? s.awaiting_nodes : deployment == s.deployment) recover(self, grace_over);
      },
      [self](orrery::request_timeout_atom) { check_deadlines(self); },
      [self](recoveries_atom) { return self->state.recoveries; },
      [self](stats_atom) -> caf::result<std::vector<stage_stats>> {
        auto promise = self->make_response_promise<std::vector<stage_stats>>();
        auto collected = std::make_shared<std::vector<stage_stats>>(self->state.ready.size());
        auto remaining = std::make_shared<std::size_t>(self->state.ready.size());
        for (std::size_t i = 0; i < self->state.ready.size(); ++i)
          self->request(caf::actor_cast<stage_actor>(self->state.ready[i].stage), self->state.config.request_timeout,
                        stats_atom_v)
              .then(
                  [=](stage_stats& st) mutable {
                    (*collected)[i] = std::move(st);
                    if (--*remaining == 0) promise.deliver(std::move(*collected));
                  },
                  [=](caf::error& e) mutable { promise.deliver(e); });
        return promise;
      },
  };
}

}  // namespace

void deploy_blocking(caf::actor_system& system, const driver_actor& driver, std::chrono::milliseconds timeout) {
  caf::scoped_actor self{system};
  std::string failure;
  self->request(driver, timeout, deploy_atom_v).receive([] {}, [&](caf::error& e) { failure = error_text(e); });
  if (!failure.empty()) throw std::runtime_error("deploy failed: " + failure);
}

std::vector<generation_summary> generate_blocking(caf::actor_system& system, const driver_actor& driver,
                                                  const std::vector<generate_request>& requests,
                                                  std::chrono::milliseconds timeout,
                                                  const std::function<void(std::size_t, const token_event&)>& on_token) {
  caf::scoped_actor self{system};
  for (std::size_t i = 0; i < requests.size(); ++i) {
    auto tagged = requests[i];
    tagged.tag = i;
    self->send(driver, tagged);
  }
  std::vector<generation_summary> done(requests.size());
  std::size_t finished = 0;
  std::string failure;
  while (finished < requests.size()) {
    self->receive(
        [&](token_event& e) {
          if (on_token) on_token(e.tag, e);
        },
        [&](generation_summary& s) {
          auto index = s.tag;
          done.at(index) = std::move(s);
          ++finished;
        },
        [&](caf::error& e) { failure = error_text(e); },
        caf::after(timeout) >> [&] {
          failure = "no answer from the driver within " + std::to_string(timeout.count()) + " ms";
        });
    // Thrown here, outside CAF's receive loop.
    if (!failure.empty()) throw std::runtime_error(failure);
  }
  return done;
}

namespace {

// Asks the driver one question (`Atom`) and waits for the answer; throws
// std::runtime_error naming `what` when it fails or does not come in time.
template <class Answer, class Atom>
Answer ask_blocking(caf::actor_system& system, const driver_actor& driver, std::chrono::milliseconds timeout, Atom atom,
                    const char* what) {
  caf::scoped_actor self{system};
  Answer answer;
  std::string failure;
  self->request(driver, timeout, atom)
      .receive([&](Answer& a) { answer = std::move(a); }, [&](caf::error& e) { failure = error_text(e); });
  if (!failure.empty()) throw std::runtime_error(std::string(what) + " failed: " + failure);
  return answer;
}

}  // namespace

std::vector<recovery_event> recoveries_blocking(caf::actor_system& system, const driver_actor& driver,
                                                std::chrono::milliseconds timeout) {
  return ask_blocking<std::vector<recovery_event>>(system, driver, timeout, recoveries_atom_v, "recoveries");
}

std::vector<stage_stats> stats_blocking(caf::actor_system& system, const driver_actor& driver,
                                        std::chrono::milliseconds timeout) {
  return ask_blocking<std::vector<stage_stats>>(system, driver, timeout, stats_atom_v, "stats");
}

driver_actor spawn_driver(caf::actor_system& system, driver_config config) {
  // Read here, in the caller's thread, so a bad model directory is an
  // exception for the caller rather than a dead actor.
  auto model = compute::llama_config::load(config.model / "config.json");
  std::shared_ptr<compute::tokenizer> tok = compute::load_tokenizer(config.model);
  auto files = identify_model(config.model);
  // Scheduled, not detached: the driver only samples and forwards (cheap),
  // and a detached actor's thread would hold up actor_system shutdown until
  // the last reference to it is gone.
  return system.spawn(driver_behavior, std::move(config), std::move(model), std::move(tok), std::move(files));
}

}  // namespace orrery::actors
