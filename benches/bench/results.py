"""Figures as they are measured, what they add up to (medians over rounds,
ratios taken within a round, noisy cells), the terminal table, and the
progress line."""

import statistics
import sys
import time

from .targets import ANCHORS

SUBJECT = "apisix-stream"
NOISY = 0.15  # a cell whose rounds differ by more than ±15% of their median
BUSY_WARN = 10.0  # % of the machine used by others during a target's run


class Metric:
    """One row: a key in the JSON, a label, a unit, and which way is better."""

    def __init__(self, key, label, unit, better, proxy_only=False):
        self.key, self.label, self.unit, self.better = key, label, unit, better
        # measured for proxies only (CPU and memory): `direct` has no proxy
        self.proxy_only = proxy_only


def spread(vals):
    """Half the range of the rounds' values, relative to their median."""
    m = statistics.median(vals)
    return (max(vals) - min(vals)) / 2 / abs(m) if len(vals) > 1 and m else 0.0


def fmt(v):
    if v is None:
        return "-"
    v = float(v)
    if v.is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"
    for limit, f in ((1000, "{:,.0f}"), (100, "{:.0f}"), (10, "{:.1f}")):
        if abs(v) >= limit:
            return f.format(v)
    return f"{v:.2f}"


class Suite:
    """The figures of one suite: metric -> target -> round -> value."""

    def __init__(self, name, metrics, targets, pairs=()):
        self.name, self.metrics, self.targets = name, metrics, targets
        # (x, y): extra same-round ratios x/y on every row, both targets present
        self.pairs = [(x, y) for x, y in pairs if x in targets and y in targets]
        self.values = {}
        self.curves = {}  # name -> target -> round -> [(x, y)]
        self.notes = []

    def record(self, rnd, target, key, value):
        if value is not None:
            self.values.setdefault(key, {}).setdefault(target, {})[rnd] = float(value)

    def record_curve(self, name, rnd, target, points):
        self.curves.setdefault(name, {}).setdefault(target, {})[rnd] = list(points)

    def paired(self, key, x, y):
        """Median over rounds of x/y, from rounds that measured both: a slow
        phase of the machine hits both targets of a round alike."""
        rx = self.values.get(key, {}).get(x, {})
        ry = self.values.get(key, {}).get(y, {})
        r = [rx[n] / ry[n] for n in rx if n in ry and ry[n]]
        return round(statistics.median(r), 3) if r else None

    def median(self, key, target):
        v = list(self.values.get(key, {}).get(target, {}).values())
        return round(statistics.median(v), 3) if v else None

    def best_anchor(self, m):
        """The anchor that did best on this row, or None."""
        meds = {a: self.median(m.key, a) for a in ANCHORS if a in self.targets}
        meds = {a: v for a, v in meds.items() if v is not None}
        if not meds:
            return None
        pick = max if m.better == "higher" else min
        return pick(meds, key=meds.get)

    def summary(self):
        """The suite as JSON: per metric its medians, rounds, spreads, ratios."""
        out = {"targets": self.targets, "metrics": {}, "curves": {}, "notes": self.notes}
        for m in self.metrics:
            per = {t: list(self.values.get(m.key, {}).get(t, {}).values()) for t in self.targets}
            entry = {
                "label": m.label, "unit": m.unit, "better": m.better,
                "proxy_only": m.proxy_only,
                "median": {t: self.median(m.key, t) for t in self.targets},
                "rounds": per,
                "spread": {t: round(spread(v), 3) for t, v in per.items() if v},
                "ratios": {}, "vs_direct": {}, "best_anchor": None, "ratio_to_best": None,
                "pairs": {},
            }
            entry["noisy"] = {t: s > NOISY for t, s in entry["spread"].items()}
            if m.better in ("higher", "lower"):
                if SUBJECT in self.targets:
                    for a in ANCHORS:
                        if a in self.targets:
                            entry["ratios"][f"{SUBJECT}/{a}"] = self.paired(m.key, SUBJECT, a)
                if "direct" in self.targets:
                    for t in self.targets:
                        if t != "direct":
                            entry["vs_direct"][f"{t}/direct"] = self.paired(m.key, t, "direct")
                for x, y in self.pairs:
                    entry["pairs"][f"{x}/{y}"] = self.paired(m.key, x, y)
                best = self.best_anchor(m)
                if best and SUBJECT in self.targets:
                    entry["best_anchor"] = best
                    entry["ratio_to_best"] = self.paired(m.key, SUBJECT, best)
            out["metrics"][m.key] = entry
        for name, per in self.curves.items():
            out["curves"][name] = {t: median_curve(rounds) for t, rounds in per.items()}
        return out

    def table(self):
        """The terminal table: medians, the noisy mark, ratios to each anchor."""
        s = self.summary()
        ratio_cols = [f"{SUBJECT}/{a}" for a in ANCHORS if a in self.targets and
                      SUBJECT in self.targets]
        ratio_cols += [f"{x}/{y}" for x, y in self.pairs]
        cols = self.targets + ratio_cols
        rows = [(f"{m.label} ({m.unit})", m, s["metrics"][m.key]) for m in self.metrics]
        w0 = max(len(r[0]) for r in rows)
        widths = [max(9, len(c)) for c in cols]
        lines = [f"{'median of rounds':<{w0}}  " + "  ".join(
            f"{c:>{w}}" for c, w in zip(cols, widths)) + "  better"]
        lines.append("-" * len(lines[0]))
        noisy = False
        for name, m, e in rows:
            cells = []
            for t in self.targets:
                mark = "*" if e["noisy"].get(t) else ""
                noisy = noisy or bool(mark)
                cells.append(fmt(e["median"][t]) + mark)
            cells += [fmt(e["ratios"].get(c, e["pairs"].get(c))) for c in ratio_cols]
            lines.append(f"{name:<{w0}}  " + "  ".join(
                f"{c:>{w}}" for c, w in zip(cells, widths)) + f"  {m.better}")
        lines.append("Ratios are medians of per-round ratios; > 1 is better on 'higher' rows, "
                     "< 1 on 'lower' rows. '-': not measured.")
        if noisy:
            lines.append(f"*: its rounds differ by more than ±{NOISY:.0%} of the median "
                         "(a noisy cell).")
        return "\n".join(lines)


def median_curve(rounds):
    """Points measured in several rounds: the median y per x."""
    by_x = {}
    for pts in rounds.values():
        for x, y in pts:
            by_x.setdefault(x, []).append(y)
    return [[x, round(statistics.median(ys), 3)] for x, ys in sorted(by_x.items())]


class Progress:
    """What runs now, round n of N, and an estimate of the time left: the
    planned seconds of the steps still to run, scaled by how the planned
    seconds compared with the clock so far."""

    def __init__(self, rounds, stream=sys.stderr):
        self.rounds = rounds
        self.plan = []  # estimated seconds per step, in order
        self.step = -1
        self.started = None
        self.stream = stream

    def add(self, seconds):
        self.plan.append(seconds)

    def left(self):
        done = self.plan[: max(0, self.step)]
        elapsed = time.monotonic() - self.started
        factor = min(3.0, max(0.5, elapsed / sum(done))) if done and sum(done) else 1.0
        return factor * sum(self.plan[max(0, self.step):])

    def begin(self, rnd, where, what):
        """A step starts: one line with the round, the target and the workload."""
        if self.started is None:
            self.started = time.monotonic()
        self.step += 1
        if self.step >= len(self.plan):
            self.plan.append(5)
        at = f"round {rnd}/{self.rounds} · " if rnd else ""
        self.say(f"{at}{where} · {what} — about {clock(self.left())} left")

    def skip_to(self, index):
        """The next step to begin is `index` (steps of a failed target skipped)."""
        self.step = max(self.step, index - 1)

    def say(self, text):
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.stream, flush=True)


def clock(seconds):
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
