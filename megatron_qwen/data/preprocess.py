"""Raw corpora -> Megatron indexed shards: one shard per input file (or per byte range of a large
plain .jsonl), resumable and atomic.

Per process the work is a pipeline: a reader thread reads, decompresses and parses blocks of
input (orjson) while a pool of threads encodes the previous blocks (tiktoken releases the GIL)
straight into int32 arrays, and the main thread writes each block's tokens with one write. Several
processes (`workers`) take whole shards each; several machines take slices of the shard list.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
from collections import Counter, deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from megatron_qwen.data.indexed_writer import IndexedShardWriter, is_complete
from megatron_qwen.data.progress import Progress
from megatron_qwen.data.sources import (
    Batch,
    BadRecordError,
    InputError,
    chat_record_checker,
    read_batches,
    shard_names,
    splittable,
    text_record_checker,
)
from megatron_qwen.tokenizer import QwenTokenizer
from megatron_qwen.tokenizer.chatml import encode_turns

LOSS_MASK_SUFFIX = "_loss_mask"  # SFT: `P.bin/.idx` tokens, `P_loss_mask.bin/.idx` uint8 mask, same documents
MAX_EXAMPLES = 5  # bad records shown per shard


def dataset_prefix(output_prefix: str, key: str, shard: str | None = None) -> str:
    """Megatron's naming: `{output_prefix}_{key}_document`, with the shard name before the key."""
    return f"{output_prefix}_{shard}_{key}_document" if shard else f"{output_prefix}_{key}_document"


@dataclass(frozen=True)
class ShardTask:
    input_path: str
    prefixes: tuple[str, ...]  # text mode: one per key; chat mode: (tokens prefix,)
    input_size: int
    start: int = 0  # byte range [start, end) of a split plain .jsonl; end None: the whole file
    end: int | None = None


@dataclass(frozen=True)
class Options:
    keys: tuple[str, ...]
    chatml: bool = False
    append_eod: bool = False
    strict: bool = False
    threads: int = 2


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


def plan_shards(files: list[str], output_prefix: str, opts: Options, shard_index: int = 0, num_shards: int = 1,
                max_shard_bytes: int | None = None) -> list[ShardTask]:
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


def shard_outputs(task: ShardTask, opts: Options) -> list[str]:
    """Every dataset prefix the shard writes (chat mode adds the loss-mask dataset)."""
    return list(task.prefixes) + ([task.prefixes[0] + LOSS_MASK_SUFFIX] if opts.chatml else [])


def shard_is_done(task: ShardTask, opts: Options) -> bool:
    return all(is_complete(p) for p in shard_outputs(task, opts))


# --- encoding (runs in the pool's threads) -----------------------------------------------------
def _encode_texts(tokenizer: QwenTokenizer, texts: list[str], append_eod: bool) -> tuple[np.ndarray, np.ndarray]:
    arrays = [tokenizer.tokenize_array(t) for t in texts]
    lengths = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))
    if append_eod:
        eod = np.array([tokenizer.eod], dtype=np.int32)
        arrays = [x for a in arrays for x in (a, eod)]
        lengths += 1
    return (np.concatenate(arrays) if arrays else np.zeros(0, np.int32)), lengths


def _encode_text_records(tokenizer: QwenTokenizer, records: list[tuple[str, ...]], append_eod: bool) -> list:
    """One (tokens, lengths) per json key."""
    return [_encode_texts(tokenizer, [r[k] for r in records], append_eod) for k in range(len(records[0]))]


def _encode_chats(tokenizer: QwenTokenizer, conversations: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids: list[int] = []
    mask: list[int] = []
    lengths = []
    for turns in conversations:
        conv_ids, conv_mask = encode_turns(turns, tokenizer)
        ids += conv_ids
        mask += conv_mask
        lengths.append(len(conv_ids))
    return np.array(ids, dtype=np.int32), np.array(mask, dtype=np.uint8), np.array(lengths, dtype=np.int64)


def _split(items: list, parts: int) -> list[list]:
    step = -(-len(items) // parts) or 1
    return [items[i:i + step] for i in range(0, len(items), step)]


# --- one shard ---------------------------------------------------------------------------------
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


def _background(iterator: Iterator[Batch], depth: int = 4) -> Iterator[Batch]:
    """Run `iterator` (reading + parsing) in a thread, so it overlaps with encoding."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in iterator:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as e:  # handed to the consumer, which raises it
            q.put(e)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass


def preprocess_shard(
    task: ShardTask,
    tokenizer: QwenTokenizer,
    opts: Options,
    pool: Executor,
    report: Callable[[int, int, int, int], None] = lambda *_: None,
) -> ShardStats:
    """Encode one input file (range) into its dataset(s); `report(docs, tokens, bytes, position)` gets increments."""
    check = chat_record_checker(opts.keys[0]) if opts.chatml else text_record_checker(list(opts.keys))
    stats = ShardStats()
    writers = [IndexedShardWriter(p, np.uint8 if p.endswith(LOSS_MASK_SUFFIX) else np.int32) for p in shard_outputs(task, opts)]
    try:
        pending: deque = deque()
        last_position = 0

        def write_oldest() -> None:
            futures, n_docs, n_bytes, position = pending.popleft()
            tokens = 0
            for fut in futures:
                result = fut.result()
                if opts.chatml:
                    ids, mask, lengths = result
                    writers[0].add_documents(ids, lengths)
                    writers[1].add_documents(mask, lengths)
                    tokens += ids.size
                else:
                    for writer, (ids, lengths) in zip(writers, result):
                        writer.add_documents(ids, lengths)
                    tokens += result[0][0].size
            stats.documents += n_docs
            stats.tokens += tokens
            stats.input_bytes += n_bytes
            report(n_docs, tokens, n_bytes, position)

        batches = read_batches(task.input_path, list(opts.keys), check, task.start, task.end)
        for batch in _background(batches) if opts.threads > 1 else batches:
            for where, reason in batch.bad:
                if opts.strict:
                    raise BadRecordError(f"{task.input_path}:{where}: {reason} (--strict stops at the first bad record)")
                stats.bad[reason.split(":")[0]] += 1
                if len(stats.examples) < MAX_EXAMPLES:
                    stats.examples.append(f"{task.input_path}:{where}: {reason}")
            groups = _split(batch.records, opts.threads)
            if opts.chatml:
                futures = [pool.submit(_encode_chats, tokenizer, g) for g in groups]
            else:
                futures = [pool.submit(_encode_text_records, tokenizer, g, opts.append_eod) for g in groups]
            pending.append((futures, len(batch.records), batch.input_bytes, batch.position - last_position))
            last_position = batch.position
            if len(pending) > 2:  # two blocks in flight keep every encoding thread busy
                write_oldest()
        while pending:
            write_oldest()
    except BaseException:
        for writer in writers:
            writer.discard()
        raise
    # Loss mask first, token dataset last: the token .idx appearing marks the shard complete.
    for writer in reversed(writers):
        writer.finish()
    return stats


# --- many shards, many processes ---------------------------------------------------------------
_worker: dict = {}  # per-process state; "tokenizer" is set before forking so workers inherit it


def _init_worker(threads: int, progress_queue) -> None:
    _worker["pool"] = make_encode_pool(threads)
    _worker["queue"] = progress_queue


def _run_in_worker(args: tuple[ShardTask, Options]) -> tuple[ShardTask, ShardStats | None, str | None]:
    task, opts = args
    q = _worker["queue"]
    try:
        stats = preprocess_shard(task, _worker["tokenizer"], opts, _worker["pool"], lambda *counts: q.put(counts))
    except InputError as e:
        return task, None, str(e)
    return task, stats, None


@dataclass
class RunResult:
    stats: ShardStats
    done: int
    skipped: int
    failed: list[str]  # one line per shard whose input could not be read


def run_shards(tasks: list[ShardTask], opts: Options, tokenizer: QwenTokenizer, workers: int,
               log_interval: float) -> RunResult:
    """Preprocess every task not already complete, in `workers` processes.

    An unreadable input fails its shard only (listed in `failed`); anything else, and a bad
    record under --strict, stops the run."""
    todo = [t for t in tasks if not shard_is_done(t, opts)]
    result = RunResult(ShardStats(), 0, len(tasks) - len(todo), [])
    progress = Progress(sum(t.input_size for t in todo), len(todo), log_interval)

    def finished(task: ShardTask, stats: ShardStats | None, error: str | None) -> None:
        progress.shards_done += 1
        if error is None:
            result.stats.add(stats)
            result.done += 1
        else:
            result.failed.append(error)

    if workers <= 1 or len(todo) <= 1:
        with make_encode_pool(opts.threads) as pool:
            for task in todo:
                try:
                    finished(task, preprocess_shard(task, tokenizer, opts, pool, progress.update), None)
                except InputError as e:
                    finished(task, None, str(e))
        return result

    ctx = multiprocessing.get_context("fork")
    progress_queue = ctx.Queue()
    _worker["tokenizer"] = tokenizer
    pool = ctx.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(opts.threads, progress_queue))
    try:
        outcomes = pool.imap_unordered(_run_in_worker, [(t, opts) for t in todo])
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
