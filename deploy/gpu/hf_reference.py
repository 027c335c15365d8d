#!/usr/bin/env python3
"""orrery against HF transformers, an implementation nobody here wrote.

  check  For each preset (tiny, small): `orrery model init` writes a model;
         HF's LlamaForCausalLM loads that directory unchanged; both compute
         the logits of every position of the same random token ids, and both
         decode 32 tokens greedily. orrery runs through `orrery model score`.
         Tolerances (relative error ||orrery - hf|| / ||hf|| over all logits):
           fp32 <= 1e-4 and identical greedy tokens; bf16 <= 1e-2.
         Prints one JSON object; exits 1 when a comparison fails.

  train-check
         One `orrery train` run of a few steps (a constant learning rate,
         gradient clipping, micro-batches) beside the same steps in plain
         PyTorch on HF's LlamaForCausalLM: the same sequences (the corpus
         windows orrery draws, recomputed here), summed cross-entropy over
         the global batch, clip_grad_norm_, torch.optim.AdamW with decay on
         matrices only. Compares every step's loss and every trained weight.
         Tolerances (fp32): loss 1e-4 relative (the logits' tolerance of
         `check`), weights 1e-5 relative.

  train-bench
         Training tokens/s of `orrery train` and of a plain PyTorch loop on HF's
         model (same model, batch, sequence length, optimizer; fp32), side by
         side on one device, after warm-up steps.

  bench  Times HF's generate (greedy, KV cache, no compilation) on a model
         directory: prefill alone, then prefill plus N decode steps; decode
         ms/token is their difference over N. Prints one JSON line.
         `orrery bench compute --hf-script` runs this.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_hf(model_dir, device, dtype):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype])
    return model.to(device).eval()


def relative_error(out, ref):
    out, ref = out.astype(np.float64), ref.astype(np.float64)
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


@torch.inference_mode()
def hf_logits_and_greedy(model, ids, steps, device):
    input_ids = torch.tensor([ids], device=device)
    out = model(input_ids, use_cache=True)
    logits = out.logits[0].float().cpu().numpy()
    greedy, past, last = [], out.past_key_values, out.logits[0, -1]
    for step in range(steps):
        greedy.append(int(last.argmax()))
        if step + 1 < steps:
            out = model(torch.tensor([[greedy[-1]]], device=device), past_key_values=past, use_cache=True)
            past, last = out.past_key_values, out.logits[0, -1]
    return logits, greedy


def orrery_score(binary, model_dir, device, dtype, ids, steps, logits_file):
    command = [binary, "model", "score", model_dir, "--device", device, "--dtype", dtype,
               "--ids", ",".join(map(str, ids)), "--greedy", str(steps), "--logits", logits_file]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"hf_reference: {' '.join(command)} failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    logits = np.fromfile(logits_file, dtype=np.float32).reshape(result["rows"], result["vocab"])
    return logits, result["greedy"]


def check(args):
    rng = np.random.default_rng(args.seed)
    report, failed = {"tolerances": {"fp32": 1e-4, "bf16": 1e-2}, "greedy_steps": args.steps, "runs": []}, False
    for preset in args.presets:
        model_dir = os.path.join(args.work, preset)
        if not os.path.exists(os.path.join(model_dir, "config.json")):
            subprocess.run([args.orrery, "model", "init", "--preset", preset, "--dtype", "fp32", "--out", model_dir],
                           check=True, stdout=subprocess.DEVNULL)
        vocab = json.load(open(os.path.join(model_dir, "config.json")))["vocab_size"]
        ids = [int(i) for i in rng.integers(0, vocab, args.length)]
        for dtype in ("fp32", "bf16"):
            model = load_hf(model_dir, args.device, dtype)
            ref, ref_greedy = hf_logits_and_greedy(model, ids, args.steps, args.device)
            del model
            torch.cuda.empty_cache()
            sides = [(args.device, dtype)] + ([("cpu", "fp32")] if dtype == "fp32" else [])
            for device, orrery_dtype in sides:
                out, greedy = orrery_score(args.orrery, model_dir, device, orrery_dtype, ids, args.steps,
                                           os.path.join(args.work, f"{preset}-{device}-{orrery_dtype}.f32"))
                error = relative_error(out, ref)
                same = sum(a == b for a, b in zip(greedy, ref_greedy))
                ok = error <= report["tolerances"][dtype] and (dtype != "fp32" or greedy == ref_greedy)
                failed |= not ok
                report["runs"].append({"preset": preset, "hf": f"{args.device} {dtype}",
                                       "orrery": f"{device} {orrery_dtype}", "tokens": len(ids),
                                       "relative_error": error, "greedy_identical": same,
                                       "greedy_checked": dtype == "fp32", "pass": ok})
                print(f"hf_reference: {preset}: orrery {device} {orrery_dtype} vs HF {dtype}: relative error "
                      f"{error:.2e}, greedy {same}/{args.steps} identical -> {'ok' if ok else 'FAIL'}",
                      file=sys.stderr)
    report["pass"] = not failed
    print(json.dumps(report))
    return 1 if failed else 0


MASK64 = (1 << 64) - 1


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def corpus_batch(data, validation_fraction, seed, step, first, count, length, bos=256):
    """compute/training/corpus.cpp's training_batch, recomputed."""
    split = len(data) - int(np.ceil(len(data) * validation_fraction))
    offsets = split - length + 1
    inputs, targets = [], []
    for i in range(first, first + count):
        state = seed ^ ((step * 0x9E3779B97F4A7C15) & MASK64) ^ ((i * 0xC2B2AE3D27D4EB4F) & MASK64)
        start = splitmix64(state) % offsets
        window = list(data[start:start + length])
        inputs.append([bos] + window[:-1])
        targets.append(window)
    return torch.tensor(inputs), torch.tensor(targets)


def hf_optimizer(model, lr, weight_decay):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8)


def hf_train_step(model, optimizer, data, args, step, device):
    total = args.batch * args.length
    loss_sum = 0.0
    for first in range(0, args.batch, args.micro_batch):
        inputs, targets = corpus_batch(data, args.validation_fraction, args.seed, step, first, args.micro_batch,
                                       args.length)
        logits = model(inputs.to(device)).logits.float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.to(device).reshape(-1),
                                                 reduction="sum")
        (loss / total).backward()
        loss_sum += loss.item()
    torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum / total


def orrery_train(args, model_dir, out, device, steps):
    command = [args.orrery, "train", "--model", model_dir, "--data", args.data, "--out", out, "--steps", str(steps),
               "--batch", str(args.batch), "--micro-batch", str(args.micro_batch), "--length", str(args.length),
               "--lr", str(args.lr), "--min-lr", str(args.lr), "--warmup", "0", "--clip", str(args.clip),
               "--weight-decay", str(args.weight_decay), "--validation-fraction", str(args.validation_fraction),
               "--seed", str(args.seed), "--device", device, "--eval-every", str(steps), "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"hf_reference: {' '.join(command)} failed:\n{done.stderr}")
    return [json.loads(line) for line in open(os.path.join(out, "train_log.jsonl"))]


def ensure_model(args, preset):
    model_dir = os.path.join(args.work, preset)
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        subprocess.run([args.orrery, "model", "init", "--preset", preset, "--dtype", "fp32", "--out", model_dir],
                       check=True, stdout=subprocess.DEVNULL)
    return model_dir


def train_check(args):
    data = open(args.data, "rb").read()
    report, failed = {"tolerances": {"loss": 1e-4, "weights": 1e-5}, "steps": args.steps, "runs": []}, False
    for preset in args.presets:
        model_dir = ensure_model(args, preset)
        for device in args.devices:
            out = os.path.join(args.work, f"trained-{preset}-{device.replace(':', '')}")
            subprocess.run(["rm", "-rf", out], check=True)
            log = orrery_train(args, model_dir, out, device, args.steps)
            model = load_hf(model_dir, device, "fp32").train()
            initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
            optimizer = hf_optimizer(model, args.lr, args.weight_decay)
            hf_losses = [hf_train_step(model, optimizer, data, args, step, device) for step in range(args.steps)]
            trained = load_hf(out, device, "fp32")
            reference = model.state_dict()
            weight_errors, update_errors = {}, {}
            for name, ours in trained.state_dict().items():
                ref = reference[name].float()
                weight_errors[name] = float((ours.float() - ref).norm() / ref.norm())
                update = ref - initial[name].float()
                if update.norm() > 0:
                    update_errors[name] = float((ours.float() - initial[name].float() - update).norm() / update.norm())
            loss_errors = [abs(e["loss"] - h) / abs(h) for e, h in zip(log, hf_losses)]
            worst = max(weight_errors, key=weight_errors.get)
            ok = max(loss_errors) <= 1e-4 and weight_errors[worst] <= 1e-5
            failed |= not ok
            report["runs"].append({"preset": preset, "device": device, "orrery_losses": [e["loss"] for e in log],
                                   "hf_losses": hf_losses, "max_loss_error": max(loss_errors),
                                   "max_weight_error": weight_errors[worst], "worst_weight": worst,
                                   "max_update_error": max(update_errors.values()),
                                   "median_update_error": float(np.median(list(update_errors.values()))),
                                   "pass": ok})
            print(f"hf_reference: train {preset} on {device}: losses {max(loss_errors):.1e}, weights "
                  f"{weight_errors[worst]:.1e} ({worst}) -> {'ok' if ok else 'FAIL'}", file=sys.stderr)
            del model, trained
            torch.cuda.empty_cache()
    report["pass"] = not failed
    print(json.dumps(report))
    return 1 if failed else 0


def train_bench(args):
    data = open(args.data, "rb").read()
    model_dir = ensure_model(args, args.presets[0])
    out = os.path.join(args.work, "bench-trained")
    subprocess.run(["rm", "-rf", out], check=True)
    steps = args.warmup_steps + args.steps
    log = orrery_train(args, model_dir, out, args.devices[0], steps)
    orrery_rates = [e["tokens_per_s"] for e in log[args.warmup_steps:]]
    model = load_hf(model_dir, args.devices[0], "fp32").train()
    optimizer = hf_optimizer(model, args.lr, args.weight_decay)
    rates = []
    for step in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        hf_train_step(model, optimizer, data, args, step, args.devices[0])
        torch.cuda.synchronize()
        if step >= args.warmup_steps:
            rates.append(args.batch * args.length / (time.perf_counter() - start))
    median = lambda values: sorted(values)[len(values) // 2]
    print(json.dumps({"preset": args.presets[0], "device": args.devices[0], "dtype": "fp32", "batch": args.batch,
                      "micro_batch": args.micro_batch, "length": args.length, "steps_timed": args.steps,
                      "orrery_tokens_per_s": median(orrery_rates), "pytorch_tokens_per_s": median(rates),
                      "orrery_over_pytorch": median(orrery_rates) / median(rates),
                      "pytorch": "transformers " + __import__("transformers").__version__ + ", torch " +
                                 torch.__version__ + ", attention " + model.config._attn_implementation}))
    return 0


@torch.inference_mode()
def bench(args):
    model = load_hf(args.model, args.device, args.dtype)
    input_ids = torch.tensor([[int(i) for i in args.ids.split(",")]], device=args.device)

    def generate_ms(new_tokens):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = model.generate(input_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=0)
        torch.cuda.synchronize()
        assert out.shape[1] == input_ids.shape[1] + new_tokens
        return (time.perf_counter() - start) * 1000

    generate_ms(8)  # warm-up: cuBLAS handles, allocator
    prefill, decode = [], []
    for _ in range(args.repeats):
        first = generate_ms(1)
        whole = generate_ms(args.new_tokens + 1)
        prefill.append(first)
        decode.append((whole - first) / args.new_tokens)
    median = lambda values: sorted(values)[len(values) // 2]
    print(json.dumps({"implementation": "transformers " + __import__("transformers").__version__ +
                      ", torch " + torch.__version__, "attention": model.config._attn_implementation,
                      "device": args.device, "dtype": args.dtype, "prompt_tokens": input_ids.shape[1],
                      "new_tokens": args.new_tokens, "prefill_ms": median(prefill),
                      "prefill_tokens_per_s": input_ids.shape[1] / median(prefill) * 1000,
                      "decode_ms_per_token": median(decode), "decode_runs_ms_per_token": decode}))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("check", help="compare logits and greedy tokens with HF")
    c.add_argument("--orrery", required=True, help="the orrery binary")
    c.add_argument("--work", required=True, help="directory for the models and logits")
    c.add_argument("--device", default="cuda:0")
    c.add_argument("--presets", nargs="+", default=["tiny", "small"])
    c.add_argument("--length", type=int, default=64, help="token ids scored")
    c.add_argument("--steps", type=int, default=32, help="greedy steps compared")
    c.add_argument("--seed", type=int, default=7)
    for mode, help_text in (("train-check", "compare training steps with PyTorch + HF"),
                            ("train-bench", "training tokens/s beside a plain PyTorch loop")):
        t = sub.add_parser(mode, help=help_text)
        t.add_argument("--orrery", required=True, help="the orrery binary")
        t.add_argument("--work", required=True, help="directory for the models")
        t.add_argument("--data", required=True, help="text file to train on")
        t.add_argument("--devices", nargs="+", default=["cuda:0"])
        t.add_argument("--presets", nargs="+", default=["tiny"])
        t.add_argument("--steps", type=int, default=3)
        t.add_argument("--warmup-steps", type=int, default=3, help="train-bench: steps not timed")
        t.add_argument("--batch", type=int, default=8)
        t.add_argument("--micro-batch", type=int, default=4)
        t.add_argument("--length", type=int, default=64)
        t.add_argument("--lr", type=float, default=1e-3)
        t.add_argument("--clip", type=float, default=1.0)
        t.add_argument("--weight-decay", type=float, default=0.1)
        t.add_argument("--validation-fraction", type=float, default=0.05)
        t.add_argument("--seed", type=int, default=3)
    b = sub.add_parser("bench", help="time HF generate")
    b.add_argument("--model", required=True)
    b.add_argument("--device", default="cuda:0")
    b.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    b.add_argument("--ids", required=True, help="prompt token ids, comma separated")
    b.add_argument("--new-tokens", type=int, default=128)
    b.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.makedirs(getattr(args, "work", None) or ".", exist_ok=True)
    modes = {"check": check, "train-check": train_check, "train-bench": train_bench, "bench": bench}
    return modes[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
