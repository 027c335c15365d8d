// The driver's layout control and recovery (actors/driver_state.hpp): which
// node runs which layers, loading and wiring a layout under a new deployment
// number, and moving layers when a node dies or returns.

#include <algorithm>
#include <functional>

#include "actors/driver_state.hpp"
#include "actors/error_text.hpp"
#include "actors/supervisor.hpp"
#include "base/element_type.hpp"

namespace orrery::actors::driver_detail {

namespace {

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

}  // namespace

planning::cluster_state cluster_state_of(driver_ptr self) {
  const auto& s = self->state;
  planning::cluster_state state;
  // Layer bytes are counted in the first node's dtype; a node of another
  // dtype stores each of those bytes at the ratio of the element sizes.
  auto size_of = [](const std::string& dtype) {
    return static_cast<double>(element_size(element_type_from_name(dtype).value_or(element_type::f32)));
  };
  const double source_size = size_of(s.nodes.front().dtype);
  for (const auto& n : s.nodes) {
    state.alive.push_back(n.alive);
    state.memory_bytes.push_back(n.memory_bytes);
    state.state_scale.push_back(size_of(n.dtype) / source_size);
  }
  for (int layer = 0; layer < s.model.num_layers; ++layer)
    state.layer_bytes.push_back(static_cast<std::uint64_t>(static_cast<double>(s.model.parameter_count(layer, layer + 1)) * source_size));
  return state;
}

std::vector<std::vector<std::size_t>> positions_of(driver_ptr self, const std::vector<planning::stage>& layout) {
  const auto& nodes = self->state.nodes;
  std::vector<std::vector<std::size_t>> positions;
  for (std::size_t i = 0; i < layout.size(); ++i) {
    const auto& group = nodes[layout[i].device].spec.group;
    const bool joins = !positions.empty() && !group.empty() && layout[i - 1].begin == layout[i].begin &&
                       layout[i - 1].end == layout[i].end && nodes[layout[i - 1].device].spec.group == group;
    if (joins)
      positions.back().push_back(i);
    else
      positions.push_back({i});
  }
  return positions;
}

namespace {

// Whether the node of entry `i` of `layout` is alive.
std::function<bool(std::size_t)> alive_in(driver_ptr self, const std::vector<planning::stage>& layout) {
  return [self, &layout](std::size_t i) { return self->state.nodes[layout[i].device].alive; };
}

// What the migration planner sees of `layout`: one stage per pipeline
// position. A group stands in as its leader; a group that lost a member as
// its first member alive, which takes the group's layers whole.
std::vector<planning::stage> collapsed(driver_ptr self, const std::vector<planning::stage>& layout) {
  const auto alive = alive_in(self, layout);
  std::vector<planning::stage> stages;
  for (const auto& members : positions_of(self, layout)) {
    auto first_alive = std::find_if(members.begin(), members.end(), alive);
    const bool whole = std::all_of(members.begin(), members.end(), alive);
    stages.push_back(layout[whole || first_alive == members.end() ? members.front() : *first_alive]);
  }
  return stages;
}

// `planned` with each stage that is an intact group's stand-in (its leader,
// its layers unchanged) given back all of the group's members.
std::vector<planning::stage> expanded(driver_ptr self, const std::vector<planning::stage>& layout,
                                      const std::vector<planning::stage>& planned) {
  const auto alive = alive_in(self, layout);
  std::vector<planning::stage> out;
  const auto positions = positions_of(self, layout);
  for (const auto& stage : planned) {
    auto group = std::find_if(positions.begin(), positions.end(), [&](const auto& members) {
      return members.size() > 1 && layout[members.front()] == stage && std::all_of(members.begin(), members.end(), alive);
    });
    if (group == positions.end()) {
      out.push_back(stage);
      continue;
    }
    for (std::size_t i : *group) out.push_back(layout[i]);
  }
  return out;
}

// plan_after_loss over pipeline positions: groups that lost a member become
// stages of one, intact groups stay.
planning::migration migrate(driver_ptr self, const std::vector<planning::stage>& layout) {
  auto plan = planning::plan_after_loss(collapsed(self, layout), cluster_state_of(self));
  plan.stages = expanded(self, layout, plan.stages);
  return plan;
}

}  // namespace

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
// `d`, a group's leader to every member of the next stage and each member
// to the next in its ring, then points the driver's own links at the first
// stage's members.
void wire(driver_ptr self, std::uint64_t d, std::vector<planning::stage> target, std::vector<stage_ready> ready,
          layout_done done) {
  const auto timeout = self->state.config.request_timeout;
  // A stage connects to its next hop within the connect timeout: a frozen
  // neighbour must not hold the stage (and the next recovery) for long.
  const auto connect_ms = static_cast<std::int64_t>(self->state.config.connect_timeout.count());
  const auto n = ready.size();
  const auto positions = positions_of(self, target);
  auto hop_to = [&](std::size_t i) { return next_hop{ready[i].data_host, ready[i].data_port, ready[i].stage_index}; };
  auto wired = std::make_shared<std::size_t>(0);
  for (std::size_t p = 0; p < positions.size(); ++p) {
    const auto& members = positions[p];
    std::vector<next_hop> hops;
    if (p + 1 == positions.size())
      hops.push_back({self->state.config.advertise_host, self->state.plane->port(), 0});
    else
      for (std::size_t i : positions[p + 1]) hops.push_back(hop_to(i));
    for (std::size_t m = 0; m < members.size(); ++m) {
      const std::size_t k = members[m];
      const next_hop ring = members.size() > 1 ? hop_to(members[(m + 1) % members.size()]) : next_hop{};
      self->request(caf::actor_cast<stage_actor>(ready[k].stage), timeout, connect_next_atom_v, d,
                    m == 0 ? hops : std::vector<next_hop>{}, ring, caf::actor_cast<caf::actor>(self), connect_ms)
          .then(
              [self, d, wired, n, target, ready, done, first = positions.front()]() {
                auto& s = self->state;
                if (s.deployment != d || ++*wired < n) return;
                std::vector<std::shared_ptr<messages::link>> links;
                try {
                  for (std::size_t i : first)
                    links.push_back(s.plane->connect(ready[i].data_host, ready[i].data_port, s.config.connect_timeout));
                } catch (const std::exception& e) {
                  return done(self, {},
                              make_error(errc::unreachable, std::string("cannot reach the first stage's data plane: ") + e.what()));
                }
                s.first_links = std::move(links);
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
  // A group's members share its leader's stage id: frames to the stage reach
  // every member, and the ring's pieces the same group on each.
  std::vector<stage_assignment> assignments(n);
  for (const auto& members : positions_of(self, target)) {
    std::vector<std::string> names;
    std::vector<std::int32_t> shares;
    if (members.size() > 1)
      for (std::size_t i : members) {
        names.push_back(s.nodes[target[i].device].spec.node_name);
        shares.push_back(s.nodes[target[i].device].spec.slice.columns());
      }
    for (std::size_t m = 0; m < members.size(); ++m) {
      const std::size_t i = members[m];
      const auto& node = s.nodes[target[i].device].spec;
      auto& a = assignments[i];
      a.session = s.session;
      a.deployment = d;
      a.stage = static_cast<std::uint16_t>(target[members.front()].device);
      a.first_layer = static_cast<std::int32_t>(target[i].begin);
      a.last_layer = static_cast<std::int32_t>(target[i].end);
      a.model_dir = s.config.model.string();
      a.model_files = s.model_files;
      a.threads = node.threads;
      a.group = names;
      a.rank = static_cast<std::int32_t>(m);
      a.slice = node.slice;
      a.shares = shares;
      a.collectives = s.config.collectives;
      a.collective_deadline_ms = s.config.request_timeout.count();
    }
  }
  for (std::size_t i = 0; i < n; ++i) {
    const auto& node = s.nodes[target[i].device].spec;
    const auto& assignment = assignments[i];
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
  auto plan = migrate(self, placed_layout(self));
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
    return promise.deliver(make_error(errc::unreachable, "no node of the placement is there"));
  std::vector<planning::stage> layout;
  try {
    layout = first_layout(self);
  } catch (const planning::infeasible_error& e) {
    return promise.deliver(
        make_error(errc::no_capacity, "the nodes there (" + node_names(self, true) + ") cannot hold the model: " + e.what()));
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
    if (r.outline.expanding) continue;  // its points replay from their whole sequences
    r.replayed_by = static_cast<int>(event_index);
    send_sequence(self, id);
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
    plan = migrate(self, s.layout);
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

}  // namespace orrery::actors::driver_detail
