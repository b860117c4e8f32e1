"""Data curation before tokenizing: extraction and language ID, exact and MinHash-LSH dedup, rule-based
quality filters, 13-gram decontamination and upsampling, as datatrove pipeline steps (docs/curation.md).

One module per step; `pipeline.py` chains them into stages that any datatrove executor runs (local by
default, slurm array jobs or Ray on a cluster); `tools/curate.py` is the command.
"""
