"""The built-in demo: the whole path on one CPU machine, no download but the tokenizer.

    python examples/demo/run_demo.py                 # minutes on a CPU (examples/demo/README.md)
    python examples/demo/run_demo.py --quick         # a smoke run (tests)
    python examples/demo/run_demo.py --record        # also record its figures (figures.txt here)
    python examples/demo/run_demo.py --quick --record    # and the quick run's (figures-quick.txt)

Stages: fetch the tokenizer -> build a corpus from text already on the machine (corpus.py) and
arithmetic SFT problems (arithmetic.py) -> tools/preprocess_data.py -> pretrain a tiny Qwen with
tensor parallelism 2 over gloo -> continue it as Code-Qwen at twice the context -> Math SFT ->
held-out accuracy before and after SFT (tools/evaluate.py) -> tools/plot_metrics.py.
Everything lands under --workdir (default runs/demo); each stage's full output is in logs/.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import arithmetic  # noqa: E402
import corpus  # noqa: E402

FIGURES = "figures.txt"
# --record: the figures of each size, committed beside this file. README.md quotes the full run's; tests/test_demo.py
# compares README.md with it and its own --quick run with the quick one, so a change of the numerics fails there.
RECORDED = {"full": "figures.txt", "quick": "figures-quick.txt"}
MARKER = ".megatron_qwen_demo"  # only a directory carrying this is ever wiped


@dataclass(frozen=True)
class DemoSize:
    """How much of everything. FULL is sized to stay inside the demo's 15-minute budget on a 2-core CPU
    (its measured time: examples/demo/README.md)."""

    name: str  # "full" or "quick"
    code_chars: int  # characters of standard-library code in the corpus
    heldout_problems: int
    seq_length: int  # base pretraining context; Code-Qwen trains at twice this
    global_batch_size: int
    pretrain_iters: int
    code_iters: int
    sft_iters: int
    eval_interval: int
    eval_iters: int
    log_interval: int
    loss_decimals: int  # in the figures; the quick run shows every digit, so any change of the numerics shows


FULL = DemoSize(name="full", code_chars=3_000_000, heldout_problems=150, seq_length=128, global_batch_size=8,
                pretrain_iters=200, code_iters=40, sft_iters=120, eval_interval=20, eval_iters=2, log_interval=5,
                loss_decimals=3)
QUICK = DemoSize(name="quick", code_chars=200_000, heldout_problems=8, seq_length=32, global_batch_size=2,
                 pretrain_iters=2, code_iters=1, sft_iters=2, eval_interval=1, eval_iters=1, log_interval=1,
                 loss_decimals=12)

# A tiny Qwen with the real 151,851-token vocabulary: the output layer is most of the compute.
MODEL_FLAGS = ["--model-size", "tiny-qwen-vocab", "--hidden-size", "64", "--ffn-hidden-size", "176"]
# The CPU kernels every stage runs, pinned so the figures are the same digits on any x86-64 processor with AVX2
# (examples/demo/README.md): ATen's vectorized kernels at AVX2 whatever the processor offers, MKL's GEMM in its
# conditional numerical reproducibility mode for AVX2 (the same results on every processor of that branch), one
# thread per process.
CPU_PINS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class DemoError(RuntimeError):
    """A stage failed; the message says which and where its log is."""


class Demo:
    def __init__(self, workdir: Path, size: DemoSize):
        self.work, self.size = workdir, size
        self.logs = workdir / "logs"
        self.timings: list[tuple[str, float]] = []
        self.sources: list[str] = []  # the corpus's sources on this machine (build_data)

    # --- plumbing ------------------------------------------------------------------------------
    def stage(self, name: str, fn, *args):
        print(f"\n== {name} ==", flush=True)
        start = time.monotonic()
        result = fn(*args)
        elapsed = time.monotonic() - start
        self.timings.append((name, elapsed))
        print(f"-- {name}: {elapsed:.0f} s", flush=True)
        return result

    def start(self, name: str, cmd: list[str]) -> tuple[subprocess.Popen, Path]:
        log = self.logs / f"{name}.log"
        # Pinned kernels, one thread per process (2 processes on 2 cores); no warnings about missing GPU libraries.
        env = {**os.environ, **CPU_PINS, "PYTHONWARNINGS": "ignore"}
        with open(log, "w") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env), log

    def check(self, name: str, proc: subprocess.Popen, log: Path) -> None:
        if proc.wait() != 0:
            tail = log.read_text(errors="replace").splitlines()[-25:]
            print("\n".join(tail), file=sys.stderr)
            raise DemoError(f"stage {name} failed (exit code {proc.returncode}); full log: {log}")

    def run(self, name: str, cmd: list[str]) -> str:
        proc, log = self.start(name, cmd)
        self.check(name, proc, log)
        return log.read_text(errors="replace")

    # --- stages --------------------------------------------------------------------------------
    def fetch_tokenizer(self) -> None:
        out = self.run("fetch_tokenizer", [sys.executable, "tools/fetch_tokenizer.py"])
        print(out.strip().splitlines()[-1])

    def build_data(self) -> None:
        for line in corpus.describe_sources():
            print(f"  {line}")
        summary = corpus.build_corpus(self.work / "corpus", self.size.code_chars)
        self.sources = sorted({source for s in summary.values() for source in s["sources"]})
        for name, s in summary.items():
            print(f"  {s['path']}: {s['documents']} documents, {s['chars'] / 1e6:.2f}M characters "
                  f"(sources: {', '.join(s['sources'])})")
        train, heldout = arithmetic.split_problems(self.size.heldout_problems, seed=1234)
        arithmetic.write_conversations(train, self.work / "math" / "train.jsonl")
        arithmetic.write_conversations(heldout, self.work / "math" / "heldout.jsonl")
        print(f"  {self.work / 'math'}: {len(train)} training and {len(heldout)} held-out arithmetic "
              f"problems (e.g. {train[0].question!r} -> {train[0].answer!r})")

    def preprocess(self) -> None:
        """The three preprocessing jobs at once (each is mostly start-up time)."""
        jobs = {
            "text": ["--input", str(self.work / "corpus" / "text.jsonl"), "--append-eod"],
            "code": ["--input", str(self.work / "corpus" / "code.jsonl"), "--append-eod"],
            "math": ["--input", str(self.work / "math" / "train.jsonl"), "--chatml"],
        }
        procs = {name: self.start(f"preprocess_{name}", [sys.executable, "tools/preprocess_data.py", *args,
                                                          "--output-prefix", str(self.work / "data" / name),
                                                          "--log-interval", "0"])
                 for name, args in jobs.items()}
        for name, (proc, log) in procs.items():
            self.check(f"preprocess_{name}", proc, log)
            counts = [line for line in log.read_text().splitlines() if line.startswith("documents")]
            print(f"  {name}: {counts[0] if counts else 'done'} (log: {log})")

    def train(self, name: str, module: str, global_batch_size: int, flags: list[str]) -> list[dict]:
        """torchrun, 2 processes, TP2 over gloo (so data parallel 1: one micro-batch per step);
        prints the metrics file's lines as they come."""
        metrics = self.work / "metrics" / f"{name}.jsonl"
        s = self.size
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", module, *MODEL_FLAGS, "--tensor-model-parallel-size", "2",
               "--micro-batch-size", str(global_batch_size), "--global-batch-size", str(global_batch_size),
               "--log-interval", str(s.log_interval), "--eval-interval", str(s.eval_interval),
               "--eval-iters", str(s.eval_iters), "--metrics-file", str(metrics),
               "--data-cache-path", str(self.work / "cache"), "--save", str(self.work / "ckpt" / name), *flags]
        print("  $ torchrun " + " ".join(cmd[3:]), flush=True)
        proc, log = self.start(name, cmd)
        seen = 0
        while proc.poll() is None:
            time.sleep(1)
            seen = _print_new_records(name, metrics, seen, s.log_interval)
        _print_new_records(name, metrics, seen, s.log_interval)
        self.check(name, proc, log)
        return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]

    def evaluate(self, name: str, checkpoint: str) -> dict:
        out = self.work / f"eval_{name}.json"
        self.run(f"eval_{name}", [sys.executable, str(HERE / "evaluate_arithmetic.py"), "--checkpoint", checkpoint,
                                  "--problems", str(self.work / "math" / "heldout.jsonl"), "--output", str(out)])
        result = json.loads(out.read_text())
        print(f"  accuracy: {result['accuracy']:.1%} ({result['correct']}/{result['total']})")
        for ex in result["examples"][:3]:
            print(f"    {ex['question']} -> {ex['prediction']!r} (answer {ex['answer']})")
        return result

    def plot(self) -> Path:
        png = self.work / "metrics.png"
        files = [str(self.work / "metrics" / f"{n}.jsonl") for n in ("pretrain", "code", "sft")]
        print(self.run("plot", [sys.executable, "tools/plot_metrics.py", "--metrics-file", *files,
                                "--labels", "base pretraining", "Code-Qwen", "Math SFT", "--output", str(png)]).strip()
              .splitlines()[-1])
        return png


def _print_new_records(name: str, metrics: Path, seen: int, every: int) -> int:
    """Print the records after the first ``seen``: each evaluation, and every ``every``-th step
    (the metrics file has one record per step). Returns the number of records now seen."""
    if not metrics.exists():
        return seen
    lines = metrics.read_text().split("\n")[:-1]  # complete lines only: the run may be mid-write
    for line in lines[seen:]:
        r = json.loads(line)
        if "validation_loss" in r:
            print(f"  [{name}] iteration {r['iteration']:4d}  validation loss {r['validation_loss']:.3f}", flush=True)
        elif r["iteration"] % every == 0:
            print(f"  [{name}] iteration {r['iteration']:4d}  lm loss {r['lm_loss']:.3f}  lr {r['lr']:.2e}  "
                  f"{r['tokens_per_sec_per_gpu']:.0f} tokens/s/GPU", flush=True)
    return len(lines)


def validation_losses(records: list[dict]) -> list[tuple[int, float]]:
    return [(r["iteration"], r["validation_loss"]) for r in records if r.get("validation_loss") is not None]


def prepare_workdir(workdir: Path) -> None:
    """Start from an empty workdir, so stale shards or checkpoints never leak into a run."""
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / MARKER).exists():
            raise DemoError(f"--workdir {workdir} is not empty and was not made by the demo; "
                            "pass an empty or new directory")
        shutil.rmtree(workdir)
    for sub in ("logs", "metrics", "ckpt"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).touch()


def run_demo(workdir: Path, size: DemoSize, record: bool = False) -> dict:
    t0 = time.monotonic()
    prepare_workdir(workdir)
    demo = Demo(workdir, size)
    w, s = workdir, size
    ckpt = w / "ckpt"
    data = w / "data"
    demo.stage("tokenizer (tools/fetch_tokenizer.py, once)", demo.fetch_tokenizer)
    demo.stage("corpus and arithmetic problems", demo.build_data)
    demo.stage("preprocess (tools/preprocess_data.py)", demo.preprocess)
    base = demo.stage("base pretraining (megatron_qwen.pretrain)", demo.train, "pretrain", "megatron_qwen.pretrain",
                      s.global_batch_size, [
        "--data-path", "0.7", str(data / "text_text_document"), "0.3", str(data / "code_text_document"),
        "--split", "95,5,0", "--seq-length", str(s.seq_length), "--train-iters", str(s.pretrain_iters),
        "--lr", "2e-3", "--min-lr", "2e-4", "--lr-warmup-iters", str(max(1, s.pretrain_iters // 10))])
    code = demo.stage("Code-Qwen continued pretraining (megatron_qwen.pretrain_code)", demo.train, "code",
                      "megatron_qwen.pretrain_code", s.global_batch_size // 2, [
        "--load", str(ckpt / "pretrain"), "--data-path", str(data / "code_text_document"), "--split", "95,5,0",
        # twice the base context at half the sequences: the same tokens per step
        "--seq-length", str(2 * s.seq_length), "--train-iters", str(s.code_iters), "--lr", "1e-3"])
    before = demo.stage("held-out arithmetic before SFT (Code-Qwen checkpoint)", demo.evaluate, "before_sft",
                        str(ckpt / "code"))
    sft = demo.stage("Math SFT (megatron_qwen.sft_math)", demo.train, "sft", "megatron_qwen.sft_math",
                     s.global_batch_size, [
        "--load", str(ckpt / "code"), "--data-path", str(data / "math_messages_document"), "--split", "98,2,0",
        # A tiny model and a short run: a high LR, a short warmup and no dropout (the recipe's are for 7B).
        "--seq-length", str(s.seq_length), "--train-iters", str(s.sft_iters), "--lr", "2e-3",
        "--lr-warmup-iters", str(max(1, s.sft_iters // 10)), "--hidden-dropout", "0", "--attention-dropout", "0"])
    after = demo.stage("held-out arithmetic after SFT", demo.evaluate, "after_sft", str(ckpt / "sft"))
    png = demo.stage("plot (tools/plot_metrics.py)", demo.plot)

    total = time.monotonic() - t0
    summary = {"validation_loss": {n: validation_losses(r) for n, r in
                                   (("pretrain", base), ("code", code), ("sft", sft))},
               "accuracy": {"before_sft": before["accuracy"], "after_sft": after["accuracy"],
                               "heldout_problems": after["total"]},
               "plot": str(png), "seconds": round(total, 1), "stages": dict(demo.timings)}
    (w / "summary.json").write_text(json.dumps(summary, indent=1))
    figures = [environment_line(demo.sources), *figure_lines(summary, before, after, s.loss_decimals)]
    (w / FIGURES).write_text("\n".join(figures) + "\n")
    if record:
        (HERE / RECORDED[size.name]).write_text("\n".join(figures) + "\n")
    print_summary(summary, figures)
    return summary


def cpu_kernels() -> str:
    """The processor's vendor and the kernels the stages run: ATen's capability as torch reports it under CPU_PINS
    (a processor without AVX2 reports less), and MKL's reproducibility branch."""
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                           capture_output=True, text=True, env={**os.environ, **CPU_PINS}, check=True)
    vendor = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("vendor_id")), "unknown vendor") if Path("/proc/cpuinfo").exists() else "?"
    return f"{vendor}, ATen {probe.stdout.strip()}, MKL_CBWR {CPU_PINS['MKL_CBWR']}"


def environment_line(sources: list[str]) -> str:
    """What the figures depend on besides the code: they repeat exactly, whatever the load, where this line is
    the same (the corpus is read from the interpreter's own files; fortunes-zh adds a Chinese part)."""
    return (f"Python {platform.python_version()}, torch {version('torch')}, megatron-core {version('megatron-core')}, "
            f"{platform.machine()} ({cpu_kernels()}); corpus: {', '.join(sources)}")


def figure_lines(summary: dict, before: dict, after: dict, decimals: int) -> list[str]:
    """The demo's results as README.md quotes them: validation losses, then the harness's accuracy."""
    names = {"pretrain": "base pretraining", "code": "Code-Qwen", "sft": "Math SFT"}
    lines = []
    for key, losses in summary["validation_loss"].items():
        if losses:
            (i0, first), (i1, last) = losses[0], losses[-1]
            lines.append(f"{names[key]:17s} validation loss {first:.{decimals}f} (iteration {i0}) -> "
                         f"{last:.{decimals}f} (iteration {i1})")
        else:
            lines.append(f"{names[key]:17s} no validation loss recorded")
    lines.append(f"held-out arithmetic, GSM8K chat protocol (Qwen's) accuracy {before['accuracy']:.1%} "
                 f"({before['correct']}/{before['total']}) before SFT -> {after['accuracy']:.1%} "
                 f"({after['correct']}/{after['total']}) after SFT")
    return lines


def print_summary(summary: dict, figures: list[str]) -> None:
    print("\n== results ==")
    for line in figures:
        print(f"  {line}")
    print(f"  plot: {summary['plot']}")
    print(f"  total time: {summary['seconds'] / 60:.1f} min ({summary['seconds']:.0f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/demo", help="where data, checkpoints, logs and the plot go "
                        "(wiped and rebuilt if it holds an earlier demo run)")
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (smoke test)")
    parser.add_argument("--record", action="store_true",
                        help="also write the figures to examples/demo/figures.txt (figures-quick.txt with --quick), "
                        "which README.md quotes and tests/test_demo.py checks; commit both after any change")
    args = parser.parse_args()
    try:
        run_demo(Path(args.workdir).resolve(), QUICK if args.quick else FULL, args.record)
    except DemoError as e:
        print(f"run_demo: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
