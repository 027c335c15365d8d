#include "deploy/training/pipeline_engine.hpp"

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <stdexcept>

#include "actors/error_text.hpp"
#include "actors/interfaces.hpp"
#include "actors/model_identity.hpp"
#include "actors/router.hpp"
#include "actors/tensor_frame.hpp"
#include "actors/training_stage.hpp"
#include "compute/model_writer.hpp"
#include "deploy/cluster/cluster.hpp"
#include "messages/data_plane.hpp"

namespace orrery::deploy {

namespace fs = std::filesystem;

namespace {

/// How long the client waits for any answer from the pipeline (a
/// micro-batch's loss or completion, a step) before it gives up.
std::chrono::milliseconds answer_timeout(const topology& t) {
  return std::max<std::chrono::milliseconds>(t.request_timeout, std::chrono::minutes(2));
}

std::uint64_t fresh_session() {
  std::random_device entropy;
  std::uint64_t id = 0;
  while (id == 0) id = (std::uint64_t{entropy()} << 32) | entropy();
  return id;
}

}  // namespace

struct pipeline_engine::state {
  struct member {
    std::string node;
    actors::training_stage_actor actor;
    std::int32_t share = 1;
    next_hop data;  // where its data plane accepts frames
  };
  /// A pipeline stage: a data-parallel group of one or more members.
  struct stage {
    std::vector<member> members;
    int first_layer = 0, last_layer = 0;
    std::vector<std::int32_t> shares() const {
      std::vector<std::int32_t> out;
      for (const auto& m : members) out.push_back(m.share);
      return out;
    }
  };

  topology t;
  compute::llama_config config;
  actor_config caf_config;
  std::unique_ptr<caf::actor_system> system;
  std::unique_ptr<caf::scoped_actor> self;
  std::shared_ptr<messages::data_plane> plane;
  std::vector<std::shared_ptr<messages::link>> first;  // to the first stage's members
  std::vector<stage> stages;
  std::size_t window = 1;  // micro-batches in flight at most: one per member of the widest stage, per stage
  std::uint64_t session = fresh_session();
  std::uint64_t next_request = 1;
  std::chrono::milliseconds timeout;

  explicit state(const topology& topo)
      : t(topo), caf_config(topo.heartbeat_interval), system(std::make_unique<caf::actor_system>(caf_config)),
        self(std::make_unique<caf::scoped_actor>(*system)), timeout(answer_timeout(topo)) {}

  ~state() {
    plane.reset();  // its io thread ends before the actor system does
    self.reset();
  }

  std::string node_of(const caf::actor_addr& a) const {
    for (const auto& st : stages)
      for (const auto& m : st.members)
        if (m.actor.address() == a) return m.node;
    return "?";
  }
  std::vector<const member*> all_members() const {
    std::vector<const member*> out;
    for (const auto& st : stages)
      for (const auto& m : st.members) out.push_back(&m);
    return out;
  }

  // Sends every batch through the pipeline as a `pass`, at most one per
  // stage in flight, and returns their summed losses in order.
  std::vector<double> run(const std::vector<compute::token_batch>& batches, messages::pass_kind pass) {
    const bool training = pass == messages::pass_kind::training;
    std::vector<double> losses(batches.size(), NAN);
    std::vector<int> answers(batches.size(), 0);  // a loss, and for training the completion
    std::map<std::uint64_t, std::size_t> index;
    std::size_t sent = 0, finished = 0, in_flight = 0;
    std::string problem;
    auto& me = *self;
    const auto client = caf::actor_cast<caf::actor>(me);
    auto send = [&](std::size_t i) {
      const auto id = next_request++;
      index[id] = i;
      messages::frame_descriptor d;
      d.session = session;
      d.deployment = 1;
      messages::forward_route route;
      route.request = id;
      route.pass = pass;
      route.sequences = static_cast<std::uint32_t>(batches[i].sequences);
      route.step = static_cast<std::uint32_t>(i);
      d.route = route;
      auto& link = *first.at(static_cast<std::size_t>(actors::training_member(route.step, stages.front().shares())));
      actors::send_tensors(link, d,
                           {{messages::tensor_role::tokens, batches[i].inputs},
                            {messages::tensor_role::targets, batches[i].targets}},
                           [client, id, peer = link.peer()](const std::string& error) {
                             if (!error.empty())
                               caf::anon_send(client, request_failure{id, "the link to the first stage at " + peer +
                                                                              " failed: " + error});
                           });
    };
    auto answered = [&](std::uint64_t request) {
      auto found = index.find(request);
      if (found == index.end()) return;  // of an earlier run that failed
      if (++answers[found->second] == (training ? 2 : 1)) {
        ++finished;
        --in_flight;
      }
    };
    while (finished < batches.size() && problem.empty()) {
      for (; sent < batches.size() && in_flight < window; ++sent, ++in_flight) send(sent);
      me->receive(
          [&](micro_batch_loss& l) {
            if (auto found = index.find(l.request); found != index.end()) losses[found->second] = l.loss_sum;
            answered(l.request);
          },
          [&](micro_batch_done& d) { answered(d.request); },
          [&](request_failure& f) {
            if (index.count(f.request)) problem = f.problem;
          },
          [&](caf::down_msg& m) {
 problem = "node '" + node_of(m.source) + "' was lost (" + actors::error_text(m.reason) +
                      "); training stops. Continue from the last checkpoint with --resume once the node is back";
          },
          caf::after(timeout) >> [&] {
            problem = "no answer from the pipeline for " + std::to_string(timeout.count() / 1000) + " s with " +
                      std::to_string(in_flight) + " micro-batch(es) in flight";
          });
    }
    if (!problem.empty()) throw std::runtime_error(problem);
    return losses;
  }

  // Asks each of `members` in turn; throws naming the first that failed.
  template <class Answer, class... Ts>
  std::vector<Answer> ask_each(const std::vector<const member*>& members, const char* what, Ts... xs) {
    std::vector<Answer> answers;
    for (const auto* m : members) {
      std::string problem;
      (*self)->request(m->actor, timeout, xs...)
          .receive([&](Answer& a) { answers.push_back(std::move(a)); },
                   [&](caf::error& e) { problem = std::string(what) + " failed on node '" + m->node + "': " + actors::error_text(e); });
      if (!problem.empty()) throw std::runtime_error(problem);
    }
    return answers;
  }
};

pipeline_engine::pipeline_engine(const topology& t, const fs::path& model, const compute::llama_config& config,
                                 const training_settings& settings)
    : s_(std::make_unique<state>(t)) {
  auto& s = *s_;
  s.config = config;
  auto nodes = connect_nodes(*s.system, t);
  nodes.require_all();
  // A topology's group is one data-parallel stage here: its members are
  // consecutive, with the same layers; their speeds are their shares.
  std::vector<std::vector<const actors::placement_stage*>> grouped;
  for (const auto& n : nodes.stages) {
    if (n.first_layer >= n.last_layer) continue;  // a standby node
    const bool joins = !grouped.empty() && !n.group.empty() && grouped.back().front()->group == n.group;
    if (!joins) grouped.emplace_back();
    grouped.back().push_back(&n);
  }
  if (grouped.empty()) throw std::runtime_error("the topology's placement gives no node any layer");
  const auto files = actors::identify_model(model);
  messages::data_plane_options options;
  options.bind_address = t.testbed ? t.testbed->client : "127.0.0.1";
  s.plane = std::make_shared<messages::data_plane>(options, actors::tensor_allocator(),
                                                   actors::router::handler_of(std::make_shared<actors::router>("trainer")),
                                                   [](const std::string&, const std::string&) {});
  auto& me = *s.self;
  for (std::size_t i = 0; i < grouped.size(); ++i) {
    const auto& group = grouped[i];
    state::stage st;
    st.first_layer = group.front()->first_layer;
    st.last_layer = group.front()->last_layer;
    std::vector<std::string> names;
    for (const auto* n : group) names.push_back(n->node_name);
    for (std::size_t m = 0; m < group.size(); ++m) {
      const auto& n = *group[m];
      stage_assignment a;
      a.session = s.session;
      a.deployment = 1;
      a.stage = static_cast<std::uint16_t>(i);
      a.first_layer = n.first_layer;
      a.last_layer = n.last_layer;
      a.model_dir = fs::absolute(model).string();
      a.model_files = files;
      a.threads = n.threads;
      if (group.size() > 1) {
        a.group = names;
        a.rank = static_cast<std::int32_t>(m);
      }
      a.collective_deadline_ms = s.timeout.count();
      a.training = settings;
      a.training.enabled = true;
      std::string problem;
      stage_ready ready;
      me->request(n.node, s.timeout, load_stage_atom_v, a)
          .receive([&](stage_ready& r) { ready = std::move(r); },
                   [&](caf::error& e) { problem = "node '" + n.node_name + "': " + actors::error_text(e); });
      if (!problem.empty()) throw std::runtime_error(problem);
      state::member joined{n.node_name, caf::actor_cast<actors::training_stage_actor>(ready.stage),
                    group.size() > 1 ? std::max(1, n.slice.columns()) : 1,
                    next_hop{ready.data_host, ready.data_port, static_cast<std::uint16_t>(i)}};
      me->monitor(joined.actor);
      st.members.push_back(std::move(joined));
    }
    s.window = std::max(s.window, st.members.size());
    s.stages.push_back(std::move(st));
  }
  const std::size_t n = s.stages.size();
  s.window *= n;
  auto hops = [&](const state::stage& st) {
    std::vector<next_hop> out;
    for (const auto& m : st.members) out.push_back(m.data);
    return out;
  };
  // Every holder of a tied embedding: the first stage's members, then the last's.
  std::vector<const state::member*> holders;
  if (config.tie_word_embeddings && n > 1)
    for (const auto* st : {&s.stages.front(), &s.stages.back()})
      for (const auto& m : st->members) holders.push_back(&m);
  std::vector<std::string> holder_names;
  for (const auto* h : holders) holder_names.push_back(h->node);
  for (std::size_t i = 0; i < n; ++i) {
    const auto& st = s.stages[i];
    for (std::size_t m = 0; m < st.members.size(); ++m) {
      training_links links;
      if (i + 1 < n) links.next = hops(s.stages[i + 1]), links.next_shares = s.stages[i + 1].shares();
      if (i > 0) links.previous = hops(s.stages[i - 1]), links.previous_shares = s.stages[i - 1].shares();
      if (st.members.size() > 1) links.ring = st.members[(m + 1) % st.members.size()].data;
      const auto held = std::find(holders.begin(), holders.end(), &st.members[m]);
      if (held != holders.end()) {
        const auto rank = static_cast<std::size_t>(held - holders.begin());
        links.tied = holders[(rank + 1) % holders.size()]->data;
        links.tied_members = holder_names;
        links.tied_rank = static_cast<std::int32_t>(rank);
      }
      links.client = caf::actor_cast<caf::actor>(me);
      links.timeout_ms = t.connect_timeout.count();
      std::string problem;
      me->request(st.members[m].actor, s.timeout, connect_next_atom_v, std::uint64_t{1}, links)
          .receive([] {}, [&](caf::error& e) { problem = "node '" + st.members[m].node + "': " + actors::error_text(e); });
      if (!problem.empty()) throw std::runtime_error(problem);
    }
  }
  for (const auto& m : s.stages.front().members) s.first.push_back(s.plane->connect(m.data.host, m.data.port, t.connect_timeout));
}

pipeline_engine::~pipeline_engine() {
  for (const auto* m : s_->all_members())
    if (m->actor) caf::anon_send_exit(m->actor, caf::exit_reason::user_shutdown);
}

std::vector<double> pipeline_engine::accumulate(const std::vector<compute::token_batch>& micro_batches) {
  return s_->run(micro_batches, messages::pass_kind::training);
}

std::vector<double> pipeline_engine::evaluate(const std::vector<compute::token_batch>& batches) {
  return s_->run(batches, messages::pass_kind::evaluation);
}

double pipeline_engine::squared_gradient_norm() {
  // Every member is asked before any answer is awaited: groups and the tied
  // embedding's holders add up their gradients in the middle of the request.
  auto& me = *s_->self;
  const auto members = s_->all_members();
  using handle = decltype(me->request(members.front()->actor, s_->timeout, gradient_norm_atom_v));
  std::vector<handle> pending;
  for (const auto* m : members) pending.push_back(me->request(m->actor, s_->timeout, gradient_norm_atom_v));
  std::vector<double> parts;
  std::string problem;
  for (std::size_t i = 0; i < pending.size(); ++i)
    pending[i].receive([&](double part) { parts.push_back(part); },
                       [&](caf::error& e) {
                         if (problem.empty()) problem = "node '" + members[i]->node + "': " + actors::error_text(e);
                       });
  if (!problem.empty()) throw std::runtime_error("the gradient norm: " + problem);
  double sum = 0;
  for (double p : parts) sum += p;  // in pipeline order, as the whole model's parameters are
  return sum;
}

void pipeline_engine::step(double learning_rate, double gradient_scale) {
  s_->ask_each<std::int64_t>(s_->all_members(), "the optimizer step", optimizer_step_atom_v, learning_rate, gradient_scale);
}

void pipeline_engine::save(const fs::path& dir) {
  const auto n = static_cast<std::int32_t>(s_->stages.size());
  std::map<std::string, std::string> weight_map;
  std::uint64_t total = 0;
  std::int32_t k = 1;
  for (const auto& st : s_->stages) {  // a group's members are replicas: its first writes
    const auto& leader = st.members.front();
    checkpoint_part part;
    std::string problem;
    (*s_->self)->request(leader.actor, s_->timeout, save_atom_v, fs::absolute(dir).string(), k++, n)
        .receive([&](checkpoint_part& p) { part = std::move(p); },
                 [&](caf::error& e) { problem = "node '" + leader.node + "': " + actors::error_text(e); });
    if (!problem.empty()) throw std::runtime_error(problem);
    for (const auto& name : part.tensors) weight_map[name] = part.file;
    total += part.bytes;
  }
  auto trained = s_->config;
  trained.storage = element_type::f32;
  compute::finish_model_dir(dir, trained, weight_map, total);
}

void pipeline_engine::restore(const fs::path& dir) {
  s_->ask_each<std::int64_t>(s_->all_members(), "restoring the optimizer", restore_atom_v, fs::absolute(dir).string());
}

std::string pipeline_engine::describe() const {
  std::string out = std::to_string(s_->stages.size()) + " pipeline stage(s):";
  for (const auto& st : s_->stages) {
    std::string who;
    for (const auto& m : st.members)
      who += (who.empty() ? "" : "+") + m.node + (st.members.size() > 1 ? "(" + std::to_string(m.share) + ")" : "");
    out += " " + who + " [" + std::to_string(st.first_layer) + ", " + std::to_string(st.last_layer) + ")";
  }
  return out;
}

}  // namespace orrery::deploy
