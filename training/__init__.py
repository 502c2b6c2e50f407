"""The recipes that make the served weights: stage-1 CoT SFT, stage-2 TIR SFT, KTO, 8-bit GPTQ.

    python -m training.sft training/recipes/stage1_cot.yaml      # recipes/: the winners' hyperparameters
    python -m training.sft training/recipes/stage2_tir.yaml
    python -m training.kto training/recipes/kto.yaml             # optional
    python -m training.quantize training/recipes/quantize.yaml
    python -m training.demo --out models/demo                    # the offline demo model (CPU)

recipes/tiny/ runs every stage on a tiny model on a CPU. training imports service only for the
shared prompt format, the answer handling and the solver (KTO's self-sampling, evaluation).
"""
