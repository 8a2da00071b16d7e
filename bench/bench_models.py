"""pytest-benchmark suite of whole models: torch as written vs patched by dlkern, inference and one
training step (forward, backward, SGD); models and sizes in dlkern/suites/model_cases.py.

    .venv/bin/python -m pytest bench/bench_models.py --benchmark-only
"""
import functools

import pytest

from dlkern.benchmark.runner import calls, strict
from dlkern.suites.model_cases import MODELS


@functools.lru_cache(maxsize=1)  # a model's four tests run one after the other
def _case(spec):
    return spec.build()


@pytest.mark.parametrize("provider", ["torch", "dlkern"])
@pytest.mark.parametrize("mode", ["fwd", "train"])
@pytest.mark.parametrize("spec", MODELS, ids=[m.name for m in MODELS])
def test_models(benchmark, spec, mode, provider):
    case = _case(spec)
    torch_call, dlkern_call = calls(case, mode)
    benchmark.group = f"models: {spec.name} {mode}"
    with strict():
        benchmark.pedantic(torch_call if provider == "torch" else dlkern_call, rounds=5,
                           warmup_rounds=1)
