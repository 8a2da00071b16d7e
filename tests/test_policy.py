"""dlkern.policy: selection by family or class in patch(), the "fastest" policy's decisions (with a
fake clock: which path runs when dlkern is faster or slower), its disk cache (written once, read
by a new process, ignored after a version change, concurrent writers), torch.compile, and
outputs and gradients that agree with torch whichever path runs.

Every decision here comes from a fake clock that only advances when a path runs, by a cost the
test sets, so the outcomes are exact; speed itself is never asserted.
"""
import copy
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import dlkern
import dlkern.nn as dnn
from dlkern import policy
from helpers import assert_close, float64_copy, make_tensor


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch, tmp_path):
    """Policy "fastest" with a fake clock and an empty cache directory of its own; decisions in
    memory are dropped before and after."""
    fake = FakeClock()
    monkeypatch.setattr(policy, "clock", fake)
    monkeypatch.setenv("DLKERN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("DLKERN_POLICY", "fastest")
    policy.forget()
    dlkern.reset_stats()
    yield fake
    policy.forget()


@pytest.fixture
def costs(monkeypatch, clock):
    """Seconds each Conv2d call costs on the fake clock, per path; and the calls of each path."""
    cost = {"torch": 1.0, "dlkern": 1.0}
    ran = {"torch": 0, "dlkern": 0}

    def charged(name, method):
        def run(self, *args, **kwargs):
            clock.now += cost[name]
            ran[name] += 1
            return method(self, *args, **kwargs)
        return run

    for name, cls in (("torch", torch.nn.Conv2d), ("dlkern", dnn.Conv2d)):
        _UNCHARGED[cls] = cls._conv_forward
        monkeypatch.setattr(cls, "_conv_forward", charged(name, cls._conv_forward))
    return cost, ran


_UNCHARGED = {}  # class -> its own _conv_forward, while the costs fixture charges the clock


def _conv():
    torch.manual_seed(0)
    return torch.nn.Conv2d(4, 4, 3, padding=1)


def _x(shape=(2, 4, 6, 5), requires_grad=False):
    return make_tensor(shape, torch.float32, generator=torch.Generator().manual_seed(1),
                       requires_grad=requires_grad)


# --- decisions ----------------------------------------------------------------------------------

@pytest.mark.parametrize("faster", ["dlkern", "torch"])
def test_the_faster_path_runs(costs, faster):
    cost, ran = costs
    cost["torch" if faster == "dlkern" else "dlkern"] = 3.0
    model = dlkern.patch(torch.nn.Sequential(_conv()))
    x = _x()
    with torch.no_grad():
        model(x)
        timing = dict(ran)
        model(x)
    assert timing["torch"] > 1 and timing["dlkern"] > 1  # the first call timed both paths
    other = "torch" if faster == "dlkern" else "dlkern"
    assert ran[faster] == timing[faster] + 1 and ran[other] == timing[other]
    assert dlkern.stats()["policy"] == {"conv": {"timed": 1, faster: 2}}
    key = next(iter(policy._details))
    assert policy._details[key]["torch_s"] == cost["torch"]
    assert policy._details[key]["dlkern_s"] == cost["dlkern"]


def test_measure_times_each_path_with_the_clock(clock):
    def path(seconds):
        def run():
            clock.now += seconds
        return run
    assert policy.measure(path(0.5), path(0.25)) == (0.5, 0.25)
    # calls shorter than the minimum sample are repeated within one sample, the same for both
    assert policy.measure(path(1e-4), path(2e-4)) == pytest.approx((1e-4, 2e-4))


def test_a_signature_is_decided_once(costs):
    cost, ran = costs
    cost["dlkern"] = 0.5
    model = dlkern.patch(torch.nn.Sequential(_conv()))
    with torch.no_grad():
        for shape in [(2, 4, 6, 5), (2, 4, 6, 5), (1, 4, 6, 5), (2, 4, 6, 5)]:
            model(_x(shape))
    assert dlkern.stats()["policy"]["conv"] == {"timed": 2, "dlkern": 4}
    # grad mode on times forward and backward: another signature
    model(_x())
    assert dlkern.stats()["policy"]["conv"]["timed"] == 3


def test_timing_leaves_gradients_and_rng_alone(costs, clock):
    cost, _ = costs
    cost["dlkern"] = 0.5
    model = dlkern.patch(torch.nn.Sequential(_conv()))
    x = _x(requires_grad=True)
    out = model(x)  # times forward+backward on copies first
    assert all(p.grad is None for p in model.parameters()) and x.grad is None
    out.sum().backward()
    ref = _conv()
    x_ref = _x(requires_grad=True)
    ref(x_ref).sum().backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5)  # not accumulated twice
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)

    def drawing():
        def run():
            torch.rand(3)
            clock.now += 1.0
        return run
    state = torch.get_rng_state()
    assert policy.choose("conv", ("rng",), drawing, drawing, []) in ("dlkern", "torch")
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("faster", ["dlkern", "torch"])
def test_outputs_and_gradients_agree_with_torch_on_either_path(costs, faster):
    cost, ran = costs
    cost["torch" if faster == "dlkern" else "dlkern"] = 3.0
    model = torch.nn.Sequential(_conv(), torch.nn.ReLU(), _conv())
    reference = copy.deepcopy(model).double()
    patched = dlkern.patch(model)
    x = _x(requires_grad=True)
    x_ref = float64_copy(x)
    patched(x)  # decides
    before = dict(ran)
    out = patched(x)
    assert ran[faster] == before[faster] + 2
    out.sum().backward()
    expected = reference(x_ref)
    expected.sum().backward()
    assert_close(out, expected, 36)
    assert_close(x.grad, x_ref.grad, 36 * 8)
    for (name, p), q in zip(patched.named_parameters(), reference.parameters()):
        assert_close(p.grad, q.grad, 2 * 6 * 5 * 4, f"grad of {name}")


def test_a_signature_first_seen_while_tracing_runs_dlkern(costs, monkeypatch):
    """Under torch.compile a decision made before tracing (here read from the disk cache) holds;
    a new signature runs dlkern."""
    from dlkern.kernels.numba import conv as kernels
    cost, _ = costs
    cost["dlkern"] = 3.0  # torch is faster: eager calls take torch's path
    model = dlkern.patch(torch.nn.Sequential(_conv()))
    x_seen, x_new = _x(), _x((1, 4, 6, 5))
    kernel_calls = []
    real = kernels.conv_forward
    monkeypatch.setattr(kernels, "conv_forward",
                        lambda *a, **k: kernel_calls.append(1) or real(*a, **k))
    with torch.no_grad():
        model(x_seen)
        for cls, method in _UNCHARGED.items():  # dynamo cannot trace the fake clock
            monkeypatch.setattr(cls, "_conv_forward", method)
        policy.forget()  # the decision now comes from the disk, read by patch before tracing
        model = dlkern.patch(torch.nn.Sequential(_conv()))
        compiled = torch.compile(model, backend="eager", fullgraph=True, dynamic=False)
        kernel_calls.clear()
        out = compiled(x_seen)
        assert not kernel_calls  # torch's path, as decided
        assert_close(out, _conv().double()(x_seen.double()), 36)
        out = compiled(x_new)
        assert kernel_calls  # dlkern's kernel, never timed
        assert_close(out, _conv().double()(x_new.double()), 36)
    assert dlkern.stats()["policy"]["conv"]["timed"] == 1


# --- the disk cache -----------------------------------------------------------------------------

def _entries(path):
    with open(path) as f:
        return json.load(f)["decisions"]


def test_decisions_are_written_once_and_read_by_a_new_process(costs, tmp_path):
    cost, _ = costs
    cost["dlkern"] = 3.0
    model = dlkern.patch(torch.nn.Sequential(_conv()))
    with torch.no_grad():
        model(_x())
        path = policy.cache_path()
        assert os.path.dirname(path) == str(tmp_path)
        written = os.stat(path).st_mtime_ns
        model(_x())
    assert os.stat(path).st_mtime_ns == written  # a known signature writes nothing
    (entry,) = _entries(path).values()
    assert entry["choice"] == "torch"
    code = textwrap.dedent("""
        import torch, dlkern
        torch.manual_seed(0)
        model = dlkern.patch(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1)))
        x = torch.rand(2, 4, 6, 5)
        with torch.no_grad():
            model(x)
        print(dlkern.stats()["policy"])
    """)
    env = dict(os.environ, DLKERN_CACHE_DIR=str(tmp_path), DLKERN_POLICY="fastest")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "{'conv': {'torch': 1}}"  # nothing timed


def test_a_cache_of_another_version_is_ignored(costs, monkeypatch):
    cost, _ = costs
    cost["dlkern"] = 3.0
    with torch.no_grad():
        dlkern.patch(torch.nn.Sequential(_conv()))(_x())
    path = policy.cache_path()
    assert len(_entries(path)) == 1
    monkeypatch.setattr(dlkern, "__version__", dlkern.__version__ + ".post1")
    policy.forget()
    cost["dlkern"], cost["torch"] = 1.0, 3.0
    with torch.no_grad():
        dlkern.patch(torch.nn.Sequential(_conv()))(_x())
    assert dlkern.stats()["policy"]["conv"] == {"timed": 2, "torch": 1, "dlkern": 1}
    with open(path) as f:
        data = json.load(f)
    assert data["versions"]["dlkern"].endswith(".post1")
    assert [e["choice"] for e in data["decisions"].values()] == ["dlkern"]  # the old one is gone


def _write_many(path, tag, count):
    for i in range(count):
        policy._write(path, {f"{tag}{i}": {"choice": "dlkern", "torch_s": 1.0, "dlkern_s": 0.5}})


def test_concurrent_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "policy.json")
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_many, args=(path, tag, 40)) for tag in "ab"]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
    assert [w.exitcode for w in writers] == [0, 0]
    assert sorted(_entries(path)) == sorted(f"{t}{i}" for t in "ab" for i in range(40))
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


# --- selection ----------------------------------------------------------------------------------

def _mixed_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1),
                               torch.nn.Conv2d(4, 4, 3, padding=1, groups=4),
                               torch.nn.ConvTranspose2d(4, 2, 2, stride=2),
                               torch.nn.Conv1d(2, 2, 1))


@pytest.mark.parametrize("include, exclude, swapped", [
    (None, None, ["0", "1", "2", "3"]),
    ("depthwise", None, ["1"]),
    (["conv"], None, ["0", "3"]),
    ([torch.nn.Conv2d], None, ["0", "1"]),
    (None, ["conv_transpose", torch.nn.Conv1d], ["0", "1"]),
    (["conv", "depthwise"], "depthwise", ["0", "3"]),
    ("rnn", None, []),
])
def test_patch_include_exclude(include, exclude, swapped):
    model, report = dlkern.patch(_mixed_model(), include=include, exclude=exclude, report=True)
    assert [name for name, _ in report.patched] == swapped
    assert [name for name, m in model.named_children()
            if type(m).__module__.startswith("dlkern")] == swapped
    kept = {name for name, _, why in report.kept if why == "not selected"}
    assert kept == {"0", "1", "2", "3"} - set(swapped)
    dlkern.unpatch(model)
    assert all(type(m).__module__.startswith("torch") for m in model.modules())


@pytest.mark.parametrize("kwargs", [dict(include="convolution"), dict(exclude=["conv", "lstm"]),
                                    dict(include=[torch.nn.Linear])])
def test_unknown_names_raise_value_error_listing_the_valid_ones(kwargs):
    with pytest.raises(ValueError, match="'conv', 'conv_transpose', 'depthwise'.*torch.nn.Conv2d"):
        dlkern.patch(_mixed_model(), **kwargs)


def test_unknown_policy_raises(monkeypatch):
    with pytest.raises(ValueError, match="always, fastest"):
        dlkern.patch(_mixed_model(), policy="quickest")
    monkeypatch.setenv("DLKERN_POLICY", "quickest")
    with pytest.raises(ValueError, match="always, fastest"):
        dlkern.patch(_mixed_model())


def test_policy_always_and_fastest_classes(clock):
    model = dlkern.patch(_mixed_model(), policy="always")
    assert type(model[0]) is dnn.Conv2d
    model = dlkern.patch(_mixed_model())  # DLKERN_POLICY=fastest (the clock fixture)
    assert type(model[0]).__name__ == "MeasuredConv2d" and isinstance(model[0], dnn.Conv2d)
    assert "weight" in model[0].state_dict() and "_dlkern_policy_key" not in model.state_dict()
    dlkern.unpatch(model)
    assert type(model[0]) is torch.nn.Conv2d and "_dlkern_policy_key" not in model[0].__dict__
