"""Raw corpora -> Megatron indexed shards: one shard per input file (or per byte range of a large
plain .jsonl), resumable and atomic.

The work is a pipeline over blocks of ~1 MiB of input: the reader reads and decompresses whole
lines, the encoder parses them (orjson), checks the records and encodes them (tiktoken, straight
into int32 arrays), and the writer appends each block's tokens to the shard with one write, in
input order. Encoding runs where the CPUs are:
- in this process, inline (one thread) or on a pool of threads (tiktoken releases the GIL);
- with at least as many shards as workers, each worker process takes whole shards;
- with fewer shards than workers (one big file), the worker processes share each shard's blocks
  and send the tokens back to this process, which writes them.
Several machines take slices of the shard list.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections import Counter, deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from megatron_qwen.data.preference import PAIR_FIELDS, encode_pairs, pair_record_checker
from megatron_qwen.data.progress import Progress
from megatron_qwen.data.shards import IndexedShardWriter, dataset_prefix, is_complete, is_loss_mask, loss_mask_prefix
from megatron_qwen.data.sources import (
    BadRecordError,
    Block,
    InputError,
    chat_record_checker,
    parse_block,
    read_blocks,
    shard_names,
    splittable,
    text_record_checker,
)
from megatron_qwen.tokenizer import DEFAULT_SYSTEM_PROMPT, QwenTokenizer
from megatron_qwen.tokenizer.chatml import encode_turns

MAX_EXAMPLES = 5  # bad records shown per shard


@dataclass(frozen=True)
class ShardTask:
    input_path: str
    prefixes: tuple[str, ...]  # text mode: one per key; chat mode: (tokens prefix,)
    input_size: int
    start: int = 0  # byte range [start, end) of a split plain .jsonl; end None: the whole file
    end: int | None = None


@dataclass(frozen=True)
class PreprocessSettings:
    keys: tuple[str, ...]
    chatml: bool = False
    append_eod: bool = False
    strict: bool = False
    threads: int = 2  # encoding threads per process
    default_system_prompt: str | None = DEFAULT_SYSTEM_PROMPT  # chat mode: given to conversations without one
    pair_format: str | None = None  # comparison pairs in this format (data/preference.py), one dataset "pairs"

    @property
    def columns(self) -> tuple[str, ...]:
        """The record fields read (a parquet file's columns)."""
        return PAIR_FIELDS[self.pair_format] if self.pair_format else self.keys


@dataclass
class ShardStats:
    documents: int = 0
    tokens: int = 0
    input_bytes: int = 0
    bad: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, other: "ShardStats") -> None:
        self.documents += other.documents
        self.tokens += other.tokens
        self.input_bytes += other.input_bytes
        self.bad.update(other.bad)
        self.examples += other.examples


def plan_shards(files: list[str], output_prefix: str, opts: PreprocessSettings, shard_index: int = 0,
                num_shards: int = 1, max_shard_bytes: int | None = None) -> list[ShardTask]:
    """The shards of this task's slice (shards[shard_index::num_shards]) of the sorted file list's shards.

    A file is one shard, except that a plain .jsonl over `max_shard_bytes` becomes ceil(size / max)
    byte ranges, shards `{name}_part00000`, ... Only file sizes decide, so every node plans alike."""
    names = shard_names(files)
    tasks = []
    for path, name in zip(files, names):
        size = os.path.getsize(path)
        if max_shard_bytes and size > max_shard_bytes and splittable(path):
            for part, start in enumerate(range(0, size, max_shard_bytes)):
                end = min(start + max_shard_bytes, size)
                prefixes = tuple(dataset_prefix(output_prefix, key, f"{name}_part{part:05d}") for key in opts.keys)
                tasks.append(ShardTask(path, prefixes, end - start, start, end))
        else:
            shard = name if len(files) > 1 else None  # one file keeps Megatron's plain naming
            tasks.append(ShardTask(path, tuple(dataset_prefix(output_prefix, key, shard) for key in opts.keys), size))
    return tasks[shard_index::num_shards]


def shard_outputs(task: ShardTask, opts: PreprocessSettings) -> list[str]:
    """Every dataset prefix the shard writes (chat mode adds the loss-mask dataset)."""
    return list(task.prefixes) + ([loss_mask_prefix(task.prefixes[0])] if opts.chatml else [])


def shard_is_done(task: ShardTask, opts: PreprocessSettings) -> bool:
    return all(is_complete(p) for p in shard_outputs(task, opts))


def remove_shards(tasks: list[ShardTask], opts: PreprocessSettings) -> None:
    """Deletes the tasks' datasets (.bin/.idx), so that a rerun redoes them instead of skipping them as complete."""
    for task in tasks:
        for prefix in shard_outputs(task, opts):
            for suffix in (".idx", ".bin"):  # the index first: without it the shard is not complete
                Path(prefix + suffix).unlink(missing_ok=True)


def nothing_kept(stats: ShardStats, opts: PreprocessSettings) -> str:
    """Why a run kept no document: its skipped records by reason with the first one located, or none at all."""
    expected = f"records with a {opts.keys[0]!r} {'conversation' if opts.chatml else 'string'}" if len(
        opts.keys) == 1 else f"records with the keys {', '.join(opts.keys)}"
    if opts.pair_format:
        expected = f"comparison records of --pair-format {opts.pair_format}"
    if not stats.bad:
        return f"no document kept: the input holds no record (expected one JSON object per line, {expected})"
    reasons = ", ".join(f"{reason} {n:,}" for reason, n in stats.bad.most_common())
    return (f"no document kept: every record was skipped ({reasons}; the first: {stats.examples[0]}); "
            f"expected {expected} (--json-keys)")


# --- encoding one block (in a thread or a worker process) ---------------------------------------
@dataclass
class EncodedBlock:
    outputs: list[tuple[np.ndarray, np.ndarray]]  # (data, document lengths) per dataset of shard_outputs
    documents: int
    tokens: int  # of the (first) token dataset
    bad: list[tuple[int | str, str]]
    input_bytes: int
    position: int


def _encode_texts(tokenizer: QwenTokenizer, texts: list[str], append_eod: bool) -> tuple[np.ndarray, np.ndarray]:
    arrays = [tokenizer.tokenize_array(t) for t in texts]
    lengths = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))
    if append_eod:
        eod = np.array([tokenizer.eod], dtype=np.int32)
        arrays = [x for a in arrays for x in (a, eod)]
        lengths += 1
    return np.concatenate(arrays), lengths


class BlockEncoder:
    """Block of input -> EncodedBlock: parse, check, encode."""

    def __init__(self, tokenizer: QwenTokenizer, opts: PreprocessSettings):
        self.tokenizer, self.opts = tokenizer, opts
        self.check = (pair_record_checker(opts.pair_format) if opts.pair_format else
                      chat_record_checker(opts.keys[0]) if opts.chatml else text_record_checker(list(opts.keys)))

    def __call__(self, block: Block) -> EncodedBlock:
        batch = parse_block(block, self.check)
        outputs = []
        if batch.records and self.opts.pair_format:
            outputs = [encode_pairs(batch.records, self.tokenizer, self.opts.default_system_prompt)]
        elif batch.records and self.opts.chatml:
            outputs = self._encode_chats(batch.records)
        elif batch.records:
            outputs = [_encode_texts(self.tokenizer, [r[k] for r in batch.records], self.opts.append_eod)
                       for k in range(len(self.opts.keys))]
        # documents: the sequences of the (first) dataset, two per pair
        return EncodedBlock(outputs, len(outputs[0][1]) if outputs else 0, outputs[0][0].size if outputs else 0,
                            batch.bad, block.input_bytes, block.position)

    def _encode_chats(self, conversations: list) -> list[tuple[np.ndarray, np.ndarray]]:
        ids: list[int] = []
        mask: list[int] = []
        lengths = []
        for turns in conversations:
            conv_ids, conv_mask = encode_turns(turns, self.tokenizer, self.opts.default_system_prompt)
            ids += conv_ids
            mask += conv_mask
            lengths.append(len(conv_ids))
        lengths = np.array(lengths, dtype=np.int64)
        return [(np.array(ids, dtype=np.int32), lengths), (np.array(mask, dtype=np.uint8), lengths)]


# --- where blocks are encoded ---------------------------------------------------------------------
class InlineExecutor(Executor):
    """Runs work at once in the calling thread. With one encoding thread per process this avoids
    every GIL handoff between threads, which on a busy machine (every handoff waits for the OS to
    reschedule a thread) costs more than the overlap wins: use processes (--workers) instead."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def make_encode_pool(threads: int) -> Executor:
    return ThreadPoolExecutor(threads) if threads > 1 else InlineExecutor()


def _in_order(submit: Callable[[object], Future], items: Iterable, in_flight: int) -> Iterator:
    """Results of submit(item) for each item, in order, with at most `in_flight` submitted ahead."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(submit(item))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class LocalEncoding:
    """Blocks encoded in this process, inline or by `threads` threads."""

    def __init__(self, encoder: BlockEncoder, threads: int):
        self.encoder, self.threads = encoder, threads
        self.pool = make_encode_pool(threads)

    def map(self, blocks: Iterable[Block]) -> Iterator[EncodedBlock]:
        return _in_order(partial(self.pool.submit, self.encoder), blocks, 2 * self.threads)

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


_worker: dict = {}  # per-process state of worker processes, inherited at fork


def _init_block_worker(encoder: BlockEncoder, threads: int) -> None:
    _worker["encoding"] = LocalEncoding(encoder, threads)


def _encode_in_worker(blocks: list[Block]) -> list[EncodedBlock]:
    return list(_worker["encoding"].map(blocks))


def _groups(blocks: Iterable[Block], size: int) -> Iterator[list[Block]]:
    group = []
    for block in blocks:
        group.append(block)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


class WorkerEncoding:
    """Blocks encoded by `workers` processes of `threads` threads each, the tokens sent back here:
    for shards fewer than the workers (one big file), which would leave CPUs idle otherwise."""

    def __init__(self, encoder: BlockEncoder, workers: int, threads: int):
        self.workers, self.threads = workers, threads
        # fork: the workers inherit the loaded tokenizer instead of unpickling it.
        self.pool = ProcessPoolExecutor(workers, multiprocessing.get_context("fork"), initializer=_init_block_worker,
                                        initargs=(encoder, threads))

    def map(self, blocks: Iterable[Block]) -> Iterator[EncodedBlock]:
        # A worker takes `threads` blocks at a time (one per thread); four such groups per worker in flight
        # keep every worker busy while this process waits for the oldest block.
        submit = partial(self.pool.submit, _encode_in_worker)
        for encoded in _in_order(submit, _groups(blocks, self.threads), 4 * self.workers):
            yield from encoded

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


# --- one shard ---------------------------------------------------------------------------------
def preprocess_shard(
    task: ShardTask,
    opts: PreprocessSettings,
    encoding: LocalEncoding | WorkerEncoding,
    report: Callable[[int, int, int, int], None] = lambda *_: None,
) -> ShardStats:
    """Encode one input file (range) into its dataset(s); `report(docs, tokens, bytes, position)` gets increments."""
    stats = ShardStats()
    writers = [IndexedShardWriter(p, np.uint8 if is_loss_mask(p) else np.int32) for p in shard_outputs(task, opts)]
    try:
        last_position = 0
        for encoded in encoding.map(read_blocks(task.input_path, list(opts.columns), task.start, task.end)):
            for where, reason in encoded.bad:
                if opts.strict:
                    raise BadRecordError(f"{task.input_path}:{where}: {reason} "
                                         "(--strict stops at the first bad record)")
                stats.bad[reason.split(":")[0]] += 1
                if len(stats.examples) < MAX_EXAMPLES:
                    stats.examples.append(f"{task.input_path}:{where}: {reason}")
            for writer, (data, lengths) in zip(writers, encoded.outputs):
                writer.add_documents(data, lengths)
            stats.documents += encoded.documents
            stats.tokens += encoded.tokens
            stats.input_bytes += encoded.input_bytes
            report(encoded.documents, encoded.tokens, encoded.input_bytes, encoded.position - last_position)
            last_position = encoded.position
    except BaseException:
        for writer in writers:
            writer.discard()
        raise
    # Loss mask first, token dataset last: the token .idx appearing marks the shard complete.
    for writer in reversed(writers):
        writer.finish()
    return stats


# --- many shards, many processes ---------------------------------------------------------------
def _init_shard_worker(encoder: BlockEncoder, threads: int, progress_queue) -> None:
    _worker["encoding"] = LocalEncoding(encoder, threads)
    _worker["queue"] = progress_queue


def _run_in_worker(task: ShardTask) -> tuple[ShardStats | None, str | None]:
    q = _worker["queue"]
    encoding = _worker["encoding"]
    try:
        return preprocess_shard(task, encoding.encoder.opts, encoding, lambda *counts: q.put(counts)), None
    except InputError as e:
        return None, str(e)


@dataclass
class RunResult:
    stats: ShardStats
    done: int
    skipped: int
    failed: list[str]  # one line per shard whose input could not be read


def run_shards(tasks: list[ShardTask], opts: PreprocessSettings, tokenizer: QwenTokenizer, workers: int,
               log_interval: float) -> RunResult:
    """Preprocess every task not already complete, with `workers` processes of `opts.threads` threads.

    At least as many shards as workers: each worker takes whole shards. Fewer: the shards are done
    one after the other, the workers sharing each one's blocks. An unreadable input fails its shard
    only (listed in `failed`); anything else, and a bad record under --strict, stops the run."""
    todo = [t for t in tasks if not shard_is_done(t, opts)]
    result = RunResult(ShardStats(), 0, len(tasks) - len(todo), [])
    progress = Progress(sum(t.input_size for t in todo), len(todo), log_interval)
    encoder = BlockEncoder(tokenizer, opts)

    def finished(stats: ShardStats | None, error: str | None) -> None:
        progress.shards_done += 1
        if error is None:
            result.stats.add(stats)
            result.done += 1
        else:
            result.failed.append(error)

    if workers <= 1 or len(todo) < workers:
        encoding = LocalEncoding(encoder, opts.threads) if workers <= 1 else WorkerEncoding(encoder, workers,
                                                                                           opts.threads)
        try:
            for task in todo:
                try:
                    finished(preprocess_shard(task, opts, encoding, progress.update), None)
                except InputError as e:
                    finished(None, str(e))
        finally:
            encoding.close()
        return result

    ctx = multiprocessing.get_context("fork")
    progress_queue = ctx.Queue()
    pool = ctx.Pool(workers, initializer=_init_shard_worker, initargs=(encoder, opts.threads, progress_queue))
    try:
        outcomes = pool.imap_unordered(_run_in_worker, todo)
        for _ in todo:
            while True:
                _drain(progress_queue, progress)
                try:
                    finished(*outcomes.next(timeout=0.5))
                    break
                except multiprocessing.TimeoutError:
                    continue
        _drain(progress_queue, progress)
        pool.close()
    finally:
        pool.terminate()  # on an error, stop the other shards now rather than after they finish
        pool.join()
    return result


def _drain(progress_queue, progress: Progress) -> None:
    while True:
        try:
            progress.update(*progress_queue.get_nowait())
        except queue.Empty:
            return
