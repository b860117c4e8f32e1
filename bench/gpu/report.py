"""Last stage of bench/gpu_check.sh: every stage's JSON into OUT_DIR/results.json and OUT_DIR/results.md.

    python bench/gpu/report.py WORK_DIR OUT_DIR MODE COMMAND

WORK_DIR holds stages.tsv (name, exit code, seconds per stage) and the stages' JSON files; a stage that
failed or was skipped is reported as such, never silently left out.
"""

import datetime
import glob
import json
import os
import subprocess
import sys

THROUGHPUT_RUNS = {  # file key -> what the row is (gpu_check.sh names the files)
    "1.8b": "Qwen-1.8B shape",
    "1.8b-mb8": "Qwen-1.8B shape, micro-batch 8",
    "1.8b-compiled": "Qwen-1.8B shape, compiled layers",
    "1.8b-mb8-compiled": "Qwen-1.8B shape, micro-batch 8, compiled layers",
    "7b-width": "Qwen-7B width, fewer layers",
    "1.8b-recompute": "Qwen-1.8B shape, full recompute",
}
# Each fast-path run against the run it differs from by one flag: (what, run with it, run without).
COMPILED = "Compiled layers (`--compile-layers`, off by default)"
FAST_PATHS = [(COMPILED, "1.8b-compiled", "1.8b"), (COMPILED, "1.8b-mb8-compiled", "1.8b-mb8")]


def _load(path: str):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _read(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read()


def _fmt(v, spec: str = ".3g") -> str:
    return "n/a" if v is None else format(v, spec)


def _commit(repo: str) -> str:
    """GPU_CHECK_COMMIT where set (a tree copied to the GPU machine may carry another .git, or none), else
    HEAD's short hash."""
    if os.environ.get("GPU_CHECK_COMMIT"):
        return os.environ["GPU_CHECK_COMMIT"]
    try:
        out = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() or "unknown (not a git checkout)"
    except OSError:
        return "unknown (no git here)"


def environment(env: dict | None) -> list[str]:
    lines = ["## 1. Environment", ""]
    if env is None:
        return lines + ["Not recorded (the stage failed; see gpu_check.log).", ""]
    lines += ["| item | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in env.items()]
    return lines + [""]


def checks_table(checks: list[dict]) -> list[str]:
    return ["| check | metric | value | tolerance | result |", "| --- | --- | --- | --- | --- |"] + [
        f"| {x['name']} | {x['metric']} | {x['value']:.3g} | {x['tolerance']:g} | "
        f"{'pass' if x['pass'] else '**FAIL**'} |" for x in checks]


def correctness(c: dict | None) -> list[str]:
    lines = ["## 2. Correctness (tiny preset, initial weights drawn on the CPU)", ""]
    if c is None:
        return lines + ["Not recorded (the stage failed; see gpu_check.log).", ""]
    lines += ["Tolerances and their reasons: bench/gpu/check_correctness.py and docs/PERFORMANCE.md.", ""]
    lines += checks_table(c["checks"])
    lines += ["", "RoPE of one bf16 query/key against the exact fp32 rotation of the same input:", "",
              "| positions | shape | rotation | q rel L2 | q max abs | head-0 scores rel L2 |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in c["rope_tensor"]:
        for label in ("bf16 rotation (megatron-core)", "fp32 rotation, rounded (ours)"):
            e = r[label]
            lines.append(f"| {r['seq']} | {r['shape']} | {label} | {e['q rel L2']:.3g} | {e['q max abs']:.3g} | "
                         f"{e['scores rel L2']:.3g} |")
    m = c["rope_model"]
    lines += ["", f"Tiny model logits in bf16 against the fp32 model (seq {m['seq']}):", "",
              "| model | rel L2 | rel max |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v['rel L2']:.4g} | {v['rel max']:.4g} |" for k, v in m.items() if k != "seq"]
    return lines + [""]


def packed_sft(p: dict | None, layout: dict | None, skipped: str | None) -> list[str]:
    lines = ["### Packed SFT against padded SFT, per conversation (bench/gpu/check_packed_sft.py)", ""]
    if p is None:
        lines += ["Not recorded (the stage failed or was skipped; see gpu_check.log).", ""]
    else:
        lines += [f"{p['conversations']} conversations packed into samples of {p['seq_length']} tokens, bf16 "
                  "(transformer-engine and flash-attn through megatron-core's THD layout, sdpa and local through the "
                  "block-diagonal mask); each control must miss its tolerance, or the check could not tell a leak "
                  "across conversations from rounding.", ""] + checks_table(p["checks"]) + [""]
    lines += ["### The Code-Qwen layout: TP2 x CP2 with sequence parallelism against TP1 x CP1 "
              "(bench/gpu/check_code_qwen_layout.py)", ""]
    if layout is None:
        return lines + [f"Not run: {skipped or 'the stage failed; see gpu_check.log'}.", ""]
    return lines + [f"{' '.join(layout['layout'])} on {layout['gpus']} x {layout['device']}.", ""] + checks_table(
        layout["checks"]) + [""]


def throughput(runs: dict[str, dict | None]) -> list[str]:
    lines = ["## 3. Throughput (synthetic tokens, bench/bench_train.py)", "",
             "| run | layers x hidden (FFN) | seq | micro / global batch | back end | recompute | step ms | "
             "tokens/s/GPU | TFLOP/s/GPU | MFU | peak GiB | fwd ms | bwd ms | comm ms | optim ms | other ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, label in THROUGHPUT_RUNS.items():
        r = runs.get(key)
        if r is None:
            lines.append(f"| {label} | not measured (stage failed or skipped; see gpu_check.log) |" + " |" * 14)
            continue
        b = r["breakdown_s"]
        mem = r.get("peak_memory_gib", r.get("peak_rss_gib"))
        mfu = None if r["mfu"] is None else r["mfu"] * 100
        lines.append(
            f"| {label} | {r['num_layers']} x {r['hidden_size']} ({r['ffn_hidden_size']}) | {r['seq_length']} | "
            f"{r['micro_batch_size']} / {r['global_batch_size']} | {r['transformer_impl']} {r['precision']}"
            f"{', compiled layers' * r['compile_layers']} | "
            f"{r['recompute']} | {r['step_s'] * 1e3:.1f} | {r['tokens_per_s_per_gpu']:,.0f} | "
            f"{r['tflops_per_gpu']:.1f} | {_fmt(mfu, '.1f')}{'%' if mfu is not None else ''} | {_fmt(mem, '.1f')} | "
            + " | ".join(f"{b[k] * 1e3:.1f}" for k in ("forward", "backward", "communication", "optimizer", "other"))
            + " |")
    some = next((r for r in runs.values() if r), None)
    if some:
        peak = some["peak_tflops"]
        lines += ["", f"MFU: model FLOPs (model/flops.py; recompute not counted) over {_fmt(peak, 'g')} TFLOP/s "
                  f"dense bf16 peak ({some['device']}). Breakdown: {some['timer']}, median of the timed steps."]
    return lines + [""]


def fast_paths(runs: dict, loss: dict | None) -> list[str]:
    lines = ["## 4. Fast paths without extra libraries, each against the same 1.8B run without it", ""]
    for label, with_key, without_key in FAST_PATHS:
        on, off = runs.get(with_key), runs.get(without_key)
        if not (on and off):
            lines.append(f"- {label}, `{with_key}`: not measured (a throughput run failed or was skipped).")
            continue
        b_off, b_on = off["breakdown_s"], on["breakdown_s"]
        backends = (off["transformer_impl"] if off["transformer_impl"] == on["transformer_impl"] else
                    f"{off['transformer_impl']} without, {on['transformer_impl']} with: not the same back end")
        lines.append(f"- {label}, micro-batch {on['micro_batch_size']} ({backends}): step {off['step_s'] * 1e3:.1f} "
                     "ms without, "
                     f"{on['step_s'] * 1e3:.1f} ms with (x{off['step_s'] / on['step_s']:.3f} speed); optimizer "
                     f"{b_off['optimizer'] * 1e3:.1f} -> {b_on['optimizer'] * 1e3:.1f} ms, forward + backward "
                     f"{(b_off['forward'] + b_off['backward']) * 1e3:.1f} -> "
                     f"{(b_on['forward'] + b_on['backward']) * 1e3:.1f} ms; peak memory "
                     f"{_fmt(off.get('peak_memory_gib', off.get('peak_rss_gib')), '.1f')} -> "
                     f"{_fmt(on.get('peak_memory_gib', on.get('peak_rss_gib')), '.1f')} GiB; warm-up "
                     f"{off['warmup_s']:.0f} -> {on['warmup_s']:.0f} s (compilation included); torch.compile "
                     f"{on['compiled_graphs']} graphs, {on['graph_breaks']} graph breaks.")
    if loss is None:
        return lines + ["- The loss alone (bench/gpu/bench_loss.py): not measured (stage failed or skipped).", ""]
    lines += ["", f"The loss alone over {loss['vocab']:,} rows, forward + backward (median of {loss['reps']}, "
              f"{loss['device']}; errors against torch's cross entropy in fp64, on the first sequence):", "",
              "| loss | tokens (seq x micro-batch) | logits | ms | GiB above the logits | loss rel max | "
              "gradient rel L2 |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['loss']} | {r['seq']} x {r['micro_batch']} | {r['logits']} | {r['ms_fwd_bwd']:.1f} | "
              f"{_fmt(r['extra_gib'], '.2f')} | {r['loss rel max']:.2g} | {r['gradient rel L2']:.2g} |"
              for r in loss["runs"]]
    return lines + [""]


def startup(inits: list[dict]) -> list[str]:
    lines = ["## 5. Start-up: layout-independent weight draws, one rank (bench/bench_init.py)", ""]
    if not inits:
        return lines + ["Not measured (stage failed or skipped).", ""]
    lines += ["| model | drawn on | embedding s | output layer s | one layer s | total s per rank (any TP) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in inits:
        g = r["seconds"]
        lines.append(f"| {r['model_size']} ({r['parameters'] / 1e9:.2f}B) | {r['device_name']} | "
                     f"{g['embedding']:.2f} | {g['output layer']:.2f} | {g['layer 0']:.3f} | "
                     f"{r['total_s_per_rank']:.2f} |")
    return lines + [""]


def profile(text: str | None) -> list[str]:
    lines = ["## 6. One 1.8B step under torch.profiler (bench/gpu/profile_step.py)", ""]
    if text is None:
        return lines + ["Not measured (stage failed or skipped).", ""]
    head = text.splitlines()
    return lines + ["```"] + head[:3 + 3 + 25] + ["```", ""]  # flags, times, the table's header and top 25


def deepspeed(d: dict | None) -> list[str]:
    lines = ["## 7. DeepSpeed engine with DeepSpeed's Adam (bench/gpu/check_deepspeed.py)", ""]
    if d is None:
        return lines + ["Not measured (stage failed or skipped; see gpu_check.log).", ""]
    a = d["adam"]
    built = f"built in {a['build_s']} s (first use)" if a["build_error"] is None else f"not built ({a['build_error']})"
    lines += [f"{a['deepspeed_optimizer'] or 'DeepSpeed Adam'}: {built}. Step on {a['params']:,} fp32 parameters "
              f"({a['device']}, median of {a['steps']}):", "", "| optimizer | ms/step | max abs weight difference "
              "from torch AdamW (foreach) |", "| --- | --- | --- |"]
    lines += [f"| {name} | {r['step_s'] * 1e3:.1f} | {r['max_abs_diff_vs_foreach']:.2g} |"
              for name, r in a["optimizers"].items()]
    picked = d["runs"]["deepspeed ZeRO-2, its optimizer"]["optimizer"]
    lines += ["", f"The tiny model in fp32 (the deepspeed engine's own choice here: {picked}):", ""]
    return lines + checks_table(d["checks"]) + [""]


def checkpoints(c: dict | None) -> list[str]:
    title = "## 8. Checkpoints: the distributed optimizer's resume, what checksums cost (bench/gpu/check_resume.py)"
    if c is None:
        return [title, "", "Not measured (stage failed or skipped; see gpu_check.log).", ""]
    k, verdict = c["checksums"], "ok" if c["resume_ok"] else "FAILED"
    resume = (f"Tiny model, bf16, --use-distributed-optimizer: 2 iterations saved and 2 resumed against 4 "
              f"uninterrupted, losses 3-4 within {c['worst_relative']:.1e} relative ({verdict}: at most 1e-6).")
    table = ["| save | s | median CPU s |", "| --- | --- | --- |",
             f"| plain | {k['best_save_s']['plain']:.2f} | {k['median_cpu_s']['plain']:.2f} |",
             f"| with checksums | {k['best_save_s']['checksums']:.2f} ({k['overhead_percent']:+.1f}%) | "
             f"{k['median_cpu_s']['checksums']:.2f} ({k['cpu_overhead_percent']:+.1f}%) |"]
    verify = (f"Verifying every file as a --load does: {k['verify_s']:.2f} s ({k['verify_gb_per_s']:.2f} GB/s, "
              "page cache).")
    return [title, "", resume, "", f"A save of {k['bytes'] / 2**30:.2f} GiB, best of {k['rounds']} rounds:", "",
            *table, "", verify, ""]


def reward(r: dict | None) -> list[str]:
    lines = ["## 9. A reward-model step beside a pretraining step of the same shape (bench/bench_reward.py)", ""]
    if r is None:
        return lines + ["Not measured (stage failed or skipped; see gpu_check.log).", ""]
    tps = r["tokens_per_s_per_gpu"]
    lines += [f"{r['model_size']} at {r['num_layers']} layers, seq {r['seq_length']}, micro-batch "
              f"{r['micro_batch_size']}, {r['precision']}, back end {r['transformer_impl']}, best of {r['rounds']} "
              f"rounds of {r['steps_per_round']} steps:", "",
              "| step | ms | tokens/s/GPU |", "| --- | --- | --- |",
              f"| pretraining | {r['best_step_s']['pretrain'] * 1e3:.1f} | {tps['pretrain']:,.0f} |",
              f"| reward | {r['best_step_s']['reward'] * 1e3:.1f} | {tps['reward']:,.0f} |", "",
              f"One pair costs {r['pair_over_sequence_cost']:.2f} pretraining sequences (2.00: both heads alike)."]
    return lines + [""]


def main() -> int:
    work, out, mode, command = sys.argv[1:5]
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    stages = []
    with open(os.path.join(work, "stages.tsv")) as f:
        for line in f:
            name, status, seconds = line.rstrip("\n").split("\t")
            stages.append({"stage": name, "status": status, "seconds": int(seconds)})
    runs = {k: _load(os.path.join(work, f"throughput_{k}.json")) for k in THROUGHPUT_RUNS}
    inits = [_load(p) for p in sorted(glob.glob(os.path.join(work, "init_*.json")))]
    results = {"mode": mode, "command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "commit": _commit(repo), "stages": stages, "env": _load(os.path.join(work, "env.json")),
               "correctness": _load(os.path.join(work, "correctness.json")), "throughput": runs,
               "packed_sft": _load(os.path.join(work, "packed_sft.json")),
               "code_qwen_layout": _load(os.path.join(work, "code_qwen_layout.json")),
               "loss_bench": _load(os.path.join(work, "loss.json")), "init": inits,
               "profile": _read(os.path.join(work, "profile.txt")),
               "deepspeed": _load(os.path.join(work, "deepspeed.json")),
               "checkpoints": _load(os.path.join(work, "checkpoints.json")),
               "reward": _load(os.path.join(work, "reward.json"))}
    what = ("CPU dry run: tiny shapes, 1+1 iterations; it proves every stage runs, its figures mean nothing"
            if mode == "cpu-dry-run" else "GPU")
    md = ["# GPU check results", "", f"Mode: **{what}**. Date {results['date']}, commit {results['commit']}.", "",
          f"Command: `{command}`", ""]
    skipped = next((st["status"] for st in stages if st["stage"].startswith("correctness: Code-Qwen layout")
                    and st["status"].startswith("skipped")), None)
    md += environment(results["env"]) + correctness(results["correctness"])
    md += packed_sft(results["packed_sft"], results["code_qwen_layout"], skipped) + throughput(runs)
    md += fast_paths(runs, results["loss_bench"]) + startup(inits) + profile(results["profile"])
    md += deepspeed(results["deepspeed"]) + checkpoints(results["checkpoints"]) + reward(results["reward"])
    md += ["## Stages", "", "| stage | status | seconds |", "| --- | --- | --- |"]
    md += [f"| {s['stage']} | {s['status']} | {s['seconds']} |" for s in stages]
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
