"""The benchmark's tables and harness, cheaply: no real benchmark runs here.

* every table row is well formed, unique, and its Case builds; torch and dlkern accept its
  arguments (on the meta device; module rows, which hold CPU parameters, only build);
* the summary math (geometric mean, worst row, rows below 1.0x, failures);
* the agreement check flags a wrong result and a row that raises;
* a run of two tiny rows writes every JSON field the issue names; --compare on two small files.
"""
import json
import math
import re

import pytest
import torch

from dlkern import suites
from dlkern.benchmark import cli, runner, summary
from dlkern.benchmark.timing import measure_pair
from dlkern.suites.cases import _BUILDERS, case
from dlkern.suites.table import Case, Row, conv_args, distinct

REQUIRED_ARGS = {
    "conv": {"in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
             "groups", "bias", "size"},
    "conv_transpose": {"in_channels", "out_channels", "kernel_size", "stride", "padding",
                       "output_padding", "bias", "size"},
    "depthwise_separable": {"in_channels", "out_channels", "kernel_size", "stride", "padding",
                            "dilation", "size"},
    "spatial_separable_conv2d": {"in_channels", "mid_channels", "out_channels", "kernel_size",
                                 "padding", "size"},
    "LSTM": {"input_size", "hidden_size", "num_layers", "bidirectional", "batch_first", "size"},
    "LSTMCell": {"input_size", "hidden_size"},
    "scaled_dot_product_attention": {"heads", "kv_heads", "q_len", "kv_len", "head_dim", "mask"},
    "masked_softmax": {"heads", "q_len", "kv_len", "mask"},
    "MultiheadAttention": {"embed_dim", "num_heads", "q_len", "kv_len", "mask", "cross"},
}


def _required(op):
    for prefix in ("conv_transpose", "conv", "depthwise_separable"):
        if op.startswith(prefix):
            return REQUIRED_ARGS[prefix]
    return REQUIRED_ARGS[{"GRU": "LSTM", "GRUCell": "LSTMCell"}.get(op, op)]


ALL_ROWS = suites.rows()


def test_tables_are_well_formed_and_unique():
    names = [r.name for r in ALL_ROWS]
    assert len(names) == len(set(names)), "row names repeat"
    for family in suites.FAMILIES:
        module = suites.module_of(family)
        assert module.FAMILY == family
        assert module.ROWS, family
        assert set(module.QUICK) <= {r.name for r in module.ROWS}, family
        keys = [(r.network, r.key()) for r in module.ROWS]
        assert len(keys) == len(set(keys)), f"{family}: a shape repeats within a network"
    for r in ALL_ROWS:
        assert r.op in _BUILDERS, r.name
        assert "." in r.name and r.name == r.name.strip() and " " not in r.name, r.name
        assert r.batch >= 1 and r.count >= 1, r.name
        missing = _required(r.op) - set(r.args)
        assert not missing, f"{r.name}: missing {missing}"


def test_distinct_merges_identical_shapes_of_one_network():
    a = Row("net.a", "conv", "conv2d", conv_args(8, 8, 3, (5, 5), padding=1), 2)
    b = Row("net.b", "conv", "conv2d", conv_args(8, 8, (3, 3), (5, 5), padding=(1, 1)), 2)
    c = Row("net.c", "conv", "conv2d", conv_args(8, 8, 3, (5, 5)), 2)
    d = Row("other.a", "conv", "conv2d", conv_args(8, 8, 3, (5, 5), padding=1), 2)
    merged = distinct([a, b, c, d])
    assert [(r.name, r.count) for r in merged] == [("net.a", 2), ("net.c", 1), ("other.a", 1)]
    assert a.count == 1  # the input rows are not modified


@pytest.mark.parametrize("family", suites.FAMILIES)
def test_every_row_builds(family, monkeypatch):
    # dlkern has no meta kernels: it validates the arguments, then hands meta tensors to torch
    monkeypatch.setenv("DLKERN_STRICT", "0")
    for row in suites.module_of(family).ROWS:
        c = case(row)
        assert c.flops > 0 and c.bytes > 0, row.name
        if c.torch_params:  # a module twin pair: same parameter values
            for p, q in zip(c.torch_params, c.dlkern_params):
                assert torch.equal(p, q), row.name
            continue
        args, kwargs = c.inputs(False, device="meta")
        expected = c.torch_fn(*args, **kwargs)
        assert c.dlkern_fn(*args, **kwargs).shape == expected.shape, row.name


def test_geomean_worst_and_below_one():
    assert summary.geomean([1.0, 4.0]) == pytest.approx(2.0)
    assert summary.geomean([2.0, 8.0, math.nan]) == pytest.approx(4.0)
    assert math.isnan(summary.geomean([]))
    results = [
        dict(suite="layers", name="a", family="conv", mode="fwd", speedup=2.0, accurate=True),
        dict(suite="layers", name="b", family="conv", mode="fwd", speedup=0.5, accurate=True),
        dict(suite="layers", name="c", family="conv", mode="fwd", speedup=0.8, accurate=False),
        dict(suite="layers", name="d", family="conv", mode="fwd", error="boom"),
        dict(suite="layers", name="a", family="conv", mode="fwdbwd", speedup=3.0, accurate=True),
        dict(suite="layers", name="e", family="rnn", mode="fwd", speedup=4.0, accurate=True),
    ]
    by = {(s["family"], s["mode"]): s for s in summary.summarize(results)}
    conv = by["conv", "fwd"]
    assert conv["rows"] == 4 and conv["geomean"] == pytest.approx((2.0 * 0.5 * 0.8) ** (1 / 3))
    assert (conv["worst"], conv["worst_speedup"]) == ("b", 0.5)
    assert conv["below_1"] == 2 and conv["failed"] == 2
    assert by["conv", "fwdbwd"]["geomean"] == pytest.approx(3.0)
    assert by["layers", "fwd"]["rows"] == 5
    assert by["layers", "fwd"]["geomean"] == pytest.approx((2.0 * 0.5 * 0.8 * 4.0) ** 0.25)


def _tiny_case(dlkern_fn):
    def build(dtype, requires_grad, device="cpu"):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(4, 16, generator=g, dtype=dtype).requires_grad_(requires_grad)
        return (x,), {}
    return Case("tiny.softmax", "attention", build, lambda x: torch.softmax(x, -1), dlkern_fn,
                flops=5 * 64, bytes=512, reduction=16)


def test_check_flags_a_wrong_result_and_passes_a_right_one():
    assert runner.check(_tiny_case(lambda x: torch.softmax(x, -1)), "fwdbwd")[2]
    err, tol, ok = runner.check(_tiny_case(lambda x: torch.softmax(x, -1) + 1e-3), "fwd")
    assert not ok and err == pytest.approx(1e-3, rel=1e-3) and tol < 1e-3
    # a wrong gradient with a right forward
    wrong_grad = _tiny_case(lambda x: torch.softmax(x, -1) + (x - x.detach()) * 1e-2)
    assert runner.check(wrong_grad, "fwd")[2] and not runner.check(wrong_grad, "fwdbwd")[2]


def test_a_row_that_raises_is_reported():
    def boom(x):
        raise RuntimeError("no kernel")
    result = runner.run_case(_tiny_case(boom), "fwd", "layers", 100.0, 10.0, budget=0.001)
    assert "no kernel" in result["error"] and not result["accurate"]


def test_measure_pair_is_adaptive():
    t_torch, t_dlkern, samples = measure_pair(lambda: None, lambda: None, budget=0.001, pause=0)
    assert t_torch >= 0 and t_dlkern >= 0 and samples == 3
    assert measure_pair(lambda: None, lambda: None, repeats=6, pause=0)[2] == 6


def _tiny_rows():
    return [Row("tiny.conv", "conv", "conv2d", conv_args(3, 4, 3, (6, 6), padding=1), 2),
            Row("tiny.attn", "attention", "scaled_dot_product_attention",
                dict(heads=2, kv_heads=2, q_len=5, kv_len=7, head_dim=8, mask="key_padding"), 2)]


def _torch_only_case(row):
    """A row's Case with torch on both sides: the harness's plumbing without compiling kernels
    (the kernels' agreement is the benchmark's own --check)."""
    import torch.nn.functional as F

    c = case(row)
    fn = {"conv2d": F.conv2d, "scaled_dot_product_attention": F.scaled_dot_product_attention}
    c.dlkern_fn = fn[row.op]
    return c


def test_run_writes_every_field(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("dlkern.benchmark.machine.measure_peak_gflops", lambda: 100.0)
    monkeypatch.setattr("dlkern.benchmark.machine.measure_bandwidth_gbs", lambda: 10.0)
    monkeypatch.setattr(cli, "jobs", lambda *a, **k: [("layers", r, m) for r in _tiny_rows()
                                                      for m in ("fwd", "fwdbwd")])
    monkeypatch.setattr(cli, "_build", _torch_only_case)
    monkeypatch.setitem(cli.BUDGET, "layers", 0.001)
    monkeypatch.setattr("dlkern.benchmark.timing.MIN_SAMPLE", 0.0)
    out = tmp_path / "out"
    assert cli.main(cli.parse(["--suite", "layers", "--out", str(out)])) == 0
    stems = {p.stem for p in out.iterdir()}
    assert len(stems) == 1
    stem = stems.pop()
    assert stem.startswith("cpu-") and stem.endswith("-layers")
    assert "summary:" in (out / f"{stem}.txt").read_text()
    report = json.loads((out / f"{stem}.json").read_text())
    machine = report["machine"]
    for key in ("cpu", "isa", "cores", "l1d_bytes", "l2_bytes", "l3_bytes", "peak_gflops",
                "bandwidth_gbs", "torch", "numba"):
        assert key in machine, key
    assert machine["isa"] in ("avx512", "avx2", "other")
    assert [(r["name"], r["mode"]) for r in report["results"]] == [
        ("tiny.conv", "fwd"), ("tiny.conv", "fwdbwd"), ("tiny.attn", "fwd"),
        ("tiny.attn", "fwdbwd")]
    for r in report["results"]:
        for key in ("suite", "name", "family", "mode", "torch_ms", "dlkern_ms", "speedup",
                    "max_abs_err", "tolerance", "accurate", "roofline_pct", "args", "batch"):
            assert key in r, key
        assert r["accurate"] and r["speedup"] > 0, r
    families = {(s["family"], s["mode"]) for s in report["summary"]}
    assert ("conv", "fwd") in families and ("attention", "fwdbwd") in families
    printed = capsys.readouterr().out
    last_row = max(m.end() for m in re.finditer(r"tiny\.attn +fwdbwd", printed))
    assert printed.index("summary:") > last_row  # the summary comes last


def test_compare_two_files(tmp_path, capsys):
    def report(speedups):
        results = [dict(suite="layers", name=n, family="conv", mode="fwd", speedup=s,
                        accurate=True) for n, s in speedups.items()]
        return dict(results=results, summary=summary.summarize(results))
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(report({"a": 1.0, "b": 2.0})))
    new.write_text(json.dumps(report({"a": 2.0, "b": 2.0, "c": 0.5})))
    rows, families = summary.compare(json.loads(old.read_text()), json.loads(new.read_text()))
    assert [r[:2] for r in rows] == [("a", "fwd"), ("b", "fwd"), ("c", "fwd")]
    assert rows[0][2:] == (1.0, 2.0) and math.isnan(rows[2][2])
    assert families == [("conv", "fwd", pytest.approx(2 ** 0.5), pytest.approx(2.0), 2)]
    assert cli.main(cli.parse(["--compare", str(old), str(new)])) == 0
    printed = capsys.readouterr().out
    assert "1.41x" in printed and "2.00x" in printed


# ----------------------------------------------------------------------------- tables vs models

_MODULE_OPS = ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
               "conv_transpose3d", "GRU", "LSTM", "MultiheadAttention")


def _observed_rows(model, inputs, batch):
    """Counter of (family, op, batch, args) over the conv, GRU/LSTM and attention calls of a
    forward pass, the arguments in the tables' format."""
    import collections

    import torch.nn as tnn

    seen = collections.Counter()

    def conv_hook(m, args):
        x = args[0]
        rank = x.dim() - 2
        if isinstance(m, tnn.modules.conv._ConvTransposeNd):
            family, op = "conv_transpose", f"conv_transpose{rank}d"
            found = dict(in_channels=m.in_channels, out_channels=m.out_channels,
                         kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                         output_padding=m.output_padding, bias=m.bias is not None,
                         size=tuple(x.shape[2:]))
        else:
            family = "depthwise" if m.groups == m.in_channels > 1 else "conv"
            op = f"conv{rank}d"
            found = conv_args(m.in_channels, m.out_channels, m.kernel_size, tuple(x.shape[2:]),
                              m.stride, m.padding, m.dilation, m.groups, m.bias is not None)
        seen[family, op, batch, tuple(sorted(found.items()))] += 1

    def rnn_hook(m, args):
        x = args[0]
        found = dict(input_size=m.input_size, hidden_size=m.hidden_size,
                     num_layers=m.num_layers, bidirectional=m.bidirectional,
                     batch_first=m.batch_first, size=x.shape[1] if m.batch_first else x.shape[0])
        seen["rnn", type(m).__name__, batch, tuple(sorted(found.items()))] += 1

    def attention_hook(m, args, kwargs):
        query, key = args[0], args[1]
        padding = kwargs.get("key_padding_mask") is not None
        causal = kwargs.get("attn_mask") is not None
        mask = {(False, False): "none", (True, False): "key_padding", (False, True): "causal",
                (True, True): "causal_padding"}[padding, causal]
        found = dict(embed_dim=m.embed_dim, num_heads=m.num_heads, q_len=query.shape[1],
                     kv_len=key.shape[1], mask=mask, cross=key is not query)
        seen["attention", "MultiheadAttention", batch, tuple(sorted(found.items()))] += 1

    for m in model.modules():
        if isinstance(m, tnn.modules.conv._ConvNd):
            m.register_forward_pre_hook(conv_hook)
        elif isinstance(m, (tnn.GRU, tnn.LSTM)):
            m.register_forward_pre_hook(rnn_hook)
        elif isinstance(m, tnn.MultiheadAttention):
            m.register_forward_pre_hook(attention_hook, with_kwargs=True)
    model(*inputs)
    return seen


def _model_on_meta(name):
    """(network in the tables, model, inputs, batch, families to compare, counts comparable)."""
    from dlkern.suites import models

    def images(batch, size):
        return (torch.empty(batch, 3, size, size),)

    def tokens(batch, length):
        return torch.zeros(batch, length, dtype=torch.long)

    with torch.device("meta"):
        if name == "resnet18":
            return models.ResNet18(), images(1, 224), 1, ("conv",), True
        if name == "mobilenet_v2":
            return models.MobileNetV2(), images(8, 224), 8, ("depthwise",), True
        if name == "convnext_tiny":
            return models.ConvNeXt(), images(8, 224), 8, ("conv", "depthwise"), True
        if name == "unet":
            return models.UNet(3, 2, 64), images(1, 256), 1, ("conv", "conv_transpose"), True
        if name == "gru_seq2seq":
            return models.GRUSeq2Seq(), (tokens(16, 48), tokens(16, 48)), 16, ("rnn",), True
        if name == "gpt_small":
            padding = torch.zeros(8, 256, dtype=torch.bool)
            model = models.TransformerLM(1000, 256, 4, 1024, 4).train()  # no fused fast path
            return model, (tokens(8, 256), padding), 8, ("attention",), True
        if name == "conformer":  # Conformer-M has 16 such blocks: compare shapes, not counts
            padding = torch.zeros(8, 250, dtype=torch.bool)
            return (models.ConformerBlock(256), (torch.empty(8, 250, 256), padding), 8,
                    ("depthwise",), False)
    raise KeyError(name)


@pytest.mark.parametrize("network", ["resnet18", "mobilenet_v2", "convnext_tiny", "unet",
                                     "gru_seq2seq", "gpt_small", "conformer"])
def test_models_match_their_table_rows(network):
    """The tables and the models suite describe the same networks: every conv, transposed conv,
    GRU and MultiheadAttention shape of the model (run on the meta device) is a row of the
    network's table, with the number of times it occurs, and the table has no other row."""
    import collections

    model, inputs, batch, families, counts = _model_on_meta(network)
    with torch.no_grad():
        seen = _observed_rows(model, inputs, batch)
    seen = collections.Counter({k: n for k, n in seen.items() if k[0] in families})
    table = collections.Counter()
    for r in suites.rows(families):
        if r.network == network and r.op in _MODULE_OPS:
            table[r.family, r.op, r.batch, tuple(sorted(r.args.items()))] += r.count
    assert set(seen) == set(table), (set(seen) ^ set(table))
    if counts:
        assert seen == table
