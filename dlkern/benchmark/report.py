"""Printing a run: the row table, the per-family summary, a comparison with an older run, and the
bar chart (bars grouped by family, each family's geometric mean marked)."""
import math

_NAME = 58


def _ratio(value):
    """A speedup as "1.23x", "-" when there is none."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.2f}x"


def format_machine(machine):
    return (f"machine: {machine['cpu']}, {machine['isa']}, {machine['cores']} cores, "
            f"L1d {machine['l1d_bytes'] // 1024} KiB, L2 {machine['l2_bytes'] // 1024} KiB, "
            f"L3 {machine['l3_bytes'] // 2 ** 20} MiB; measured peak {machine['peak_gflops']:.0f} "
            f"GFLOP/s (fp32 matmul), bandwidth {machine['bandwidth_gbs']:.1f} GB/s (copy); "
            f"torch {machine['torch']}, numba {machine['numba']}")


def format_row(r):
    if "error" in r:
        return f"{r['name'][:_NAME]:{_NAME}s} {r['mode']:6s} ERROR {r['error'][:200]}"
    flag = "" if r["accurate"] else f"  EXCEEDS TOLERANCE {r['tolerance']:.1e}"
    return (f"{r['name'][:_NAME]:{_NAME}s} {r['mode']:6s} {r['torch_ms']:9.3f} "
            f"{r['dlkern_ms']:9.3f} {r['speedup']:7.2f}x {r['dlkern_gflops']:7.1f} {r['dlkern_gbs']:7.1f} "
            f"{r['roofline_pct']:6.1f}% {r['bound'][:3]:3s} {r['max_abs_err']:8.1e}{flag}")


def format_table(results):
    header = (f"{'row':{_NAME}s} {'mode':6s} {'torch ms':>9s} {'dlkern ms':>9s} {'speedup':>8s} "
              f"{'GF/s':>7s} {'GB/s':>7s} {'roofln':>7s} {'bnd':3s} {'max err':>8s}")
    lines = [header, "-" * len(header)]
    family = None
    for r in results:
        if r["family"] != family:
            family = r["family"]
            lines.append(f"[{family}]")
        lines.append(format_row(r))
    lines.append("GF/s, GB/s: dlkern's rate; roofln: the machine's least time for the row's FLOPs "
                 "and bytes over dlkern's time (bnd: which limit); max err: against torch float32")
    return "\n".join(lines)


def format_summary(summary):
    header = (f"{'family':15s} {'mode':6s} {'rows':>4s} {'geomean':>8s} {'<1.0x':>5s} "
              f"{'failed':>6s}  worst row")
    lines = ["summary: speedup = torch time / dlkern time, same process", header,
             "-" * (len(header) + 40)]
    for s in summary:
        worst = f"{s['worst']} ({s['worst_speedup']:.2f}x)" if s["worst"] else ""
        lines.append(f"{s['family']:15s} {s['mode']:6s} {s['rows']:4d} "
                     f"{_ratio(s['geomean']):>8s} {s['below_1']:5d} {s['failed']:6d}  "
                     f"{worst}")
    return "\n".join(lines)


def format_compare(rows, families, old_label="old", new_label="new"):
    lines = [f"{'row':{_NAME}s} {'mode':6s} {old_label[:9]:>9s} {new_label[:9]:>9s} {'change':>7s}"]
    for name, mode, old, new in rows:
        change = new / old if old and old > 0 else math.nan
        lines.append(f"{name[:_NAME]:{_NAME}s} {mode:6s} {_ratio(old):>9s} {_ratio(new):>9s} "
                     f"{_ratio(change):>7s}")
    lines += ["", f"{'family':15s} {'mode':6s} {'rows':>4s} {old_label[:9]:>9s} "
              f"{new_label[:9]:>9s}   (geomeans over the rows both runs have)"]
    for family, mode, old, new, count in families:
        lines.append(f"{family:15s} {mode:6s} {count:4d} {_ratio(old):>9s} {_ratio(new):>9s}")
    return "\n".join(lines)


def plot(results, summary, path):
    """A horizontal bar chart of every row's speedup (log scale), grouped by family and mode, each
    group's geometric mean drawn as a line across its bars. Raises ImportError without
    matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in results if "error" not in r]
    groups = [(s["family"], s["mode"], s["geomean"]) for s in summary if s["family"] != "layers"]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(11, 0.16 * len(timed) + 0.3 * len(groups) + 2))
    y, ticks, labels = 0, [], []
    for i, (family, mode, mean) in enumerate(groups):
        members = [r for r in timed if r["family"] == family and r["mode"] == mode]
        if not members:
            continue
        top = y
        for r in members:
            ax.barh(y, r["speedup"], color=colors[i % len(colors)], height=0.8)
            ticks.append(y)
            labels.append(r["name"])
            y += 1
        if math.isfinite(mean):
            ax.plot([mean, mean], [top - 0.5, y - 0.5], color="black", linewidth=2)
            ax.text(mean, top - 0.6, f" {family} {mode}: geomean {mean:.2f}x", fontsize=8,
                    va="bottom")
        y += 1.5
    ax.set_yticks(ticks, labels, fontsize=5)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="gray", linewidth=1, linestyle="--")
    ax.set_xlabel("speedup over torch (torch time / dlkern time, log scale)")
    ax.set_title("dlkern vs torch, float32: bars grouped by family and mode, black line = geomean")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
