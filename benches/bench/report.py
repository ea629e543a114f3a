"""The report folder of a run: results.json, summary.md and the SVG charts
drawn from the same JSON document."""

import json
import os

from . import svg
from .results import NOISY, SUBJECT, fmt
from .targets import ANCHORS

TOP_KEYS = ["schema", "date", "command", "machine", "versions", "options", "busy_rounds",
            "suites", "charts", "elapsed_s"]
METRIC_KEYS = ["label", "unit", "better", "proxy_only", "median", "rounds", "spread", "noisy",
               "ratios", "vs_direct", "best_anchor", "ratio_to_best", "pairs"]
TITLES = {"l4": "Plain TCP and UDP", "tls": "TLS termination",
          "redis": "Redis (redis-benchmark)"}


# ------------------------------------------------------------------ charts
def ratio_rows(doc):
    """(label, advantage, text, good) per row of the l4, tls and redis suites:
    apisix-stream against the best anchor of that row, turned so that more
    than 1 is better on every row. Against `direct` when no anchor ran."""
    rows, against = [], "the best anchor"
    metrics = [m for s in TITLES for m in
               doc["suites"].get(s, {}).get("metrics", {}).values()
               if m["better"] in ("higher", "lower")]
    if not any(m["ratio_to_best"] for m in metrics):
        against = "direct (no anchor measured)"
    for m in metrics:
        if against.startswith("direct"):
            r, who = m["vs_direct"].get(f"{SUBJECT}/direct"), "direct"
        else:
            r, who = m["ratio_to_best"], m["best_anchor"]
        if r is None or m["label"].startswith("socket errors") or "count" == m["unit"]:
            continue
        adv = r if m["better"] == "higher" else (1 / r if r else None)
        if adv is None:
            continue
        rows.append((m["label"], round(adv, 3), f"{adv:.2f}× {who}", adv >= 1))
    return rows, against


def draw(doc, folder):
    """Write every chart the data allow; returns [(file, caption)]."""
    os.makedirs(os.path.join(folder, "charts"), exist_ok=True)
    out = []

    def save(name, text, caption):
        with open(os.path.join(folder, "charts", name), "w") as f:
            f.write(text)
        out.append((f"charts/{name}", caption))

    rows, against = ratio_rows(doc)
    if rows:
        save("ratio.svg", svg.hbars(
            f"apisix-stream against {against}, per workload", rows,
            axis_label="advantage (> 1: apisix-stream better; lower-is-better rows inverted)",
            note="median of per-round ratios"),
            f"apisix-stream against {against} per workload (> 1 is better)")

    curves = doc["suites"].get("l4", {}).get("curves", {})
    series = []
    for i, t in enumerate(sorted(set(curves.get("w5_idle_kib_per_conn", {})) |
                                 set(curves.get("w7_used_kib_per_conn", {})))):
        col = svg.colour(t, i)
        series.append((f"{t} idle", col, False, curves.get("w5_idle_kib_per_conn", {}).get(t, [])))
        series.append((f"{t} after 64 KiB", col, True,
                       curves.get("w7_used_kib_per_conn", {}).get(t, [])))
    for i, (name, pts) in enumerate(held_points(doc)):
        series.append((name, svg.PALETTE[(i + 1) % len(svg.PALETTE)], False, pts))
    if any(s for *_, s in series):
        save("memory.svg", svg.lines(
            "Memory per connection against connection count", "connections",
            "KiB per connection (RSS growth / connections)", series, logx=True,
            note="solid: idle since connect; dashed: idle after a 64 KiB reply"),
            "memory per connection against connection count")

    routes = doc["suites"].get("routes", {}).get("rows", [])
    if routes:
        pts50 = [(r["routes"], r["put_p50_ms"]) for r in routes if "put_p50_ms" in r]
        pts99 = [(r["routes"], r["put_p99_ms"]) for r in routes if "put_p99_ms" in r]
        save("routes.svg", svg.lines(
            "Admin API PUT latency against route count", "stream routes", "ms",
            [("PUT p50", "#1f6feb", False, pts50), ("PUT p99", "#d1242f", True, pts99)],
            logx=True, note="updates of existing routes, one at a time"),
            "PUT latency against route count")

    tls = doc["suites"].get("tls", {})
    if tls:
        targets = tls["targets"]
        m = tls["metrics"]
        rows = [(k, e["label"].split(", ", 1)[1].replace(", ", "\n") if k.startswith("t1_")
                 else "resumed\n" + e["label"].rsplit(", ", 1)[1])
                for k, e in m.items() if k.endswith(("_handshakes_per_s", "_resumed_per_s"))]
        ser = [(t, svg.colour(t, i), [m[k]["median"].get(t) for k, _ in rows])
               for i, t in enumerate(targets)]
        if any(v is not None for _, _, vs in ser for v in vs):
            save("tls-handshakes.svg", svg.grouped_bars(
                "TLS handshakes per second, per key type and version", "handshakes/s",
                [label for _, label in rows], ser,
                note="full handshakes (no resumption) per key type; resumed: T4; median"),
                "TLS handshakes per second per key type and version")
    return out


def held_points(doc):
    """(name, [(connections, KiB per connection)]) per target of the held
    suite: idle, and after 64 KiB each way."""
    data = doc["suites"].get("held", {}).get("data")
    targets = data.get("targets", {}) if isinstance(data, dict) else {}
    out = []
    for t, r in targets.items():
        if not isinstance(r, dict) or not isinstance(r.get("held"), (int, float)):
            continue
        for key, what in (("idle_bytes_per_conn", "idle"), ("used_bytes_per_conn", "used")):
            v = r.get(key)
            if isinstance(v, (int, float)) and r["held"] > 0:
                out.append((f"{t} {what}, held suite", [(r["held"], round(v / 1024, 2))]))
    return out


# ------------------------------------------------------------------ markdown
def suite_table(s):
    targets = s["targets"]
    ratio_cols = [f"{SUBJECT}/{a}" for a in ANCHORS
                  if any(f"{SUBJECT}/{a}" in m["ratios"] for m in s["metrics"].values())]
    ratio_cols += list(dict.fromkeys(c for m in s["metrics"].values() for c in m.get("pairs", {})))
    head = ["workload"] + targets + ratio_cols + ["better"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in s["metrics"].values():
        cells = [f"{m['label']} ({m['unit']})"]
        for t in targets:
            cells.append(fmt(m["median"].get(t)) + ("\\*" if m["noisy"].get(t) else ""))
        cells += [fmt(m["ratios"].get(c, m.get("pairs", {}).get(c))) for c in ratio_cols]
        cells.append(m["better"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(doc, charts):
    o = doc["options"]
    mach = doc["machine"]
    lines = [
        "# apisix-stream benchmark", "",
        f"- date: {doc['date']}",
        f"- machine: {mach['cpu_model']}, {mach['cpus']} CPUs, {mach['memory_gib']} GiB, "
        f"{mach['os']}, kernel {mach['kernel']}",
        f"- command: `{doc['command']}`",
        f"- rounds: {o['rounds']}, {o['duration_s']} s per workload "
        f"(TLS {o['tls_duration_s']} s), suites: {', '.join(doc['suites'])}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()),
        f"- took {doc['elapsed_s']:.0f} s",
        "",
    ]
    if doc["busy_rounds"]:
        lines += ["**Warning: the machine was busy with other work during these rounds; "
                  "their figures are unreliable:**", ""]
        lines += [f"- {b['suite']} round {b['round']}: other processes {b['others_pct']}% "
                  f"of the CPUs, {b['steal_pct']}% stolen (worst while {b['target']} ran)"
                  for b in doc["busy_rounds"]]
        lines.append("")
    for path, caption in charts:
        lines += [f"![{caption}]({path})", ""]
    for name, title in TITLES.items():
        s = doc["suites"].get(name)
        if not s:
            continue
        lines += [f"## {title}", "", suite_table(s), "",
                  "Medians of the rounds; ratios are medians of per-round ratios (> 1 is "
                  "better on 'higher' rows, < 1 on 'lower' rows); '-': not measured; "
                  f"\\*: rounds differ by more than ±{NOISY:.0%} of the median.", ""]
        lines += [f"- {n}" for n in s["notes"]]
        lines.append("")
        if doc["options"]["rounds"] > 1:
            lines += ["Per-round values:", ""]
            for m in s["metrics"].values():
                cells = [f"{t}: " + " ".join(fmt(v) for v in vals)
                         for t, vals in m["rounds"].items() if vals]
                if cells:
                    lines.append(f"- {m['label']} ({m['unit']}): " + " | ".join(cells))
            lines.append("")
    routes = doc["suites"].get("routes", {}).get("rows")
    if routes:
        keys = list(routes[0].keys())
        lines += ["## Route scale (Admin API writes)", "",
                  "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in routes]
        lines.append("")
    for name in ("routes", "held"):
        err = doc["suites"].get(name, {}).get("error")
        if err:
            lines += [f"## {name} suite: not finished", "", err, ""]
    held = doc["suites"].get("held", {}).get("data")
    if isinstance(held, dict) and isinstance(held.get("targets"), dict):
        ts = list(held["targets"])
        keys = [k for k in dict.fromkeys(k for r in held["targets"].values() for k in r)
                if all(isinstance(r.get(k), (int, float, type(None)))
                       for r in held["targets"].values())]
        lines += ["## Held connections (benches/held.sh)", "",
                  "| | " + " | ".join(ts) + " |", "|" + "---|" * (len(ts) + 1)]
        lines += ["| " + k + " | " + " | ".join(fmt(held["targets"][t].get(k)) for t in ts)
                  + " |" for k in keys]
        lines.append("")
    elif held is not None:
        lines += ["## Held connections (benches/held.sh)", "", "```json",
                  json.dumps(held, indent=1)[:4000], "```", ""]
    return "\n".join(lines)


def write(doc, folder, json_copy=None):
    """results.json, charts/ and summary.md in `folder`; a copy of the JSON
    at `json_copy` when given."""
    charts = draw(doc, folder)
    doc["charts"] = [p for p, _ in charts]
    text = json.dumps(doc, indent=2) + "\n"
    with open(os.path.join(folder, "results.json"), "w") as f:
        f.write(text)
    if json_copy:
        with open(json_copy, "w") as f:
            f.write(text)
    with open(os.path.join(folder, "summary.md"), "w") as f:
        f.write(markdown(doc, charts))


def check(path, suites, l4_metrics, rows=()):
    """Problems with a results.json: missing keys, or the subject without a
    figure on a row it should have (every l4 row; `rows`: (suite, metric,
    target) of the other suites). Figures themselves are not judged."""
    with open(path) as f:
        doc = json.load(f)
    bad = [f"missing top-level key {k}" for k in TOP_KEYS if k not in doc]
    for name in suites:
        if name not in doc.get("suites", {}):
            bad.append(f"missing suite {name}")
    l4 = doc.get("suites", {}).get("l4")
    if l4 is not None:
        for m in l4_metrics:
            e = l4["metrics"].get(m.key)
            if e is None:
                bad.append(f"missing metric {m.key}")
                continue
            bad += [f"{m.key}: missing {k}" for k in METRIC_KEYS if k not in e]
            if SUBJECT in l4["targets"] and e.get("median", {}).get(SUBJECT) is None:
                bad.append(f"{m.key}: no figure for {SUBJECT}")
        for c in ("w5_idle_kib_per_conn", "w7_used_kib_per_conn"):
            if not l4.get("curves", {}).get(c, {}).get(SUBJECT):
                bad.append(f"curve {c}: no points for {SUBJECT}")
    for name, key, target in rows:
        s = doc.get("suites", {}).get(name)
        if s is None or target not in s.get("targets", []):
            continue
        e = s.get("metrics", {}).get(key)
        if e is None:
            bad.append(f"{name}: missing metric {key}")
            continue
        bad += [f"{name} {key}: missing {k}" for k in METRIC_KEYS if k not in e]
        if e.get("median", {}).get(target) is None:
            bad.append(f"{name} {key}: no figure for {target}")
    folder = os.path.dirname(path)
    for p in doc.get("charts", []) + ["summary.md"]:
        if not os.path.exists(os.path.join(folder, p)):
            bad.append(f"{p} was not written")
    return bad
