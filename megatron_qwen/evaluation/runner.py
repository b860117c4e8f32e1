"""One evaluation: the model as a Hugging Face directory, lm-eval's tasks on the local files, the scores
beside the published ones. lm-eval's `hf` back end (transformers) on the export is the one model path."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass

from megatron_qwen.checkpointing.resolver import HF_KINDS, Kind, Use, resolve
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.evaluation.benchmarks import Benchmark, select
from megatron_qwen.evaluation.fewshot_rows import check_fewshot_rows
from megatron_qwen.evaluation.local_data import check_data
from megatron_qwen.evaluation.output_mode import input_files, open_no_looser
from megatron_qwen.evaluation.published import MODEL_NAMES, SIZES, published_for, size_of
from megatron_qwen.evaluation.sandbox import MEMORY_ENV, TIMEOUT_ENV, SandboxLimits, check_sandbox_available
from megatron_qwen.evaluation.task_configs import Protocol, protocol, write_task_configs
from megatron_qwen.hf.relayout import relayout_hf


@dataclass
class EvalConfig:
    load: str
    data_dir: str
    tasks: list[str]
    limit: float | None = None
    batch_size: int = 8
    output: str | None = None
    chat: bool = False
    protocol: str = "qwen"
    published: str = "qwen"
    allow_code_execution: bool = False
    device: str = "cpu"
    dtype: str = "auto"
    max_gen_toks: int | None = None
    code_timeout: float = 10.0
    code_memory_mb: int = 1024


def check_inputs(cfg: EvalConfig) -> tuple[list[Benchmark], Protocol]:
    """Every check that needs no model: tasks, protocol, published table, sandbox limits, data files, code
    execution, the model's place."""
    benchmarks, proto = select(cfg.tasks), protocol(cfg.protocol, cfg.chat)
    published_for(cfg.published, cfg.chat)
    SandboxLimits(timeout_s=cfg.code_timeout, memory_mb=cfg.code_memory_mb)
    code = [b.name for b in benchmarks if b.code]
    if code and not cfg.allow_code_execution:
        raise ConfigError(f"--tasks {' '.join(code)} run the model's code: add --allow-code-execution (each sample "
                          "runs in a sandbox: docs/evaluation.md), or leave them out of --tasks")
    if code:
        check_sandbox_available()
    check_data(benchmarks, cfg.data_dir, proto.gsm8k_exemplar_file)
    check_fewshot_rows(benchmarks, cfg.data_dir, cfg.chat)
    resolve(cfg.load).check_for(Use.EVALUATE)  # reads config.json's fields: after the cheaper checks above
    return benchmarks, proto


def hf_model_dir(load: str, scratch: str) -> str:
    """``load`` as a directory transformers reads with its tokenizer: as it is when it is a self-contained
    qwen2-layout export; otherwise written as one into ``scratch`` (a Hugging Face directory renamed tensor by
    tensor, a checkpoint of ours exported), without an export's decoding settings: lm-eval sets its own (a
    max_new_tokens in generation_config.json would override its max_gen_toks), and Qwen's evaluation
    turns the chat models' repetition penalty off."""
    source = resolve(load).check_for(Use.EVALUATE)
    if source.kind in HF_KINDS:
        if source.kind is Kind.HF_QWEN2 and os.path.isfile(os.path.join(load, "tokenizer.json")):
            return load

        print(f"[evaluate] {load}: {source.hf_layout} layout, converting to a self-contained qwen2 export",
              flush=True)
        relayout_hf(load, os.path.join(scratch, "hf"), "qwen2", decoding=False)
        return os.path.join(scratch, "hf")
    # deferred: the export builds the model: megatron-core takes seconds to import
    from megatron_qwen.hf.export import export_hf

    print(f"[evaluate] exporting {load} to a temporary Hugging Face directory", flush=True)
    export_hf(load, os.path.join(scratch, "hf"), "qwen2", decoding=False)
    return os.path.join(scratch, "hf")


def _lm_eval(cfg: EvalConfig, benchmarks: list[Benchmark], model_dir: str, include: str) -> dict:
    # deferred: lm-eval's tasks take seconds to import; the inputs are checked before
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    os.environ[TIMEOUT_ENV], os.environ[MEMORY_ENV] = str(cfg.code_timeout), str(cfg.code_memory_mb)
    gen_kwargs = {"max_gen_toks": cfg.max_gen_toks} if cfg.max_gen_toks else None
    return simple_evaluate(
        model="hf", model_args={"pretrained": model_dir, "dtype": cfg.dtype}, device=cfg.device,
        tasks=[b.lm_eval_name for b in benchmarks], task_manager=TaskManager(include_path=include,
                                                                              include_defaults=False),
        batch_size=cfg.batch_size, limit=cfg.limit, log_samples=True, apply_chat_template=cfg.chat,
        fewshot_as_multiturn=False, gen_kwargs=gen_kwargs, confirm_run_unsafe_code=cfg.allow_code_execution)


def headline_scores(benchmarks: list[Benchmark], results: dict, proto: Protocol, published: dict,
                    size: str | None) -> dict:
    """{benchmark: {title, shots, metric, score (percent), published: {size: [score, table] or None}}}."""
    scores = {}
    for b in benchmarks:
        row = results.get("groups", {}).get(b.lm_eval_name) or results["results"][b.lm_eval_name]
        scores[b.name] = {"title": b.title, "shots": 0 if proto.chat else b.shots,
                          "metric": proto.headline_key(b), "score": 100.0 * row[proto.headline_key(b)],
                          "published": {s: None if b.partial else published.get(s, {}).get(b.name)
                                        for s in ([size] if size else SIZES)}}
    return scores


def format_table(report: dict) -> str:
    """Each score beside the published ones of the model's size (every size when the shape is not published),
    each published number with its table."""
    size, scores = report["published_size"], report["scores"]
    sizes = [size] if size else list(SIZES)
    model = report["published_model"]
    head = (f"{'benchmark':<10} {'shots':>5} {'score':>7} "
            + " ".join(f"{model + '-' + s.upper():>{max(10, len(model) + 6)}}" for s in sizes) + "  published in")
    lines = [head, "-" * len(head)]
    for s in scores.values():
        cells = [s["published"][z] for z in sizes]
        pub = " ".join(f"{'-' if c is None else format(c[0], '.1f'):>{max(10, len(model) + 6)}}" for c in cells)
        tables = sorted({c[1] for c in cells if c is not None})
        lines.append(f"{s['title']:<10} {s['shots']:>5} {s['score']:>7.1f} {pub}  {', '.join(tables) or '-'}")
    lines.append(f"(score: --protocol {report['settings']['protocol']}, lm-eval metric "
                 f"{', '.join(sorted({s['metric'] for s in scores.values()}))}, in percent; published: the Qwen "
                 "report, QWEN_TECHNICAL_REPORT.pdf of QwenLM/Qwen, docs/qwen.md section 10)")
    return "\n".join(lines)


def evaluate(cfg: EvalConfig) -> dict:
    benchmarks, proto = check_inputs(cfg)
    with tempfile.TemporaryDirectory(prefix="megatron_qwen_eval_") as scratch:
        model_dir = hf_model_dir(cfg.load, scratch)
        size = size_of(resolve(model_dir).hf_model)
        include = write_task_configs(benchmarks, cfg.data_dir, os.path.join(scratch, "tasks"), proto)
        out = _lm_eval(cfg, benchmarks, model_dir, include)
    report = {"settings": asdict(cfg), "published_size": size,
              "published_model": MODEL_NAMES[(cfg.published, cfg.chat)],
              "scores": headline_scores(benchmarks, out, proto, published_for(cfg.published, cfg.chat), size),
              "lm_eval": {k: out.get(k) for k in ("results", "groups", "n-shot", "versions", "higher_is_better")},
              "samples": out.get("samples", {})}
    if cfg.output:
        # deferred: lm-eval takes a second to import; the inputs are checked before
        from lm_eval.utils import handle_non_serializable

        os.makedirs(os.path.dirname(os.path.abspath(cfg.output)), exist_ok=True)
        with open_no_looser(cfg.output, input_files(benchmarks, cfg.data_dir, proto.gsm8k_exemplar_file)) as f:
            json.dump(report, f, indent=1, ensure_ascii=False, default=handle_non_serializable)
    return report
