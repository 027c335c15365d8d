// Embedding orrery in an existing CAF service.
//
// The host application owns its actor_system_config and its own actors; one
// call, orrery::register_types(cfg), teaches its actor system orrery's
// messages. Here a "chat service" actor of the host answers (ask, prompt)
// requests by driving an orrery pipeline: two node actors in this process,
// each holding half of the model's layers, exactly as remote nodes would.
//
//   embed_in_caf_service MODEL_DIR [PROMPT]
//
// With `orrery up topology.yaml` running instead, connect to those nodes with
// middleman().remote_actor(host, port) and list them as the driver's stages.

#include <caf/all.hpp>
#include <iostream>

#include "actors/blocking_client.hpp"
#include "actors/driver.hpp"
#include "actors/node.hpp"
#include "compute/llama_config.hpp"
#include "messages/types.hpp"

namespace {

// The host's own message vocabulary: one atom, outside orrery's block.
CAF_ADD_ATOM(host, host, ask_atom, "ask")

struct host_config : caf::actor_system_config {
  host_config() {
    orrery::register_types(*this);  // the only line orrery asks of a host
  }
};

// The host's actor: collects the streamed tokens of each question and replies
// with the answer text once the driver's summary arrives.
struct chat_state {
  orrery::actors::driver_actor driver;
  std::string answer;
  caf::response_promise pending;
  static inline const char* name = "host.chat";
};

caf::behavior chat_service(caf::stateful_actor<chat_state>* self, orrery::actors::driver_actor driver) {
  self->state.driver = driver;
  return {
      [self](host::ask_atom, const std::string& prompt) {
        self->state.answer.clear();
        self->state.pending = self->make_response_promise();
        orrery::generate_request request;
        request.prompt = prompt;
        request.max_new_tokens = 16;
        request.stop_at_eos = false;
        // A dynamically typed actor talks to the typed driver with request()
        // (CAF checks the answer type); its tokens arrive as token_events first.
        self->request(self->state.driver, caf::infinite, request)
            .then([self](orrery::generation_summary& s) {
                    self->state.pending.deliver(self->state.answer, static_cast<std::int32_t>(s.tokens.size()));
                  },
                  [self](caf::error& e) { self->state.pending.deliver(e); });
        return self->state.pending;
      },
      [self](orrery::token_event& e) { self->state.answer += e.text; },
  };
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: embed_in_caf_service MODEL_DIR [PROMPT]\n";
    return 2;
  }
  const std::string model = argv[1];
  const std::string prompt = argc > 2 ? argv[2] : "Hello from the host";
  host_config cfg;
  caf::actor_system system{cfg};
  try {
    const int layers = orrery::compute::llama_config::load(model + "/config.json").num_layers;
    orrery::actors::driver_config dc;
    dc.model = model;
    std::vector<orrery::actors::node_actor> nodes;
    for (int i = 0; i < 2; ++i) {
      nodes.push_back(orrery::actors::spawn_node(system, {"host-node-" + std::to_string(i)}));
      dc.stages.push_back({"host-node-" + std::to_string(i), "", 0, nodes.back(), i * layers / 2,
                           (i + 1) * layers / 2, 1});
    }
    auto driver = orrery::actors::spawn_driver(system, dc);
    orrery::actors::deploy_blocking(system, driver, std::chrono::seconds(20));
    auto chat = system.spawn(chat_service, driver);

    caf::scoped_actor self{system};
    int status = 1;
    self->request(chat, std::chrono::seconds(20), host::ask_atom_v, prompt)
        .receive(
            [&](const std::string& answer, std::int32_t tokens) {
              std::cout << "host service got " << tokens << " tokens from the orrery pipeline: "
                        << answer.size() << " bytes\n";
              status = tokens == 16 ? 0 : 1;
            },
            [&](caf::error& e) { std::cerr << "host service failed: " << system.render(e) << "\n"; });
    caf::anon_send_exit(chat, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(driver, caf::exit_reason::user_shutdown);
    for (const auto& n : nodes) caf::anon_send_exit(n, caf::exit_reason::user_shutdown);
    return status;
  } catch (const std::exception& e) {
    std::cerr << "embed_in_caf_service: " << e.what() << "\n";
    return 1;
  }
}
