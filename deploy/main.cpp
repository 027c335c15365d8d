// The `orrery` command line: every subcommand registers itself
// (deploy/cli/commands.hpp, deploy/bench/bench_command.hpp);
// every error reaches this one place and becomes one line on stderr and exit
// code 1.

#include <CLI/CLI.hpp>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "compute/error_text.hpp"
#include "compute/message_text.hpp"
#include "deploy/bench/bench_command.hpp"
#include "deploy/cli/commands.hpp"

namespace {

// The command the command line got furthest into: the app itself, `model`,
// `model score`, …
const CLI::App& innermost_command(const CLI::App& app) {
  const CLI::App* at = &app;
  while (!at->get_subcommands().empty()) at = at->get_subcommands().front();
  return *at;
}

// `model score`: the words that select `command`.
std::string command_path(const CLI::App& command) {
  std::string path;
  for (const CLI::App* at = &command; at->get_parent() != nullptr; at = at->get_parent())
    path = at->get_name() + (path.empty() ? "" : " " + path);
  return path;
}

// CLI11 answers a missing or misspelt command alike, with "A subcommand is
// required": name the word it did not know, or say that one is missing, and
// list what would have been accepted.
std::string command_problem(const CLI::App& command) {
  std::vector<std::string> names;
  for (const CLI::App* sub : command.get_subcommands([](const CLI::App*) { return true; })) names.push_back(sub->get_name());
  const std::string known = orrery::compute::join(names);
  const std::string path = command_path(command);
  const auto left = command.remaining();
  if (!left.empty() && left.front().rfind('-', 0) != 0)
    return "unknown command '" + (path.empty() ? "" : path + " ") + left.front() + "' (commands: " + known + ")";
  return "'orrery" + (path.empty() ? "" : " " + path) + "' needs a command (commands: " + known + ")";
}

std::string parse_problem(const CLI::App& app, const CLI::ParseError& error) {
  const CLI::App& command = innermost_command(app);
  return command.get_require_subcommand_min() > 0 ? command_problem(command) : error.what();
}

int fail(const std::string& message) {
  std::cout.flush();
  std::cerr << "orrery: error: " << orrery::compute::without_backtrace(message) << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "orrery: transformer inference and fine-tuning across heterogeneous devices.\n"
      "Quick start: `orrery demo`. Every subcommand has --help.",
      "orrery"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for every subcommand");
  orrery::deploy::add_demo_command(app);
  orrery::deploy::add_model_command(app);
  orrery::deploy::add_node_command(app);
  orrery::deploy::add_up_command(app);
  orrery::deploy::add_chaos_command(app);
  orrery::deploy::add_testbed_command(app);
  orrery::deploy::add_generate_command(app);
  orrery::deploy::add_serve_command(app);
  orrery::deploy::add_tokenizer_command(app);
  orrery::deploy::add_train_command(app);
  orrery::deploy::add_profile_command(app);
  orrery::deploy::add_plan_command(app);
  orrery::deploy::add_bench_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::RuntimeError& e) {
    return e.get_exit_code();  // a command's own status (`testbed exec`)
  } catch (const CLI::ParseError& e) {
    // --help and --help-all arrive as "errors" with exit code 0.
    return e.get_exit_code() == 0 ? app.exit(e) : fail(parse_problem(app, e));
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  return 0;
}
