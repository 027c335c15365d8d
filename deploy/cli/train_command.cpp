// `orrery train`: next-token training of a Llama model on a text file, on
// this machine or over a topology's nodes (deploy/training/trainer.hpp).

#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>

#include "deploy/cli/commands.hpp"
#include "deploy/cli/flag_checks.hpp"
#include "deploy/training/trainer.hpp"

namespace orrery::deploy {

void add_train_command(CLI::App& app) {
  auto o = std::make_shared<training_options>();
  auto* cmd = app.add_subcommand(
      "train",
      "Train a Llama model (a `model init` directory, or one orrery trained) on a text file with next-token loss;\n"
      "writes an HF-layout model directory (config.json, safetensors, tokenizer) with the optimizer state, a JSON\n"
      "log of every step (train_log.jsonl) and the loss curve (loss.svg). Example:\n"
      "  orrery train --model models/tiny --data data/kjv.txt --steps 600 --out models/kjv\n"
      "Over a running topology (`orrery up F`), its placement's stages as a pipeline of training stages:\n"
      "  orrery train --topology deploy/topologies/demo4.yaml --model models/tiny --data data/kjv.txt --steps 300 --out models/kjv");
  cmd->add_option("--model", o->model,
                  "Model directory to start from (ignored with --resume; with --topology, default: its model)")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--topology", o->topology,
                  "Train over this topology's running nodes, one pipeline stage per node the placement gives layers;\n"
                  "the nodes read the model and write their parts of each checkpoint at the paths given here")
      ->check(CLI::ExistingFile);
  cmd->add_option("--data", o->data, "Text file to train on (its end is held out for validation)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--out", o->out, "Checkpoint directory: replaced at every checkpoint, the trained model at the end")
      ->required();
  cmd->add_option("--steps", o->steps, "Optimizer steps (or --epochs)")->check(at_least<std::int64_t>(1));
  cmd->add_option("--epochs", o->epochs, "Passes over the training text, when --steps is not given")
      ->check(above(0.0));
  cmd->add_option("--batch", o->batch, "Sequences per step")->capture_default_str()->check(at_least(1));
  cmd->add_option("--micro-batch", o->micro_batch, "Sequences per forward/backward pass; divides --batch")
      ->capture_default_str()
      ->check(at_least(1));
  cmd->add_option("--length", o->length, "Tokens per sequence")->capture_default_str()->check(at_least(2));
  cmd->add_option("--lr", o->learning_rate, "Peak learning rate")->capture_default_str()->check(above(0.0));
  cmd->add_option("--min-lr", o->min_learning_rate, "Learning rate at the end of the cosine decay")
      ->capture_default_str()
      ->check(at_least(0.0));
  cmd->add_option("--warmup", o->warmup_steps, "Warm-up steps (default: 5% of the steps, at most 100)")
      ->check(at_least<std::int64_t>(0));
  cmd->add_option("--clip", o->clip, "Largest global gradient norm (0: no clipping)")
      ->capture_default_str()
      ->check(at_least(0.0));
  cmd->add_option("--weight-decay", o->weight_decay, "AdamW's decoupled weight decay (matrices only)")
      ->capture_default_str()
      ->check(at_least(0.0));
  cmd->add_option("--validation-fraction", o->validation_fraction, "Fraction of the text held out")
      ->capture_default_str()
      ->check(in_interval(0.0, std::optional<double>(0.5), false));
  cmd->add_option("--validation-sequences", o->validation_sequences, "Held-out sequences per evaluation, at most")
      ->capture_default_str()
      ->check(at_least(1));
  cmd->add_option("--eval-every", o->eval_every, "Steps between validation losses")
      ->capture_default_str()
      ->check(at_least<std::int64_t>(1));
  cmd->add_option("--checkpoint-every", o->checkpoint_every, "Steps between checkpoints (0: only at the end)")
      ->capture_default_str()
      ->check(at_least<std::int64_t>(0));
  cmd->add_option("--backup-every", o->backup_every,
                  "With --topology: steps between weight backups in memory on neighbouring nodes (each stage sends "
                  "its weights and AdamW moments, 3x its float32 weights, to the next stage's node); a lost node "
                  "costs the steps since (0: no backups, the steps since the checkpoint)")
      ->capture_default_str()
      ->check(at_least<std::int64_t>(0));
  cmd->add_option("--seed", o->seed, "Seed of the sequences each step reads")->capture_default_str()->check(
      at_least<std::uint64_t>(0));
  cmd->add_flag("--resume", o->resume, "Continue the run checkpointed in --out (same data and options)");
  cmd->add_option("--device", o->device, "cpu or cuda:N (without --topology; each node trains on its own device)")
      ->capture_default_str();
  cmd->add_option("--threads", o->threads, "CPU threads (0: every core)")->capture_default_str()->check(at_least(0));
  cmd->add_flag("--quiet", o->quiet, "No progress bar");
  cmd->callback([o, cmd] {
    if (!o->resume && cmd->count("--model") == 0 && cmd->count("--topology") == 0)
      throw std::invalid_argument("--model is required (the model to start from), unless --resume or --topology");
    train(*o, std::cout);
  });
}

}  // namespace orrery::deploy
