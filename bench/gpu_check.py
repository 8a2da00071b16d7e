"""One call on a GPU machine: check every dlkern Triton op against torch, then time it against torch.

    pip install --no-build-isolation --no-deps -e . && python bench/gpu_check.py --out DIR

Runs on Python 3.12, torch 2.11, triton 3.6 with no network. Sections live in ``gpu_<family>.py``
next to this file; each has ``check(ctx)``, which calls ``ctx.check`` for correctness (float32,
float16, bfloat16, forward and gradients), and ``time(ctx)``, which calls ``ctx.time`` for timings
(forward, forward+backward). Checks run first for every section, then timings, all within
``--budget`` seconds (default 330, so the whole call stays under the 6 minutes the issues allow).
In the timing phase each section gets an equal share of the time left (a section that finishes
early leaves its rest to the next); timings left when a share is spent are reported as skipped,
never guessed.

Correctness: dlkern's error against a float64 torch reference may be at most twice torch's own error
in the same dtype, plus a small floor. Timing: ``triton.testing.do_bench`` medians, torch and dlkern
interleaved in the same process; speedup = torch ms / dlkern ms.
Prints a table and writes ``gpu_check.json`` and ``gpu_check.txt`` into ``--out``.
"""
import argparse
import importlib
import json
import math
import os
import platform
import sys
import time
import traceback

import torch

SECTIONS = ("conv", "separable", "attention", "rnn")
# Error floor per dtype (absolute, relative to the reference's largest magnitude).
FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


class Context:
    def __init__(self, budget_s):
        self.deadline = time.monotonic() + budget_s
        self.section_deadline = self.deadline
        self.checks = []
        self.timings = []
        self.phase = "check"

    # -- correctness ---------------------------------------------------------------------------
    def check(self, name, dtype, actual, expected64, torch_same_dtype=None):
        """``actual``: dlkern's result in ``dtype``; ``expected64``: torch on float64 copies;
        ``torch_same_dtype``: torch's own result in ``dtype`` (sets the allowed error)."""
        a = actual.detach().double()
        e = expected64.detach().double()
        scale = max(float(e.abs().max()), 1e-30) if e.numel() else 1.0
        err = float((a - e).abs().max()) / scale if e.numel() else 0.0
        if math.isnan(err) or bool(torch.isnan(a).any() & ~torch.isnan(e).any()):
            err = float("inf")
        ref_err = 0.0
        if torch_same_dtype is not None and e.numel():
            ref_err = float((torch_same_dtype.detach().double() - e).abs().max()) / scale
        allowed = 2 * ref_err + FLOOR[dtype]
        ok = err <= allowed and tuple(a.shape) == tuple(e.shape)
        self.checks.append({"name": name, "dtype": str(dtype).replace("torch.", ""), "rel_err": err,
                            "torch_rel_err": ref_err, "allowed": allowed, "ok": ok})
        print(f"  {'ok  ' if ok else 'FAIL'} {name} [{self.checks[-1]['dtype']}] err {err:.2e} "
              f"(torch {ref_err:.2e}, allowed {allowed:.2e})", flush=True)

    def check_failed(self, name, dtype, exc):
        self.checks.append({"name": name, "dtype": str(dtype).replace("torch.", ""), "ok": False,
                            "error": f"{type(exc).__name__}: {exc}"})
        print(f"  FAIL {name}: {type(exc).__name__}: {exc}", flush=True)

    # -- timing ----------------------------------------------------------------------------------
    def time(self, name, dtype, mode, torch_fn, dlkern_fn, flops=None, bytes_moved=None, target=None):
        """Median ms of each with do_bench; ``flops`` or ``bytes_moved`` give TFLOP/s or TB/s."""
        from triton.testing import do_bench
        row = {"name": name, "dtype": str(dtype).replace("torch.", ""), "mode": mode, "target": target}
        if time.monotonic() > min(self.deadline, self.section_deadline):
            row["skipped"] = "time budget spent"
            self.timings.append(row)
            print(f"  skip {name} [{row['dtype']}] {mode}: time budget spent", flush=True)
            return
        try:
            dlkern_fn()  # compile and autotune outside the measurement
            torch_fn()
            t_torch = do_bench(torch_fn, warmup=25, rep=100, return_mode="median")
            t_dl = do_bench(dlkern_fn, warmup=25, rep=100, return_mode="median")
        except Exception as exc:  # a failing case is reported, the run goes on
            row["error"] = f"{type(exc).__name__}: {exc}"
            self.timings.append(row)
            print(f"  FAIL {name} [{row['dtype']}] {mode}: {row['error']}", flush=True)
            return
        row.update(torch_ms=t_torch, dlkern_ms=t_dl, speedup=t_torch / t_dl)
        if flops:
            row["dlkern_tflops"] = flops / t_dl / 1e9
        if bytes_moved:
            row["dlkern_tbps"] = bytes_moved / t_dl / 1e9
        self.timings.append(row)
        print("  " + _format_row(row), flush=True)


def _format_row(row):
    if "torch_ms" not in row:
        return f"{row['name']:<52} {row['dtype']:<9} {row['mode']:<8} {row.get('error') or row.get('skipped')}"
    rate = (f"{row['dlkern_tflops']:7.1f} TFLOP/s" if "dlkern_tflops" in row else
            f"{row['dlkern_tbps']:7.2f} TB/s   " if "dlkern_tbps" in row else " " * 15)
    target = f"target {row['target']}" if row.get("target") else ""
    return (f"{row['name']:<52} {row['dtype']:<9} {row['mode']:<8} {row['torch_ms']:9.3f} "
            f"{row['dlkern_ms']:9.3f} {row['speedup']:7.2f}x {rate} {target}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "bench/out"))
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--budget", type=float, default=330.0, help="seconds for the whole run")
    parser.add_argument("--no-timing", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; nothing to do", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    ctx = Context(args.budget)
    sections = [s for s in args.only.split(",") if s]
    modules = {}
    for s in sections:
        try:
            modules[s] = importlib.import_module(f"gpu_{s}")
        except Exception as exc:
            ctx.check_failed(f"import gpu_{s}", torch.float32, exc)
    for phase in ("check",) + (() if args.no_timing else ("time",)):
        ctx.phase = phase
        for i, (s, module) in enumerate(modules.items()):
            left = max(0.0, ctx.deadline - time.monotonic())
            ctx.section_deadline = time.monotonic() + left / (len(modules) - i)
            print(f"== {s}: {phase}", flush=True)
            try:
                getattr(module, phase)(ctx)
            except Exception as exc:
                traceback.print_exc()
                ctx.check_failed(f"{s} {phase}", torch.float32, exc)
    device = torch.cuda.get_device_name()
    import triton
    meta = {"device": device, "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "allow_tf32": False}
    lines = [f"dlkern gpu_check on {device}: torch {meta['torch']}, triton {meta['triton']}, {meta['date']}",
             f"checks: {sum(c['ok'] for c in ctx.checks)}/{len(ctx.checks)} passed"]
    lines += [f"  FAIL {c['name']} [{c['dtype']}] {c.get('error', c.get('rel_err'))}" for c in ctx.checks if not c["ok"]]
    lines.append(f"{'case':<52} {'dtype':<9} {'mode':<8} {'torch ms':>9} {'dlkern ms':>9} {'speedup':>8}")
    lines += [_format_row(r) for r in ctx.timings]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump({"meta": meta, "checks": ctx.checks, "timings": ctx.timings}, f, indent=1)
    print("\n".join(lines))
    return 0 if all(c["ok"] for c in ctx.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
