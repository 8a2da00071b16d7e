"""The per-family summary of a run, and the comparison of two runs.

``summarize(results)``: for each family and mode, the geometric mean of the speedups, the worst row
with its speedup, how many rows are below 1.0x, how many failed (raised, or disagreed with torch);
one more entry per mode over every layer row (family "layers"). ``compare(old, new)``: per row and
per family, the old speedup next to the new one.
"""
import math

MODES = ("fwd", "fwdbwd", "train")


def geomean(values):
    """Geometric mean of positive values (NaN for none)."""
    values = [v for v in values if v > 0 and math.isfinite(v)]
    if not values:
        return math.nan
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _timed(result):
    return "error" not in result and math.isfinite(result.get("speedup", math.nan))


def _failed(result):
    return "error" in result or not result.get("accurate", True)


def family_summary(results):
    """Summary of the results of one family in one mode."""
    timed = [r for r in results if _timed(r)]
    worst = min(timed, key=lambda r: r["speedup"]) if timed else None
    return dict(rows=len(results), geomean=geomean(r["speedup"] for r in timed),
                worst=worst["name"] if worst else None,
                worst_speedup=worst["speedup"] if worst else math.nan,
                below_1=sum(r["speedup"] < 1.0 for r in timed),
                failed=sum(_failed(r) for r in results))


def summarize(results):
    """[{family, mode, rows, geomean, worst, worst_speedup, below_1, failed}, ...] in the order the
    families appear; "layers" (every layer row of a mode) after the layer families."""
    order = []
    for r in results:
        if r["family"] not in order:
            order.append(r["family"])
    summary = []
    for family in order:
        for mode in MODES:
            group = [r for r in results if r["family"] == family and r["mode"] == mode]
            if group:
                summary.append(dict(family=family, mode=mode, **family_summary(group)))
    layers = [r for r in results if r["suite"] != "models"]
    if len({r["family"] for r in layers}) > 1:
        for mode in MODES:
            group = [r for r in layers if r["mode"] == mode]
            if group:
                summary.append(dict(family="layers", mode=mode, **family_summary(group)))
    return summary


def compare(old, new):
    """Rows and families of two reports (dicts as written to JSON) side by side.

    Returns (rows, families): rows are (name, mode, old speedup, new speedup) for every row of
    ``new`` (old NaN when the old run lacks it); families are (family, mode, old geomean, new
    geomean, rows in both), both geomeans over the rows the two runs share.
    """
    old_by_key = {(r["name"], r["mode"]): r for r in old["results"]}
    rows, shared = [], []
    for r in new["results"]:
        before = old_by_key.get((r["name"], r["mode"]))
        old_speedup = before["speedup"] if before is not None else math.nan
        rows.append((r["name"], r["mode"], old_speedup, r["speedup"]))
        if before is not None and _timed(before) and _timed(r):
            shared.append((r["family"], r["mode"], before["speedup"], r["speedup"]))
    families = []
    for family, mode in dict.fromkeys((f, m) for f, m, _, _ in shared):
        group = [(o, n) for f, m, o, n in shared if f == family and m == mode]
        families.append((family, mode, geomean(o for o, _ in group), geomean(n for _, n in group),
                         len(group)))
    return rows, families
