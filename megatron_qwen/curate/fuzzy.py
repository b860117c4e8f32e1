"""Step 3: fuzzy dedup with MinHash + LSH on datatrove's MinHash stages, plus a verification of each
candidate pair.

    signature (per task) -> buckets (one task per LSH band, in parallel) -> cluster (one task) -> filter

Shingles are n-grams of `text.tokens` (words, and single characters for Chinese). LSH alone turns a
Jaccard threshold into a soft S-curve, 1 - (1 - s^rows)^bands, so pairs well below the threshold still
collide; datatrove keeps every collision. We also store each document's full signature and, in our
cluster stage, keep a candidate pair only if the fraction of equal MinHash values (an unbiased Jaccard
estimate) reaches the threshold; union-find over the kept pairs forms clusters, the first document of
each cluster (lowest task, then index) is kept, and datatrove's filter stage drops the rest.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import xxhash
from datatrove.data import DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets, MinhashDedupFilter
from datatrove.pipeline.dedup.minhash import MinhashDedupSignature as _DatatroveSignature
from datatrove.utils.binaryio import read_tuples_from_file
from datatrove.utils.hashing import HashConfig
from datatrove.utils.text import TextNormConfig

from megatron_qwen.curate.text import CurationTokenizer, tokens

# Our tokens already normalize; datatrove's own pass (lowercase, digits to 0, ...) is switched off.
NO_NORMALIZATION = TextNormConfig(lowercase=False, norm_whitespace=False, remove_punctuation=False,
                                  norm_unicode_diacritics=False, norm_numbers=False)
FULL_SIGNATURES = "full"  # subfolder of the signature folder: one row of all hashes per document
# Odd 64-bit multipliers combining the hashes of a shingle's tokens, position by position (order matters).
SHINGLE_MULTIPLIERS = np.random.default_rng(61).integers(1, 2**63, size=64, dtype=np.uint64) | np.uint64(1)


def shingle_hashes(words: list[str], n: int) -> np.ndarray:
    """64-bit hashes of the n-grams of `words`: each token hashed once (xxhash64), the n hashes of a shingle
    combined with position-dependent multipliers (wrapping uint64 arithmetic), then mixed."""
    if len(words) < n:
        return np.zeros(0, dtype=np.uint64)
    h = np.fromiter(map(xxhash.xxh64_intdigest, map(str.encode, words)), dtype=np.uint64, count=len(words))
    count = len(words) - n + 1
    with np.errstate(over="ignore"):
        combined = sum(h[k:k + count] * SHINGLE_MULTIPLIERS[k] for k in range(n))
        combined ^= combined >> np.uint64(31)
        return combined * np.uint64(0x9E3779B97F4A7C15)


def lsh_bands(threshold: float, num_perm: int, min_recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm: the most rows (fewest candidates to verify) that still
    make a pair at exactly the threshold a candidate with probability >= min_recall."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= min_recall:
            best = (bands, rows)
    return best


@dataclass(frozen=True)
class FuzzySettings:
    ngram: int = 5  # tokens per shingle (characters for Chinese), at most len(SHINGLE_MULTIPLIERS)
    num_perm: int = 256  # MinHash permutations
    threshold: float = 0.8  # Jaccard similarity from which two documents are duplicates
    bands: int | None = None  # LSH bands; None: from threshold and num_perm (lsh_bands)
    rows: int | None = None  # hashes per band
    seed: int = 1

    def band_rows(self) -> tuple[int, int]:
        if self.bands and self.rows:
            return self.bands, self.rows
        return lsh_bands(self.threshold, self.num_perm)

    def minhash_config(self) -> MinhashConfig:
        bands, rows = self.band_rows()
        return MinhashConfig(n_grams=self.ngram, num_buckets=bands, hashes_per_bucket=rows, seed=self.seed,
                             norm_config=NO_NORMALIZATION, hash_config=HashConfig(precision=32))


class MinhashSignature(_DatatroveSignature):
    """datatrove's signature stage with our tokens, which also writes every document's full signature
    (`full/RANK.sig`, one row of bands*rows hashes per document index; zeros for a document without a
    shingle) for the verification in `VerifiedMinhashCluster`."""

    def __init__(self, output_folder: DataFolderLike, config: FuzzySettings):
        super().__init__(output_folder, config.minhash_config(), language=CurationTokenizer())

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1):
        dtype = self.config.hash_config.np_dtype
        with self.output_folder.open(f"{FULL_SIGNATURES}/{rank:05d}.sig", mode="wb") as full:

            def with_full_signature(docs):
                for doc in docs:
                    shingles = self.get_shingles(doc.text)
                    signature = self.get_signature(shingles) if shingles.size else None
                    row = np.concatenate(signature) if signature else np.zeros(self.num_hashes)
                    full.write(np.asarray(row, dtype=dtype).tobytes())
                    self._computed = (doc.text, shingles, signature)  # the parent's run asks for them next
                    yield doc

            super().run(with_full_signature(data), rank, world_size)

    _computed: tuple = (None, None, None)

    def get_shingles(self, text: str) -> np.ndarray:
        """The distinct shingle hashes of the text, shape (shingles, 1) as datatrove expects."""
        if text is self._computed[0]:
            return self._computed[1]
        return np.unique(shingle_hashes(tokens(text), self.config.n_grams)).reshape(-1, 1)

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        if shingles is self._computed[1]:
            return self._computed[2]
        return super().get_signature(shingles)


def minhash_buckets(signature_folder: str, buckets_folder: str, config: FuzzySettings) -> MinhashDedupBuckets:
    return MinhashDedupBuckets(signature_folder, buckets_folder, config=config.minhash_config())


class VerifiedMinhashCluster(PipelineStep):
    """Reads the LSH candidate pairs of all bands, keeps those whose full signatures agree on at least
    `threshold` of their hashes, unions them and writes datatrove's `.remove` files (for
    `MinhashDedupFilter`): every member of a cluster but its first. Runs as one task."""

    name = "MinHash verify + cluster"
    type = "🫂 - DEDUP"

    def __init__(self, signature_folder: DataFolderLike, buckets_folder: DataFolderLike,
                 output_folder: DataFolderLike, config: FuzzySettings):
        super().__init__()
        self.signature_folder = get_datafolder(signature_folder)
        self.buckets_folder = get_datafolder(buckets_folder)
        self.output_folder = get_datafolder(output_folder)
        self.config = config

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        if world_size != 1:
            raise ValueError("the MinHash cluster stage runs as one task")
        mh = self.config.minhash_config()
        width = mh.num_buckets * mh.hashes_per_bucket
        signatures: dict[int, np.ndarray] = {}  # task -> memory-mapped (documents, width) hashes

        def signature(task: int, doc: int) -> np.ndarray:
            if task not in signatures:
                path = self.signature_folder.resolve_paths(f"{FULL_SIGNATURES}/{task:05d}.sig")
                signatures[task] = np.memmap(path, dtype=mh.hash_config.np_dtype, mode="r").reshape(-1, width)
            return signatures[task][doc]

        parent: dict[tuple[int, int], tuple[int, int]] = {}

        def root(x):
            parent.setdefault(x, x)
            while parent[x] != x:
                parent[x] = parent[parent[x]]  # path halving
                x = parent[x]
            return x

        with self.track_time():
            for name in self.buckets_folder.list_files(glob_pattern="*.dups"):
                with self.buckets_folder.open(name, "rb") as f:
                    for f1, d1, f2, d2 in read_tuples_from_file(f, "4I", lines_to_buffer=1000):
                        a, b = (f1, d1), (f2, d2)
                        ra, rb = root(a), root(b)
                        if ra == rb:  # already joined (a pair collides in several bands)
                            continue
                        self.stat_update("candidate_pairs")
                        if float(np.mean(signature(*a) == signature(*b))) < self.config.threshold:
                            self.stat_update("pairs_below_threshold")
                            continue
                        parent[max(ra, rb)] = min(ra, rb)  # the first occurrence (lowest task, index) is the root
            with self.output_folder.get_output_file_manager(mode="wb") as out:
                for node in sorted(parent):
                    if root(node) != node:
                        out.write(f"{node[0]:06d}.remove", struct.pack("<I", node[1]))
                        self.stat_update("to_remove")


def minhash_filter(clusters_folder: str) -> MinhashDedupFilter:
    return MinhashDedupFilter(clusters_folder)
