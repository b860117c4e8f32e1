"""Plot training curves from --metrics-file JSONL logs to one PNG.

    python tools/plot_metrics.py --metrics-file runs/base.jsonl runs/code.jsonl --output curves.png

Three panels against the iteration: loss (training lm_loss as lines, validation_loss as markers),
learning rate, and throughput (tokens/s/GPU). Each file is one series, labelled by its file name
(or --labels). Lines are the JSON objects the training loop writes: step lines carry lm_loss, lr and
tokens_per_sec_per_gpu, evaluation lines carry validation_loss. A PPO run's lines (python -m megatron_qwen.ppo)
add eight panels: reward and normalised reward, KL to the reference, entropy, policy and value losses, their clip
fractions, response length, rollout tokens/s and the share of each iteration spent in rollouts.
"""

import argparse
import json
import os
import sys
from dataclasses import dataclass, field

from matplotlib.figure import Figure  # without pyplot: no GUI back end, files only


class MetricsFileError(ValueError):
    """A metrics file that cannot be plotted; the message names the file (and line)."""


@dataclass
class Series:
    label: str
    steps: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(iteration, value)]

    def add(self, metric: str, iteration: int, value) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self.steps.setdefault(metric, []).append((iteration, float(value)))


SERIES_SUFFIX = {"lm_loss": "train", "validation_loss": "validation"}  # legend: "<file> train"
PANELS = (  # (title, y label, metrics drawn as lines, metrics drawn as markers)
    ("loss", "loss", ("lm_loss",), ("validation_loss",)),
    ("learning rate", "lr", ("lr",), ()),
    ("throughput", "tokens/s/GPU", ("tokens_per_sec_per_gpu",), ()),
)
PPO_PANELS = (  # drawn when a file holds them (a PPO run's: docs/ppo.md)
    ("reward", "reward model score", ("reward", "normalized_reward"), ()),
    ("KL to the reference", "nats per response", ("kl",), ()),
    ("entropy", "nats per token", ("entropy",), ()),
    ("PPO losses", "loss", ("policy_loss", "value_loss"), ()),
    ("clip fractions", "share of tokens", ("policy_clip_fraction", "value_clip_fraction"), ()),
    ("response length", "tokens", ("response_length",), ()),
    ("rollout throughput", "generated tokens/s", ("rollout_tokens_per_sec",), ()),
    ("time split", "share of the iteration in rollouts", ("rollout_share",), ()),
)


def read_metrics(path: str, label: str) -> Series:
    if not os.path.isfile(path):
        raise MetricsFileError(f"--metrics-file {path}: no such file")
    series = Series(label)
    records = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise MetricsFileError(f"{path}:{lineno}: not valid JSON ({e.msg}); "
                                       "expected one JSON object per line") from None
            if not isinstance(record, dict) or not isinstance(record.get("iteration"), int):
                raise MetricsFileError(f"{path}:{lineno}: expected a JSON object with an integer "
                                       "\"iteration\" field")
            records += 1
            for _, _, lines, markers in PANELS + PPO_PANELS:
                for metric in lines + markers:
                    series.add(metric, record["iteration"], record.get(metric))
    if records == 0:
        raise MetricsFileError(f"--metrics-file {path}: empty; was the run started with --metrics-file "
                               "and did it reach its first --log-interval?")
    return series


def plot(series: list[Series], output: str) -> None:
    panels = PANELS + tuple(p for p in PPO_PANELS if any(m in s.steps for s in series for m in p[2]))
    columns = min(len(panels), 4)
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(6 * columns, 4.5 * rows))
    axes = fig.subplots(rows, columns, squeeze=False).flatten()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, (title, ylabel, lines, markers) in zip(axes, panels):
        for i, s in enumerate(series):
            for j, metric in enumerate(lines):
                if metric in s.steps:
                    x, y = zip(*s.steps[metric])
                    several = markers or len(lines) > 1
                    ax.plot(x, y, color=f"C{i}", linestyle="-" if j == 0 else ":",
                            label=f"{s.label} {SERIES_SUFFIX.get(metric, metric)}" if several else s.label)
            for metric in markers:
                if metric in s.steps:
                    x, y = zip(*s.steps[metric])
                    ax.plot(x, y, "o--", color=f"C{i}", markersize=4, label=f"{s.label} {SERIES_SUFFIX[metric]}")
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize="small")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics-file", nargs="+", required=True, help="JSONL files written by --metrics-file")
    parser.add_argument("--output", required=True, help="PNG to write")
    parser.add_argument("--labels", nargs="+", default=None, help="one legend label per file (default: file names)")
    args = parser.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.metrics_file):
        parser.error(f"--labels has {len(args.labels)} entries for {len(args.metrics_file)} --metrics-file files")
    labels = args.labels or [os.path.splitext(os.path.basename(p))[0] for p in args.metrics_file]
    try:
        series = [read_metrics(path, label) for path, label in zip(args.metrics_file, labels)]
    except MetricsFileError as e:
        print(f"plot_metrics: error: {e}", file=sys.stderr)
        return 1
    plot(series, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
