#include "deploy/serving/server.hpp"

#include <httplib.h>

#include <chrono>
#include <ctime>
#include <optional>
#include <sstream>

#include "actors/token_stream.hpp"
#include "compute/text/tokenizer.hpp"
#include "compute/text/utf8_stream.hpp"
#include "deploy/cluster/cluster.hpp"
#include "deploy/serving/metrics.hpp"
#include "deploy/serving/openai_api.hpp"
#include "messages/log.hpp"

namespace orrery::deploy {

namespace {

using clock_type = std::chrono::steady_clock;
using json = nlohmann::json;

// Bodies larger than this are refused (413) before they are read whole.
constexpr std::size_t max_body_bytes = std::size_t{8} << 20;
// How long a streaming request may go without a token before a comment line
// is written: it keeps proxies from closing the stream, and a write that
// fails is how a client that went away is noticed.
constexpr std::chrono::milliseconds keep_alive{1000};

double seconds_since(clock_type::time_point t) { return std::chrono::duration<double>(clock_type::now() - t).count(); }

int status_of(const std::optional<errc>& code) {
  if (!code) return 500;
  switch (*code) {
    case errc::invalid_request: return 400;
    case errc::no_capacity:
    case errc::not_ready:
    case errc::unreachable: return 503;
    default: return 500;
  }
}

// The routes metrics are labelled by; any other path counts as "other".
std::string route_label(const std::string& path) {
  for (const char* route : {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"})
    if (path == route) return route;
  if (path.rfind("/v1/models/", 0) == 0) return "/v1/models/{id}";
  return "other";
}

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(json_text(body), "application/json");
}

}  // namespace

struct openai_server::state {
  pipeline_client& client;
  serve_options options;
  std::unique_ptr<compute::tokenizer> tokenizer;
  served_model model;
  serving_metrics metrics;
  httplib::Server http;
  std::atomic<std::uint64_t> next_tag{1};
  std::chrono::milliseconds idle_limit;
  std::int64_t started_unix = static_cast<std::int64_t>(std::time(nullptr));

  state(pipeline_client& c, serve_options o) : client(c), options(std::move(o)) {
    const auto& dir = client.placed().model;
    tokenizer = compute::load_tokenizer(dir);
    model.id = options.model_name.empty() ? dir.filename().string() : options.model_name;
    if (model.id.empty()) model.id = dir.parent_path().filename().string();  // a path ending in '/'
    model.context = client.placed().model_config.max_position_embeddings;
    model.tokenizer = tokenizer.get();
    model.chat = chat_template::for_model(dir);
    // A recovery may take a few request timeouts (a deploy around the dead
    // node, a replay); past this silence the request is given up.
    idle_limit = client.placed().request_timeout * 4 + std::chrono::seconds(10);
  }

  void routes();
  void generation(endpoint kind, const httplib::Request& req, httplib::Response& res);
};

namespace {

// One generation read as the client sees it: text in whole UTF-8
// characters up to any stop string, the finish reason, the counts.
class generation_reader {
 public:
  generation_reader(std::shared_ptr<actors::token_stream> stream, const completion_request& request,
                    serving_metrics& metrics, std::chrono::milliseconds idle_limit)
      : stream_(std::move(stream)), stop_(request.stop), metrics_(metrics), idle_limit_(idle_limit),
        prompt_tokens_(request.prompt_tokens) {
    metrics_.started();
  }
  ~generation_reader() {
    if (!ended_) {  // the client went away (or the server stops)
      stream_->cancel();
      metrics_.cancelled();
    }
    metrics_.generated(prompt_tokens_, tokens_, seconds_since(arrived_), summary_.drafted, summary_.accepted);
    metrics_.finished();
  }

  /// The next text to show, waiting up to `wait`: none when nothing came.
  /// Throws api_error when the generation failed or went silent.
  std::optional<std::string> step(std::chrono::milliseconds wait) {
    auto event = stream_->next(wait);
    if (!event) {
      if (clock_type::now() - last_event_ > idle_limit_)
        throw api_error(504, "no token from the pipeline for " + std::to_string(idle_limit_.count()) + " ms", {}, "timeout",
                        "server_error");
      return std::nullopt;
    }
    const auto now = clock_type::now();
    last_event_ = now;
    switch (event->what) {
      case actors::stream_event::kind::token: {
        if (tokens_++ == 0)
          metrics_.first_token(std::chrono::duration<double>(now - arrived_).count());
        else
          metrics_.inter_token(std::chrono::duration<double>(now - last_token_).count());
        last_token_ = now;
        auto text = stop_.push(utf8_.push(event->token.text));
        if (stop_.stopped()) end("stop", true);  // the rest is not wanted: cancelled on every stage
        return text;
      }
      case actors::stream_event::kind::done: {
        summary_ = std::move(event->summary);
        tokens_ = summary_.tokens.size();
        auto text = stop_.push(utf8_.finish());
        if (!stop_.stopped()) text += stop_.finish();
        end(stop_.stopped() || summary_.stopped_at_eos ? "stop" : "length", false);
        return text;
      }
      case actors::stream_event::kind::failed:
        ended_ = true;
        throw api_error(status_of(event->code), event->error, {}, event->code ? to_string(*event->code) : "",
                        status_of(event->code) < 500 ? "invalid_request_error" : "server_error");
    }
    return std::nullopt;
  }

  bool ended() const { return ended_; }
  const std::string& finish_reason() const { return finish_reason_; }
  usage_counts usage() const { return {prompt_tokens_, tokens_}; }

 private:
  // `cancel`: the generation is still running (a stop string ended it).
  void end(const char* reason, bool cancel) {
    if (cancel) {
      stream_->cancel();
      metrics_.cancelled();
    }
    finish_reason_ = reason;
    ended_ = true;
  }

  std::shared_ptr<actors::token_stream> stream_;
  compute::utf8_stream utf8_;
  stop_matcher stop_;
  serving_metrics& metrics_;
  std::chrono::milliseconds idle_limit_;
  std::size_t prompt_tokens_;
  std::size_t tokens_ = 0;
  generation_summary summary_;
  bool ended_ = false;
  std::string finish_reason_;
  clock_type::time_point arrived_ = clock_type::now();
  clock_type::time_point last_event_ = arrived_;
  clock_type::time_point last_token_ = arrived_;
};

std::string sse(const json& j) { return "data: " + json_text(j) + "\n\n"; }

}  // namespace

void openai_server::state::generation(endpoint kind, const httplib::Request& req, httplib::Response& res) {
  const auto request = parse_request(kind, req.body, model);
  generate_request g;
  g.prompt = request.prompt;
  g.max_new_tokens = request.max_tokens;
  const auto& s = request.sampling;
  g.sampling = {s.temperature, s.top_k, s.top_p, s.repetition_penalty, s.seed, false};
  g.stop_at_eos = true;
  g.tag = next_tag++;
  g.max_drafts = options.speculate;
  g.overlap_windows = options.speculate > 0;
  const std::string id = (kind == endpoint::chat ? "chatcmpl-" : "cmpl-") + std::to_string(started_unix) + "-" + std::to_string(g.tag);
  const auto created = static_cast<std::int64_t>(std::time(nullptr));
  auto reader = std::make_shared<generation_reader>(actors::token_stream::start(client.system(), client.driver(), g), request,
                                                    metrics, idle_limit);
  if (!request.stream) {
    std::string text;
    while (!reader->ended())
      if (auto piece = reader->step(keep_alive)) text += *piece;
    return send_json(res, 200, completion_json(request, id, created, model.id, text, reader->finish_reason(), reader->usage()));
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream", [this, reader, request, id, created](std::size_t, httplib::DataSink& sink) mutable {
        bool first = true;
        try {
          while (!reader->ended()) {
            auto piece = reader->step(keep_alive);
            std::string out;
            if (!piece)
              out = ": waiting for the pipeline\n\n";
            else if (!piece->empty() || first)
              out = sse(chunk_json(request, id, created, model.id, *piece, "", std::exchange(first, false)));
            if (!out.empty() && !sink.write(out.data(), out.size())) return false;  // gone: the reader cancels
          }
          std::string tail = sse(chunk_json(request, id, created, model.id, "", reader->finish_reason(), first));
          if (request.stream_usage) tail += sse(usage_chunk_json(request, id, created, model.id, reader->usage()));
          tail += "data: [DONE]\n\n";
          if (!sink.write(tail.data(), tail.size())) return false;
        } catch (const api_error& e) {
          const auto out = sse(error_json(e)) + "data: [DONE]\n\n";
          if (!sink.write(out.data(), out.size())) return false;
        }
        sink.done();
        return true;
      });
}

void openai_server::state::routes() {
  http.set_payload_max_length(max_body_bytes);
  const int workers = options.http_threads;
  http.new_task_queue = [workers] { return new httplib::ThreadPool(static_cast<std::size_t>(workers)); };
  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (options.api_key.empty() || req.path.rfind("/v1/", 0) != 0) return httplib::Server::HandlerResponse::Unhandled;
    if (req.get_header_value("Authorization") == "Bearer " + options.api_key) return httplib::Server::HandlerResponse::Unhandled;
    send_json(res, 401,
              error_json(api_error(401,
                                   req.has_header("Authorization")
                                       ? "the API key in the Authorization header is not this server's"
                                       : "this server needs an API key: send 'Authorization: Bearer KEY'",
                                   {}, "invalid_api_key")));
    return httplib::Server::HandlerResponse::Handled;
  });
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    const auto message = res.status == 404   ? "no route " + req.method + " " + req.path +
                                                 " (orrery serves /v1/models, /v1/completions, /v1/chat/completions, /health, /metrics)"
                         : res.status == 413 ? "the request body is larger than " + std::to_string(max_body_bytes) + " bytes"
                                             : "HTTP status " + std::to_string(res.status);
    send_json(res, res.status, error_json(api_error(res.status, message)));
  });
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    try {
      std::rethrow_exception(ep);
    } catch (const api_error& e) {
      send_json(res, e.status, error_json(e));
    } catch (const std::exception& e) {
      send_json(res, 500, error_json(api_error(500, e.what(), {}, {}, "server_error")));
    } catch (...) {
      send_json(res, 500, error_json(api_error(500, "unknown error", {}, {}, "server_error")));
    }
  });
  http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    metrics.answered(route_label(req.path), res.status);
  });
  const auto model_json = [this] {
    return json{{"id", model.id}, {"object", "model"}, {"created", started_unix}, {"owned_by", "orrery"}};
  };
  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, {{"status", "ok"}, {"model", model.id}});
  });
  http.Get("/v1/models", [model_json](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, {{"object", "list"}, {"data", json::array({model_json()})}});
  });
  http.Get(R"(/v1/models/(.+))", [this, model_json](const httplib::Request& req, httplib::Response& res) {
    if (req.matches[1] != model.id)
      throw api_error(404, "the model '" + std::string(req.matches[1]) + "' does not exist here; this server serves '" + model.id + "'",
                      "model", "model_not_found");
    send_json(res, 200, model_json());
  });
  http.Post("/v1/completions",
            [this](const httplib::Request& req, httplib::Response& res) { generation(endpoint::completions, req, res); });
  http.Post("/v1/chat/completions",
            [this](const httplib::Request& req, httplib::Response& res) { generation(endpoint::chat, req, res); });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.render(client.stats(), client.recoveries()), "text/plain; version=0.0.4");
  });
}

openai_server::openai_server(pipeline_client& client, serve_options options)
    : state_(std::make_unique<state>(client, std::move(options))) {
  state_->routes();
}

openai_server::~openai_server() = default;

int openai_server::bind() {
  auto& s = *state_;
  const int port = s.options.port == 0 ? s.http.bind_to_any_port(s.options.host) : s.options.port;
  if (s.options.port != 0 ? !s.http.bind_to_port(s.options.host, s.options.port) : port < 0)
    throw std::runtime_error("cannot listen on " + s.options.host + ":" + std::to_string(s.options.port) +
                             " (in use, or not an address of this machine)");
  return port;
}

void openai_server::run() { state_->http.listen_after_bind(); }

void openai_server::stop() { state_->http.stop(); }

std::string openai_server::description() const {
  return "model '" + state_->model.id + "', chat template " + state_->model.chat.name() + " (" + state_->model.chat.origin() + ")";
}

}  // namespace orrery::deploy
