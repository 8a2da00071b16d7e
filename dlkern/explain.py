"""``dlkern.explain(model, *args, **kwargs)``: where a patched model spends its time, call by call.

The model runs once under torch (a copy with torch's classes) and once patched (a copy, policy
"fastest"). Every call of a patched module is recorded on the way; each distinct call (module and
signature) is then timed on its own, torch's forward against dlkern's, the way the policy times
it (dlkern.policy.measure: warmed, alternating rounds, fastest samples; forward and backward when grad
mode is on and the model has parameters that require a gradient, as in a training step). The
whole model is timed the same way. The report's rows (``Report.rows``, dicts) give per call:
module, class, family, shapes, calls, torch_ms, dlkern_ms (per step: per-call time x calls),
speedup, the policy's choice and ``share``, the call's part of torch's step time; ``Report.total``
the whole step under torch and patched. ``print(report)`` prints the table.

    report = dlkern.explain(model, x)              # training step (grad on)
    with torch.no_grad():
        print(dlkern.explain(model, x))            # inference

``python -m dlkern explain`` runs it on the whole models of dlkern/suites/models.py.
"""
import copy
import dataclasses

import torch

from dlkern.patch import patch as _patch_model
from dlkern import policy as _policy


@dataclasses.dataclass
class Report:
    title: str
    mode: str                      # "inference" or "training"
    rows: list                     # one dict per distinct covered call, slowest under torch first
    total: dict                    # torch_ms, patched_ms, speedup, covered_torch_ms, covered_ms

    def __str__(self):
        head = ["module", "class", "shapes", "calls", "torch ms", "dlkern ms", "speedup", "choice",
                "share"]
        lines = [[r["module"] or "<root>", r["class"], r["shapes"], str(r["calls"]),
                  f"{r['torch_ms']:.3f}", f"{r['dlkern_ms']:.3f}", f"{r['speedup']:.2f}x",
                  r["choice"], f"{100 * r['share']:.1f}%" if r["share"] is not None else "-"]
                 for r in self.rows]
        t = self.total
        lines.append(["covered calls (chosen path)", "", "", "", f"{t['covered_torch_ms']:.3f}",
                      f"{t['covered_ms']:.3f}",
                      f"{t['covered_torch_ms'] / t['covered_ms']:.2f}x" if t["covered_ms"] else "-",
                      "", f"{100 * t['covered_share']:.1f}%"])
        lines.append(["whole step (torch vs patched)", "", "", "", f"{t['torch_ms']:.3f}",
                      f"{t['patched_ms']:.3f}", f"{t['speedup']:.2f}x", "", "100%"])
        widths = [max(len(x) for x in col) for col in zip(head, *lines)]
        out = [f"{self.title} ({self.mode})"]
        for k, line in enumerate([head] + lines):
            if k == len(lines) - 1:
                out.append("  ".join("-" * w for w in widths))
            out.append("  ".join(x.ljust(w) if j < 3 or j == 7 else x.rjust(w)
                                 for j, (x, w) in enumerate(zip(line, widths))))
        out.append("rows in container classes (TransformerEncoderLayer) include the calls nested "
                   "in them; 'covered' sums the other rows")
        return "\n".join(out)


def _shapes(args, kwargs):
    """The shapes of a call's tensor arguments; a packed sequence as its rows, batch and steps."""
    parts = []
    for arg in list(args) + list(kwargs.values()):
        if isinstance(arg, torch.nn.utils.rnn.PackedSequence):
            sizes = arg.batch_sizes
            parts.append(f"packed({'x'.join(str(d) for d in arg.data.shape)}, "
                         f"B={int(sizes[0]) if sizes.numel() else 0}, T={sizes.numel()})")
            continue
        for t in _policy.tensors_in(arg):
            parts.append("x".join(str(d) for d in t.shape) or "scalar")
    return " ".join(parts)


def _torch_class(cls):
    for base in cls.__mro__:
        if base.__module__.startswith("torch.nn"):
            return base
    return cls


def torch_copy(model):
    """A deep copy of ``model`` with torch's own class on every module that patch swaps (undoes
    a patch; dlkern's own modules with no torch twin stay)."""
    from dlkern.patch import _CONTAINERS, _TWINS

    swapped = tuple(twin for twin, _ in _TWINS.values()) + tuple(_CONTAINERS.values())
    reference = copy.deepcopy(model)
    for module in reference.modules():
        if isinstance(module, swapped):
            module.__class__ = _torch_class(type(module))
            module.__dict__.pop("_dlkern_policy_key", None)
    return reference


def _rows(calls, rounds):
    """Time each distinct recorded call, torch's forward against dlkern's."""
    distinct = {}
    for call in calls:
        slot = distinct.setdefault((id(call["module"]), call["key"]), dict(call, calls=0))
        slot["calls"] += 1
    rows = []
    for call in distinct.values():
        module = call["module"]
        args, kwargs = call["args"], call["kwargs"]

        def path(forward):
            return _policy.timed_call(lambda *a, **k: forward(module, *a, **k), args, kwargs,
                                      call["params"], call["backward"])
        devices = {t.device for t in _policy.tensors_in((args, kwargs)) + call["params"]}
        with torch.random.fork_rng(devices=[d.index for d in devices if d.type == "cuda"]):
            t_torch, t_dlkern = _policy.measure(path(call["torch_forward"]),
                                                path(call["dlkern_forward"]), devices,
                                                rounds=rounds)
        rows.append({"module": call["name"], "class": _torch_class(type(module)).__name__,
                     "family": call["family"], "shapes": _shapes(args, kwargs),
                     "calls": call["calls"], "torch_ms": 1e3 * t_torch * call["calls"],
                     "dlkern_ms": 1e3 * t_dlkern * call["calls"], "speedup": t_torch / t_dlkern,
                     "choice": call["choice"],
                     "container": call["container"]})
    return rows


def explain_runs(title, run_torch, run_patched, backward, model=None, rounds=7):
    """The report for two zero-argument callables: one step of the model under torch and one of
    the patched model ``model`` (whose measured modules are recorded while it runs once; without
    ``model`` the rows are named by the order of their first call)."""
    with _policy.recording() as calls:
        run_patched()
    names = {id(m): n for n, m in model.named_modules()} if model is not None else {}
    for call in calls:
        call["name"] = names.get(id(call["module"]), f"#{len(names)}")
        names.setdefault(id(call["module"]), call["name"])
    rows = _rows(calls, rounds)
    t_torch, t_patched = _policy.measure(run_torch, run_patched, rounds=rounds)
    covered = [r for r in rows if not r["container"]]
    for r in rows:
        r["share"] = r["torch_ms"] / (1e3 * t_torch)
        del r["container"]
    rows.sort(key=lambda r: -r["torch_ms"])
    covered_ms = sum(r["dlkern_ms"] if r["choice"] == "dlkern" else r["torch_ms"] for r in covered)
    covered_torch = sum(r["torch_ms"] for r in covered)
    total = {"torch_ms": 1e3 * t_torch, "patched_ms": 1e3 * t_patched,
             "speedup": t_torch / t_patched, "covered_torch_ms": covered_torch,
             "covered_ms": covered_ms, "covered_share": covered_torch / (1e3 * t_torch)}
    return Report(title, "training" if backward else "inference", rows, total)


def explain(model, *args, **kwargs):
    """Run ``model(*args, **kwargs)`` under torch and patched (copies; ``model`` is untouched) and
    report each covered call's torch and dlkern time, the policy's choice and share of the step.
    Grad mode on (and parameters requiring gradients) times forward and backward."""
    reference = torch_copy(model)
    patched = _patch_model(copy.deepcopy(reference), policy="fastest")
    params = list(reference.parameters())
    backward = _policy.wants_backward(_policy.tensors_in((args, kwargs)) + params)
    run_torch = _policy.timed_call(reference, args, kwargs, params, backward)
    run_patched = _policy.timed_call(patched, args, kwargs, list(patched.parameters()), backward)
    return explain_runs(type(model).__name__, run_torch, run_patched, backward, patched)


# ---------------------------------------------------------------------------------------------
# python -m dlkern explain: the whole models of dlkern/suites/models.py

def suite_reports(name_filter=None, modes=("inference", "training"), rounds=7):
    """Yield the report of every whole model of the benchmark suite
    (dlkern.suites.model_cases.MODELS: torch as written against the model patched with the
    default policy), per mode: inference (eval, no_grad) and one training step (forward, loss,
    backward, SGD update)."""
    from dlkern.suites import model_cases

    for spec in model_cases.MODELS:
        if name_filter and name_filter.lower() not in spec.name.lower():
            continue
        case = spec.build()
        example = case.example
        if "inference" in modes:
            def infer(fn):
                def run():
                    with torch.no_grad():
                        return fn(*example)
                return run
            yield explain_runs(case.name, infer(case.torch_fn), infer(case.dlkern_fn), False,
                               case.dlkern_model, rounds)
        if "training" in modes:
            yield explain_runs(case.name, case.train_torch, case.train_dlkern, True,
                               case.dlkern_model, rounds)


def add_arguments(parser):
    parser.add_argument("--model", metavar="TEXT", help="only the models whose name contains it")
    parser.add_argument("--mode", choices=["inference", "training", "both"], default="both")
    parser.add_argument("--json", metavar="FILE", help="also write the reports as JSON")


def run_cli(args):
    """``python -m dlkern explain``: print the report of each suite model."""
    import json

    modes = ("inference", "training") if args.mode == "both" else (args.mode,)
    reports = []
    for report in suite_reports(args.model, modes):
        print(report, end="\n\n", flush=True)
        reports.append(dataclasses.asdict(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f, indent=1)
    return 0
