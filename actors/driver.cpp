#include "actors/driver.hpp"

#include <ATen/ATen.h>
#include <caf/all.hpp>

#include <numeric>
#include <random>
#include <stdexcept>
#include <variant>

#include "actors/driver_state.hpp"
#include "actors/model_identity.hpp"
#include "actors/tensor_frame.hpp"
#include "compute/generation.hpp"
#include "compute/outline.hpp"
#include "compute/sampler.hpp"

namespace orrery::actors {

namespace driver_detail {

// An outline's points at most.
constexpr int max_outline_points = 16;

// Frees request `id`'s KV caches on every stage and forgets it. The end
// goes in-band, behind any of its frames still in flight (a window of
// guesses sent ahead when EOS ended it): a control message could overtake
// them, and a group member that forgot the request before such a frame
// would leave the others waiting in its collectives. Without a pipeline to
// send it through (a layout change under way), each stage is told directly.
void forget(driver_ptr self, std::uint64_t id) {
  auto& s = self->state;
  if (s.switching || s.first_links.empty()) {
    for (const auto& stage : s.ready) self->send(caf::actor_cast<stage_actor>(stage.stage), end_request_atom_v, id);
  } else {
    messages::frame_descriptor d;
    d.session = s.session;
    d.deployment = s.deployment;
    messages::forward_route end;
    end.stage = static_cast<std::uint16_t>(s.layout.front().device);
    end.request = id;
    end.end = true;
    d.route = end;
    const auto nothing = at::empty({0}, at::kLong);
    for (const auto& link : s.first_links)
      send_tensors(*link, d, {{messages::tensor_role::tokens, nothing}}, [](const std::string&) {});  // a broken link: its stage is gone too
  }
  s.requests.erase(id);
}

void point_done(driver_ptr self, std::uint64_t point_id);

void finish(driver_ptr self, std::uint64_t id, caf::expected<generation_summary> outcome) {
  auto it = self->state.requests.find(id);
  if (it == self->state.requests.end()) return;
  if (const auto parent = it->second.parent; parent != 0) {  // an outline's point answers through its outline's request
    if (outcome) return point_done(self, id);
    forget(self, id);
    return finish(self, parent, outcome.error());
  }
  for (auto point : it->second.outline.points) forget(self, point);
  if (outcome)
    it->second.promise.deliver(std::move(*outcome));
  else
    it->second.promise.deliver(outcome.error());
  forget(self, id);
}

void fail_all(driver_ptr self, const std::string& why) {
  std::vector<std::uint64_t> ids;
  for (const auto& [id, r] : self->state.requests) ids.push_back(id);
  for (auto id : ids) finish(self, id, make_error(errc::request_failed, why));
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
      if (!r.outline.expanding && clock_type::now() > r.deadline) late.push_back(id);  // an outline waits on its points
  for (auto id : late)
    finish(self, id, make_error(errc::request_failed, "no answer from the pipeline within " + std::to_string(s.config.request_timeout.count()) + " ms"));
  if (!s.requests.empty()) watch_deadlines(self);
}

// Sends `tokens` after the `position` tokens the request's stages hold, for
// the token at `step`. `drafts`: how many of them (the last) are guesses;
// `sample`: whether the last stage samples after them (not after a prompt's
// leading chunk).
void send_pass(driver_ptr self, std::uint64_t id, const std::vector<compute::token_id>& tokens, std::uint32_t position,
               std::uint32_t step, std::uint16_t drafts = 0, bool sample = true, std::uint64_t fork_from = 0) {
  auto& r = self->state.requests.at(id);
  std::vector<std::int64_t> wide(tokens.begin(), tokens.end());
  messages::frame_descriptor d;
  d.session = self->state.session;
  d.deployment = self->state.deployment;
  d.route = messages::forward_route{static_cast<std::uint16_t>(self->state.layout.front().device),
                                    id,
                                    step,
                                    position,
                                    r.sampling,
                                    sample,
                                    drafts,
                                    fork_from};
  const auto input = at::tensor(wide, at::TensorOptions().dtype(at::kLong));
  for (const auto& link : self->state.first_links)
    send_tensors(*link, d, {{messages::tensor_role::tokens, input}},
                 // Weak: a frame stuck in a dead link must not keep the driver alive.
                 [weak = caf::actor_cast<caf::actor_addr>(self), id](const std::string& error) {
                   if (auto driver = caf::actor_cast<driver_actor>(weak); driver && !error.empty())
                     caf::anon_send(driver, request_failure{id, "first stage: " + error, true});
                 });
  r.deadline = clock_type::now() + self->state.config.request_timeout;
  watch_deadlines(self);
}

// Sends `t` and keeps it as in flight.
void send_trip(driver_ptr self, std::uint64_t id, trip t, std::uint64_t fork_from = 0) {
  auto& r = self->state.requests.at(id);
  send_pass(self, id, t.tokens, t.position, t.step, t.drafts, true, fork_from);
  r.trips.push_back(std::move(t));
}

void send_sequence(driver_ptr self, std::uint64_t id) {
  auto& r = self->state.requests.at(id);
  const auto& sequence = r.progress.history();
  // The prompt's chunks; a replay's generated tokens go with the last one.
  std::vector<std::int32_t> lengths = r.prefill_chunks;
  if (lengths.empty()) lengths.push_back(0);
  lengths.back() += static_cast<std::int32_t>(sequence.size()) - std::accumulate(lengths.begin(), lengths.end(), 0);
  r.trips.clear();  // a replay: whatever was in flight is gone with its layout
  std::uint32_t at = 0;
  for (std::size_t c = 0; c + 1 < lengths.size(); ++c) {
    const auto begin = sequence.begin() + at;
    send_pass(self, id, {begin, begin + lengths[c]}, at, r.progress.step(), 0, false);
    at += static_cast<std::uint32_t>(lengths[c]);
  }
  send_trip(self, id, {r.progress.step(), at, {sequence.begin() + at, sequence.end()}, 0});
}

// Where overlap_windows asks for it, a window of guesses only behind the one
// in flight, as if every guess of that one were kept: its first guess stands
// for the token that window samples after its guesses. The last stage drops
// it unless that is so.
void send_ahead(driver_ptr self, std::uint64_t id) {
  auto& r = self->state.requests.at(id);
  if (!r.overlap_windows || r.trips.size() != 1 || r.trips.back().drafts == 0) return;
  const auto& before = r.trips.back();
  const int after = r.progress.remaining() - before.rows();  // tokens still to come once it is back
  if (after < 1) return;
  auto sequence = r.progress.history();
  sequence.insert(sequence.end(), before.tokens.begin() + 1, before.tokens.end());  // its guesses, as if kept
  auto guesses = r.drafts.propose(sequence, after);
  if (guesses.empty()) return;
  ++r.decode_trips;
  r.drafted += static_cast<std::int32_t>(guesses.size()) - 1;  // the first is the window before's to check
  const auto drafts = static_cast<std::uint16_t>(guesses.size());
  send_trip(self, id,
            {before.step + static_cast<std::uint32_t>(before.rows()),
             before.position + static_cast<std::uint32_t>(before.tokens.size()), std::move(guesses), drafts});
}

// The request's next trip: its last token, and guesses after it where the
// prompt lookup has some (as many as tokens remain after the next one); and
// the window ahead of it.
void send_next(driver_ptr self, std::uint64_t id) {
  auto& r = self->state.requests.at(id);
  const auto& sequence = r.progress.history();
  auto guesses = r.drafts.propose(sequence, r.progress.remaining() - 1);
  std::vector<compute::token_id> tokens{sequence.back()};
  tokens.insert(tokens.end(), guesses.begin(), guesses.end());
  ++r.decode_trips;
  r.drafted += static_cast<std::int32_t>(guesses.size());
  const auto drafts = static_cast<std::uint16_t>(guesses.size());
  send_trip(self, id, {r.progress.step(), static_cast<std::uint32_t>(sequence.size() - 1), std::move(tokens), drafts});
  send_ahead(self, id);
}

// Sends `token` to whoever asked for request `r`.
void emit(driver_ptr self, const active_request& r, compute::token_id token) {
  if (r.sink) self->send(r.sink, token_event{r.tag, token, self->state.tok->decode(token)});
}

// Streams `token` of request `r`. A point streams through its outline's
// request while it is the point shown (those before it are written); the
// others keep their tokens until their turn.
void stream(driver_ptr self, active_request& r, compute::token_id token) {
  if (r.parent == 0) return emit(self, r, token);
  const auto& outline = self->state.requests.at(r.parent);
  if (outline.outline.shown == r.point) emit(self, outline, token);
}

// The wire form of request `r`'s local generation_result and its trips.
generation_summary summary_of(const active_request& r) {
  const auto& result = r.progress.result();
  return {r.tag,          result.prompt_tokens,  result.tokens, result.prefill_ms, result.decode_ms,
          result.stopped_at_eos, {},             r.decode_trips, r.drafted,        r.accepted,
          r.cancelled_trips,     0};
}

// Shows the outline's points from the one shown now: each point's header
// and the tokens it has, moving on past the points already written.
void show_points(driver_ptr self, active_request& outline) {
  auto& s = self->state;
  auto& o = outline.outline;
  for (; o.shown < o.points.size(); ++o.shown) {
    const auto& tokens = o.done[o.shown] ? o.texts[o.shown] : s.requests.at(o.points[o.shown]).progress.result().tokens;
    const std::vector<compute::token_id>& header = o.headers[o.shown];
    for (const auto* part : {&header, &tokens})
      for (auto token : *part) emit(self, outline, token);
    if (!o.done[o.shown]) return;  // its next tokens stream as they come
  }
}

// The outline of request `id` is written: each of its points becomes a
// request that continues the outline's sequence with the point's header,
// its first frame copying the outline's KV on every stage (no second
// prefill), all sent at once so the points occupy different stages at once.
// Fewer than two points: the answer goes on as one sequence. An outline
// that ended at EOS is continued without it.
void expand_outline(driver_ptr self, std::uint64_t id) {
  auto& s = self->state;
  auto& outline = s.requests.at(id);
  auto& o = outline.outline;
  o.expanding = true;
  o.expanded = clock_type::now();
  std::string text;
  for (auto token : outline.progress.result().tokens) text += s.tok->decode(token);
  auto points = compute::outline_points(text, o.max_points);
  if (points.size() < 2) points = {std::string()};
  // The stages hold every token of the sequence but its last, which was
  // sampled and never fed back; an EOS there is dropped.
  const bool ended_at_eos = outline.progress.result().stopped_at_eos;
  auto sequence = outline.progress.history();
  if (ended_at_eos) sequence.pop_back();
  for (std::size_t i = 0; i < points.size(); ++i) {
    std::vector<compute::token_id> header;
    if (points.size() > 1) header = s.tok->encode(compute::point_header(points[i], i));
    if (header.size() > static_cast<std::size_t>(compute::max_point_header_tokens)) header.resize(compute::max_point_header_tokens);
    auto prompt = sequence;
    prompt.insert(prompt.end(), header.begin(), header.end());
    // The first frame: the header after every token the stages hold, or the
    // sequence's last token again where they hold it already.
    auto shared = static_cast<std::uint32_t>(sequence.size());
    std::vector<compute::token_id> first;
    if (!ended_at_eos || header.empty()) first.push_back(sequence.at(--shared));
    first.insert(first.end(), header.begin(), header.end());
    auto sampling = outline.sampling;
    sampling.seed += (i + 1) * 0x9e3779b97f4a7c15ull;  // the points draw apart
    active_request point{{prompt, o.point_tokens, o.stop_at_eos, s.tok->eos()},
                         sampling,
                         {},
                         {},
                         clock_type::now() + s.config.request_timeout,
                         outline.tag,
                         -1,
                         {},
                         compute::draft_window(o.max_drafts),
                         outline.overlap_windows,
                         {}};
    point.parent = id;
    point.point = i;
    const auto point_id = s.next_request++;
    o.points.push_back(point_id);
    o.headers.push_back(std::move(header));
    s.requests.emplace(point_id, std::move(point));
    send_trip(self, point_id, {0, shared, std::move(first), 0}, id);
  }
  o.texts.resize(o.points.size());
  o.done.assign(o.points.size(), false);
  o.left = o.points.size();
  show_points(self, outline);  // the first point's header; its tokens stream as they come
}

// A point is written: kept in its outline's request, which shows the points
// in order and answers once all are written.
void point_done(driver_ptr self, std::uint64_t point_id) {
  auto& s = self->state;
  auto& point = s.requests.at(point_id);
  const auto outline_id = point.parent;
  auto& outline = s.requests.at(outline_id);
  auto& o = outline.outline;
  const auto index = point.point;
  o.texts.at(index) = point.progress.result().tokens;
  o.done.at(index) = true;
  // The outline's request makes no trips of its own any more: it counts its points'.
  outline.decode_trips += point.decode_trips;
  outline.drafted += point.drafted;
  outline.accepted += point.accepted;
  outline.cancelled_trips += point.cancelled_trips;
  forget(self, point_id);
  if (index == o.shown) {
    ++o.shown;
    show_points(self, outline);
  }
  if (--o.left > 0) return;
  auto summary = summary_of(outline);
  summary.decode_ms += std::chrono::duration<double, std::milli>(clock_type::now() - o.expanded).count();
  summary.stopped_at_eos = false;
  summary.outline_points = static_cast<std::int32_t>(o.points.size());
  for (std::size_t i = 0; i < o.points.size(); ++i) {
    summary.tokens.insert(summary.tokens.end(), o.headers[i].begin(), o.headers[i].end());
    summary.tokens.insert(summary.tokens.end(), o.texts[i].begin(), o.texts[i].end());
  }
  o.points.clear();  // each forgotten already
  finish(self, outline_id, std::move(summary));
}

// The last stage's tokens for a request (one, or a window's kept guesses and
// the token after them): streamed, then the next trip goes in.
void on_sampled(driver_ptr self, tensor_frame& frame) {
  auto& s = self->state;
  const auto* route = std::get_if<messages::session_route>(&frame.descriptor.route);
  if (!route) return;  // the router hands a session only its own routes
  const auto id = route->request;
  auto it = s.requests.find(id);
  if (it == s.requests.end() || s.switching || frame.descriptor.session != s.session ||
      frame.descriptor.deployment != s.deployment || route->step != it->second.progress.step())
    return;  // finished, from a layout that is gone, or not this session's
  auto& r = it->second;
  // Not a trip in flight (or a window sent ahead of an outline now written).
  if (r.outline.expanding || r.trips.empty() || r.trips.front().step != route->step) return;
  const trip answered = std::move(r.trips.front());
  r.trips.pop_front();
  std::vector<compute::token_id> kept;
  std::vector<float> logits;
  try {
    auto ids = frame.tensor(messages::tensor_role::tokens).to(at::kLong).contiguous();
    if (ids.numel() < 1 || ids.numel() > answered.rows())
      throw std::runtime_error(std::to_string(ids.numel()) + " tokens for a trip that samples " +
                               std::to_string(answered.rows()));
    kept.assign(ids.data_ptr<std::int64_t>(), ids.data_ptr<std::int64_t>() + ids.numel());
    if (r.sampling.return_logits) {
      auto row = frame.tensor(messages::tensor_role::logits).to(at::kFloat).contiguous();
      logits.assign(row.data_ptr<float>(), row.data_ptr<float>() + row.numel());
    }
  } catch (const std::exception& e) {
    return finish(self, id, make_error(errc::request_failed, "the last stage's answer is malformed: " + std::string(e.what())));
  }
  if (r.replayed_by >= 0) {
    auto& event = s.recoveries.at(static_cast<std::size_t>(r.replayed_by));
    if (event.recover_ms < 0) event.recover_ms = static_cast<double>(unix_ms_now() - event.verdict_unix_ms);
    r.replayed_by = -1;
  }
  const auto accepted = static_cast<int>(kept.size()) - 1;
  r.drafts.record(answered.rows() - 1, accepted);
  // The window sent ahead holds only if this one kept every guess and
  // sampled the token it starts with; else the last stage drops it.
  if (!r.trips.empty() && (static_cast<int>(kept.size()) != answered.rows() || r.trips.front().tokens.front() != kept.back())) {
    r.trips.clear();
    ++r.cancelled_trips;
  }
  bool done = false;
  int taken = 0;
  for (auto token : kept) {
    done = r.progress.accept(token);
    ++taken;
    stream(self, r, token);
    if (done) break;
  }
  r.accepted += std::min(accepted, taken);  // guesses kept past an EOS are not
  if (done && r.outline.max_points > 0) return expand_outline(self, id);
  if (done && r.parent != 0) return point_done(self, id);
  if (done) {
    auto summary = summary_of(r);
    summary.final_logits = std::move(logits);
    return finish(self, id, std::move(summary));
  }
  if (r.trips.empty())
    send_next(self, id);
  else
    send_ahead(self, id);  // the window ahead is now the one in flight
}

// Guesses per trip at most: a wider window only adds rows the head is
// unlikely to keep.
constexpr int max_drafts_per_trip = 32;

void check_prefill_chunks(const std::vector<std::int32_t>& lengths, std::size_t prompt) {
  std::int64_t sum = 0;
  for (std::size_t c = 0; c < lengths.size(); ++c) {
    if (lengths[c] < 1)
      throw std::invalid_argument("prefill chunk " + std::to_string(c) + " has " + std::to_string(lengths[c]) +
                                  " tokens; every chunk needs at least 1");
    sum += lengths[c];
  }
  if (!lengths.empty() && sum != static_cast<std::int64_t>(prompt))
    throw std::invalid_argument("the prefill chunks add up to " + std::to_string(sum) + " tokens, but the prompt has " +
                                std::to_string(prompt) + " (with BOS)");
}

caf::result<generation_summary> start_request(driver_ptr self, generate_request& request) {
  auto& s = self->state;
  if (!s.broken.empty()) return make_error(errc::no_capacity, s.broken);
  if (!s.deployed) return make_error(errc::not_ready, "the driver has not deployed its placement yet (send deploy_atom first)");
  if (request.max_new_tokens < 1) return make_error(errc::invalid_request, "max-tokens must be at least 1");
  const bool outlined = request.outline_points > 0;
  auto prompt = compute::prompt_tokens(*s.tok, outlined ? compute::outline_prompt(request.prompt) : request.prompt);
  try {
    sampling_params_of(request.sampling).validate();
    compute::check_fits_context(static_cast<int>(prompt.size()), request.max_new_tokens, s.model.max_position_embeddings);
    check_prefill_chunks(request.prefill_chunks, prompt.size());
    if (outlined) {
      if (request.outline_points > max_outline_points || request.outline_tokens < 1 ||
          request.outline_tokens > s.model.max_position_embeddings)
        throw std::invalid_argument("outline: at most " + std::to_string(max_outline_points) +
                                     " points and from 1 token to the context for the outline, got " +
                                    std::to_string(request.outline_points) + " points and " +
                                    std::to_string(request.outline_tokens) + " tokens");
      // The longest sequence: the outline, a point's header, its text.
      compute::check_fits_context(static_cast<int>(prompt.size()) + request.outline_tokens + compute::max_point_header_tokens,
                                  request.max_new_tokens, s.model.max_position_embeddings);
      if (!request.prefill_chunks.empty())
        throw std::invalid_argument("prefill chunks are for the prompt as given; an outline's prompt is the outline template's");
    }
    if (request.max_drafts < 0 || request.max_drafts > max_drafts_per_trip)
      throw std::invalid_argument("max_drafts must be in [0, " + std::to_string(max_drafts_per_trip) + "], got " +
                                  std::to_string(request.max_drafts));
  } catch (const std::exception& e) {
    return make_error(errc::invalid_request, e.what());
  }
  const auto id = s.next_request++;
  // Read the sender first: making the promise takes it out of the message.
  auto sink = caf::actor_cast<token_listener>(self->current_sender());
  auto promise = self->make_response_promise<generation_summary>();
  active_request r{{prompt, outlined ? request.outline_tokens : request.max_new_tokens, request.stop_at_eos, s.tok->eos()},
                   request.sampling,
                   promise,
                   sink,
                   clock_type::now() + s.config.request_timeout,
                   request.tag,
                   -1,
                   request.prefill_chunks,
                   compute::draft_window(request.max_drafts),
                   request.overlap_windows,
                   {}};
  if (outlined) {
    r.outline.max_points = request.outline_points;
    r.outline.point_tokens = request.max_new_tokens;
    r.outline.max_drafts = request.max_drafts;
    r.outline.stop_at_eos = request.stop_at_eos;
  }
  s.requests.emplace(id, std::move(r));
  if (!s.switching) send_sequence(self, id);  // else it starts with the replay
  return promise;
}

}  // namespace driver_detail

namespace {

using namespace driver_detail;

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
          return make_error(errc::not_ready, "the driver is already deployed (or deploying): spawn another driver for another placement");
        if (self->state.nodes.empty()) return make_error(errc::invalid_request, "the placement has no stages");
        auto promise = self->make_response_promise();
        deploy(self, promise);
        return promise;
      },
      [self](generate_request& request) { return start_request(self, request); },
      [self](cancel_atom, std::uint64_t tag) {
        // Only the sender's own request: tags are the requester's to choose.
        const auto sender = caf::actor_cast<caf::actor_addr>(self->current_sender());
        std::vector<std::uint64_t> ids;
        for (const auto& [id, r] : self->state.requests)
          if (r.parent == 0 && r.tag == tag && r.sink.address() == sender) ids.push_back(id);
        for (auto id : ids) finish(self, id, make_error(errc::cancelled, "request " + std::to_string(tag) + " was cancelled by its requester"));
      },
      [self](tensor_frame& frame) { on_sampled(self, frame); },
      [self](request_failure& failure) {
        // A broken link is the supervisor's to judge: its verdict starts a
        // recovery that replays the request, and the deadline still holds.
        if (!failure.transient) finish(self, failure.request, make_error(errc::request_failed, failure.problem));
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
