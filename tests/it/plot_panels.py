"""Draws the Grafana dashboard's panels from Prometheus query_range answers (one PNG each).

Run by tests/it/prometheus.rs with PYTHONPATH=target/plot-deps/python (matplotlib, pinned in
tests/it/plot-requirements.txt, installed by `make plot-deps`):

    python3 tests/it/plot_panels.py PANELS.json OUT_DIR

PANELS.json (written by the test):
    {"title": str, "start": unix s, "end": unix s, "step": s,
     "panels": [{"id", "title", "type", "unit", "description", "gridPos", "mappings",
                 "overrides": [[regex, "left"|"right"], ...],
                 "targets": [{"refId", "expr", "query", "legendFormat",
                              "result": [{"metric": {...}, "values": [[t, "v"], ...]}]}]}]}

Writes OUT_DIR/panel-<id>.png for every panel, OUT_DIR/dashboard.png (every panel on the
dashboard's grid) and OUT_DIR/overview.png (the dashboard's first three rows: ingest, webhooks,
JWTs, Redis and stage latency, backpressure). Stat panels are
drawn as the time series of their query with the last value (and its value mapping) in large
type. Series that are 0 over the whole window are drawn but left out of the legend (a note
says how many): the fixed label sets are initialised to 0, and 36 zero lines in a legend hide
the ones that moved. Every value is what Prometheus answered; nothing is made up.
"""

import json
import math
import os
import re
import sys
from datetime import datetime, timezone

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

# Grafana's classic palette, most distinct first; series at 0 throughout are drawn in grey.
COLORS = [
    "#73BF69", "#5794F2", "#FF9830", "#B877D9", "#F2495C", "#FADE2A", "#8AB8FF", "#FF7383",
    "#56A64B", "#3274D9", "#E0752D", "#8F3BB8", "#C4162A", "#E0B400", "#96D98D", "#CA95E5",
]
ZERO = "#5a5f66"
BG = "#181b1f"
FG = "#d8d9da"
GRID = "#2c3235"


def legend_of(fmt, metric):
    """legendFormat with the series' labels filled in (a missing label is empty, as in Grafana);
    when nothing is left, the series' own name, as Grafana shows it."""
    if fmt:
        text = re.sub(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt).strip()
        if text:
            return text
    name = metric.get("__name__", "")
    labels = ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
    return f"{name}{{{labels}}}" if labels or not name else name or "value"


def scale(unit, peak):
    """(divisor, suffix) for the axis of `unit` given the largest absolute value."""
    if unit == "s":
        if peak and peak < 1e-3:
            return 1e-6, " µs"
        if peak and peak < 1:
            return 1e-3, " ms"
        return 1, " s"
    if unit == "bytes":
        for div, suf in ((2**30, " GiB"), (2**20, " MiB"), (2**10, " KiB")):
            if peak >= div:
                return div, suf
        return 1, " B"
    if unit == "reqps":
        return 1, " req/s"
    if unit == "ops":
        return 1, " ops/s"
    return 1, ""


def fmt_value(v, unit):
    if v is None or math.isnan(v):
        return "no value"
    div, suf = scale(unit, abs(v))
    x = v / div
    return f"{x:.3g}{suf}"


def series_of(panel):
    out = []
    for t in panel["targets"]:
        for r in t["result"]:
            xs = [datetime.fromtimestamp(float(p[0]), tz=timezone.utc) for p in r["values"]]
            ys = [float(p[1]) for p in r["values"]]
            out.append((legend_of(t.get("legendFormat", ""), r["metric"]), xs, ys, t["refId"]))
    return out


def axis_of(label, overrides):
    for pattern, side in overrides:
        if re.fullmatch(pattern, label):
            return side
    return "left"


def draw(ax, panel, start, end, small=False):
    unit = panel.get("unit") or "short"
    series = series_of(panel)
    ax.set_facecolor(BG)
    for s in ax.spines.values():
        s.set_color(GRID)
    ax.tick_params(colors=FG, labelsize=7.5 if small else 8)
    ax.grid(True, color=GRID, linewidth=0.6)
    title = panel["title"]
    ax.set_title(title, color=FG, fontsize=10.5 if small else 11, loc="left", fontweight="bold")
    right = None
    finite = [y for _, _, ys, _ in series for y in ys if not math.isnan(y)]
    moving = [s for s in series if any(not math.isnan(y) and y != 0 for y in s[2])]
    zero = len(series) - len(moving)
    handles = []
    peaks = {"left": 0.0, "right": 0.0}
    for label, _, ys, _ in series:
        side = axis_of(label, panel.get("overrides", []))
        peaks[side] = max([peaks[side]] + [abs(y) for y in ys if not math.isnan(y)])
    colors = iter(COLORS * 4)
    for label, xs, ys, _ in series:
        side = axis_of(label, panel.get("overrides", []))
        target = ax
        if side == "right":
            if right is None:
                right = ax.twinx()
                right.tick_params(colors=FG, labelsize=7.5 if small else 8)
                for s in right.spines.values():
                    s.set_color(GRID)
            target = right
        div, _ = scale(unit, peaks[side])
        moves = any(not math.isnan(y) and y != 0 for y in ys)
        color = next(colors) if moves else ZERO
        (line,) = target.plot(xs, [y / div for y in ys], color=color, linewidth=1.0 if small else 1.4,
                              label=label + (" (right)" if side == "right" else ""), zorder=3 if moves else 2)
        if moves:
            handles.append(line)
        if not small:
            target.fill_between(xs, [0 if math.isnan(y) else y / div for y in ys], color=color, alpha=0.08)
    for side, a in (("left", ax), ("right", right)):
        if a is None:
            continue
        div, suf = scale(unit, peaks[side])
        a.yaxis.set_major_formatter(FuncFormatter(lambda v, _p, suf=suf: f"{v:g}{suf}"))
        if peaks[side] == 0:
            a.set_ylim(-0.05, 1)
        else:
            a.set_ylim(bottom=min(0, a.get_ylim()[0]))
    ax.set_xlim(datetime.fromtimestamp(start, tz=timezone.utc), datetime.fromtimestamp(end, tz=timezone.utc))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=timezone.utc))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=6 if small else 8))
    if panel["type"] in ("stat", "gauge"):
        last = None
        for _, _, ys, _ in series:
            vals = [y for y in ys if not math.isnan(y)]
            if vals:
                last = vals[-1]
        text = fmt_value(last, unit)
        for m in panel.get("mappings", []):
            if m.get("type") == "value" and last is not None and not math.isnan(last):
                key = f"{last:g}"
                if key in m.get("options", {}):
                    text = m["options"][key].get("text", text)
        ax.text(0.02, 0.55, f"last: {text}", transform=ax.transAxes, color=FG,
                fontsize=22 if small else 30, fontweight="bold", alpha=0.9)
    if handles:
        shown = handles[:12]
        labels = [h.get_label() for h in shown]
        more = len(handles) - len(shown)
        if more:
            labels[-1] += f"  (+{more} more)"
        ax.legend(shown, labels, loc="upper left", bbox_to_anchor=(0, -0.16 if small else -0.1),
                  ncol=4 if small else 3, fontsize=7 if small else 7.5, frameon=False,
                  labelcolor=FG, handlelength=1.2)
    if not finite:
        ax.text(0.5, 0.5, "No data", transform=ax.transAxes, ha="center", color=FG, fontsize=14)
    if zero:
        ax.text(1.0, 1.01, f"{zero} series at 0 throughout (not in the legend)", transform=ax.transAxes,
                ha="right", va="bottom", color="#8e8e8e", fontsize=6.5 if small else 7)


def panel_figure(panel, start, end, path):
    fig = plt.figure(figsize=(9, 4.6), dpi=100, facecolor=BG)
    ax = fig.add_axes([0.09, 0.36, 0.86, 0.52])
    draw(ax, panel, start, end)
    queries = "\n".join(f"{t['refId']}: {t['query']}" for t in panel["targets"])
    fig.text(0.01, 0.005, queries, color="#8e8e8e", fontsize=6.5, family="monospace", va="bottom", wrap=True)
    fig.savefig(path, facecolor=BG)
    plt.close(fig)


def grid_figure(panels, title, start, end, path, rows=None):
    """The panels on Grafana's 24-column grid (gridPos), those starting above grid row `rows`."""
    panels = [p for p in panels if rows is None or p["gridPos"]["y"] < rows]
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    col_w, row_h, head = 0.75, 0.4, 0.5  # inches per grid column / grid row; title band
    W, H = 24 * col_w, bottom * row_h + head
    fig = plt.figure(figsize=(W, H), dpi=80, facecolor=BG)
    span = f"{datetime.fromtimestamp(start, tz=timezone.utc):%Y-%m-%d %H:%M:%S} – {datetime.fromtimestamp(end, tz=timezone.utc):%H:%M:%S} UTC"
    fig.text(0.15 / W, 1 - 0.12 / H, f"{title} — live data from tests/it/prometheus.rs, {span}", color=FG,
             fontsize=14, fontweight="bold", va="top")
    for p in panels:
        g = p["gridPos"]
        # Cell in inches from the top-left; the axes leave room for ticks, title and legend.
        x, y, w, h = g["x"] * col_w, head + g["y"] * row_h, g["w"] * col_w, g["h"] * row_h
        left, right, top, below = 0.8, 0.55, 0.35, 1.0
        ax = fig.add_axes([(x + left) / W, 1 - (y + h - below) / H, (w - left - right) / W, (h - top - below) / H])
        draw(ax, p, start, end, small=True)
    fig.savefig(path, facecolor=BG)
    plt.close(fig)


def shrink(path):
    """Re-encodes a PNG with a 256-colour palette (a fraction of the size; the lines stay sharp)."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    img.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)


def main():
    data = json.load(open(sys.argv[1]))
    out = sys.argv[2]
    os.makedirs(out, exist_ok=True)
    start, end = data["start"], data["end"]
    for p in data["panels"]:
        path = os.path.join(out, f"panel-{p['id']:02d}.png")
        panel_figure(p, start, end, path)
        shrink(path)
        print(path)
    for name, rows in (("dashboard.png", None), ("overview.png", 24)):
        path = os.path.join(out, name)
        grid_figure(data["panels"], data["title"], start, end, path, rows)
        shrink(path)
        print(path)


if __name__ == "__main__":
    main()
