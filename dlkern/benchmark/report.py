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
            f"GFLOP/s (fp32, best of matmul and conv), "
            f"bandwidth {machine['bandwidth_gbs']:.1f} GB/s (copy); "
            f"torch {machine['torch']}, numba {machine['numba']}")


def format_row(r):
    if "error" in r:
        return f"{r['name'][:_NAME]:{_NAME}s} {r['mode']:6s} ERROR {r['error'][:200]}"
    flag = "" if r["accurate"] else f"  EXCEEDS TOLERANCE {r['tolerance']:.1e}"
    if "speedup" not in r:  # checked, not timed
        return (f"{r['name'][:_NAME]:{_NAME}s} {r['mode']:6s} max err {r['max_abs_err']:8.1e} "
                f"(tolerance {r['tolerance']:.1e}){flag}")
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
    """A bar chart of every row's speedup (log scale): forward on the left, forward+backward (a
    model's training step) on the right, bars grouped and coloured by family, each family's
    geometric mean drawn as a black line across its bars. Raises ImportError without
    matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in results if "error" not in r and "speedup" in r]
    families = list(dict.fromkeys(r["family"] for r in timed))
    positions, y = {}, 0.0  # one line per (family, row name), a gap between families
    for family in families:
        for r in timed:
            if r["family"] == family and (family, r["name"]) not in positions:
                positions[family, r["name"]] = y
                y += 1
        y += 1.5
    means = {(s["family"], s["mode"]): s["geomean"] for s in summary}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 2, sharey=True, figsize=(13, 0.13 * y + 2))
    panels = (("fwd",), ("fwdbwd", "train"))
    for ax, modes, title in zip(axes, panels, ("forward (model: inference)",
                                               "forward+backward (model: training step)")):
        for i, family in enumerate(families):
            members = [r for r in timed if r["family"] == family and r["mode"] in modes]
            if not members:
                continue
            ys = [positions[family, r["name"]] for r in members]
            ax.barh(ys, [r["speedup"] for r in members], height=0.8,
                    color=colors[i % len(colors)])
            mean = next((means[family, m] for m in modes if (family, m) in means), math.nan)
            if math.isfinite(mean):
                ax.plot([mean, mean], [min(ys) - 0.5, max(ys) + 0.5], color="black", lw=2)
                ax.text(mean, min(ys) - 0.7, f" {family}: {mean:.2f}x", fontsize=8,
                        va="bottom")
        ax.set_xscale("log")
        low, high = ax.get_xlim()
        ticks = [2.0 ** k for k in range(-6, 7) if low <= 2.0 ** k <= high]
        ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.axvline(1.0, color="gray", linewidth=1, linestyle="--")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("speedup over torch (log scale)")
    axes[0].set_yticks(list(positions.values()), [name for _, name in positions], fontsize=5)
    axes[0].set_ylim(y - 1, -2)  # top to bottom, no margins
    fig.suptitle("dlkern vs torch, float32: torch time / dlkern time; black line = family "
                 "geometric mean")
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=110)
    plt.close(fig)
