"""The recipes that make the served weights: stage-1 CoT SFT, stage-2 TIR SFT, KTO, 8-bit GPTQ.

    python -m training.sft training/recipes/stage1_cot.yaml      # recipes/: the winners' hyperparameters
    python -m training.sft training/recipes/stage2_tir.yaml
    python -m training.kto training/recipes/kto.yaml             # optional
    python -m training.quantize training/recipes/quantize.yaml
    python -m training.demo --out models/demo                    # the offline demo model (CPU)

One script per stage (sft, kto, quantize), each reading its recipe (recipe: the YAML and a
dataclass per section) and its data (data: sources, the served text format). models loads the
checkpoint a recipe names or builds one from scratch (scratch: BPE tokenizer, random Qwen2).
evaluate solves problems through the service's solver (KTO's sampling, the demo's benchmark);
hf_engine is its engine where vLLM is not installed. The demo model: synthetic (the task),
demo_training (its loop), demo (the build and its signature). recipes/tiny/ runs every stage on
a tiny model on a CPU. training imports service only for the shared prompt format, the answer
handling and the solver.
"""
