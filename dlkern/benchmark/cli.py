"""``python -m dlkern bench``: run a suite, print every row as it completes and the per-family
summary last, write the JSON, the text table and the chart.

Suites: ``layers`` (every row of the layer tables, forward and forward+backward), ``models``
(whole models, inference and one training step), ``all`` (both: what ``make bench`` runs) and
``quick`` (a few rows per table, a shorter timing budget). ``--op`` keeps some families, ``--row``
the rows whose name contains a string, ``--mode`` some modes.

The JSON report: ``machine`` (cpu, isa, cores, l1d/l2/l3_bytes, measured peak_gflops and
bandwidth_gbs, torch and numba versions, ...), ``results`` (one per row and mode: suite, name,
family, op, mode, batch, count, args, torch_ms, dlkern_ms, speedup, samples, gflop, mbytes,
dlkern_gflops, torch_gflops, dlkern_gbs, bound, roofline_pct, max_abs_err, tolerance, accurate;
``error`` instead of the times for a row that raised), ``summary`` (per family and mode: rows,
geomean, worst, worst_speedup, below_1, failed), suite, started, budget_s, patch_policy (the
policy the models were patched with), wall_s.
"""
import argparse
import contextlib
import datetime
import json
import os
import sys
import time

from dlkern import suites
from dlkern.benchmark import report
from dlkern.benchmark.summary import compare, summarize

SUITES = ("all", "layers", "models", "quick")
BUDGET = {"quick": 0.15}  # timed seconds per row and mode; the default below for the others
DEFAULT_BUDGET = 0.3


def add_arguments(parser):
    parser.add_argument("--suite", choices=SUITES, default="all",
                        help="what to run (default: all = layers and models)")
    parser.add_argument("--op", action="append", choices=suites.FAMILIES + ("models",),
                        help="only this family (repeatable)")
    parser.add_argument("--row", action="append", metavar="TEXT",
                        help="only rows whose name contains TEXT (repeatable)")
    parser.add_argument("--mode", action="append", choices=("fwd", "fwdbwd", "train"),
                        help="only this mode (repeatable)")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help=f"timed seconds per row and mode (default {DEFAULT_BUDGET}, "
                             f"quick {BUDGET['quick']})")
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON")
    parser.add_argument("--plot", metavar="FILE", help="write a PNG chart of the speedups")
    parser.add_argument("--out", metavar="DIR",
                        help="write DIR/<machine>.json, .txt and .png (cpu-<isa>-<cores>c-<date>)")
    parser.add_argument("--compare", nargs="+", metavar="JSON",
                        help="OLD.json: compare this run with an older one; OLD.json NEW.json: "
                             "compare two runs without running")
    parser.add_argument("--policy", choices=("fastest", "always"),
                        help="dlkern.patch's policy for the models (default: patch's own, "
                             "DLKERN_POLICY or fastest); layer rows always run dlkern")
    parser.add_argument("--first-call", action="store_true",
                        help="also time a new process's first conv2d call (warm and cold cache)")
    parser.add_argument("--check", action="store_true",
                        help="only check every row against torch (no timing)")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")


def jobs(suite, ops=None, names=None, modes=None):
    """[(suite name, Row or model-case factory, mode), ...] for a suite and its filters."""
    selected = []
    if suite in ("all", "layers", "quick"):
        families = [f for f in suites.FAMILIES if not ops or f in ops]
        for row in suites.rows(families, quick=suite == "quick"):
            for mode in ("fwd", "fwdbwd"):
                selected.append(("layers" if suite != "quick" else "quick", row, mode))
    if suite in ("all", "models") and (not ops or "models" in ops):
        from dlkern.suites import model_cases

        for spec in model_cases.MODELS:
            for mode in ("fwd", "train"):
                selected.append(("models", spec, mode))
    return [(s, item, m) for s, item, m in selected
            if (not names or any(n in item.name for n in names)) and (not modes or m in modes)]


class Progress:
    """A one-line progress indicator on stderr (only when stderr is a terminal)."""

    def __init__(self, total):
        self.total, self.done, self.tty = total, 0, sys.stderr.isatty()

    def step(self, label):
        self.done += 1
        if self.tty:
            sys.stderr.write(f"\r[{self.done}/{self.total}] {label[:70]:70s}")
            sys.stderr.flush()

    def close(self):
        if self.tty:
            sys.stderr.write("\r" + " " * 90 + "\r")
            sys.stderr.flush()


def _build(item):
    """The Case of a table row or a whole-model spec (built just before it runs)."""
    from dlkern.suites.cases import case

    return item.build() if hasattr(item, "build") else case(item)


def run(suite="all", ops=None, names=None, modes=None, budget=None, first_call=False, old=None,
        echo=print, check_only=False):
    """Run a suite; returns the report (the dict written as JSON). ``old``: an older report to
    compare with, printed before the summary."""
    from dlkern.benchmark.machine import machine_info, measure_bandwidth_gbs, measure_peak_gflops
    from dlkern.benchmark.runner import run_case

    started = time.time()
    budget = budget or BUDGET.get(suite, DEFAULT_BUDGET)
    peak, bandwidth = measure_peak_gflops(), measure_bandwidth_gbs()
    machine = machine_info(peak, bandwidth)
    echo(report.format_machine(machine))
    todo = jobs(suite, ops, names, modes)
    progress = Progress(len(todo))
    results, family, current, case = [], None, None, None
    header = report.format_table([]).splitlines()
    echo("\n".join(header[:2]))
    for suite_name, item, mode in todo:
        progress.step(f"{item.name} {mode}")
        if item is not current:  # one case alive at a time (models, large tensors)
            current, case = item, None
            try:
                case = _build(item)
            except Exception as exc:
                case = exc
        if isinstance(case, Exception):
            result = dict(suite=suite_name, name=item.name, family=item.family, mode=mode,
                          error=f"building the case: {type(case).__name__}: {case}")
        else:
            result = run_case(case, mode, suite_name, peak, bandwidth, budget, check_only)
        results.append(result)
        if result["family"] != family:
            family = result["family"]
            echo(f"[{family}]")
        echo(report.format_row(result))
    progress.close()
    case = None
    summary = summarize(results)
    when = datetime.datetime.fromtimestamp(started).isoformat(" ", "seconds")
    from dlkern import policy

    out = dict(suite=suite, started=when, machine=machine, budget_s=budget,
               patch_policy=policy.resolve(None), results=results, summary=summary)
    if first_call:
        from dlkern.benchmark.first_call import first_call_seconds

        warm, cold = first_call_seconds(cold=False), first_call_seconds(cold=True)
        out["first_call"] = dict(warm_cache=warm, cold_cache=cold)
        echo(f"\nnew process, conv2d: import {warm[0]:.2f} s; first forward {warm[1]:.2f} s, first "
             f"forward+backward {warm[2]:.2f} s with a warm Numba cache; {cold[1]:.2f} s and "
             f"{cold[2]:.2f} s with an empty one (compiling)")
    out["wall_s"] = time.time() - started
    if old is not None:
        echo("")
        echo(report.format_compare(*compare(old, out)))
    echo("")
    echo(report.format_summary(summary))
    echo(f"wall time {out['wall_s']:.0f} s")
    return out


@contextlib.contextmanager
def _policy(policy):
    """DLKERN_POLICY=policy inside the block (the models' dlkern.patch reads it), if given."""
    old = os.environ.get("DLKERN_POLICY")
    if policy:
        os.environ["DLKERN_POLICY"] = policy
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("DLKERN_POLICY", None)
        else:
            os.environ["DLKERN_POLICY"] = old


def _load(path):
    with open(path) as f:
        return json.load(f)


def main(args):
    if args.list:
        listed = {}
        for _, item, mode in jobs(args.suite, args.op, args.row, args.mode):
            listed.setdefault((item.family, item.name), []).append(mode)
        for (family, name), modes in listed.items():
            print(f"{family:15s} {name:60s} {' '.join(modes)}")
        return 0
    if args.compare and len(args.compare) > 2:
        raise SystemExit("--compare takes OLD.json, or OLD.json NEW.json")
    if args.compare and len(args.compare) == 2:
        rows, families = compare(_load(args.compare[0]), _load(args.compare[1]))
        print(report.format_compare(rows, families, "old", "new"))
        return 0
    lines = []

    def echo(text):
        print(text, flush=True)
        lines.append(text)

    old = _load(args.compare[0]) if args.compare else None
    with _policy(args.policy):
        out = run(args.suite, args.op, args.row, args.mode, args.budget, args.first_call, old,
                  echo, args.check)
    paths = {"json": args.json, "plot": args.plot}
    if args.out:
        from dlkern.benchmark.machine import result_name

        os.makedirs(args.out, exist_ok=True)
        stem = os.path.join(args.out, result_name(out["machine"]))
        stem += "" if args.suite == "all" else f"-{args.suite}"
        paths = {"json": paths["json"] or stem + ".json", "plot": paths["plot"] or stem + ".png",
                 "text": stem + ".txt"}
    if paths.get("json"):
        with open(paths["json"], "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {paths['json']}")
    if paths.get("text"):
        with open(paths["text"], "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {paths['text']}")
    if paths.get("plot"):
        try:
            report.plot(out["results"], out["summary"], paths["plot"])
            print(f"wrote {paths['plot']}")
        except ImportError:
            print("matplotlib is not installed: no chart (pip install 'dlkern[plot]')")
    return 0


def parse(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dlkern bench", description=__doc__)
    add_arguments(parser)
    return parser.parse_args(argv)
