"""pytest-benchmark suite of whole models: torch as written vs patched by dlkern, inference and one
training step (forward, backward, SGD); models and sizes in dlkern/suites/models.py.

    .venv/bin/python -m pytest bench/bench_models.py --benchmark-only
"""
import pytest
import torch

from dlkern.benchmark import forward_call, suites

CASES = suites()["models"]


@pytest.mark.parametrize("provider", ["torch", "dlkern"])
@pytest.mark.parametrize("mode", ["inference", "train step"])
@pytest.mark.parametrize("case", range(3), ids=["unet", "gru_encoder", "transformer"])
def test_models(benchmark, case, mode, provider):
    case = CASES[case]
    benchmark.group = f"{case.name} {mode}"
    if mode == "inference":
        args, kwargs = case.inputs(False)
        call = forward_call(case.torch_fn if provider == "torch" else case.dlkern_fn, args, kwargs)
    else:
        call = case.train_torch if provider == "torch" else case.train_dlkern
    benchmark.pedantic(call, rounds=5, warmup_rounds=1)
