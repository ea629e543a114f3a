"""Three kinds of chart as standalone SVG text: horizontal bars around a
reference line, lines over a (log) x axis, and grouped bars. Plain SVG 1.1
with inline styles, readable on GitHub and in any browser."""

import math
from xml.sax.saxutils import escape

PALETTE = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#57606a"]
TARGET_COLOURS = {"apisix-stream": "#1f6feb", "nginx": "#1a7f37", "haproxy": "#9a6700",
                  "dnsdist": "#8250df", "direct": "#57606a"}
FONT = 'font-family="Helvetica, Arial, sans-serif"'


def colour(name, i):
    return TARGET_COLOURS.get(name, PALETTE[i % len(PALETTE)])


def nice_ticks(lo, hi, count=5):
    """Round tick values covering lo..hi."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.floor(lo / step) * step
    ticks, v = [], start
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 10))
        v += step
    if ticks[-1] < hi:
        ticks.append(round(v, 10))
    return ticks


def label_num(v):
    if v >= 1e6 and v % 1e6 == 0:
        return f"{v / 1e6:g}M"
    if v >= 1000 and v % 1000 == 0:
        return f"{v / 1000:g}k"
    return f"{v:g}"


class Canvas:
    def __init__(self, width, height, title):
        self.w, self.h = width, height
        self.parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">',
            f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        ]
        self.text(width / 2, 24, title, size=16, anchor="middle", weight="bold")

    def text(self, x, y, s, size=12, anchor="start", fill="#24292f", weight="normal",
             rotate=None):
        tr = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate else ""
        self.parts.append(
            f'<text x="{x:.1f}" y="{y:.1f}" {FONT} font-size="{size}" text-anchor="{anchor}" '
            f'fill="{fill}" font-weight="{weight}"{tr}>{escape(str(s))}</text>')

    def line(self, x1, y1, x2, y2, stroke="#d0d7de", width=1, dash=None):
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                          f'stroke="{stroke}" stroke-width="{width}"{d}/>')

    def rect(self, x, y, w, h, fill):
        self.parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(0, w):.1f}" '
                          f'height="{max(0, h):.1f}" fill="{fill}"/>')

    def polyline(self, pts, stroke, dash=None):
        d = f' stroke-dasharray="{dash}"' if dash else ""
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        self.parts.append(f'<polyline points="{path}" fill="none" stroke="{stroke}" '
                          f'stroke-width="2"{d}/>')
        for x, y in pts:
            self.parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{stroke}"/>')

    def legend(self, x, y, items):
        """items: (name, colour, dashed)."""
        for i, (name, c, dash) in enumerate(items):
            yy = y + i * 18
            self.line(x, yy - 4, x + 24, yy - 4, stroke=c, width=2, dash="5,3" if dash else None)
            self.text(x + 30, yy, name, size=11)

    def svg(self):
        return "\n".join(self.parts + ["</svg>"]) + "\n"


def hbars(title, rows, reference=1.0, axis_label="", note=""):
    """Horizontal bars, one per row (label, value, text, good), with a line
    at `reference`; good bars are green, others orange."""
    longest = max([0] + [len(label) for label, *_ in rows])
    left, right, top, bar = max(330, 20 + int(6.8 * longest)), 90, 50, 22
    width = left + 570
    height = top + len(rows) * (bar + 8) + 70
    c = Canvas(width, height, title)
    top_v = max([reference * 1.25] + [v for _, v, _, _ in rows if v is not None])
    ticks = nice_ticks(0, min(top_v, reference * 3))  # longer bars are cut at the edge
    plot_w = width - left - right
    sx = lambda v: left + plot_w * v / ticks[-1]  # noqa: E731
    bottom = top + len(rows) * (bar + 8)
    for t in ticks:
        c.line(sx(t), top - 4, sx(t), bottom)
        c.text(sx(t), bottom + 16, f"{t:g}", size=11, anchor="middle")
    for i, (label, v, text, good) in enumerate(rows):
        y = top + i * (bar + 8)
        c.text(left - 8, y + bar * 0.7, label, size=12, anchor="end")
        if v is None:
            c.text(left + 4, y + bar * 0.7, "not measured", size=11, fill="#57606a")
            continue
        end = sx(min(v, ticks[-1]))
        c.rect(left, y, end - left, bar, "#2da44e" if good else "#d4a72c")
        c.text(end + 4, y + bar * 0.7, text + (" (cut)" if v > ticks[-1] else ""), size=11)
    c.line(sx(reference), top - 8, sx(reference), bottom + 4, stroke="#24292f", width=1.5,
           dash="4,3")
    c.text(left + plot_w / 2, bottom + 36, axis_label, size=12, anchor="middle")
    if note:
        c.text(left + plot_w / 2, bottom + 54, note, size=11, anchor="middle", fill="#57606a")
    return c.svg()


def lines(title, xlabel, ylabel, series, logx=False, note=""):
    """series: (name, colour, dashed, [(x, y)]); x on a log scale with `logx`."""
    width, height = 820, 480
    left, right, top, bottom = 80, 210, 50, 70
    pts = [p for _, _, _, s in series for p in s]
    c = Canvas(width, height, title)
    if not pts:
        c.text(width / 2, height / 2, "no data", anchor="middle")
        return c.svg()
    xs = [p[0] for p in pts]
    yticks = nice_ticks(0, max(p[1] for p in pts) * 1.05 or 1)
    if logx:
        lo = 10 ** math.floor(math.log10(max(1e-9, min(xs))))
        hi = 10 ** math.ceil(math.log10(max(xs)))
        if hi <= lo:
            hi = lo * 10
        xticks = []
        v = lo
        while v <= hi * 1.0001:
            xticks.append(v)
            v *= 10
        fx = lambda x: (math.log10(x) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))  # noqa: E731,E501
    else:
        xticks = nice_ticks(0, max(xs))
        fx = lambda x: x / xticks[-1]  # noqa: E731
    pw, ph = width - left - right, height - top - bottom
    sx = lambda x: left + pw * fx(x)  # noqa: E731
    sy = lambda y: top + ph * (1 - y / yticks[-1])  # noqa: E731
    for t in yticks:
        c.line(left, sy(t), left + pw, sy(t))
        c.text(left - 6, sy(t) + 4, label_num(t), size=11, anchor="end")
    for t in xticks:
        c.line(sx(t), top, sx(t), top + ph)
        c.text(sx(t), top + ph + 16, label_num(t), size=11, anchor="middle")
    c.text(left + pw / 2, height - 30, xlabel, size=12, anchor="middle")
    c.text(20, top + ph / 2, ylabel, size=12, anchor="middle", rotate=-90)
    for _, col, dash, s in series:
        if s:
            c.polyline([(sx(x), sy(y)) for x, y in sorted(s)], col, "6,4" if dash else None)
    c.legend(left + pw + 20, top + 10, [(n, col, d) for n, col, d, s in series if s])
    if note:
        c.text(left + pw / 2, height - 10, note, size=11, anchor="middle", fill="#57606a")
    return c.svg()


def grouped_bars(title, ylabel, groups, series, note=""):
    """groups: names along x (a newline starts a second line); series:
    (name, colour, [value per group or None])."""
    width, height = max(820, 250 + 110 * len(groups)), 440
    left, right, top, bottom = 80, 170, 50, 70
    c = Canvas(width, height, title)
    vals = [v for _, _, vs in series for v in vs if v is not None]
    yticks = nice_ticks(0, (max(vals) if vals else 1) * 1.1)
    pw, ph = width - left - right, height - top - bottom
    sy = lambda y: top + ph * (1 - y / yticks[-1])  # noqa: E731
    for t in yticks:
        c.line(left, sy(t), left + pw, sy(t))
        c.text(left - 6, sy(t) + 4, label_num(t), size=11, anchor="end")
    gw = pw / max(1, len(groups))
    bw = gw * 0.8 / max(1, len(series))
    for g, name in enumerate(groups):
        x0 = left + g * gw + gw * 0.1
        for i, (_, col, vs) in enumerate(series):
            v = vs[g] if g < len(vs) else None
            if v is None:
                continue
            c.rect(x0 + i * bw, sy(v), bw - 2, top + ph - sy(v), col)
            c.text(x0 + i * bw + bw / 2, sy(v) - 4, f"{v:,.0f}", size=10, anchor="middle")
        for j, part in enumerate(name.split("\n")):
            c.text(left + g * gw + gw / 2, top + ph + 18 + 15 * j, part, size=12,
                   anchor="middle")
    c.text(20, top + ph / 2, ylabel, size=12, anchor="middle", rotate=-90)
    c.legend(left + pw + 20, top + 10, [(n, col, False) for n, col, _ in series])
    if note:
        c.text(left + pw / 2, height - 16, note, size=11, anchor="middle", fill="#57606a")
    return c.svg()
