"""pytest-benchmark suite for attention: providers torch and dlkern, forward and
forward+backward, one benchmark group per shape. Shapes come from dlkern/suites/attention.py.

    .venv/bin/python -m pytest bench/bench_attention.py --benchmark-only
"""
import pytest
import torch

from dlkern.benchmark import suites

CASES = suites()["attention"]


@pytest.mark.parametrize("provider", ["torch", "dlkern"])
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
@pytest.mark.parametrize("case", CASES, ids=[c.name.replace(" ", "_") for c in CASES])
def test_attention(benchmark, case, mode, provider):
    if mode == "forward+backward" and not case.fwd_bwd:
        pytest.skip(f"{case.name}: forward only")
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
