"""pytest-benchmark suite for the separable convolutions (depthwise, depthwise-separable, spatial
separable): providers torch and dlkern (torch = its two convolutions in sequence), forward and
forward+backward, one benchmark group per shape. Shapes come from dlkern/suites/separable.py.

    .venv/bin/python -m pytest bench/bench_separable.py --benchmark-only
"""
import pytest
import torch

from dlkern.benchmark import suites

CASES = suites()["separable"]


@pytest.mark.parametrize("provider", ["torch", "dlkern"])
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
@pytest.mark.parametrize("case", CASES, ids=[c.name.replace(" ", "_") for c in CASES])
def test_separable(benchmark, case, mode, provider):
    fn = case.torch_fn if provider == "torch" else case.dlkern_fn
    benchmark.group = f"{case.name} {mode}"
    benchmark.extra_info["gflop"] = case.flops * (1 if mode == "forward" else 3) / 1e9
    if mode == "forward":
        args, kwargs = case.inputs(False)

        def call():
            with torch.no_grad():
                fn(*args, **kwargs)
    else:
        args, kwargs = case.inputs(True)
        with torch.no_grad():
            grad_out = torch.randn_like(case.torch_fn(*args, **kwargs))

        def call():
            for t in args:
                t.grad = None
            fn(*args, **kwargs).backward(grad_out)
    benchmark.pedantic(call, rounds=5, warmup_rounds=1)
