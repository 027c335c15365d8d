#pragma once
// `orrery serve`: the OpenAI HTTP API (cpp-httplib) in front of a pipeline
// client's driver, on one machine or over a cluster. Each request becomes a
// generation the driver runs beside every other one in flight: the stages
// batch the decode steps of the requests that meet there (continuous
// batching), a request joins at its next step and leaves when it ends, and a
// streaming client that goes away has its request cancelled on every stage.
// A node lost while serving is recovered by the driver: the client sees a
// pause, not an error.

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

namespace httplib {
class Server;
}

namespace orrery::deploy {

class pipeline_client;
class serving_metrics;
struct served_model;

struct serve_options {
  std::string host = "127.0.0.1";
  int port = 8080;  ///< 0: any free port
  /// Clients must send `Authorization: Bearer KEY` to /v1/...; empty: open.
  std::string api_key;
  /// The model's id in /v1/models and requests; empty: the model directory's name.
  std::string model_name;
  /// Requests served at once (each holds an HTTP worker while it streams).
  int http_threads = 64;
  /// Guesses per trip through the pipeline (prompt lookup; the text is the
  /// same). 0: none, which keeps every decode step one token and batchable.
  int speculate = 0;
};

class openai_server {
 public:
  /// Reads the served model's tokenizer and chat template from the client's
  /// model directory; throws naming the file that is wrong.
  openai_server(pipeline_client& client, serve_options options);
  ~openai_server();

  /// Binds the address; throws std::runtime_error naming it when it cannot.
  /// Returns the port (the one chosen, for port 0).
  int bind();
  /// Answers requests until stop(); bind() first.
  void run();
  void stop();

  /// The model id and the chat template in use, for the start-up line.
  std::string description() const;

 private:
  struct state;
  std::unique_ptr<state> state_;
};

}  // namespace orrery::deploy
