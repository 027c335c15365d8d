#pragma once
// Each `orrery` subcommand registers itself on the CLI11 app from its own
// source file; main.cpp only wires them together (the benchmarks' `orrery
// bench` registers itself from deploy/bench/bench_command.hpp).

namespace CLI {
class App;
}

namespace orrery::deploy {

/// `orrery model init|info`: write and inspect HF-layout model directories.
void add_model_command(CLI::App& app);

/// `orrery node`: one node of a topology in this process.
void add_node_command(CLI::App& app);

/// `orrery up`: every node of a topology as local child processes.
void add_up_command(CLI::App& app);

/// `orrery chaos`: kill or freeze nodes started by `orrery up`.
void add_chaos_command(CLI::App& app);

/// `orrery testbed up|down|exec|status`: an emulated edge cluster on this machine.
void add_testbed_command(CLI::App& app);

/// `orrery generate`: on one device (--model) or over a topology (--topology).
void add_generate_command(CLI::App& app);

/// `orrery tokenizer train|encode`: tokenizer files, and the ids they give.
void add_tokenizer_command(CLI::App& app);

/// `orrery serve`: the OpenAI HTTP API over a model or a topology.
void add_serve_command(CLI::App& app);

/// `orrery train`: train a model on a text file.
void add_train_command(CLI::App& app);

/// `orrery demo`: the quick start's main job.
void add_demo_command(CLI::App& app);

/// `orrery profile`: measure a running cluster's nodes and links for the planners.
void add_profile_command(CLI::App& app);

/// `orrery plan`: run the planners on a profile or a preset cluster.
void add_plan_command(CLI::App& app);

}  // namespace orrery::deploy
