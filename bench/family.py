"""The pytest-benchmark test of one op family, generated from its layer table in dlkern/suites/
(no second list of shapes): one test per row, mode (fwd, fwdbwd) and provider (torch, dlkern),
grouped per family and row so each group compares the two providers. dlkern runs strict."""
import pytest

from dlkern import suites
from dlkern.benchmark.runner import calls, strict
from dlkern.suites.cases import case


def benchmark_test(family):
    rows = suites.module_of(family).ROWS

    @pytest.mark.parametrize("provider", ["torch", "dlkern"])
    @pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
    @pytest.mark.parametrize("row", rows, ids=[r.name for r in rows])
    def test(benchmark, row, mode, provider):
        c = case(row)
        torch_call, dlkern_call = calls(c, mode)
        benchmark.group = f"{family}: {row.name} {mode}"
        benchmark.extra_info.update(family=family, row=row.name, batch=row.batch,
                                    gflop=c.flops * (1 if mode == "fwd" else 3) / 1e9)
        with strict():
            benchmark.pedantic(torch_call if provider == "torch" else dlkern_call, rounds=5,
                               warmup_rounds=1)

    return test
