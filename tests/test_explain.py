"""dlkern.explain: its rows on a small model, timed with a fake clock so every number is exact."""
import pytest
import torch

import dlkern
import dlkern.nn as dnn
from dlkern import policy
from helpers import make_tensor


@pytest.fixture
def clock(monkeypatch, tmp_path):
    """A fake clock advanced only by Conv2d calls: ``cost[path]`` seconds a call."""
    now = [0.0]
    cost = {}
    monkeypatch.setattr(policy, "clock", lambda: now[0])
    monkeypatch.setenv("DLKERN_CACHE_DIR", str(tmp_path))
    policy.forget()

    def charged(path, method):
        def run(self, input, weight, bias):
            now[0] += cost[path][self.out_channels]
            return method(self, input, weight, bias)
        return run
    for path, cls in (("torch", torch.nn.Conv2d), ("dlkern", dnn.Conv2d)):
        monkeypatch.setattr(cls, "_conv_forward", charged(path, cls._conv_forward))
    yield cost
    policy.forget()


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 5, 1))


@pytest.mark.parametrize("grad", [False, True])
def test_rows_of_a_small_model(clock, grad):
    # the 3x3 convolution (4 outputs) is faster on dlkern, the 1x1 (5 outputs) on torch
    clock.update(torch={4: 0.004, 5: 0.001}, dlkern={4: 0.002, 5: 0.003})
    model = _model()
    x = make_tensor((2, 3, 6, 6), torch.float32)
    with torch.set_grad_enabled(grad):
        report = dlkern.explain(model, x)
    assert report.mode == ("training" if grad else "inference")
    assert [r["module"] for r in report.rows] == ["0", "2"]  # slowest under torch first
    first, second = report.rows
    assert first["class"] == "Conv2d" and first["family"] == "conv" and first["calls"] == 1
    assert first["shapes"] == "2x3x6x6" and second["shapes"] == "2x4x6x6"
    assert first["torch_ms"] == pytest.approx(4.0) and first["dlkern_ms"] == pytest.approx(2.0)
    assert first["speedup"] == pytest.approx(2.0) and first["choice"] == "dlkern"
    assert second["speedup"] == pytest.approx(1 / 3) and second["choice"] == "torch"
    assert first["share"] == pytest.approx(0.8) and second["share"] == pytest.approx(0.2)
    total = report.total
    assert total["torch_ms"] == pytest.approx(5.0) and total["patched_ms"] == pytest.approx(3.0)
    assert total["speedup"] == pytest.approx(5 / 3) and total["covered_share"] == pytest.approx(1)
    assert total["covered_ms"] == pytest.approx(3.0)
    text = str(report)
    assert "whole step" in text and "1.67x" in text and "80.0%" in text
    # the model itself is untouched
    assert all(type(m).__module__.startswith("torch") for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_explain_of_a_patched_model_compares_with_torch(clock):
    clock.update(torch={4: 0.004, 5: 0.001}, dlkern={4: 0.002, 5: 0.003})
    patched = dlkern.patch(_model(), policy="always")
    report = dlkern.explain(patched, make_tensor((1, 3, 5, 5), torch.float32))
    assert report.total["torch_ms"] == pytest.approx(5.0)
    assert [r["choice"] for r in report.rows] == ["dlkern", "torch"]
    assert type(patched[0]) is dnn.Conv2d


def test_torch_copy_undoes_a_patch_only():
    from dlkern.explain import torch_copy
    model = dlkern.patch(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), dnn.SeparableConv2d(4, 4, 3)),
                         policy="fastest")
    reference = torch_copy(model)
    assert type(reference[0]) is torch.nn.Conv2d and type(reference[1]) is dnn.SeparableConv2d
    assert "_dlkern_policy_key" not in reference[0].__dict__
    assert type(model[0]).__name__ == "MeasuredConv2d"
