"""Bench report outputs: terminal table, JSON, Markdown, CSV, PNG, and the --compare gate."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from edgeclip._io import write_bytes, write_json
from edgeclip.bench.run import SCHEMA, SCHEMA_VERSION
from edgeclip.errors import ReportError

COLUMNS = [
    ("key", "row"), ("inference_precision", "ran in"), ("median_ms", "median ms"), ("p90_ms", "p90"),
    ("p99_ms", "p99"), ("std_ms", "std"),
    ("throughput_per_s", "items/s"), ("cold_start_ms", "cold ms"), ("size_mb", "MB"), ("cosine_min", "cos min"),
    ("top1", "top-1 %"), ("top1_delta", "Δ top-1"), ("speedup_vs_baseline", "x torch"),
    ("speedup_vs_onnxruntime_fp32", "x ort fp32"), ("end_to_end_over_model", "e2e/model"),
    ("decode", "decode"), ("ran_device", "ran on"), ("compute_layers", "matmul/conv ran in"),
    ("float_layers", "float layers (manifest)"),
    ("peak_rss_mb", "peak RSS MB"),
]
LABEL_COLUMNS = [
    ("key", "label set"), ("ran_device", "ran on"), ("precision_hint", "hint"), ("prompts", "prompts"),
    ("seconds", "s"), ("prompts_per_s", "prompts/s"), ("peak_rss_mb", "peak RSS MB"),
]

# beside row, batch, mode and median: shown when some row has them
COMPACT_EXTRA = [("speedup_vs_baseline", "x torch"), ("top1", "top-1 %")]


def _cell(row: dict[str, Any], key: str) -> str:
    v = row.get(key)
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if key.startswith("cosine") else f"{v:.2f}"
    if isinstance(v, dict):  # {"i8": 48, "u8": 1} -> "i8 48, u8 1"
        return ", ".join(f"{k} {n}" for k, n in sorted(v.items()))
    if isinstance(v, list):
        return ", ".join(str(x) for x in v)
    return str(v)


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> list[str]:
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(_cell(r, k) for k, _ in columns) + " |" for r in rows]


def _labels_lines(report: dict[str, Any]) -> list[str]:
    rows = report.get("labels") or []
    if not rows:
        return []
    first = rows[0]
    title = f"Label sets: {first.get('classes')} classes x {first.get('templates')} templates, each in a fresh process"
    errors = [f"- {r['key']}: {r['error']}" for r in rows if r.get("error")]
    return ["", title, "", *_table(rows, LABEL_COLUMNS), *errors]


def header_lines(report: dict[str, Any]) -> list[str]:
    m, b = report["machine"], report["bundle"]
    pk = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    return [
        f"model {b['model']} ({b['image_size']} px, dim {b['embed_dim']}) from {b['path']}",
        f"cpu {m['cpu']} [{' '.join(m['cpu_flags'])}], {m['cores']} cores, threads {m['threads'] or 'default'}"
        + (f", gpu {m['gpu']}" if m["gpu"] else ""),
        f"{m['os']} {m['machine']}, python {m['python']}; {pk}",
    ]


def to_markdown(report: dict[str, Any]) -> str:
    lines = [f"# edgeclip bench ({report['created']})", ""]
    lines += [f"- {h}" for h in header_lines(report)] + [""]
    lines += _table(report["rows"], COLUMNS)
    lines += _labels_lines(report)
    for s in report["skipped"]:
        lines.append(f"\nskipped {s['row']}: {s['reason']}")
    if report["warnings"]:
        lines += ["", "Warnings:"] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"


def to_csv(report: dict[str, Any]) -> str:
    keys = sorted({k for r in report["rows"] for k in r})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in report["rows"]:
        w.writerow(r)
    return buf.getvalue()


def print_table(report: dict[str, Any], console: Any = None) -> None:
    """A compact table for an 80-column terminal (row, batch, mode, median, x torch, top-1); every
    column is in --markdown, --csv and --json. Text from the machine or the report is escaped:
    rich would take `[avx2 avx512f]` in the CPU line for markup and drop it."""
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    for h in header_lines(report):
        console.print(escape(h), style="dim", highlight=False)
    rows = report["rows"]
    columns = [("row", "left"), ("b", "right"), ("mode", "left"), ("median ms", "right")]
    columns += [(title, "right") for key, title in COMPACT_EXTRA if any(r.get(key) is not None for r in rows)]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for title, justify in columns:
        # fold, never "…": a cut label could hide the precision hint that tells two rows apart
        table.add_column(title, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in rows:
        extra = [_cell(r, key) for key, title in COMPACT_EXTRA if (title, "right") in columns]
        label = r.get("label") or r["key"].split("/")[1]
        mode = r["mode"].replace("end_to_end", "e2e").replace("_", " ")
        table.add_row(escape(f"{r['encoder']}/{label}"), str(r["batch_size"]), mode, f"{r['median_ms']:.3f}",
                      *extra)
    console.print(table)
    if report.get("labels"):
        labels = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for title in ("label set", "prompts", "prompts/s", "peak RSS MB"):
            labels.add_column(title, justify="left" if title == "label set" else "right", overflow="fold")
        for r in report["labels"]:
            labels.add_row(escape(r["key"]), *(_cell(r, k) for k in ("prompts", "prompts_per_s", "peak_rss_mb")))
        console.print(labels)
    for s in report["skipped"]:
        console.print(escape(f"skipped {s['row']}: {s['reason']}"), style="yellow", highlight=False)
    for w in report["warnings"]:
        console.print(escape(f"warning: {w}"), style="yellow", highlight=False)
    console.print("every column (p90, p99, cold start, size, cosine, ratios, what ran, peak RSS): --markdown, "
                  "--csv or --json",
                  style="dim", highlight=False)


def write_plot(report: dict[str, Any], path: str | Path) -> None:
    """Left: median latency per row with p90 whiskers. Right: top-1 (or cosine) against latency."""
    from edgeclip._deps import require

    require("matplotlib", purpose="--plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["mode"] == "model"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, max(3.5, 0.32 * len(rows) + 1.5)))
    labels = [r["key"].replace("/model", "") for r in rows]
    med = [r["median_ms"] for r in rows]
    err = [max(0.0, r["p90_ms"] - r["median_ms"]) for r in rows]
    colors = ["tab:gray" if r["backend"] == "torch" else "tab:blue" for r in rows]
    ax1.barh(range(len(rows)), med, xerr=[[0] * len(rows), err], color=colors, capsize=3)
    ax1.set_yticks(range(len(rows)), labels, fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xscale("log")
    ax1.set_xlabel("latency, ms (median, whisker to p90; log scale)")
    metric = "top1" if any(r.get("top1") is not None for r in rows) else "cosine_min"
    for r in rows:
        if r.get(metric) is not None:
            ax2.scatter(r["median_ms"], r[metric], label=r["key"].replace("/model", ""), s=25)
    ax2.set_xscale("log")
    ax2.ticklabel_format(axis="y", useOffset=False)  # show 0.99987, not +9.999e-1 offsets
    ax2.set_xlabel("latency, ms (median)")
    ax2.set_ylabel("zero-shot top-1 %" if metric == "top1" else "embedding cosine vs reference (min)")
    if ax2.collections:
        ax2.legend(fontsize=6, loc="best")
    fig.suptitle(f"edgeclip bench: {report['bundle']['model']}  ({report['machine']['cpu']})", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def load_report(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"cannot read bench report {p}: {e}", fix="pass a JSON file written by --json") from e
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ReportError(f"{p} is not an edgeclip bench report (schema {SCHEMA} v{SCHEMA_VERSION})",
                          fix="pass a JSON file written by `edgeclip bench --json`")
    if data.get("schema_version") != SCHEMA_VERSION:
        # v1 labelled an OpenVINO row that ran in bf16 as fp32: comparing it with a true-f32 row
        # would report a regression that is only a relabelling
        version = data.get("schema_version")
        raise ReportError(f"{p} is a v{version} bench report; this edgeclip writes v{SCHEMA_VERSION}",
                          fix="regenerate the baseline with this version's `edgeclip bench --json`")
    if not isinstance(data.get("rows"), list):
        raise ReportError(f"{p} has no rows", fix="pass a JSON file written by `edgeclip bench --json`")
    return data


def compare(new: dict[str, Any], old: dict[str, Any], max_regression: float) -> tuple[list[dict[str, Any]], bool]:
    """Per-row change against an earlier report; True when any row regressed beyond `max_regression`.

    A row is judged on its speed-up over the torch baseline timed in the same run
    (speedup_vs_baseline): change = old ratio / new ratio - 1, so a machine that is uniformly slower
    or faster today (drift hits the interleaved baseline alike) changes nothing. Only when a report
    has no baseline ratio for the row is it judged on raw medians (new / old - 1), marked so in
    `basis`.
    """
    old_rows = {r["key"]: r for r in old["rows"]}
    deltas, failed = [], False
    for r in new["rows"]:
        o = old_rows.get(r["key"])
        if o is None or not o.get("median_ms"):
            continue
        if r.get("speedup_vs_baseline") and o.get("speedup_vs_baseline"):
            basis, before, after = "speedup_vs_baseline", o["speedup_vs_baseline"], r["speedup_vs_baseline"]
            change = before / after - 1
        else:
            basis, before, after = "median_ms", o["median_ms"], r["median_ms"]
            change = after / before - 1
        regressed = change > max_regression
        failed |= regressed
        deltas.append({"key": r["key"], "basis": basis, "old": before, "new": after, "old_ms": o["median_ms"],
                       "new_ms": r["median_ms"], "change": round(change, 4), "regressed": regressed})
    return deltas, failed


def write_outputs(report: dict[str, Any], json_path: str | None, md_path: str | None, csv_path: str | None,
                  plot_path: str | None) -> None:
    if json_path:
        write_json(json_path, report)
    if md_path:
        write_bytes(md_path, to_markdown(report).encode())
    if csv_path:
        write_bytes(csv_path, to_csv(report).encode())
    if plot_path:
        write_plot(report, plot_path)
