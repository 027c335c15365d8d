// The `orrery` command line: every subcommand registers itself (commands.hpp);
// every error reaches this one place and becomes a message and exit code 1.

#include <CLI/CLI.hpp>
#include <exception>
#include <iostream>

#include "deploy/commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{
      "orrery: transformer inference and fine-tuning across heterogeneous devices.\n"
      "Quick start: `orrery demo`. Every subcommand has --help."};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for every subcommand");
  orrery::deploy::add_demo_command(app);
  orrery::deploy::add_model_command(app);
  orrery::deploy::add_node_command(app);
  orrery::deploy::add_up_command(app);
  orrery::deploy::add_chaos_command(app);
  orrery::deploy::add_testbed_command(app);
  orrery::deploy::add_generate_command(app);
  orrery::deploy::add_profile_command(app);
  orrery::deploy::add_plan_command(app);
  orrery::deploy::add_bench_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::cout.flush();
    std::cerr << "orrery: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
