"""The cluster a plan is for: what one GPU sustains and the links between GPUs and to CPU memory. Defaults
describe an H100 node on InfiniBand (docs/planning.md); tools/plan.py's flags change each."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Cluster:
    achievable_tflops: float = 400.0  # bf16 dense, per GPU: ~40% of an H100's 989 (model/flops.py)
    gpus_per_node: int = 8
    intra_node_gbs: float = 300.0  # NVLink, achieved collective bandwidth per GPU
    inter_node_gbs: float = 40.0  # one 400 Gb/s InfiniBand rail per GPU, achieved
    host_link_gbs: float = 25.0  # PCIe 5 x16 between a GPU and CPU memory, achieved (DeepSpeed offload)
