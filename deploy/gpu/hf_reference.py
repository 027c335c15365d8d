#!/usr/bin/env python3
"""orrery against HF transformers, an implementation nobody here wrote.

  check  For each preset (tiny, small): `orrery model init` writes a model;
         HF's LlamaForCausalLM loads that directory unchanged; both compute
         the logits of every position of the same random token ids, and both
         decode 32 tokens greedily. orrery runs through `orrery model score`.
         Tolerances (relative error ||orrery - hf|| / ||hf|| over all logits):
           fp32 <= 1e-4 and identical greedy tokens; bf16 <= 1e-2.
         Prints one JSON object; exits 1 when a comparison fails.

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
    b = sub.add_parser("bench", help="time HF generate")
    b.add_argument("--model", required=True)
    b.add_argument("--device", default="cuda:0")
    b.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    b.add_argument("--ids", required=True, help="prompt token ids, comma separated")
    b.add_argument("--new-tokens", type=int, default=128)
    b.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.makedirs(getattr(args, "work", None) or ".", exist_ok=True)
    return check(args) if args.mode == "check" else bench(args)


if __name__ == "__main__":
    sys.exit(main())
