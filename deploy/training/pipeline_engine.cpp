#include "deploy/training/pipeline_engine.hpp"

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <stdexcept>
#include <thread>

#include "actors/error_text.hpp"
#include "actors/gather.hpp"
#include "actors/interfaces.hpp"
#include "actors/model_identity.hpp"
#include "actors/router.hpp"
#include "actors/tensor_frame.hpp"
#include "actors/training_stage.hpp"
#include "compute/model_writer.hpp"
#include "compute/training/pass.hpp"
#include "deploy/cluster/cluster.hpp"
#include "messages/data_plane.hpp"
#include "planning/migration.hpp"

namespace orrery::deploy {

namespace fs = std::filesystem;

namespace {

/// How long the client waits for any answer from the pipeline (a
/// micro-batch's loss or completion, a step) before it gives up.
std::chrono::milliseconds answer_timeout(const topology& t) {
  return std::max<std::chrono::milliseconds>(t.request_timeout, std::chrono::minutes(2));
}

/// How long a failed link waits for the verdict that names the node behind it.
constexpr std::chrono::seconds verdict_wait{5};

std::uint64_t fresh_session() {
  std::random_device entropy;
  std::uint64_t id = 0;
  while (id == 0) id = (std::uint64_t{entropy()} << 32) | entropy();
  return id;
}

}  // namespace

struct pipeline_engine::state {
  struct member {
    std::size_t node = 0;  // index into nodes
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
  training_settings settings;
  actor_config caf_config;
  std::unique_ptr<caf::actor_system> system;
  std::unique_ptr<caf::scoped_actor> self;
  /// Asks the members (and loads the nodes: they keep a session while the
  /// actor that loaded it lives).
  std::unique_ptr<actors::gatherer> asker;
  /// Every node of the topology as the client reached it, and which are alive.
  std::vector<actors::placement_stage> nodes;
  std::vector<bool> alive;
  std::shared_ptr<messages::data_plane> plane;
  std::vector<std::shared_ptr<messages::link>> first;  // to the first stage's members
  /// The layout: its stages' members (their actors once deployed) and layers.
  std::vector<stage> stages;
  std::size_t window = 1;  // micro-batches in flight at most: one per member of the widest stage, per stage
  std::uint64_t session = 0;
  std::uint64_t next_request = 1;
  std::chrono::milliseconds timeout;
  /// The model the run started from: a recovered stage's shapes (its
  /// weights then come from the backup).
  fs::path start_model;
  /// The run's backups' key on every node, the same across recoveries.
  std::uint64_t run_id = fresh_session();
  /// The newest backup every holder has whole: per stage of the layout it
  /// was made in, its parameters' names and the nodes that hold them.
  struct backup_part {
    std::vector<std::string> names;
    std::vector<std::size_t> nodes;
  };
  std::int64_t backup_round = -1;  // none yet
  std::vector<backup_part> backup_parts;

  explicit state(const topology& topo)
      : t(topo), caf_config(topo.heartbeat_interval), system(std::make_unique<caf::actor_system>(caf_config)),
        self(std::make_unique<caf::scoped_actor>(*system)), asker(std::make_unique<actors::gatherer>(*system)),
        timeout(answer_timeout(topo)) {}

  ~state() {
    stop_stages();
    if (backup_round >= 0) forget_backups();
    plane.reset();  // its io thread ends before the actor system does
    asker.reset();
    self.reset();
  }

  const std::string& name_of(const member& m) const { return nodes[m.node].node_name; }

  std::vector<const member*> all_members() const {
    std::vector<const member*> out;
    for (const auto& st : stages)
      for (const auto& m : st.members) out.push_back(&m);
    return out;
  }

  const member* member_of(const caf::actor_addr& a) const {
    for (const auto* m : all_members())
      if (m->actor.address() == a) return m;
    return nullptr;
  }

  void stop_stages() {
    for (const auto* m : all_members())
      if (m->actor) {
        (*self)->demonitor(m->actor.address());
        caf::anon_send_exit(m->actor, caf::exit_reason::user_shutdown);
      }
    first.clear();
  }

  [[noreturn]] void lost(const std::string& node, const std::string& why) {
    throw training_node_lost(node, "node '" + node + "' was lost: " + why);
  }

  // A request to `node` failed with `e`: the node is lost when the actor is
  // gone, otherwise the error stands as it is.
  [[noreturn]] void failed(const std::string& node, const char* what, const caf::error& e) {
    if (e == caf::sec::request_receiver_down || e == caf::exit_reason::remote_link_unreachable)
      lost(node, std::string(what) + ": " + actors::error_text(e));
    throw std::runtime_error(std::string(what) + " failed on node '" + node + "': " + actors::error_text(e));
  }

  // Waits briefly for the verdict behind `problem`: the down message of the
  // member whose node went, if one comes (then that node is lost).
  void await_verdict(const std::string& problem) {
    (*self)->receive([&](caf::down_msg& m) {
                       if (const auto* gone = member_of(m.source)) lost(name_of(*gone), actors::error_text(m.reason) + " (" + problem + ")");
                     },
                     caf::after(verdict_wait) >> [] {});
  }

  [[noreturn]] void link_failed(const std::string& problem) {
    await_verdict(problem);
    throw std::runtime_error(problem);
  }

  // Loads and wires every stage of `stages` from the model directory `model`,
  // in a session of their own.
  void deploy(const fs::path& model) {
    session = fresh_session();
    const auto files = actors::identify_model(model);
    auto& me = *self;
    window = 1;
    std::vector<member*> members;
    std::vector<std::uint16_t> stage_of;
    std::vector<caf::message> requests;
    for (std::size_t i = 0; i < stages.size(); ++i) {
      auto& st = stages[i];
      std::vector<std::string> names;
      for (const auto& m : st.members) names.push_back(name_of(m));
      for (std::size_t r = 0; r < st.members.size(); ++r) {
        const auto& n = nodes[st.members[r].node];
        stage_assignment a;
        a.session = session;
        a.deployment = 1;
        a.stage = static_cast<std::uint16_t>(i);
        a.first_layer = st.first_layer;
        a.last_layer = st.last_layer;
        a.model_dir = fs::absolute(model).string();
        a.model_files = files;
        a.threads = n.threads;
        if (st.members.size() > 1) {
          a.group = names;
          a.rank = static_cast<std::int32_t>(r);
        }
        // A member waits this long inside an all-reduce for a peer that died.
        a.collective_deadline_ms = t.request_timeout.count();
        a.training = settings;
        a.training.enabled = true;
        members.push_back(&st.members[r]);
        stage_of.push_back(a.stage);
        requests.push_back(caf::make_message(load_stage_atom_v, std::move(a)));
      }
      window = std::max(window, st.members.size());
    }
    // Each node loads its stage while the others load theirs.
    const auto ready = ask_all<stage_ready>({members.begin(), members.end()}, "loading its stage", requests,
                                            [&](const member& m) { return caf::actor_cast<caf::actor>(nodes[m.node].node); });
    for (std::size_t k = 0; k < members.size(); ++k) {
      auto& m = *members[k];
      m.actor = caf::actor_cast<actors::training_stage_actor>(ready[k].stage);
      m.data = next_hop{ready[k].data_host, ready[k].data_port, stage_of[k]};
      me->monitor(m.actor);
    }
    window *= stages.size();
    wire();
    for (const auto& m : stages.front().members)
      first.push_back(plane->connect(m.data.host, m.data.port, t.connect_timeout));
  }

  void wire() {
    auto& me = *self;
    const std::size_t n = stages.size();
    auto hops = [&](const stage& st) {
      std::vector<next_hop> out;
      for (const auto& m : st.members) out.push_back(m.data);
      return out;
    };
    // Every holder of a tied embedding: the first stage's members, then the last's.
    std::vector<const member*> holders;
    if (config.tie_word_embeddings && n > 1)
      for (const auto* st : {&stages.front(), &stages.back()})
        for (const auto& m : st->members) holders.push_back(&m);
    std::vector<std::string> holder_names;
    for (const auto* h : holders) holder_names.push_back(name_of(*h));
    std::vector<const member*> members;
    std::vector<caf::message> requests;
    for (std::size_t i = 0; i < n; ++i) {
      const auto& st = stages[i];
      for (std::size_t r = 0; r < st.members.size(); ++r) {
        training_links links;
        if (st.members.size() > 1) links.shares = st.shares();
        if (i + 1 < n) links.next = hops(stages[i + 1]), links.next_shares = stages[i + 1].shares();
        if (i > 0) links.previous = hops(stages[i - 1]), links.previous_shares = stages[i - 1].shares();
        if (st.members.size() > 1) links.ring = st.members[(r + 1) % st.members.size()].data;
        const auto held = std::find(holders.begin(), holders.end(), &st.members[r]);
        if (held != holders.end()) {
          const auto rank = static_cast<std::size_t>(held - holders.begin());
          links.tied = holders[(rank + 1) % holders.size()]->data;
          links.tied_members = holder_names;
          links.tied_rank = static_cast<std::int32_t>(rank);
        }
        links.client = caf::actor_cast<caf::actor>(me);
        links.timeout_ms = t.connect_timeout.count();
        members.push_back(&st.members[r]);
        requests.push_back(caf::make_message(connect_next_atom_v, std::uint64_t{1}, std::move(links)));
      }
    }
    ask_all<void>(members, "wiring its stage", requests);
  }

  // Sends every batch through the pipeline as a `pass`, at most `window`
  // in flight, and returns their summed losses in order.
  std::vector<double> run(const std::vector<compute::token_batch>& batches, messages::pass_kind pass) {
    const bool training = pass == messages::pass_kind::training;
    std::vector<double> losses(batches.size(), NAN);
    // Answers still due: a loss from each member of the last stage that runs
    // some of a batch's rows, and for training a completion from each of the
    // first stage's.
    std::vector<std::size_t> due(batches.size(), 0);
    std::map<std::uint64_t, std::size_t> index;
    std::size_t sent = 0, finished = 0, in_flight = 0;
    std::string problem;
    const member* gone = nullptr;
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
      route.micro_batch_sequences = route.sequences;
      const auto rows = actors::training_rows(route.step, route.sequences, stages.front().shares());
      auto members_with = [](const std::vector<std::uint32_t>& counts) {
        return static_cast<std::size_t>(std::count_if(counts.begin(), counts.end(), [](auto c) { return c > 0; }));
      };
      due[i] = members_with(actors::training_rows(route.step, route.sequences, stages.back().shares())) +
               (training ? members_with(rows) : 0);
      losses[i] = 0;
      // Each member of the first stage gets its rows of the batch.
      const std::int64_t length = batches[i].length;
      std::uint32_t first_row = 0;
      for (std::size_t m = 0; m < rows.size(); first_row += rows[m], ++m) {
        if (rows[m] == 0) continue;
        route.first_row = first_row;
        route.sequences = rows[m];
        d.route = route;
        auto& link = *first.at(m);
        auto piece = [&](const at::Tensor& t) { return t.narrow(0, first_row * length, rows[m] * length); };
        actors::send_tensors(link, d,
                             {{messages::tensor_role::tokens, piece(batches[i].inputs)},
                              {messages::tensor_role::targets, piece(batches[i].targets)}},
                             [client, id, peer = link.peer()](const std::string& error) {
                               if (!error.empty())
                                 caf::anon_send(client, request_failure{id, "the link to the first stage at " + peer +
                                                                                " failed: " + error, true});
                             });
      }
    };
    auto answered = [&](std::uint64_t request) {
      auto found = index.find(request);
      if (found == index.end()) return;  // of an earlier run that failed
      if (--due[found->second] == 0) {
        ++finished;
        --in_flight;
      }
    };
    bool transient = false;
    while (finished < batches.size() && problem.empty() && !gone) {
      for (; sent < batches.size() && in_flight < window; ++sent, ++in_flight) send(sent);
      me->receive(
          [&](micro_batch_loss& l) {
            // A member's rows' loss: the batch's is their sum.
            if (auto found = index.find(l.request); found != index.end()) losses[found->second] += l.loss_sum;
            answered(l.request);
          },
          [&](micro_batch_done& d) { answered(d.request); },
          [&](request_failure& f) {
            if (index.count(f.request)) problem = f.problem, transient = f.transient;
          },
          [&](caf::down_msg& m) {  // of a member of this layout (an earlier one's may still be queued)
            if ((gone = member_of(m.source))) problem = actors::error_text(m.reason);
          },
          caf::after(timeout) >> [&] {
            problem = "no answer from the pipeline for " + std::to_string(timeout.count() / 1000) + " s with " +
                      std::to_string(in_flight) + " micro-batch(es) in flight";
          });
    }
    if (gone) lost(name_of(*gone), problem);
    if (transient) link_failed(problem);
    if (!problem.empty()) throw std::runtime_error(problem);
    return losses;
  }

  // Sends `requests[i]` to `to[i]` (on node `who[i]`) for all i at once and
  // returns their answers in order: they work side by side (loading,
  // optimizer steps, checkpoint parts take as long as the slowest, not the
  // sum), and a node lost meanwhile ends the wait at once.
  template <class Answer>
  std::vector<typename actors::gathered<Answer>::value> ask_actors(const std::vector<caf::actor>& to,
                                                                   const std::vector<std::string>& who, const char* what,
                                                                   const std::vector<caf::message>& requests,
                                                                   std::chrono::milliseconds deadline = {}) {
    auto result = asker->ask<Answer>(*self, to, requests, deadline.count() > 0 ? deadline : timeout);
    if (result.failed) {
      const auto& e = result.error;
      // An error may echo another member's death (a ring peer that went
      // while they added up gradients): wait briefly for that verdict.
      if (e != caf::sec::request_receiver_down && e != caf::exit_reason::remote_link_unreachable)
        await_verdict(std::string(what) + " failed on node '" + who[*result.failed] + "': " + actors::error_text(e));
      failed(who[*result.failed], what, e);
    }
    if (result.error) throw std::runtime_error(std::string(what) + ": " + actors::error_text(result.error));
    return std::move(result.answers);
  }

  // ask_actors to every one of `members` (the actor `target` names of each).
  template <class Answer>
  std::vector<typename actors::gathered<Answer>::value> ask_all(
      const std::vector<const member*>& members, const char* what, const std::vector<caf::message>& requests,
      const std::function<caf::actor(const member&)>& target = [](const member& m) {
        return caf::actor_cast<caf::actor>(m.actor);
      },
      std::chrono::milliseconds deadline = {}) {
    std::vector<caf::actor> to;
    std::vector<std::string> who;
    for (const auto* m : members) to.push_back(target(*m)), who.push_back(name_of(*m));
    return ask_actors<Answer>(to, who, what, requests, deadline);
  }

  // How long moving the model's training state (weights and two moments,
  // float32) may take on top of the usual wait: at 1 MB/s, a slow link's
  // worst, so that a backup or a restore is never cut off while it moves.
  std::chrono::milliseconds state_timeout() const {
    const double bytes = 12.0 * static_cast<double>(config.parameter_count());
    return timeout + std::chrono::milliseconds(static_cast<std::int64_t>(bytes / 1e6 * 1000));
  }

  // Drops the run's backups on every live node (they are of steps it goes
  // back past, or the run ends).
  void forget_backups() {
    for (std::size_t i = 0; i < nodes.size(); ++i)
      if (alive[i]) caf::anon_send(caf::actor_cast<caf::actor>(nodes[i].node), forget_backup_atom_v, run_id);
    backup_round = -1;
    backup_parts.clear();
  }

  // Asks every one of `members` the same.
  template <class Answer>
  std::vector<typename actors::gathered<Answer>::value> ask_each(const std::vector<const member*>& members,
                                                                 const char* what, const caf::message& request) {
    return ask_all<Answer>(members, what, std::vector<caf::message>(members.size(), request));
  }
};

pipeline_engine::pipeline_engine(const topology& t, const fs::path& model, const compute::llama_config& config,
                                 const training_settings& settings)
    : s_(std::make_unique<state>(t)) {
  auto& s = *s_;
  s.config = config;
  s.settings = settings;
  auto connected = connect_nodes(*s.system, t);
  connected.require_all();
  s.nodes = std::move(connected.stages);
  s.alive.assign(s.nodes.size(), true);
  // A topology's group is one data-parallel stage here: its members are
  // consecutive, with the same layers; their speeds (as MLP columns) are
  // their shares.
  for (std::size_t i = 0; i < s.nodes.size(); ++i) {
    const auto& n = s.nodes[i];
    if (n.first_layer >= n.last_layer) continue;  // a standby node
    const bool joins = !s.stages.empty() && !n.group.empty() && s.nodes[s.stages.back().members.front().node].group == n.group;
    if (!joins) s.stages.push_back({{}, n.first_layer, n.last_layer});
    s.stages.back().members.push_back({i, {}, n.group.empty() ? 1 : std::max(1, n.slice.columns()), {}});
  }
  if (s.stages.empty()) throw std::runtime_error("the topology's placement gives no node any layer");
  messages::data_plane_options options;
  options.bind_address = t.testbed ? t.testbed->client : "127.0.0.1";
  s.plane = std::make_shared<messages::data_plane>(options, actors::tensor_allocator(),
                                                   actors::router::handler_of(std::make_shared<actors::router>("trainer")),
                                                   [](const std::string&, const std::string&) {});
  s.start_model = model;
  s.deploy(model);
}

pipeline_engine::~pipeline_engine() = default;

std::vector<double> pipeline_engine::accumulate(const std::vector<compute::token_batch>& micro_batches) {
  return s_->run(micro_batches, messages::pass_kind::training);
}

std::vector<double> pipeline_engine::evaluate(const std::vector<compute::token_batch>& batches) {
  return s_->run(batches, messages::pass_kind::evaluation);
}

double pipeline_engine::squared_gradient_norm() {
  // Every member is asked at once: groups and the tied embedding's holders
  // add up their gradients in the middle of the request (so a member that
  // goes down must end the wait at once: the others wait for it there).
  double sum = 0;
  for (double part : s_->ask_each<double>(s_->all_members(), "the gradient norm", caf::make_message(gradient_norm_atom_v)))
    sum += part;
  return sum;
}

void pipeline_engine::step(double learning_rate, double gradient_scale) {
  s_->ask_each<std::int64_t>(s_->all_members(), "the optimizer step",
                             caf::make_message(optimizer_step_atom_v, learning_rate, gradient_scale));
}

void pipeline_engine::save(const fs::path& dir) {
  const auto n = static_cast<std::int32_t>(s_->stages.size());
  std::vector<const state::member*> leaders;  // a group's members are replicas: its first writes
  for (const auto& st : s_->stages) leaders.push_back(&st.members.front());
  std::map<std::string, std::string> weight_map;
  std::uint64_t total = 0;
  const auto where = fs::absolute(dir).string();
  std::vector<caf::message> requests;
  for (std::size_t i = 0; i < leaders.size(); ++i)
    requests.push_back(caf::make_message(save_atom_v, where, static_cast<std::int32_t>(i + 1), n));
  const auto parts = s_->ask_all<checkpoint_part>(leaders, "writing the checkpoint", requests);
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const auto& part = parts[i];
    // Each node writes where the client names the directory: that is one
    // directory only on one machine or on storage every machine shares. A
    // part the client cannot see went to another machine's disk.
    if (!fs::exists(dir / part.file))
      throw std::runtime_error("node '" + s_->name_of(*leaders[i]) + "' wrote its part of the checkpoint to " + where +
                               "/" + part.file + " on its own machine, which this client does not see: with nodes on " +
                               "several machines, --out must be a directory they all share at the same path");
    for (const auto& name : part.tensors) weight_map[name] = part.file;
    total += part.bytes;
  }
  auto trained = s_->config;
  trained.storage = element_type::f32;
  compute::finish_model_dir(dir, trained, weight_map, total, s_->start_model);
}

void pipeline_engine::restore(const fs::path& dir) {
  s_->ask_each<std::int64_t>(s_->all_members(), "restoring the optimizer",
                             caf::make_message(restore_atom_v, fs::absolute(dir).string()));
}

std::uint64_t pipeline_engine::backup() {
  auto& s = *s_;
  const std::size_t n = s.stages.size();
  // Each stage's first member backs up (a group's members are replicas) to
  // the next stage's first member's node, the last stage's to the first's; a
  // stage alone to its group's second member; one node alone keeps its own.
  std::vector<const state::member*> leaders, holders;
  std::vector<caf::message> requests;
  for (std::size_t i = 0; i < n; ++i) {
    const auto& members = s.stages[i].members;
    const state::member* holder = n > 1 ? &s.stages[(i + 1) % n].members.front()
                                  : members.size() > 1 ? &members[1] : nullptr;
    leaders.push_back(&members.front());
    holders.push_back(holder);
    requests.push_back(caf::make_message(backup_atom_v, s.run_id, holder ? holder->data.host : std::string(),
                                         holder ? holder->data.port : std::uint16_t{0}));
  }
  const auto made = s.ask_all<backup_made>(leaders, "backing up its weights", requests,
                                           [](const state::member& m) { return caf::actor_cast<caf::actor>(m.actor); },
                                           s.state_timeout());
  std::uint64_t bytes = 0;
  std::vector<state::backup_part> parts;
  for (std::size_t i = 0; i < n; ++i) {
    if (made[i].round != made.front().round)
      throw std::runtime_error("node '" + s.name_of(*leaders[i]) + "' backed up round " + std::to_string(made[i].round) +
                               ", node '" + s.name_of(*leaders.front()) + "' round " + std::to_string(made.front().round));
    bytes += made[i].bytes;
    parts.push_back({made[i].names, {leaders[i]->node}});
    if (holders[i]) parts.back().nodes.push_back(holders[i]->node);
  }
  // The sends are written; the round counts once every holder has stored
  // all of them (they arrive on its io thread, after the answer may have).
  const auto deadline = std::chrono::steady_clock::now() + s.state_timeout();
  for (std::size_t i = 0; i < n; ++i) {
    if (!holders[i]) continue;
    const auto& holder = *holders[i];
    const auto node = caf::actor_cast<caf::actor>(s.nodes[holder.node].node);
    for (;;) {
      const auto missing = s.ask_actors<std::vector<std::string>>(
          {node}, {s.name_of(holder)}, "holding a backup",
          {caf::make_message(backup_missing_atom_v, s.run_id, made[i].round, made[i].names)})[0];
      if (missing.empty()) break;
      if (std::chrono::steady_clock::now() > deadline)
        throw std::runtime_error("node '" + s.name_of(holder) + "' holds " +
                                 std::to_string(made[i].names.size() - missing.size()) + " of the " +
                                 std::to_string(made[i].names.size()) + " parameters node '" + s.name_of(*leaders[i]) +
                                 "' backed up to it (missing '" + missing.front() + "')");
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  s.backup_round = made.front().round;
  s.backup_parts = std::move(parts);
  return bytes;
}

resume_point pipeline_engine::recover(const std::string& lost_node, const fs::path& checkpoint,
                                      std::int64_t checkpoint_step) {
  auto& s = *s_;
  s.stop_stages();
  for (std::size_t i = 0; i < s.nodes.size(); ++i)
    if (s.nodes[i].node_name == lost_node) s.alive[i] = false;
  // A group goes on with its surviving replicas; a stage left with none
  // gives its layers to its neighbours.
  planning::cluster_state cluster;
  std::vector<planning::stage> current;
  for (std::size_t i = 0; i < s.stages.size(); ++i) {
    auto& members = s.stages[i].members;
    members.erase(std::remove_if(members.begin(), members.end(), [&](const auto& m) { return !s.alive[m.node]; }),
                  members.end());
    cluster.alive.push_back(!members.empty());
    cluster.memory_bytes.push_back(0);
    current.push_back({i, static_cast<std::size_t>(s.stages[i].first_layer), static_cast<std::size_t>(s.stages[i].last_layer)});
  }
  cluster.layer_bytes.assign(static_cast<std::size_t>(s.config.num_layers), 1);
  const auto moved = planning::plan_after_loss(current, cluster);
  std::vector<state::stage> next;
  for (const auto& p : moved.stages)
    next.push_back({s.stages[p.device].members, static_cast<int>(p.begin), static_cast<int>(p.end)});
  if (next.empty()) throw std::runtime_error("no node is left to train on");
  s.stages = std::move(next);

  // Which survivors hold each backed-up parameter.
  std::map<std::string, std::vector<std::size_t>> holders;
  bool whole = s.backup_round >= 0 && s.backup_round >= checkpoint_step;
  for (const auto& part : s.backup_parts) {
    std::vector<std::size_t> alive;
    for (auto node : part.nodes)
      if (s.alive[node]) alive.push_back(node);
    whole = whole && !alive.empty();
    for (const auto& name : part.names) holders[name].insert(holders[name].end(), alive.begin(), alive.end());
  }
  auto from_checkpoint = [&] {
    // The run goes back past its backups: they are of steps it will redo.
    s.forget_backups();
    s.deploy(checkpoint);
    if (checkpoint_step > 0) restore(checkpoint);
    return resume_point{checkpoint_step, checkpoint_step > 0 ? "the checkpoint at step " + std::to_string(checkpoint_step)
                                                             : std::string("the starting model")};
  };
  if (!whole) return from_checkpoint();
  s.deploy(s.start_model);
  // Each member takes what its own node holds from there; the rest is sent
  // to it by a survivor that holds it.
  std::vector<caf::actor> senders;
  std::vector<std::string> sender_names;
  std::vector<caf::message> transfers;
  for (std::size_t i = 0; i < s.stages.size(); ++i)
    for (const auto& m : s.stages[i].members) {
      std::map<std::size_t, std::vector<std::string>> by_source;
      for (const auto& [name, nodes] : holders) {
        if (!compute::holds_parameter(s.config, s.stages[i].first_layer, s.stages[i].last_layer, name)) continue;
        if (std::find(nodes.begin(), nodes.end(), m.node) == nodes.end()) by_source[nodes.front()].push_back(name);
      }
      for (auto& [source, names] : by_source) {
        senders.push_back(caf::actor_cast<caf::actor>(s.nodes[source].node));
        sender_names.push_back(s.nodes[source].node_name);
        transfers.push_back(caf::make_message(backup_transfer{s.run_id, s.backup_round, std::move(names), m.data, s.session,
                                                              1, s.t.connect_timeout.count()}));
      }
    }
  try {
    s.ask_actors<std::uint64_t>(senders, sender_names, "sending a backup", transfers, s.state_timeout());
    const auto members = s.all_members();
    s.ask_all<std::int64_t>(members, "restoring its backup",
                            std::vector<caf::message>(members.size(), caf::make_message(restore_backup_atom_v, s.run_id,
                                                                                        s.backup_round)),
                            [](const state::member& m) { return caf::actor_cast<caf::actor>(m.actor); },
                            s.state_timeout());
  } catch (const training_node_lost&) {
    throw;
  } catch (const std::exception& e) {
    // A backup that cannot be moved is no reason to stop: the checkpoint (or
    // the start) still is one.
    std::cerr << "the in-memory backup of round " << s.backup_round << " could not be restored (" << e.what()
              << "); going back to " << (checkpoint_step > 0 ? "the checkpoint" : "the starting model") << "\n";
    s.stop_stages();
    return from_checkpoint();
  }
  return {s.backup_round, "the in-memory backup of round " + std::to_string(s.backup_round)};
}

std::string pipeline_engine::describe() const {
  std::string out = std::to_string(s_->stages.size()) + " pipeline stage(s):";
  for (const auto& st : s_->stages) {
    std::string who;
    for (const auto& m : st.members)
      who += (who.empty() ? "" : "+") + s_->name_of(m) + (st.members.size() > 1 ? "(" + std::to_string(m.share) + ")" : "");
    out += " " + who + " [" + std::to_string(st.first_layer) + ", " + std::to_string(st.last_layer) + ")";
  }
  return out;
}

}  // namespace orrery::deploy
