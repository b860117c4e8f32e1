"""Step 7: the curated jsonl to Megatron shards, with tools/preprocess_data.py's library functions; a
pipeline step so that every executor runs it (task i takes shards[i::tasks])."""

from __future__ import annotations

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from megatron_qwen.data.preprocess import PreprocessSettings, plan_shards, run_shards
from megatron_qwen.data.shards import TEXT_KEY
from megatron_qwen.data.sources import expand_inputs
from megatron_qwen.tokenizer import load_tokenizer


class TokenizeShards(PipelineStep):
    name = "tokenize (preprocess_data)"
    type = "🔢 - TOKENIZE"

    def __init__(self, input_folder: str, output_prefix: str, tokenizer_model: str | None = None):
        super().__init__()
        self.input_folder = input_folder
        self.output_prefix = output_prefix
        self.tokenizer_model = tokenizer_model

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        opts = PreprocessSettings(keys=(TEXT_KEY,), append_eod=True, threads=1)
        tasks = plan_shards(expand_inputs([self.input_folder]), self.output_prefix, opts, rank, world_size)
        result = run_shards(tasks, opts, load_tokenizer(self.tokenizer_model), workers=1, log_interval=0)
        self.stat_update("documents", value=result.stats.documents)
        self.stat_update("tokens", value=result.stats.tokens)
        if result.failed:
            raise RuntimeError(f"tokenizing failed: {'; '.join(result.failed)}")
        return iter(())
