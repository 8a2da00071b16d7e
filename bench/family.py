"""The pytest-benchmark test of one op family: providers torch and dlkern, forward and
forward+backward, one benchmark group per shape; shapes from dlkern/suites/<family>.py."""
import pytest
import torch

from dlkern.benchmark import forward_backward_call, forward_call, suites


def benchmark_test(op):
    cases = suites()[op]

    @pytest.mark.parametrize("provider", ["torch", "dlkern"])
    @pytest.mark.parametrize("mode", ["forward", "forward+backward"])
    @pytest.mark.parametrize("case", cases, ids=[c.name.replace(" ", "_") for c in cases])
    def test(benchmark, case, mode, provider):
        if mode == "forward+backward" and not case.fwd_bwd:
            pytest.skip(f"{case.name}: forward only")
        fn = case.torch_fn if provider == "torch" else case.dlkern_fn
        benchmark.group = f"{case.name} {mode}"
        benchmark.extra_info["gflop"] = case.flops * (1 if mode == "forward" else 3) / 1e9
        if mode == "forward":
            args, kwargs = case.inputs(False)
            call = forward_call(fn, args, kwargs)
        else:
            args, kwargs = case.inputs(True)
            with torch.no_grad():
                grad_out = torch.randn_like(case.torch_fn(*args, **kwargs))
            call = forward_backward_call(fn, args, kwargs, grad_out)
        benchmark.pedantic(call, rounds=5, warmup_rounds=1)

    return test
