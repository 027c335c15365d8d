#include "actors/training_stage.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <caf/all.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <map>
#include <memory>
#include <optional>

#include "actors/backup_store.hpp"
#include "actors/group_ring.hpp"
#include "actors/model_identity.hpp"
#include "actors/router.hpp"
#include "actors/tensor_frame.hpp"
#include "compute/cpu_threads.hpp"
#include "compute/error_text.hpp"
#include "compute/model_dir.hpp"
#include "compute/model_writer.hpp"
#include "compute/safetensors.hpp"
#include "compute/scalar_type.hpp"
#include "compute/shard.hpp"
#include "compute/training/checkpoint.hpp"
#include "compute/training/optimizer.hpp"
#include "compute/training/pass.hpp"
#include "messages/errors.hpp"
#include "messages/log.hpp"

namespace orrery::actors {

namespace {

constexpr const char* tied_name = "model.embed_tokens.weight";

struct training_stage_state {
  stage_context context;
  stage_assignment assignment;
  std::unique_ptr<compute::shard> shard;
  std::unique_ptr<compute::adamw> optimizer;
  /// A micro-batch's pass over this member's rows of it.
  struct held_pass {
    compute::training_pass pass;
    std::uint32_t step = 0;   // its index in the training step
    std::uint32_t whole = 0;  // the micro-batch's rows
    row_range rows;           // this member's
  };
  /// The micro-batches whose forward passed through and whose backward has
  /// not: at most one per pipeline stage, as the client admits them.
  std::map<std::uint64_t, held_pass> passes;
  /// Pieces of this member's rows of a micro-batch, by first row, while they
  /// come from several members of a neighbouring group: its input (hidden
  /// states or tokens, and targets) and its output's gradient.
  struct pieces {
    std::map<std::uint32_t, std::vector<at::Tensor>> by_row;
    std::uint32_t rows = 0;
  };
  std::map<std::uint64_t, pieces> inputs, gradients;
  /// Its own group's, the next and the previous stage's members and shares.
  std::vector<std::int32_t> shares;
  std::vector<std::shared_ptr<messages::link>> next, previous;
  std::vector<std::int32_t> next_shares, previous_shares;
  /// The stage's data-parallel group (none when it is alone), and the ring
  /// of every holder of a tied embedding.
  std::shared_ptr<group_ring> replicas;
  std::shared_ptr<group_ring> tied;
  caf::actor client;
  std::chrono::milliseconds connect_timeout{10000};
  bool wired = false;
  /// A restore from a weight backup: the parameters that arrived (or were in
  /// the node's own store), and the request waiting for the rest.
  struct restoring {
    std::uint64_t run = 0;
    std::int64_t round = 0;
    std::map<std::string, std::vector<at::Tensor>> arrived;
    std::optional<caf::typed_response_promise<std::int64_t>> done;
  };
  restoring restore;
  /// This step's backward passes done here, and the gradients added up over
  /// the group once the last is done (then, not at the client's norm
  /// request: while earlier stages still run their backward, as Asteroid's
  /// round has it) with their sum of squares, or the error.
  std::uint32_t backwards_done = 0;
  std::optional<caf::expected<double>> reduced;
  static inline const char* name = "orrery.training_stage";

  ~training_stage_state() {
    if (tied) context.routes->remove(router::handler_kind::group, assignment.session, tied_embedding_group);
  }
  bool leads() const { return !replicas || replicas->rank() == 0; }
  std::size_t rank() const { return replicas ? static_cast<std::size_t>(replicas->rank()) : 0; }

  std::string where() const {
    return "node '" + context.node + "' training stage " + std::to_string(assignment.stage) + " of session " +
           std::to_string(assignment.session) + " (layers [" + std::to_string(assignment.first_layer) + ", " +
           std::to_string(assignment.last_layer) + ")" +
           (replicas ? ", member " + std::to_string(replicas->rank()) + " of " + std::to_string(replicas->size()) : "") +
           ")";
  }
  /// The tied embedding's parameter here, if the stage holds one of its parts.
  compute::named_parameter* tied_parameter() {
    if (!tied) return nullptr;
    for (const auto& p : optimizer->parameters())
      if (p.name == tied_name) return const_cast<compute::named_parameter*>(&p);
    return nullptr;
  }
};

using training_stage_ptr = training_stage_actor::stateful_pointer<training_stage_state>;

const logger& training_log() {
  static const logger log("training");
  return log;
}

caf::result<stage_ready> load(training_stage_ptr self, stage_assignment& assignment) {
  auto& s = self->state;
  if (assignment.group.size() > 1 && (assignment.rank < 0 || assignment.rank >= static_cast<int>(assignment.group.size())))
    return make_error(errc::invalid_request, s.where() + ": rank " + std::to_string(assignment.rank) + " of a group of " +
                                                 std::to_string(assignment.group.size()));
  s.assignment = assignment;
  s.passes.clear();
  s.inputs.clear();
  s.gradients.clear();
  s.restore = {};
  s.backwards_done = 0;
  s.reduced.reset();
  s.wired = false;
  try {
    const auto problem = model_difference(assignment.model_files, identify_model(assignment.model_dir));
    if (!problem.empty())
      return make_error(errc::model_mismatch, "its copy of the model at " + assignment.model_dir +
                                                  " differs from the client's: " + problem);
    compute::model_dir model(assignment.model_dir);
    compute::shard_options options{compute::device_from_name(s.context.device), at::kFloat,
                                   compute::configure_cpu_threads(std::max(1, assignment.threads))};
    s.shard = std::make_unique<compute::shard>(model, assignment.first_layer, assignment.last_layer, options);
    const auto& t = assignment.training;
    s.optimizer = std::make_unique<compute::adamw>(compute::trainable_parameters(*s.shard),
                                                   compute::adamw_options{t.beta1, t.beta2, t.eps, t.weight_decay});
  } catch (const std::exception& e) {
    s.shard.reset();
    s.optimizer.reset();
    const auto problem = "cannot load layers [" + std::to_string(assignment.first_layer) + ", " +
                         std::to_string(assignment.last_layer) + ") to train: " + compute::without_backtrace(e.what());
    training_log().error(s.where() + ": " + problem);
    return make_error(errc::load_failed, problem);
  }
  return stage_ready{caf::actor_cast<caf::actor>(self), assignment.stage, s.context.node, s.context.data_host,
                     s.context.data_port, s.shard->weight_bytes(), assignment.last_layer - assignment.first_layer,
                     s.shard->weight_bytes()};
}

caf::result<void> wire(training_stage_ptr self, std::uint64_t deployment, const training_links& links) {
  auto& s = self->state;
  if (!s.shard) return make_error(errc::not_ready, s.where() + ": told to wire before it loaded its layers");
  if (deployment != s.assignment.deployment)
    return make_error(errc::not_ready, s.where() + ": told to wire deployment " + std::to_string(deployment) +
                                           " but loaded for " + std::to_string(s.assignment.deployment));
  const auto timeout = std::chrono::milliseconds(links.timeout_ms);
  auto reach = [&](const next_hop& hop, const char* what) -> std::shared_ptr<messages::link> {
    try {
      return s.context.data_plane->connect(hop.host, hop.port, timeout);
    } catch (const std::exception& e) {
      throw std::runtime_error(s.where() + ": cannot reach its " + what + " at " + hop.host + ":" +
                               std::to_string(hop.port) + ": " + e.what());
    }
  };
  // A ring of this session on the node's router: its pieces arrive on the
  // io thread while this stage's thread waits for them.
  auto ring = [&](std::uint32_t id, int rank, std::vector<std::string> members, const next_hop& hop, const char* what) {
    auto r = std::make_shared<group_ring>(group_ring::options{s.assignment.session, id, rank, std::move(members),
                                                              std::chrono::milliseconds(s.assignment.collective_deadline_ms),
                                                              nullptr, 1});
    s.context.routes->add_sink(router::handler_kind::group, s.assignment.session, id,
                               [weak = std::weak_ptr<group_ring>(r)](tensor_frame frame) {
                                 if (auto held = weak.lock()) held->deliver(std::move(frame));
                               });
    r->connect(reach(hop, what), deployment);
    return r;
  };
  try {
    if (!s.shard->has_head() && links.next.empty()) throw std::runtime_error(s.where() + ": no next stage to send to");
    if (!s.shard->has_embedding() && links.previous.empty())
      throw std::runtime_error(s.where() + ": no previous stage to send gradients to");
    if ((links.next.size() > 1 && links.next.size() != links.next_shares.size()) ||
        (links.previous.size() > 1 && links.previous.size() != links.previous_shares.size()))
      throw std::runtime_error(s.where() + ": a neighbouring group's members and shares differ in number");
    s.next.clear();
    s.previous.clear();
    for (const auto& hop : links.next) s.next.push_back(reach(hop, "next stage"));
    for (const auto& hop : links.previous) s.previous.push_back(reach(hop, "previous stage"));
    s.shares = links.shares;
    s.next_shares = links.next_shares;
    s.previous_shares = links.previous_shares;
    s.replicas.reset();
    if (s.assignment.group.size() > 1) {
      if (links.ring.port == 0) throw std::runtime_error(s.where() + ": its group has no ring to wire");
      s.replicas = ring(s.assignment.stage, s.assignment.rank, s.assignment.group, links.ring, "next group member");
    }
    if (s.tied) s.context.routes->remove(router::handler_kind::group, s.assignment.session, tied_embedding_group);
    s.tied.reset();
    if (links.tied.port != 0) {
      s.tied = ring(tied_embedding_group, links.tied_rank, links.tied_members, links.tied, "tied embedding's next holder");
      if (!s.tied_parameter()) throw std::runtime_error(s.where() + ": told to share a tied embedding it does not hold");
    }
    s.client = links.client;
    s.connect_timeout = timeout;
    s.wired = true;
  } catch (const std::exception& e) {
    s.next.clear();
    s.previous.clear();
    s.wired = false;
    return make_error(errc::unreachable, e.what());
  }
  return caf::unit;
}

void fail(training_stage_ptr self, std::uint64_t request, const std::string& problem) {
  self->state.passes.erase(request);
  self->state.inputs.erase(request);
  self->state.gradients.erase(request);
  training_log().error(self->state.where() + ": micro-batch " + std::to_string(request) + ": " + problem);
  if (self->state.client) caf::anon_send(self->state.client, request_failure{request, self->state.where() + ": " + problem, false});
}

// Sends `tensors` over `link`; a send that fails is reported to the client.
void send_on(training_stage_ptr self, messages::link& link, messages::frame_descriptor d,
             std::vector<outgoing_tensor> tensors, std::uint64_t request) {
  send_tensors(link, std::move(d), std::move(tensors),
               [client = caf::actor_cast<caf::actor_addr>(self->state.client), request,
                where = self->state.where()](const std::string& error) {
                 if (auto c = caf::actor_cast<caf::actor>(client); c && !error.empty())
                   caf::anon_send(c, request_failure{request, where + ": " + error, false});
               });
}

// Rows [first, first + count) of `t`, a tensor of `length` values (tokens)
// per row, that holds rows from `held_first` on.
at::Tensor rows_of(const at::Tensor& t, std::uint32_t held_first, row_range rows, std::int64_t length) {
  return t.narrow(0, static_cast<std::int64_t>(rows.first - held_first) * length, static_cast<std::int64_t>(rows.count) * length);
}

row_range overlap(row_range a, row_range b) {
  const auto first = std::max(a.first, b.first), end = std::min(a.first + a.count, b.first + b.count);
  return {first, end > first ? end - first : 0};
}

// Sends each member of a neighbouring stage (`links`, `shares`) the rows of
// `held` (this member's, as `make(piece)` builds the frame and tensors) that
// it runs.
template <class Make>
void send_rows(training_stage_ptr self, const std::vector<std::shared_ptr<messages::link>>& links,
               const std::vector<std::int32_t>& shares, std::uint32_t step, std::uint32_t whole, row_range held,
               std::uint64_t request, Make make) {
  for (std::size_t m = 0; m < links.size(); ++m) {
    const auto piece = overlap(held, member_rows(step, whole, shares, m));
    if (piece.count == 0) continue;
    auto [descriptor, tensors] = make(piece);
    send_on(self, *links[m], std::move(descriptor), std::move(tensors), request);
  }
}

// The gradient of this member's input rows to the previous stage's members
// that ran them, or, from the stage with the embedding, word to the client
// that its rows of the micro-batch are through.
void send_back(training_stage_ptr self, const messages::frame_descriptor& d, std::uint64_t request,
               const training_stage_state::held_pass& held) {
  auto& s = self->state;
  if (s.shard->has_embedding()) {
    caf::anon_send(s.client, micro_batch_done{request});
    return;
  }
  const auto gradient = held.pass.input_gradient();
  const auto length = gradient.size(0) / std::max<std::uint32_t>(1, held.rows.count);
  send_rows(self, s.previous, s.previous_shares, held.step, held.whole, held.rows, request, [&](row_range piece) {
    messages::frame_descriptor out;
    out.session = d.session;
    out.deployment = d.deployment;
    out.route = messages::backward_route{static_cast<std::uint16_t>(s.assignment.stage - 1), request, held.step,
                                         piece.first, piece.count, held.whole};
    return std::make_pair(out, std::vector<outgoing_tensor>{
                                   {messages::tensor_role::gradient, rows_of(gradient, held.rows.first, piece, length)}});
  });
}

// Adds a piece of this member's rows of `request` (rows from `first` on, as
// `tensors`); once they are all there, their concatenation in row order.
std::optional<std::vector<at::Tensor>> gather_rows(std::map<std::uint64_t, training_stage_state::pieces>& pending,
                                                   std::uint64_t request, row_range mine, row_range piece,
                                                   std::vector<at::Tensor> tensors) {
  if (piece.count == 0 || overlap(mine, piece).count != piece.count)
    throw std::runtime_error("rows [" + std::to_string(piece.first) + ", " + std::to_string(piece.first + piece.count) +
                             ") of micro-batch " + std::to_string(request) + " are not this member's [" +
                             std::to_string(mine.first) + ", " + std::to_string(mine.first + mine.count) + ")");
  if (piece.count == mine.count) return tensors;  // the common case: all of them in one frame
  auto& p = pending[request];
  if (!p.by_row.emplace(piece.first, std::move(tensors)).second)
    throw std::runtime_error("rows from " + std::to_string(piece.first) + " of micro-batch " + std::to_string(request) +
                             " arrived twice");
  p.rows += piece.count;
  if (p.rows < mine.count) return std::nullopt;
  if (p.rows > mine.count) throw std::runtime_error("micro-batch " + std::to_string(request) + ": overlapping rows arrived");
  std::vector<at::Tensor> out;
  for (std::size_t k = 0; k < p.by_row.begin()->second.size(); ++k) {
    std::vector<at::Tensor> parts;
    for (const auto& [first, piece_tensors] : p.by_row) parts.push_back(piece_tensors.at(k));
    out.push_back(at::cat(parts, 0));
  }
  pending.erase(request);
  return out;
}

void backward_finished(training_stage_ptr self);

void forward(training_stage_ptr self, const tensor_frame& frame, const messages::forward_route& route) {
  auto& s = self->state;
  const bool embeds = s.shard->has_embedding();
  const std::uint32_t whole = route.micro_batch_sequences ? route.micro_batch_sequences : route.sequences;
  const auto mine = member_rows(route.step, whole, s.shares, s.rank());
  {
    const auto& tokens = frame.tensor(messages::tensor_role::tokens);
    const auto& targets = frame.tensor(messages::tensor_role::targets);
    if (route.sequences == 0 || tokens.size(0) % route.sequences != 0 || targets.numel() != tokens.numel())
      throw std::runtime_error("a micro-batch piece of " + std::to_string(tokens.numel()) + " tokens and " +
                               std::to_string(targets.numel()) + " targets in " + std::to_string(route.sequences) +
                               " sequences");
  }
  std::vector<at::Tensor> piece = {frame.tensor(messages::tensor_role::tokens), frame.tensor(messages::tensor_role::targets)};
  if (!embeds) piece.push_back(frame.tensor(messages::tensor_role::hidden));
  auto gathered = gather_rows(s.inputs, route.request, mine, {route.first_row, route.sequences}, std::move(piece));
  if (!gathered) return;  // more of its rows to come
  const at::Tensor &tokens = (*gathered)[0], &targets = (*gathered)[1];
  const int sequences = static_cast<int>(mine.count);
  const int length = static_cast<int>(tokens.size(0)) / sequences;
  const at::Tensor& input = embeds ? tokens : (*gathered)[2];
  at::Tensor output;
  if (route.pass == messages::pass_kind::evaluation) {
    output = compute::evaluation_pass(*s.shard, input, sequences, length);
    if (s.shard->has_head()) return caf::anon_send(s.client, micro_batch_loss{route.request, compute::loss_sum(output, targets)});
  } else {
    if (s.passes.count(route.request))
      throw std::runtime_error("micro-batch " + std::to_string(route.request) + " arrived twice");
    auto& held = s.passes
                     .try_emplace(route.request, training_stage_state::held_pass{
                                                     compute::training_pass(*s.shard, input, sequences, length),
                                                     route.step, whole, mine})
                     .first->second;
    if (s.shard->has_head()) {
      const double loss = held.pass.backward_from_loss(
          targets, 1.0 / static_cast<double>(std::max<std::uint64_t>(1, s.assignment.training.batch_tokens)));
      caf::anon_send(s.client, micro_batch_loss{route.request, loss});
      send_back(self, frame.descriptor, route.request, held);
      s.passes.erase(route.request);
      backward_finished(self);
      return;
    }
    output = held.pass.output();
  }
  send_rows(self, s.next, s.next_shares, route.step, whole, mine, route.request, [&](row_range rows) {
    messages::frame_descriptor out = frame.descriptor;
    auto next = route;
    next.stage = static_cast<std::uint16_t>(s.assignment.stage + 1);
    next.first_row = rows.first;
    next.sequences = rows.count;
    next.micro_batch_sequences = whole;
    out.route = next;
    return std::make_pair(out, std::vector<outgoing_tensor>{
                                   {messages::tensor_role::hidden, rows_of(output, mine.first, rows, length)},
                                   {messages::tensor_role::tokens, rows_of(tokens, mine.first, rows, length)},
                                   {messages::tensor_role::targets, rows_of(targets, mine.first, rows, length)}});
  });
}

void backward(training_stage_ptr self, const tensor_frame& frame, const messages::backward_route& route) {
  auto& s = self->state;
  auto found = s.passes.find(route.request);
  if (found == s.passes.end())
    throw std::runtime_error("received the gradient of micro-batch " + std::to_string(route.request) +
                             ", whose forward it does not hold");
  const auto mine = found->second.rows;
  const row_range piece = route.sequences ? row_range{route.first_row, route.sequences} : mine;
  auto gathered = gather_rows(s.gradients, route.request, mine, piece, {frame.tensor(messages::tensor_role::gradient)});
  if (!gathered) return;
  found->second.pass.backward((*gathered)[0]);
  send_back(self, frame.descriptor, route.request, found->second);
  s.passes.erase(found);
  backward_finished(self);
}

void restored_parameter(training_stage_ptr self, const messages::backup_route& route, std::vector<at::Tensor> state);

void process(training_stage_ptr self, tensor_frame& frame) {
  auto& s = self->state;
  const auto& d = frame.descriptor;
  std::uint64_t request = 0;
  try {
    if (const auto* f = std::get_if<messages::forward_route>(&d.route)) {
      request = f->request;
      if (!s.wired) throw std::runtime_error("received a micro-batch before it was wired");
      if (d.deployment != s.assignment.deployment) return;  // of a layout that is gone
      if (f->pass != messages::pass_kind::training && f->pass != messages::pass_kind::evaluation)
        throw std::runtime_error("received a forward frame that is not for training (pass " +
                                 std::to_string(static_cast<int>(f->pass)) + "); a training stage does not generate");
      forward(self, frame, *f);
    } else if (const auto* b = std::get_if<messages::backward_route>(&d.route)) {
      request = b->request;
      if (!s.wired) throw std::runtime_error("received a gradient before it was wired");
      if (d.deployment != s.assignment.deployment) return;
      backward(self, frame, *b);
    } else if (const auto* k = std::get_if<messages::backup_route>(&d.route)) {
      if (d.deployment != s.assignment.deployment) return;
      restored_parameter(self, *k, backup_state_of(frame));
    }
  } catch (const std::exception& e) {
    fail(self, request, compute::without_backtrace(e.what()));
  }
}

double process_cpu_seconds() {
  timespec t{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

// Adds up the group's gradients (the tied embedding's over the ring of its
// holders instead), the same bits on every member; then the sum of squares
// of the gradients this member counts: the group's are counted by its first
// member, the tied embedding's by the first stage's.
caf::expected<double> reduce_gradients(training_stage_ptr self) {
  auto& s = self->state;
  try {
    const auto started = std::chrono::steady_clock::now();
    const double cpu_before = process_cpu_seconds();
    std::uint64_t bytes = 0;
    const auto round = static_cast<std::uint64_t>(s.optimizer->steps()) + 1;
    auto* tied = s.tied_parameter();
    auto add_up = [&](const compute::named_parameter& p, group_ring& ring, std::uint32_t sequence) {
      auto& grad = p.tensor.mutable_grad();
      if (!grad.defined()) grad = at::zeros_like(p.tensor);  // a member that ran none of the step's micro-batches
      bytes += grad.nbytes();
      // A copy goes around: the ring's sends read it after this writes the sum into the gradient.
      grad.copy_(ring.all_reduce(grad.clone(), collective_key{round, 0, sequence, 0}).view_as(grad));
    };
    const auto& parameters = s.optimizer->parameters();
    std::vector<compute::named_parameter> counted;
    for (std::size_t i = 0; i < parameters.size(); ++i) {
      const bool is_tied = tied && &parameters[i] == tied;
      if (s.replicas && !is_tied) add_up(parameters[i], *s.replicas, static_cast<std::uint32_t>(i));
      if (is_tied ? s.tied->rank() == 0 : s.leads()) counted.push_back(parameters[i]);
    }
    if (tied) add_up(*tied, *s.tied, 0);
    const double added_up = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const double norm = compute::squared_gradient_norm(counted);
    // Where a step's norm phase goes; on a slow node the gradients' copies,
    // sums and checksums cost more than the wire: the process's CPU time
    // says how much.
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    char line[256];
    if (s.replicas || tied)
      std::snprintf(line, sizeof line,
                    ": step %llu: gradient norm in %.3f s (%.3f s of CPU), of it adding up %.1f MB with its %s %.3f s",
                    static_cast<unsigned long long>(round), seconds, process_cpu_seconds() - cpu_before, bytes / 1e6,
                    s.replicas ? "group" : "tied embedding's holders", added_up);
    else
      std::snprintf(line, sizeof line, ": step %llu: gradient norm in %.3f s (%.3f s of CPU)",
                    static_cast<unsigned long long>(round), seconds, process_cpu_seconds() - cpu_before);
    training_log().info(s.where() + line);
    return norm;
  } catch (const std::exception& e) {
    return make_error(errc::request_failed, s.where() + ": " + compute::without_backtrace(e.what()));
  }
}

// A backward pass of this step is through here: after the member's last
// (the step's micro-batches whose rows it runs), its gradients are added up
// over its rings at once.
void backward_finished(training_stage_ptr self) {
  auto& s = self->state;
  ++s.backwards_done;
  const auto& t = s.assignment.training;
  if (t.micro_batches == 0 || (!s.replicas && !s.tied)) return;  // nothing to add up with others
  std::uint32_t due = 0;
  for (std::uint32_t i = 0; i < t.micro_batches; ++i)
    if (member_rows(i, t.micro_batch_sequences, s.shares, s.rank()).count > 0) ++due;
  if (s.backwards_done == due) s.reduced = reduce_gradients(self);
}

caf::result<double> gradient_norm(training_stage_ptr self) {
  auto& s = self->state;
  if (!s.optimizer) return make_error(errc::not_ready, s.where() + ": holds no layers");
  auto result = s.reduced ? std::move(*s.reduced) : reduce_gradients(self);
  s.reduced.reset();
  s.backwards_done = 0;
  if (!result) return std::move(result.error());
  return *result;
}

caf::result<checkpoint_part> save(training_stage_ptr self, const std::string& dir, std::int32_t k, std::int32_t n) {
  auto& s = self->state;
  if (!s.shard) return make_error(errc::not_ready, s.where() + ": holds no layers");
  try {
    checkpoint_part part;
    part.file = compute::model_part_name(static_cast<std::size_t>(k), static_cast<std::size_t>(n));
    auto tensors = compute::hf_tensors({s.shard.get()});
    for (const auto& t : tensors) {
      part.tensors.push_back(t.name);
      part.bytes += t.nbytes();
    }
    compute::write_safetensors(std::filesystem::path(dir) / part.file, tensors, {{"format", "pt"}});
    // The tied embedding's moments are the first stage's to save.
    std::vector<std::string> leave_out;
    if (s.tied && !s.shard->has_embedding()) leave_out.push_back(tied_name);
    compute::save_optimizer(std::filesystem::path(dir) /
                                compute::optimizer_part_name(static_cast<std::size_t>(k), static_cast<std::size_t>(n)),
                            *s.optimizer, leave_out);
    return part;
  } catch (const std::exception& e) {
    return make_error(errc::request_failed, s.where() + ": cannot write its part of the checkpoint in " + dir + ": " +
                                                compute::without_backtrace(e.what()));
  }
}

// Puts a copy of every parameter and its moments, as of now, into the node's
// backup store and, unless `port` is 0, into the store of the node at
// host:port (the next stage's), for run `run`.
caf::result<backup_made> back_up(training_stage_ptr self, std::uint64_t run, const std::string& host, std::uint16_t port) {
  auto& s = self->state;
  if (!s.optimizer) return make_error(errc::not_ready, s.where() + ": holds no layers");
  if (!s.passes.empty() || !s.inputs.empty() || !s.gradients.empty())
    return make_error(errc::request_failed, s.where() + ": told to back up with micro-batches in flight");
  try {
    backup_made made;
    made.round = s.optimizer->steps();
    const auto moments = s.optimizer->state();
    std::vector<backed_up_parameter> copies;
    // In host memory: a GPU's own is for training.
    auto copy = [](const at::Tensor& t) { return t.detach().to(at::kCPU, at::kFloat, false, /*copy=*/true); };
    for (const auto& p : s.optimizer->parameters()) {
      backed_up_parameter b{p.name, {copy(p.tensor), copy(moments.at("exp_avg/" + p.name)),
                                     copy(moments.at("exp_avg_sq/" + p.name))}};
      for (const auto& t : b.state) made.bytes += t.nbytes();
      made.names.push_back(p.name);
      copies.push_back(std::move(b));
    }
    for (const auto& b : copies) s.context.backups->put(run, made.round, b);
    if (port != 0) {
      auto link = s.context.data_plane->connect(host, port, s.connect_timeout);
      messages::backup_route route;
      route.run = run;
      route.round = made.round;
      send_backup(*link, s.assignment.session, s.assignment.deployment, route, copies);
    }
    return made;
  } catch (const std::exception& e) {
    return make_error(errc::request_failed, s.where() + ": cannot back up its weights: " + compute::without_backtrace(e.what()));
  }
}

// Once every parameter of the restore under way is there: the weights and
// moments of its round, and the optimizer's step count.
void finish_restore(training_stage_ptr self) {
  auto& s = self->state;
  auto& r = s.restore;
  if (!r.done) return;
  const auto& parameters = s.optimizer->parameters();
  for (const auto& p : parameters)
    if (!r.arrived.count(p.name)) return;
  auto done = std::move(*r.done);
  r.done.reset();
  try {
    c10::NoGradGuard no_grad;
    std::map<std::string, at::Tensor> moments;
    for (const auto& p : parameters) {
      const auto& state = r.arrived.at(p.name);
      if (!state[0].sizes().equals(p.tensor.sizes()))
        throw std::runtime_error("the backup of '" + p.name + "' has " + std::to_string(state[0].numel()) +
                                 " values, the parameter " + std::to_string(p.tensor.numel()));
      p.tensor.copy_(state[0]);
      moments["exp_avg/" + p.name] = state[1];
      moments["exp_avg_sq/" + p.name] = state[2];
    }
    s.optimizer->load_state(moments, r.round);
    r.arrived.clear();
    done.deliver(r.round);
  } catch (const std::exception& e) {
    done.deliver(make_error(errc::load_failed, s.where() + ": cannot restore round " + std::to_string(r.round) +
                                                   " of its backup: " + compute::without_backtrace(e.what())));
  }
}

// A parameter of the restore from a backup, sent by the node that holds it
// (before the restore request, or after).
void restored_parameter(training_stage_ptr self, const messages::backup_route& route, std::vector<at::Tensor> state) {
  auto& r = self->state.restore;
  if (route.run != r.run || route.round != r.round) {
    if (r.done) {
      auto done = std::move(*r.done);
      r.done.reset();
      done.deliver(make_error(errc::request_failed, self->state.where() + ": received the backup of '" + route.name +
                                                        "' of round " + std::to_string(route.round) +
                                                        " while it restores round " + std::to_string(r.round)));
      return;
    }
    r.arrived.clear();  // of a restore that never came
    r.run = route.run;
    r.round = route.round;
  }
  r.arrived[route.name] = std::move(state);
  finish_restore(self);
}

// Restores round `round` of run `run`: each parameter from the node's own
// store where it holds it, the others as backup frames from the nodes that do
// (which may have come already).
caf::result<std::int64_t> restore_backup(training_stage_ptr self, std::uint64_t run, std::int64_t round) {
  auto& s = self->state;
  if (!s.optimizer) return make_error(errc::not_ready, s.where() + ": holds no layers");
  if (s.restore.done) return make_error(errc::request_failed, s.where() + ": already restoring a backup");
  auto& r = s.restore;
  if (r.run != run || r.round != round) r.arrived.clear();
  r.run = run;
  r.round = round;
  std::vector<std::string> names;
  for (const auto& p : s.optimizer->parameters()) names.push_back(p.name);
  const auto lacking = s.context.backups->missing(run, round, names);
  std::vector<std::string> here;
  for (const auto& name : names)
    if (std::find(lacking.begin(), lacking.end(), name) == lacking.end()) here.push_back(name);
  for (auto& p : s.context.backups->get(run, round, here)) r.arrived[p.name] = std::move(p.state);
  r.done = self->make_response_promise<std::int64_t>();
  auto promise = *r.done;
  finish_restore(self);
  return promise;
}

training_stage_actor::behavior_type training_stage_behavior(training_stage_ptr self, stage_context context) {
  self->state.context = std::move(context);
  return {
      [self](load_stage_atom, stage_assignment& assignment) { return load(self, assignment); },
      [self](connect_next_atom, std::uint64_t deployment, training_links& links) { return wire(self, deployment, links); },
      [self](tensor_frame& frame) { process(self, frame); },
      [self](gradient_norm_atom) { return gradient_norm(self); },
      [self](optimizer_step_atom, double learning_rate, double scale) -> caf::result<std::int64_t> {
        auto& s = self->state;
        if (!s.optimizer) return make_error(errc::not_ready, s.where() + ": holds no layers");
        if (!s.passes.empty() || !s.inputs.empty() || !s.gradients.empty())
          return make_error(errc::request_failed, s.where() + ": told to step with " +
                                                      std::to_string(s.passes.size() + s.inputs.size()) +
                                                      " micro-batch(es) still waiting for their gradient or rows");
        s.optimizer->step(learning_rate, scale);
        return s.optimizer->steps();
      },
      [self](save_atom, const std::string& dir, std::int32_t k, std::int32_t n) { return save(self, dir, k, n); },
      [self](backup_atom, std::uint64_t run, const std::string& host, std::uint16_t port) {
        return back_up(self, run, host, port);
      },
      [self](restore_backup_atom, std::uint64_t run, std::int64_t round) { return restore_backup(self, run, round); },
      [self](restore_atom, const std::string& dir) -> caf::result<std::int64_t> {
        auto& s = self->state;
        if (!s.optimizer) return make_error(errc::not_ready, s.where() + ": holds no layers");
        try {
          compute::load_optimizer(compute::optimizer_files(dir), *s.optimizer);
          return s.optimizer->steps();
        } catch (const std::exception& e) {
          return make_error(errc::load_failed, s.where() + ": " + compute::without_backtrace(e.what()));
        }
      },
  };
}

}  // namespace

std::vector<std::uint32_t> training_rows(std::uint32_t index, std::uint32_t rows, const std::vector<std::int32_t>& shares) {
  if (shares.size() <= 1) return {rows};
  std::int64_t total = 0;
  for (auto share : shares) total += std::max(0, share);
  std::vector<std::uint32_t> counts(shares.size(), 0);
  if (total == 0) return counts[0] = rows, counts;
  std::vector<std::int64_t> credit(shares.size(), 0);
  const std::uint64_t end = (static_cast<std::uint64_t>(index) + 1) * rows;
  for (std::uint64_t k = 0; k < end; ++k) {
    for (std::size_t m = 0; m < shares.size(); ++m) credit[m] += std::max(0, shares[m]);
    const auto chosen = static_cast<std::size_t>(std::max_element(credit.begin(), credit.end()) - credit.begin());
    credit[chosen] -= total;
    if (k >= end - rows) ++counts[chosen];
  }
  return counts;
}

row_range member_rows(std::uint32_t index, std::uint32_t rows, const std::vector<std::int32_t>& shares, std::size_t member) {
  const auto counts = training_rows(index, rows, shares);
  row_range out;
  for (std::size_t m = 0; m < member && m < counts.size(); ++m) out.first += counts[m];
  out.count = member < counts.size() ? counts[member] : 0;
  return out;
}

training_stage_actor spawn_training_stage(caf::actor_system& system, stage_context context) {
  return system.spawn<caf::detached>(training_stage_behavior, std::move(context));
}

}  // namespace orrery::actors
