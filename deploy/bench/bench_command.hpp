#pragma once
// `orrery bench …`: every benchmark registers its subcommand on `bench` from
// its own source file; bench_command.cpp gathers them.

namespace CLI {
class App;
}

namespace orrery::deploy {

/// `orrery bench …`: benchmarks printing one JSON object each.
void add_bench_command(CLI::App& app);

/// `orrery bench compute` (registered on the `bench` subcommand).
void add_compute_bench(CLI::App& bench);

/// `orrery bench planner` (registered on the `bench` subcommand).
void add_planner_bench(CLI::App& bench);

/// `orrery bench dataplane` (registered on the `bench` subcommand).
void add_dataplane_bench(CLI::App& bench);

/// `orrery bench pipeline` (registered on the `bench` subcommand).
void add_pipeline_bench(CLI::App& bench);

/// `orrery bench recovery` (registered on the `bench` subcommand).
void add_recovery_bench(CLI::App& bench);

/// `orrery bench parallel` (parallel_bench.cpp).
void add_parallel_bench(CLI::App& bench);

/// `orrery bench placement` (registered on the `bench` subcommand).
void add_placement_bench(CLI::App& bench);

/// `orrery bench testbed` (registered on the `bench` subcommand).
void add_testbed_bench(CLI::App& bench);

/// `orrery bench generate` (deploy/bench/generate_bench.cpp).
void add_generate_bench(CLI::App& bench);

/// `orrery bench train` (deploy/bench/train_bench.cpp).
void add_train_bench(CLI::App& bench);

/// `orrery bench serve` (deploy/bench/serve_bench.cpp).
void add_serve_bench(CLI::App& bench);

}  // namespace orrery::deploy
