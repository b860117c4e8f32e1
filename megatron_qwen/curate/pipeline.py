"""The curation pipeline as datatrove stages, and the executors that run them.

    raw jsonl (text or HTML) -> 1_extract -> 2_exact -> 3_fuzzy -> 4_quality -> 5_decont -> 6_upsample
                             -> shards/curated_<source>-<task>_text_document.{bin,idx}

Each step reads the previous step's folder (jsonl.gz, one file per task) and writes its own, so a step
can be rerun alone and its removals are counted on their own; dedup steps have several stages (exact:
signature, find, filter; fuzzy: signature, buckets (one task per LSH band), cluster, filter). The same
stage list runs on one machine (LocalPipelineExecutor), as slurm array jobs chained by dependencies
(SlurmPipelineExecutor) or on Ray (RayPipelineExecutor): only the executor changes. A stage whose tasks
all completed is skipped on rerun (datatrove's completion markers in OUT/logs/<stage>/).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field

from datatrove.executor import LocalPipelineExecutor, RayPipelineExecutor, SlurmPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.stats import PipelineStats

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.curate import decont, exact, fuzzy, quality, upsample
from megatron_qwen.curate.extract import HtmlExtraction, LanguageTagger, make_extractor
from megatron_qwen.curate.raw_reader import RawJsonlReader, bad_records
from megatron_qwen.curate.to_shards import TokenizeShards
from megatron_qwen.data.preprocess import PreprocessSettings, plan_shards
from megatron_qwen.data.shards import TEXT_KEY, read_index_counts
from megatron_qwen.data.sources import expand_inputs, shard_names

STEPS = ("extract", "exact", "fuzzy", "quality", "decont", "upsample", "tokenize")
FOLDERS = {step: f"{i}_{step}" for i, step in enumerate(STEPS[:-1], 1)}


@dataclass
class CurateConfig:
    inputs: list[str]
    output: str
    text_key: str = "text"
    html_key: str = "html"  # a record without `text_key` but with this key is HTML: its main text is extracted
    extractor: str = "resiliparse"
    languages: list[str] | None = None  # keep only these (ISO 639-1); None: keep all, tagged
    fuzzy: fuzzy.FuzzySettings = field(default_factory=fuzzy.FuzzySettings)
    quality_config: str = quality.DEFAULT_RULES_FILE
    quality_scorer: str | None = None  # 'module:function', text -> score
    eval_data: list[str] = field(default_factory=list)
    upsample: dict[str, float] = field(default_factory=dict)
    upsample_mode: str = "repeat"  # or "blend"
    tokenizer_model: str | None = None
    tasks: int | None = None  # tasks per stage; None: one per input file

    def folder(self, *parts: str) -> str:
        return os.path.join(self.output, *parts)


def raw_reader(cfg: CurateConfig) -> tuple[RawJsonlReader, int]:
    files = expand_inputs(cfg.inputs)
    if any(f.endswith(".parquet") for f in files):
        raise ConfigError(f"--input {cfg.inputs}: curation reads jsonl (.jsonl, .jsonl.gz, .jsonl.zst), not parquet")
    root = os.path.commonpath([os.path.dirname(f) for f in files])
    relative = [os.path.relpath(f, root) for f in files]
    os.makedirs(cfg.folder("work"), exist_ok=True)
    paths_file = cfg.folder("work", "inputs.txt")
    with open(paths_file, "w") as f:
        f.write("\n".join(relative) + "\n")
    reader = RawJsonlReader(root, paths_file, cfg.text_key, cfg.html_key, dict(zip(relative, shard_names(files))),
                            cfg.folder("logs", "extract"))
    return reader, len(files)


def count_by_reason(located: list[str]) -> str:
    """'invalid UTF-8 2, not a JSON object 1' of located bad records ("FILE:LINE: reason")."""
    reasons = Counter(line.rsplit(": ", 1)[1] for line in located)
    return ", ".join(f"{reason} {n:,}" for reason, n in reasons.most_common())


def skipped_records(cfg: CurateConfig, shown: int = 20) -> str:
    """The extract step's bad records as tools/preprocess_data.py reports them: their count by reason, then
    the first ``shown`` located (file:line: reason); empty when there were none."""
    located = bad_records(cfg.folder("logs", "extract"))
    if not located:
        return ""
    lines = [f"skipped records: {len(located):,} ({count_by_reason(located)})"]
    return "\n".join(lines + [f"  {line}" for line in located[:shown]])


def describe_raw_input(cfg: CurateConfig) -> str:
    """Why the raw input gave no document: its bad records counted by reason, with the first one located
    (file:line), or that it holds no record at all."""
    located = bad_records(cfg.folder("logs", "extract"))
    if not located:
        return "the files hold no record (one JSON object per line)"
    return (f"every record is bad ({count_by_reason(located)}; the first: {located[0]}); expected one JSON object "
            f"per line with --text-key {cfg.text_key} or --html-key {cfg.html_key}")


def step_input_files(cfg: CurateConfig, step: str) -> list[str]:
    """The documents a step reads when run alone: the previous step's output."""
    return glob.glob(cfg.folder(FOLDERS[STEPS[STEPS.index(step) - 1]], "**", "*.jsonl.gz"), recursive=True)


def reader(cfg: CurateConfig, step: str) -> JsonlReader:
    return JsonlReader(cfg.folder(FOLDERS[step]), glob_pattern="*.jsonl.gz", recursive=False)


def writer(cfg: CurateConfig, step: str, filename: str = "${rank}.jsonl.gz") -> JsonlWriter:
    return JsonlWriter(cfg.folder(FOLDERS[step]), output_filename=filename, expand_metadata=True)


@dataclass
class Stage:
    name: str  # "<step>" or "<step>_<part>"; its logs go to OUT/logs/<name>
    step: str
    pipeline: list
    tasks: int


def build_stages(cfg: CurateConfig, steps: tuple[str, ...] = STEPS) -> list[Stage]:
    """The stages of the chosen steps, in order. A step reads the folder of the step before it in STEPS."""
    if cfg.upsample_mode not in ("repeat", "blend"):
        raise ConfigError(f"--upsample-mode {cfg.upsample_mode}: expected repeat or blend")
    rules = quality.load_rules(cfg.quality_config)
    scorer = quality.load_scorer(cfg.quality_scorer) if cfg.quality_scorer else None
    if scorer and all(r.min_score is None for r in rules.values()):
        raise ConfigError(f"--quality-scorer {cfg.quality_scorer}: set min_score in --quality-config "
                          f"{cfg.quality_config} (documents scoring under it are dropped)")
    if "extract" in steps:
        raw, files = raw_reader(cfg)
    else:  # a step run alone: as many tasks as the files its input folder holds
        raw, files = None, len(step_input_files(cfg, steps[0]))
    tasks = cfg.tasks or max(files, 1)
    stages = []
    for step in steps:
        if step == "extract":
            stages.append(Stage("extract", step, [raw, HtmlExtraction(make_extractor(cfg.extractor)),
                                                  LanguageTagger(cfg.languages), writer(cfg, step)], tasks))
        elif step == "exact":
            stages += exact_stages(cfg, tasks)
        elif step == "fuzzy":
            stages += fuzzy_stages(cfg, tasks)
        elif step == "quality":
            stages.append(Stage("quality", step, [reader(cfg, "fuzzy"), quality.QualityFilter(rules, scorer),
                                                  writer(cfg, step)], tasks))
        elif step == "decont":
            if cfg.eval_data:
                index = cfg.folder("work", "decont")
                stages.append(Stage("decont_index", step, [decont.EvalNgramIndexer(cfg.eval_data, index)], 1))
                check = [decont.decont_filter(index)]
            else:
                check = []  # no evaluation sets: the step copies its input
            stages.append(Stage("decont", step, [reader(cfg, "quality"), *check, writer(cfg, step)], tasks))
        elif step == "upsample":
            repeat = [upsample.Upsampler(cfg.upsample)] if cfg.upsample_mode == "repeat" else []
            stages.append(Stage("upsample", step, [reader(cfg, "decont"), *repeat,
                                                   writer(cfg, step, "${source}/${rank}.jsonl.gz")], tasks))
        elif step == "tokenize":
            stages.append(Stage("tokenize", step, [TokenizeShards(cfg.folder(FOLDERS["upsample"]),
                                                                  cfg.folder("shards", "curated"),
                                                                  cfg.tokenizer_model)], tasks))
        else:
            raise ConfigError(f"unknown step {step!r}; steps: {', '.join(STEPS)}")
    return stages


def exact_stages(cfg: CurateConfig, tasks: int) -> list[Stage]:
    """Exact dedup: each document's signature, the duplicates among all of them (one task), the filter."""
    sigs, dups = cfg.folder("work", "exact_sigs"), cfg.folder("work", "exact_dups")
    return [Stage("exact_signature", "exact", [reader(cfg, "extract"), exact.exact_signature(sigs)], tasks),
            Stage("exact_find", "exact", [exact.exact_find(sigs, dups)], 1),
            Stage("exact_filter", "exact", [reader(cfg, "extract"), exact.exact_filter(dups), writer(cfg, "exact")],
                  tasks)]


def fuzzy_stages(cfg: CurateConfig, tasks: int) -> list[Stage]:
    """MinHash dedup: signatures, LSH buckets (one task per band), verified clusters (one task), the filter."""
    fz = cfg.fuzzy
    bands, _ = fz.band_rows()
    sigs, buckets, remove = (cfg.folder("work", name) for name in ("minhash_sigs", "minhash_buckets", "minhash_remove"))
    return [Stage("fuzzy_signature", "fuzzy", [reader(cfg, "exact"), fuzzy.MinhashSignature(sigs, fz)], tasks),
            Stage("fuzzy_buckets", "fuzzy", [fuzzy.minhash_buckets(sigs, buckets, fz)], bands),
            Stage("fuzzy_cluster", "fuzzy", [fuzzy.VerifiedMinhashCluster(sigs, buckets, remove, fz)], 1),
            Stage("fuzzy_filter", "fuzzy", [reader(cfg, "exact"), fuzzy.minhash_filter(remove), writer(cfg, "fuzzy")],
                  tasks)]


@dataclass
class ExecutorSettings:
    kind: str = "local"  # local, slurm or ray
    workers: int = -1  # local: concurrent tasks (-1: all); slurm: max concurrent array tasks
    partition: str | None = None
    time: str = "24:00:00"
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    env_command: str | None = None  # slurm: e.g. "source /path/venv/bin/activate"
    sbatch_args: dict = field(default_factory=dict)


def make_executors(stages: list[Stage], output: str, opts: ExecutorSettings) -> list:
    """One datatrove executor per stage, each depending on the one before it."""
    executors = []
    for stage in stages:
        common = dict(pipeline=stage.pipeline, tasks=stage.tasks, logging_dir=os.path.join(output, "logs", stage.name),
                      depends=executors[-1] if executors else None)
        if opts.kind == "local":
            workers = min(opts.workers if opts.workers > 0 else os.cpu_count() or 1, stage.tasks)
            executors.append(LocalPipelineExecutor(workers=workers, start_method="fork", **common))
        elif opts.kind == "slurm":
            if not opts.partition:
                raise ConfigError("--executor slurm needs --partition")
            executors.append(SlurmPipelineExecutor(
                job_name=f"curate_{stage.name}", partition=opts.partition, time=opts.time,
                cpus_per_task=opts.cpus_per_task, mem_per_cpu_gb=opts.mem_per_cpu_gb, workers=opts.workers,
                env_command=opts.env_command, sbatch_args=opts.sbatch_args, **common))
        elif opts.kind == "ray":
            try:
                import ray  # noqa: F401
            except ImportError:
                raise ConfigError("--executor ray needs ray: pip install 'ray[default]'") from None

            executors.append(RayPipelineExecutor(workers=opts.workers, cpus_per_task=opts.cpus_per_task,
                                                 mem_per_cpu_gb=opts.mem_per_cpu_gb, **common))
        else:
            raise ConfigError(f"--executor {opts.kind}: expected local, slurm or ray")
    return executors


class StageFailed(RuntimeError):
    """A stage finished with failed tasks, or kept no document; the message names the stage and what to look at."""


def run(executors: list, cfg: CurateConfig | None = None, stages: list[Stage] | None = None) -> None:
    """Runs every stage: locally one after the other, stopping at a stage with a failed task (datatrove's
    own chaining would wait for it forever) or, with `cfg` and `stages` given, at a step that kept no
    document (the next step would only fail to find its input); elsewhere the last executor submits the
    whole chain."""
    if executors and not isinstance(executors[-1], LocalPipelineExecutor):
        executors[-1].run()
        return
    for i, executor in enumerate(executors):
        executor.depends = None  # the stages before it have run
        logs = executor.logging_dir.resolve_paths("logs")
        try:
            executor.run()
        except Exception as e:  # a task's error, whatever its type; its traceback is in the task's log
            raise StageFailed(f"{type(e).__name__}: {e} (task logs: {logs})") from e
        failed = executor.get_incomplete_ranks()
        if failed:
            raise StageFailed(f"{len(failed)} task(s) failed (ranks {failed[:10]}); task logs: {logs}")
        if cfg is not None and stages is not None and kept_nothing(cfg, stages[i]):
            # A rerun on fixed input must redo this stage rather than skip it as complete.
            shutil.rmtree(executor.logging_dir.resolve_paths("completions"), ignore_errors=True)
            raise StageFailed(nothing_kept_message(cfg, stages[i]))


def kept_nothing(cfg: CurateConfig, stage: Stage) -> bool:
    """A stage that writes its step's folder and left no document there (datatrove writes no file then)."""
    stats = stage_stats(cfg.output, stage.name)
    writes = bool(stats) and "WRITER" in stats[-1]["name"]
    return writes and not glob.glob(cfg.folder(FOLDERS[stage.step], "**", "*.jsonl.gz"), recursive=True)


def nothing_kept_message(cfg: CurateConfig, stage: Stage) -> str:
    [(_, read, _, details)] = summary(cfg.output, [stage.name])
    if stage.name == "extract" and read == 0:
        return f"--input {' '.join(cfg.inputs)}: no document read: {describe_raw_input(cfg)}"
    reasons = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(details.items()) if k.startswith(("dropped_",
                                                                                          "contaminated_")))
    return (f"{stage.step}: kept no document of {read:,} ({reasons or 'see the stage logs'}); nothing is left to "
            f"curate (logs: {cfg.folder('logs', stage.name)})")


# --- the summary ---------------------------------------------------------------------------------------
def _value(stat) -> float:
    return stat["total"] if isinstance(stat, dict) else stat


def stage_stats(output: str, stage: str) -> list[dict] | None:
    """datatrove's statistics of a stage (a list, one entry per pipeline step), summed over its tasks' own
    files (stats/<task>.json): the stats.json a run merges holds only the tasks that run ran, so after a
    resume it would miss the tasks completed before."""
    tasks = sorted(glob.glob(os.path.join(output, "logs", stage, "stats", "*.json")))
    if not tasks:
        return None
    total = PipelineStats()
    for path in tasks:
        with open(path) as f:
            total += PipelineStats.from_json(json.load(f))
    return json.loads(total.to_json())


def summary(output: str, stage_names: list[str]) -> list[tuple[str, int, int, dict[str, float]]]:
    """Per stage that reads and writes documents: (stage, documents in, documents out, details), where
    details are its removals by reason and its other counts (languages, benchmarks matched, copies)."""
    rows = []
    for name in stage_names:
        stats = stage_stats(output, name)
        if not stats or "WRITER" not in stats[-1]["name"]:
            continue  # a stage that writes no documents (signatures, indexes, shards)
        read = int(_value(stats[0]["stats"].get("documents", 0)))
        written = int(_value(stats[-1]["stats"].get("total", 0)))
        details = {key: _value(value) for step in stats for key, value in step["stats"].items()
                   if key.startswith(("dropped_", "contaminated_", "lang_", "copies_", "extracted", "bad_"))}
        rows.append((name, read, written, details))
    return rows


def format_summary(rows) -> str:
    lines = [f"{'stage':<16} {'in':>10} {'out':>10} {'removed':>10}  details"]
    for name, read, written, details in rows:
        text = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(details.items()))
        change = f"{read - written:,}" if read >= written else f"+{written - read:,} added"
        lines.append(f"{name:<16} {read:>10,} {written:>10,} {change:>10}  {text}")
    return "\n".join(lines)


def data_path(cfg: CurateConfig) -> list[tuple[float, str]]:
    """(weight, prefix) of every curated shard for `--data-path`: with --upsample-mode blend, a source's
    weight times its shard's tokens (weight 1: the natural share); with repeat (already upsampled), tokens."""
    opts = PreprocessSettings(keys=(TEXT_KEY,))
    files = expand_inputs([cfg.folder(FOLDERS["upsample"])])
    pairs = []
    for task in plan_shards(files, cfg.folder("shards", "curated"), opts):
        source = os.path.basename(os.path.dirname(task.input_path))
        weight = cfg.upsample.get(source, 1.0) if cfg.upsample_mode == "blend" else 1.0
        pairs.append((weight * read_index_counts(task.prefixes[0])[1], task.prefixes[0]))
    return pairs
