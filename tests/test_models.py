"""Whole models built from torch's own building blocks, patched by dlkern vs as written: outputs,
every gradient, 20 training steps, inference, torch.compile(fullgraph=True), and the patch
mechanics (same Parameter objects, hooks, modes, report, unpatch).

The models live in dlkern/suites/models.py (the benchmark uses them at larger sizes).
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from models_check import compare_models, dlkern_ops_called, loss_curve

import dlkern
import dlkern.nn as dnn
from dlkern.suites.models import GRUEncoder, LSTMTagger, TransformerLM, UNetCNN, padding_mask


def _unet():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, 3, 14, 10, generator=g)
    labels = torch.randint(0, 4, (3, 14, 10), generator=g)
    return UNetCNN(3, 6, 4), (x,), lambda out, inp: F.cross_entropy(out, labels), {"conv", "conv_transpose"}


def _gru():
    g = torch.Generator().manual_seed(12)
    tokens = torch.randint(0, 50, (5, 9), generator=g)
    lengths = torch.tensor([4, 9, 2, 7, 9])
    labels = torch.randint(0, 5, (5,), generator=g)
    return GRUEncoder(), (tokens, lengths), lambda out, inp: F.cross_entropy(out, labels), {"rnn_layer"}


def _lstm():
    g = torch.Generator().manual_seed(13)
    tokens = torch.randint(0, 50, (4, 8), generator=g)
    tags = torch.randint(0, 6, (4, 8), generator=g)
    return (LSTMTagger(), (tokens,),
            lambda out, inp: F.cross_entropy(out.flatten(0, 1), tags.flatten()), {"rnn_layer"})


def _transformer():
    g = torch.Generator().manual_seed(14)
    tokens = torch.randint(0, 50, (3, 10), generator=g)
    mask = padding_mask([10, 6, 8], 10)
    keep = ~mask

    def loss(out, inp):  # next-token loss on the real (unpadded) positions
        return F.cross_entropy(out[:, :-1][keep[:, 1:]], inp[0][:, 1:][keep[:, 1:]])
    return TransformerLM(), (tokens, mask), loss, {"attention"}


MODELS = {"unet": _unet, "gru_encoder": _gru, "lstm_tagger": _lstm, "transformer": _transformer}


def _build(name):
    torch.manual_seed(0)
    return MODELS[name]()


@pytest.mark.parametrize("name", MODELS)
def test_patched_model_matches_torch(name):
    model, inputs, loss_fn, expected_ops = _build(name)
    patched = dlkern.patch(copy.deepcopy(model))
    ran = compare_models(model, patched, inputs, loss_fn, around=dlkern_ops_called)
    missing = {op for op in expected_ops if not any(r.startswith(op) for r in ran)}
    assert not missing, f"dlkern ops {missing} did not run (ran: {sorted(ran)})"


@pytest.mark.parametrize("name", MODELS)
def test_patched_training_follows_torch(name):
    model, inputs, loss_fn, _ = _build(name)
    patched = dlkern.patch(copy.deepcopy(model))
    ref = loss_curve(model, inputs, loss_fn)
    got = loss_curve(patched, inputs, loss_fn)
    assert ref[-1] < ref[0], "the reference run should learn something"
    # 20 steps of SGD with momentum amplify float32 rounding differences a little
    torch.testing.assert_close(torch.tensor(got), torch.tensor(ref), rtol=2e-4, atol=1e-5)
    for (n, p), (_, q) in zip(model.named_parameters(), patched.named_parameters()):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-4, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("name", MODELS)
def test_patched_inference(name):
    model, inputs, _, _ = _build(name)
    patched = dlkern.patch(copy.deepcopy(model))
    model.eval()
    patched.eval()
    with torch.no_grad():
        want = model(*inputs)
        ran = dlkern_ops_called(lambda: patched(*inputs))
        got = patched(*inputs)
    assert ran, "no dlkern op ran in the patched model's inference"
    if name == "transformer":
        # torch's inference fast path zeroes padded positions (nested tensors); compare real ones
        keep = ~inputs[1]
        want, got = want[keep], got[keep]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- torch.compile

def _compile_inputs(name, batch):
    g = torch.Generator().manual_seed(batch)
    if name == "unet":
        return (torch.randn(batch, 3, 12, 12, generator=g),)
    if name == "transformer":
        lengths = torch.randint(4, 10, (batch,), generator=g)
        lengths[0] = 9
        return torch.randint(0, 50, (batch, 9), generator=g), padding_mask(lengths, 9)
    return (torch.randint(0, 50, (batch, 7), generator=g),)


# pack_padded_sequence cannot be traced by torch.compile (torch's limitation, plain torch fails the
# same way), so the compiled GRU encoder runs on a padded batch.
COMPILED = {"unet": lambda: UNetCNN(3, 6, 4), "transformer": TransformerLM,
            "gru_encoder": lambda: GRUEncoder(pack=False), "lstm_tagger": LSTMTagger}


@pytest.mark.parametrize("name", COMPILED)
def test_torch_compile_fullgraph(name):
    torch._dynamo.reset()
    # torch.compile skips nn.LSTM/nn.GRU unless asked (a plain torch model needs this too)
    with torch._dynamo.config.patch(allow_rnn=True):
        _compile_and_compare(name)
    torch._dynamo.reset()


def _compile_and_compare(name):
    torch.manual_seed(0)
    model = dlkern.patch(COMPILED[name]())
    compiled = torch.compile(model, fullgraph=True,
                             backend="inductor" if name in ("unet", "transformer") else "aot_eager")
    torch._dynamo.utils.counters.clear()
    for batch in (2, 3, 4, 5):
        inputs = _compile_inputs(name, batch)
        model.zero_grad(set_to_none=True)
        eager = model(*inputs)
        eager.square().sum().backward()
        eager_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        out = compiled(*inputs)
        out.square().sum().backward()
        torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.grad, eager_grads[n], rtol=1e-4, atol=1e-5,
                                       msg=lambda m: f"grad of {n}: {m}")
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    # the first call compiles for its shape, the second marks the batch dynamic; no more after
    assert graphs <= 2, f"{graphs} graphs compiled for 4 batch sizes"


# ----------------------------------------------------------------------------- patch mechanics

class _MyConv(torch.nn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 2


def test_patch_keeps_parameters_hooks_and_modes():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    params = list(model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    want = model(x)
    same, report = dlkern.patch(model, report=True)
    assert same is model
    assert type(model[0]) is dnn.Conv2d and type(model[2]) is dnn.Conv2d
    assert [p is q for p, q in zip(params, model.parameters())] == [True] * len(params)
    assert not model.training and not model[0].training
    assert sorted(model.state_dict()) == sorted(state)
    ran = dlkern_ops_called(lambda: torch.testing.assert_close(model(x), want))
    assert "conv" in ran
    assert len(seen) == 2  # the hook fired on each call, before and after the patch
    # the optimizer built before the patch trains the patched modules' parameters
    model.train()
    model(x).sum().backward()
    before = model[0].weight.detach().clone()
    opt.step()
    assert not torch.equal(model[0].weight, before)
    assert [n for n, _ in report.patched] == ["0", "2"]


def test_patch_report_lists_what_stays_torch():
    model = torch.nn.Sequential(_MyConv(3, 4, 3), torch.nn.Conv2d(4, 4, 3).half(),
                                torch.nn.RNN(4, 4), torch.nn.Conv2d(4, 4, 1))
    _, report = dlkern.patch(model, report=True)
    kept = {name: why for name, _, why in report.kept}
    assert type(model[0]) is _MyConv and "subclass of torch.nn.Conv2d" in kept["0"]
    assert type(model[1]) is torch.nn.Conv2d and "torch.float16 on cpu" in kept["1"]
    assert type(model[3]) is dnn.Conv2d
    assert "kept as torch's" in str(report)


def test_unpatch_restores_torch_classes():
    torch.manual_seed(0)
    model, inputs, loss_fn, _ = _build("transformer")
    classes = {n: type(m) for n, m in model.named_modules()}
    model.eval()
    with torch.no_grad():
        want = model(*inputs)
    dlkern.patch(model)
    assert type(model.encoder.layers[0].self_attn) is dnn.MultiheadAttention
    assert dlkern.patch(model) is model  # patching twice changes nothing more
    dlkern.unpatch(model)
    assert {n: type(m) for n, m in model.named_modules()} == classes
    assert model.encoder.use_nested_tensor  # torch's own attribute is visible again
    with torch.no_grad():
        ran = dlkern_ops_called(lambda: torch.testing.assert_close(model(*inputs), want))
    assert not ran


def test_modules_built_as_dlkern_are_not_unpatched():
    conv = dnn.Conv2d(2, 2, 3)
    dlkern.unpatch(conv)
    assert type(conv) is dnn.Conv2d


# ----------------------------------------------------------------------------- dlkern.enabled()

@pytest.mark.parametrize("name", MODELS)
def test_enabled_runs_unmodified_models_on_dlkern(name):
    """The same models, not patched: torch's own operators are routed to dlkern inside enabled()."""
    model, inputs, loss_fn, expected_ops = _build(name)
    twin = copy.deepcopy(model)
    def enabled_and_recorded(fn):
        with dlkern.enabled():
            return dlkern_ops_called(fn)
    ran = compare_models(model, twin, inputs, loss_fn, around=enabled_and_recorded)
    missing = {op for op in expected_ops if not any(r.startswith(op) for r in ran)}
    assert not missing, f"dlkern ops {missing} did not run (ran: {sorted(ran)})"
    assert all(type(m).__module__.startswith("torch.") for m in twin.modules()
               if m is not twin), "enabled() must not change the model"
    assert not dlkern.is_enabled()
