#!/bin/sh
# The compose stack's one-time weights step: the served 8-bit GPTQ checkpoint, made by this
# repo's quantize recipe (training/recipes/quantize.yaml) from the full-precision hub model.
#
# Why not serve AI-MO/NuminaMath-7B-TIR-GPTQ as published: it was quantized with group
# activation ordering (desc_act true, permuted g_idx), which vLLM 0.32 refuses to load. The
# recipe quantizes in activation order too, but with static groups, which vLLM loads.
#
# Skips when SCTIR_MODEL points anywhere but QUANTIZED_DIR (you serve your own weights) or when
# QUANTIZED_DIR is complete (its quantize_summary.json is written last). BASE_MODEL is a hub id
# (downloaded at BASE_REVISION into the Hugging Face cache) or a local directory.
set -eu

: "${SCTIR_MODEL:?}" "${QUANTIZED_DIR:?}" "${BASE_MODEL:?}"
BASE_REVISION=${BASE_REVISION:-main}
QUANTIZE_RECIPE=${QUANTIZE_RECIPE:-training/recipes/quantize.yaml}

if [ "$SCTIR_MODEL" != "$QUANTIZED_DIR" ]; then
    echo "SCTIR_MODEL is $SCTIR_MODEL, not $QUANTIZED_DIR: serving it as is, nothing to prepare"
    exit 0
fi
if [ -f "$QUANTIZED_DIR/quantize_summary.json" ]; then
    echo "8-bit GPTQ weights ready in $QUANTIZED_DIR"
    exit 0
fi

if [ -d "$BASE_MODEL" ]; then
    base=$BASE_MODEL
else
    echo "downloading $BASE_MODEL@$BASE_REVISION..."
    base=$(python3 -c 'import os, sys; from huggingface_hub import snapshot_download; print(snapshot_download(sys.argv[1], revision=sys.argv[2]))' "$BASE_MODEL" "$BASE_REVISION")
fi
echo "quantizing $base to 8-bit GPTQ (once; the GPU does it layer by layer)..."
rm -rf "$QUANTIZED_DIR.partial"
sctir train quantize "$QUANTIZE_RECIPE" "model.name_or_path=$base" --output-dir "$QUANTIZED_DIR.partial"
rm -rf "$QUANTIZED_DIR"
mv "$QUANTIZED_DIR.partial" "$QUANTIZED_DIR"
echo "8-bit GPTQ weights ready in $QUANTIZED_DIR"
