"""Step 6: upsampling chosen sources, by repeating their documents or as blend weights for `--data-path`.

A document's source is its `source` field, else the input file it came from (step 1 records it). With
`repeat`, a source of weight w is written floor(w) times plus once more for a fraction w - floor(w) of
its documents (chosen by a hash of the document id, so reruns and tasks agree); weight 0 drops it.
With `blend`, documents are written once per source and the weights go into the `--data-path` line
(`data_path.txt`): WEIGHT PREFIX pairs with WEIGHT = w x the source's tokens, so a source of weight 1
keeps its natural share.
"""

from __future__ import annotations

import math

import xxhash
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from megatron_qwen.config.errors import ConfigError


def parse_weights(specs: list[str]) -> dict[str, float]:
    """['wiki=2', 'web=0.5'] -> {'wiki': 2.0, 'web': 0.5}."""
    weights = {}
    for spec in specs:
        name, _, value = spec.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not name or weight < 0 or not math.isfinite(weight):
            raise ConfigError(f"--upsample {spec}: expected SOURCE=WEIGHT with a weight >= 0, e.g. wiki=2.5")
        weights[name] = weight
    return weights


def copies(weight: float, doc_id: str) -> int:
    """How many times a document of a source of this weight is written (its expectation is the weight)."""
    whole, fraction = divmod(weight, 1.0)
    return int(whole) + (xxhash.xxh64_intdigest(doc_id.encode()) / 2**64 < fraction)


class Upsampler(PipelineStep):
    """Repeats each document `copies(weight of its source)` times; counts `copies_<source>`."""

    name = "upsample"
    type = "🔁 - UPSAMPLE"

    def __init__(self, weights: dict[str, float]):
        super().__init__()
        self.weights = weights

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            source = doc.metadata.get("source", "")
            n = copies(self.weights.get(source, 1.0), doc.id)
            self.stat_update("total")
            self.stat_update(f"copies_{source}", value=n)
            if n == 0:
                self.stat_update("dropped")
            for _ in range(n):
                yield doc
