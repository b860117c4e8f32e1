# GPU image: NGC PyTorch ships CUDA, NCCL, apex, transformer-engine and flash-attn for its torch.
# Build: docker build -t megatron-qwen .
FROM nvcr.io/nvidia/pytorch:25.04-py3

WORKDIR /workspace/megatron-qwen
# The image pins its own packages through PIP_CONSTRAINT; our pins must be able to apply.
ENV PIP_CONSTRAINT=
COPY requirements.txt .
# Keep the image's CUDA torch: install everything else from requirements.txt, torch excluded.
RUN grep -v '^torch==' requirements.txt > /tmp/requirements-gpu.txt \
    && pip install --no-cache-dir -r /tmp/requirements-gpu.txt
COPY . .
RUN pip install --no-cache-dir --no-deps -e . && python tools/fetch_tokenizer.py

# Multi-GPU runs: torchrun --nproc_per_node 8 -m megatron_qwen.pretrain ... (see examples/)
CMD ["python", "-m", "megatron_qwen.pretrain", "--help"]
