# GPU image: NGC PyTorch (CUDA, NCCL, cuDNN, transformer-engine, apex, flash-attn, all built for its own
# torch) with megatron-qwen installed under the image's pins. The tag, what it pins against our versions, and
# how the install keeps them: docs/packaging.md. Build: docker build -t megatron-qwen .
FROM nvcr.io/nvidia/pytorch:25.12-py3

WORKDIR /workspace/megatron-qwen
# The image's pip constraints (PIP_CONSTRAINT=/etc/pip/constraint.txt) stay in force. tools/image_install.py
# asks pip what it would install first and refuses to replace any package of the image; it installs the
# package with its runtime extras, never the test-only ones.
COPY pyproject.toml README.md requirements.txt ./
COPY megatron_qwen ./megatron_qwen
COPY tools ./tools
RUN python tools/image_install.py --extras deepspeed,eval,wandb

# The tokenizer's vocabulary for every user: under enroot or Apptainer the job runs as its own user, whose
# home holds no cache; preflight looks here after the user's cache (megatron_qwen/tokenizer/files.py).
# (a directory, not a secret: hadolint's DL3064 flags any name holding "TOKEN")
# hadolint ignore=DL3064
ENV MEGATRON_QWEN_TOKENIZER_DIR=/opt/megatron-qwen/tokenizer
RUN python tools/fetch_tokenizer.py --output /opt/megatron-qwen/tokenizer/qwen.tiktoken \
    && chmod -R a+rX /opt/megatron-qwen

COPY examples ./examples
COPY bench ./bench

# Multi-GPU runs: torchrun --nproc_per_node 8 -m megatron_qwen.pretrain ... (see examples/, docs/launching.md)
CMD ["python", "-m", "megatron_qwen.pretrain", "--help"]
