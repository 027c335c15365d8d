#include "actors/driver.hpp"

#include <ATen/ATen.h>
#include <caf/all.hpp>

#include <map>

#include "actors/tensor_frame.hpp"
#include "compute/generation.hpp"
#include "compute/llama_config.hpp"
#include "compute/sampler.hpp"
#include "compute/tokenizer.hpp"
#include "messages/data_plane.hpp"
#include "messages/types.hpp"

namespace orrery::actors {

namespace {

using clock_type = std::chrono::steady_clock;

/// Frames addressed to the driver carry this destination stage.
constexpr std::uint16_t driver_stage = 0xffff;

struct active_request {
  std::vector<compute::token_id> prompt;
  std::vector<compute::token_id> history;  // prompt + generated
  std::vector<compute::token_id> generated;
  compute::sampler sampler;
  caf::response_promise promise;
  caf::actor sink;
  clock_type::time_point started;
  clock_type::time_point decode_started;
  clock_type::time_point deadline;  // the current step fails if no answer arrives by then
  double prefill_ms = 0;
  int max_new_tokens = 0;
  bool stop_at_eos = true;
  std::uint32_t step = 0;
  std::uint64_t tag = 0;
};

struct driver_state {
  driver_config config;
  compute::llama_config model;
  std::shared_ptr<compute::tokenizer> tok;
  std::shared_ptr<messages::data_plane> plane;
  std::vector<stage_ready> ready;
  std::shared_ptr<messages::link> first_link;
  bool deployed = false;
  std::string broken;  // why the pipeline cannot serve any more, once it cannot
  std::uint64_t next_request = 1;
  std::map<std::uint64_t, active_request> requests;
  bool watching_deadlines = false;
  static inline const char* name = "orrery.driver";
};

using driver_ptr = caf::stateful_actor<driver_state>*;

caf::error driver_error(const std::string& text) {
  return caf::make_error(caf::sec::runtime_error, text);
}

std::string describe(const placement_stage& s) {
  return "node '" + s.node_name + "' (" + s.node_address + ")";
}

std::string explain(const caf::error& e, const placement_stage& s, std::chrono::milliseconds timeout) {
  if (e == caf::sec::request_timeout)
    return describe(s) + " did not answer within " + std::to_string(timeout.count()) + " ms";
  return describe(s) + ": " + caf::to_string(e);
}

void finish(driver_ptr self, std::uint64_t id, caf::expected<generation_summary> outcome) {
  auto it = self->state.requests.find(id);
  if (it == self->state.requests.end()) return;
  for (const auto& stage : self->state.ready) self->send(stage.stage, end_request_atom_v, id);
  if (outcome)
    it->second.promise.deliver(std::move(*outcome));
  else
    it->second.promise.deliver(outcome.error());
  self->state.requests.erase(it);
}

void fail_all(driver_ptr self, const std::string& why) {
  std::vector<std::uint64_t> ids;
  for (const auto& [id, r] : self->state.requests) ids.push_back(id);
  for (auto id : ids) finish(self, id, driver_error(why));
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
  for (const auto& [id, r] : s.requests)
    if (clock_type::now() > r.deadline) late.push_back(id);
  for (auto id : late)
    finish(self, id, driver_error("no answer from the pipeline within " + std::to_string(s.config.request_timeout.count()) + " ms"));
  if (!s.requests.empty()) watch_deadlines(self);
}

// Sends the next input of request `id` into the pipeline and arms its deadline.
void send_step(driver_ptr self, std::uint64_t id, const std::vector<compute::token_id>& tokens) {
  auto& r = self->state.requests.at(id);
  std::vector<std::int64_t> wide(tokens.begin(), tokens.end());
  messages::frame_descriptor d;
  d.request_id = id;
  d.step = r.step;
  d.source_stage = driver_stage;
  d.destination_stage = 0;
  send_tensor(*self->state.first_link, d, at::tensor(wide, at::TensorOptions().dtype(at::kLong)),
              // Weak: a frame stuck in a dead link must not keep the driver alive.
              [weak = caf::actor_cast<caf::actor_addr>(self), id](const std::string& error) {
                if (auto driver = caf::actor_cast<caf::actor>(weak); driver && !error.empty())
                  caf::anon_send(driver, request_failure{id, "first stage: " + error});
              });
  r.deadline = clock_type::now() + self->state.config.request_timeout;
  watch_deadlines(self);
}

void on_logits(driver_ptr self, tensor_frame& frame) {
  const auto id = frame.descriptor.request_id;
  auto it = self->state.requests.find(id);
  if (it == self->state.requests.end() || frame.descriptor.step != it->second.step) return;  // finished or stale
  auto& r = it->second;
  auto logits = frame.tensor.contiguous();
  auto next = r.sampler.next(logits.data_ptr<float>(), static_cast<int>(logits.size(-1)), r.history);
  r.history.push_back(next);
  r.generated.push_back(next);
  if (r.step == 0) {
    r.prefill_ms = std::chrono::duration<double, std::milli>(clock_type::now() - r.started).count();
    r.decode_started = clock_type::now();
  }
  if (r.sink) self->send(r.sink, token_event{r.tag, next, self->state.tok->decode(next)});
  const bool eos = next == self->state.tok->eos();
  if (static_cast<int>(r.generated.size()) >= r.max_new_tokens || (r.stop_at_eos && eos)) {
    generation_summary summary{r.tag, r.prompt, r.generated, r.prefill_ms,
                               std::chrono::duration<double, std::milli>(clock_type::now() - r.decode_started).count(),
                               eos, std::vector<float>(logits.data_ptr<float>(), logits.data_ptr<float>() + logits.numel())};
    return finish(self, id, std::move(summary));
  }
  ++r.step;
  send_step(self, id, {next});
}

caf::result<generation_summary> start_request(driver_ptr self, generate_request& request) {
  auto& s = self->state;
  if (!s.broken.empty()) return driver_error(s.broken);
  if (!s.deployed) return driver_error("the driver has not deployed its placement yet (send deploy_atom first)");
  if (request.max_new_tokens < 1) return driver_error("max-tokens must be at least 1");
  compute::sampling_params params{request.temperature, request.top_k, request.top_p, request.repetition_penalty,
                                  request.seed};
  auto prompt = compute::prompt_tokens(*s.tok, request.prompt);
  try {
    params.validate();
    compute::check_fits_context(static_cast<int>(prompt.size()), request.max_new_tokens, s.model.max_position_embeddings);
  } catch (const std::exception& e) {
    return driver_error(e.what());
  }
  const auto id = s.next_request++;
  // Read the sender first: making the promise takes it out of the message.
  auto sink = caf::actor_cast<caf::actor>(self->current_sender());
  auto promise = self->make_response_promise<generation_summary>();
  active_request r{prompt, prompt, {}, compute::sampler(params, s.tok->vocab_size()), promise, sink, clock_type::now(), {}, {}, 0,
                   request.max_new_tokens, request.stop_at_eos, 0, request.tag};
  s.requests.emplace(id, std::move(r));
  send_step(self, id, prompt);
  return promise;
}

// Loads every stage, then wires each to its next hop and the driver's data
// plane to the first stage.
void deploy(driver_ptr self, caf::response_promise promise) {
  auto& s = self->state;
  const auto timeout = s.config.request_timeout;
  const auto n = s.config.stages.size();
  s.ready.assign(n, {});
  auto loaded = std::make_shared<std::size_t>(0);
  auto fail = [promise](const std::string& text) mutable {
    if (promise.pending()) promise.deliver(driver_error(text));
  };
  for (std::size_t i = 0; i < n; ++i) {
    const auto& spec = s.config.stages[i];
    stage_assignment assignment{1, static_cast<std::uint16_t>(i), spec.first_layer, spec.last_layer,
                                s.config.model.string(), "", spec.threads};
    self->request(spec.node, timeout, load_stage_atom_v, assignment)
        .then(
            [self, i, n, loaded, promise, fail](stage_ready& r) mutable {
              self->state.ready[i] = std::move(r);
              self->monitor(self->state.ready[i].stage);
              if (++*loaded < n) return;
              auto wired = std::make_shared<std::size_t>(0);
              const auto timeout = self->state.config.request_timeout;
              for (std::size_t k = 0; k < n; ++k) {
                next_hop hop = k + 1 < n ? next_hop{self->state.ready[k + 1].data_host, self->state.ready[k + 1].data_port,
                                                    static_cast<std::uint16_t>(k + 1)}
                                         : next_hop{self->state.config.advertise_host, self->state.plane->port(), driver_stage};
                self->request(self->state.ready[k].stage, timeout, connect_next_atom_v, hop,
                              caf::actor_cast<caf::actor>(self), static_cast<std::int64_t>(timeout.count()))
                    .then(
                        [self, wired, n, promise, fail]() mutable {
                          if (++*wired < n) return;
                          auto& first = self->state.ready[0];
                          try {
                            self->state.first_link =
                                self->state.plane->connect(first.data_host, first.data_port, self->state.config.request_timeout);
                          } catch (const std::exception& e) {
                            return fail(std::string("cannot reach the first stage's data plane: ") + e.what());
                          }
                          self->state.deployed = true;
                          if (promise.pending()) promise.deliver(caf::unit);
                        },
                        [self, k, fail](caf::error& e) mutable {
                          fail(explain(e, self->state.config.stages[k], self->state.config.request_timeout));
                        });
              }
            },
            [self, i, fail](caf::error& e) mutable {
              fail(explain(e, self->state.config.stages[i], self->state.config.request_timeout));
            });
  }
}

std::string who_went_down(driver_ptr self, const caf::actor_addr& source) {
  const auto& s = self->state;
  for (std::size_t i = 0; i < s.config.stages.size(); ++i) {
    bool node = s.config.stages[i].node.address() == source;
    bool stage = i < s.ready.size() && s.ready[i].stage && s.ready[i].stage.address() == source;
    if (node || stage) return describe(s.config.stages[i]);
  }
  return "a pipeline actor";
}

caf::behavior driver_actor(driver_ptr self, driver_config config, compute::llama_config model,
                           std::shared_ptr<compute::tokenizer> tok) {
  auto& s = self->state;
  s.config = std::move(config);
  s.model = std::move(model);
  s.tok = std::move(tok);
  messages::data_plane_options options;
  options.bind_address = s.config.advertise_host;
  auto weak = caf::actor_cast<caf::actor_addr>(self);
  s.plane = std::make_shared<messages::data_plane>(
      options, tensor_allocator(),
      [weak](messages::received_frame frame) {
        if (auto driver = caf::actor_cast<caf::actor>(weak)) caf::anon_send(driver, tensor_frame{frame.descriptor, tensor_of(frame)});
      },
      [weak](const std::string& peer, const std::string& problem) {
        if (auto driver = caf::actor_cast<caf::actor>(weak))
          caf::anon_send(driver, request_failure{0, "data plane link from " + peer + " closed: " + problem});
      });
  for (const auto& stage : s.config.stages) self->monitor(stage.node);
  self->set_down_handler([self](caf::down_msg& msg) {
    auto who = who_went_down(self, msg.source);
    self->state.broken = who + " went down (" + caf::to_string(msg.reason) + ")";
    fail_all(self, self->state.broken);
  });
  return {
      [self](deploy_atom) -> caf::result<void> {
        auto promise = self->make_response_promise();
        deploy(self, promise);
        return promise;
      },
      [self](generate_request& request) { return start_request(self, request); },
      [self](tensor_frame& frame) { on_logits(self, frame); },
      [self](request_failure& failure) {
        if (failure.request == 0) return fail_all(self, failure.problem);
        finish(self, failure.request, driver_error(failure.problem));
      },
      [self](orrery::request_timeout_atom) { check_deadlines(self); },
      [self](stats_atom) -> caf::result<std::vector<stage_stats>> {
        auto promise = self->make_response_promise<std::vector<stage_stats>>();
        auto collected = std::make_shared<std::vector<stage_stats>>(self->state.ready.size());
        auto remaining = std::make_shared<std::size_t>(self->state.ready.size());
        for (std::size_t i = 0; i < self->state.ready.size(); ++i)
          self->request(self->state.ready[i].stage, self->state.config.request_timeout, stats_atom_v)
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

void deploy_blocking(caf::actor_system& system, const caf::actor& driver, std::chrono::milliseconds timeout) {
  caf::scoped_actor self{system};
  std::string failure;
  self->request(driver, timeout, deploy_atom_v).receive([] {}, [&](caf::error& e) { failure = system.render(e); });
  if (!failure.empty()) throw std::runtime_error("deploy failed: " + failure);
}

std::vector<generation_summary> generate_blocking(caf::actor_system& system, const caf::actor& driver,
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
        [&](caf::error& e) { failure = system.render(e); },
        caf::after(timeout) >> [&] {
          failure = "no answer from the driver within " + std::to_string(timeout.count()) + " ms";
        });
    // Thrown here, outside CAF's receive loop.
    if (!failure.empty()) throw std::runtime_error(failure);
  }
  return done;
}

std::vector<stage_stats> stats_blocking(caf::actor_system& system, const caf::actor& driver,
                                        std::chrono::milliseconds timeout) {
  caf::scoped_actor self{system};
  std::vector<stage_stats> stats;
  std::string failure;
  self->request(driver, timeout, stats_atom_v)
      .receive([&](std::vector<stage_stats>& s) { stats = std::move(s); },
               [&](caf::error& e) { failure = system.render(e); });
  if (!failure.empty()) throw std::runtime_error("stats failed: " + failure);
  return stats;
}

caf::actor spawn_driver(caf::actor_system& system, driver_config config) {
  // Read here, in the caller's thread, so a bad model directory is an
  // exception for the caller rather than a dead actor.
  auto model = compute::llama_config::load(config.model / "config.json");
  std::shared_ptr<compute::tokenizer> tok = compute::load_tokenizer(config.model);
  // Scheduled, not detached: the driver only samples and forwards (cheap),
  // and a detached actor's thread would hold up actor_system shutdown until
  // the last reference to it is gone.
  return system.spawn(driver_actor, std::move(config), std::move(model), std::move(tok));
}

}  // namespace orrery::actors
