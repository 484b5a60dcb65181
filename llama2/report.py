"""Benchmark and quality results as Markdown tables and matplotlib plots.

The input is what `llama2 bench` measures or what the pytest-benchmark suite
saved (`--benchmark-json`), so the README's tables come from a run, never by hand.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .bench import WORKLOADS, Result, machine_description


@dataclass
class QualityRow:
    model: str  # file name
    runner: str  # backend that scored it
    main_type: str
    bits_per_weight: float
    ppl: float
    ppl_stderr: float
    n_tokens: int  # tokens scored
    kld: float | None = None  # against the run's base model
    kld_stderr: float | None = None
    top1: float | None = None
    top1_stderr: float | None = None


@dataclass
class Run:
    """Everything one report shows."""

    machine: str = field(default_factory=machine_description)
    date: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    commit: str = field(default_factory=lambda: git_commit() or "unknown")
    python: str = field(default_factory=platform.python_version)
    bandwidth: float | None = None  # bytes/s, with `threads` threads
    threads: int | None = None
    results: list[Result] = field(default_factory=list)
    quality: list[QualityRow] = field(default_factory=list)
    quality_text: str | None = None  # how the text was chosen, e.g. "@pydoc, 8 windows of 512"
    base_model: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


def git_commit(cwd: str | os.PathLike[str] | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=cwd or Path(__file__).parent, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_from_json(path: str | os.PathLike[str]) -> Run:
    """A Run from our own JSON (`llama2 bench --json`) or from pytest-benchmark's."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if "benchmarks" not in data:
        results = [Result(**r) for r in data.pop("results", [])]
        quality = [QualityRow(**q) for q in data.pop("quality", [])]
        return Run(**data, results=results, quality=quality)
    run = Run(machine=_pytest_machine(data), date=str(data.get("datetime", ""))[:16].replace("T", " ") + " UTC",
              commit=str((data.get("commit_info") or {}).get("id", "unknown"))[:7],
              python=str((data.get("machine_info") or {}).get("python_version", "")))
    by_pair: dict[tuple[str, str], Result] = {}
    for b in data["benchmarks"]:
        info = b.get("extra_info") or {}
        if info.get("workload") == "bandwidth":
            run.bandwidth, run.threads = float(info["bytes_per_s"]), int(info["threads"])
            if info.get("c_kernel_GB_s"):
                # dated, because a report can merge several runs
                run.notes.append(f"Cross-check: the C kernel tests/benchmarks/read_bandwidth.c read "
                                 f"{float(info['c_kernel_GB_s']):.1f} GB/s in the run of {run.date}, where "
                                 f"numpy read {float(info['bytes_per_s']) / 1e9:.1f} GB/s.")
            continue
        if "model" not in info:
            continue
        key = (info["model"], info["backend"])
        r = by_pair.get(key)
        if r is None:
            r = by_pair[key] = Result(model=info["model"], backend=info["backend"], threads=int(info["threads"]),
                                      main_type=info["main_type"], bits_per_weight=float(info["bits_per_weight"]),
                                      weight_bytes_per_token=int(info["weight_bytes_per_token"]))
        if info["workload"] == "load":
            r.load_seconds, r.resident_bytes = float(info["load_seconds"]), int(info["resident_bytes"])
        else:
            r.tok_s[info["workload"]] = float(info["tok_s"])
            r.seconds[info["workload"]] = [float(s) for s in info.get("seconds", [])]
            if info["workload"] == "decode":
                r.bandwidth = float(info["bandwidth_GB_s"]) * 1e9
                run.bandwidth = run.bandwidth or r.bandwidth
    run.results = list(by_pair.values())
    return run


def _pytest_machine(data: dict[str, Any]) -> str:
    m = data.get("machine_info") or {}
    cpu = (m.get("cpu") or {}).get("brand_raw") or m.get("processor") or m.get("machine") or "?"
    count = (m.get("cpu") or {}).get("count")
    return f"{cpu}" + (f", {count} logical CPUs" if count else "") + f", {m.get('system', '')} {m.get('release', '')}"


# --- tables -----------------------------------------------------------------------


def _f(x: float | None, fmt: str = ".1f") -> str:
    return "–" if x is None else format(x, fmt)


def _g(x: float) -> str:
    """Small values keep three significant digits instead of rounding to 0.00000."""
    return f"{x:.5f}" if x >= 1e-3 or x == 0 else f"{x:.2e}"


def speed_table(run: Run) -> str:
    bw = run.bandwidth
    head = ["model", "type", "bits/w", "backend", "load s", "resident MiB", "prefill-64 tok/s",
            "prefill-512 tok/s", "first token ms", "decode tok/s", "limit tok/s", "% of limit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in run.results:
        if r.skipped:
            continue
        ttft = r.ttft_seconds()
        limit = r.limit_tok_s(r.bandwidth or bw) if (r.bandwidth or bw) else None
        dec = r.tok_s.get("decode")
        row = [r.model, r.main_type, _f(r.bits_per_weight, ".2f"), r.backend, _f(r.load_seconds, ".2f"),
               _f(None if r.resident_bytes is None else r.resident_bytes / 2**20, ".0f"),
               _f(r.tok_s.get("prefill-64")), _f(r.tok_s.get("prefill-512")),
               _f(None if ttft is None else ttft * 1e3, ".0f"), _f(dec), _f(limit),
               _f(None if (dec is None or limit is None) else 100 * dec / limit, ".0f")]
        lines.append("| " + " | ".join(row) + " |")
    skipped = [f"- {r.backend} on {r.model}: {r.skipped}" for r in run.results if r.skipped]
    if skipped:
        lines += ["", "Not measured:", *skipped]
    return "\n".join(lines)


def quality_table(run: Run) -> str:
    head = ["model", "type", "bits/w", "scored by", "PPL", "ΔPPL vs base", "KLD vs base", "same top token %"]
    # each runner's ΔPPL is against its own score of the base file
    bases: dict[str, QualityRow] = {}
    for q in run.quality:
        if q.model == run.base_model:
            bases.setdefault(q.runner, q)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for q in run.quality:
        base = bases.get(q.runner) or next(iter(bases.values()), None)
        dppl = None if base is None else 100 * (q.ppl / base.ppl - 1)
        kld = "–" if q.kld is None else f"{_g(q.kld)} ± {_g(q.kld_stderr or 0.0)}"
        top1 = "–" if q.top1 is None else f"{100 * q.top1:.2f} ± {100 * (q.top1_stderr or 0):.2f}"
        lines.append("| " + " | ".join([
            q.model + (" (base)" if q.model == run.base_model else ""), q.main_type, f"{q.bits_per_weight:.2f}",
            q.runner, f"{q.ppl:.4f} ± {q.ppl_stderr:.4f}", "–" if dppl is None else f"{dppl:+.2f} %", kld, top1,
        ]) + " |")
    return "\n".join(lines)


def terminal_table(run: Run) -> str:
    """The speed comparison as aligned text for the terminal."""
    bw = run.bandwidth
    head = ["model", "backend", "load s", "MiB", "pp64", "pp512", "ttft ms", "decode", "limit", "%"]
    rows = [head]
    for r in run.results:
        if r.skipped:
            rows.append([r.model, r.backend, f"skipped: {r.skipped}"])
            continue
        ttft = r.ttft_seconds()
        limit = r.limit_tok_s(r.bandwidth or bw) if (r.bandwidth or bw) else None
        dec = r.tok_s.get("decode")
        rows.append([r.model, r.backend, _f(r.load_seconds, ".2f"),
                     _f(None if r.resident_bytes is None else r.resident_bytes / 2**20, ".0f"),
                     _f(r.tok_s.get("prefill-64")), _f(r.tok_s.get("prefill-512")),
                     _f(None if ttft is None else ttft * 1e3, ".0f"), _f(dec), _f(limit),
                     _f(None if (dec is None or limit is None) else 100 * dec / limit, ".0f")])
    widths = [max(len(row[i]) for row in rows if i < len(row) and len(row) == len(head)) for i in range(len(head))]
    out = []
    for row in rows:
        if len(row) != len(head):
            out.append(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}")
        else:
            cells = zip(row, widths, strict=True)
            out.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(cells)))
    return "\n".join(out)


# --- plots ------------------------------------------------------------------------


def plot_speed(run: Run, out: Path) -> Path | None:
    """Decode and prefill-64 tokens/s per model, one bar per backend; the bandwidth limit as a line."""
    rows = [r for r in run.results if not r.skipped and r.tok_s]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.model for r in rows))
    backends = list(dict.fromkeys(r.backend for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(models) * 2), 4.5), sharey=False)
    width = 0.8 / len(backends)
    for ax, workload in zip(axes, ["decode", "prefill-64"], strict=True):
        for j, be in enumerate(backends):
            xs, ys = [], []
            for i, m in enumerate(models):
                r = next((r for r in rows if r.model == m and r.backend == be), None)
                if r is not None and workload in r.tok_s:
                    xs.append(i + (j - (len(backends) - 1) / 2) * width)
                    ys.append(r.tok_s[workload])
            ax.bar(xs, ys, width, label=be)
        if workload == "decode" and run.bandwidth:
            for i, m in enumerate(models):
                r = next(r for r in rows if r.model == m)
                lim = r.limit_tok_s(r.bandwidth or run.bandwidth)
                ax.hlines(lim, i - 0.45, i + 0.45, colors="black", linestyles="dashed",
                          label="bandwidth limit" if i == 0 else None)
        ax.set_xticks(range(len(models)), [m.replace(".gguf", "") for m in models], rotation=30, ha="right",
                      fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("tokens / s")
        ax.set_title(f"{workload} ({WORKLOADS[workload].n_tokens} tokens)" if workload != "decode"
                     else "decode (after a 16-token prompt)")
        ax.grid(axis="y", alpha=0.3, which="both")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[1].legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"{run.threads or '?'} threads; read bandwidth "
                 f"{(run.bandwidth or 0) / 1e9:.1f} GB/s", fontsize=9)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return out


def plot_quality(run: Run, out: Path) -> Path | None:
    """Perplexity against bits per weight, one point per file."""
    if not run.quality:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for q in run.quality:
        ax.errorbar(q.bits_per_weight, q.ppl, yerr=q.ppl_stderr, fmt="o", capsize=3)
        ax.annotate(q.model.replace(".gguf", ""), (q.bits_per_weight, q.ppl), textcoords="offset points",
                    xytext=(5, 4), fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bits per weight (whole file)")
    ax.set_ylabel("perplexity")
    ax.set_title(f"perplexity on {run.quality_text or 'the text'}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return out


def _save(fig: Any, out: Path) -> None:
    tmp = out.with_name(out.name + ".partial.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, out)


# --- the Markdown report ----------------------------------------------------------


def write_report(run: Run, path: str | os.PathLike[str], title: str = "llama2 benchmarks") -> Path:
    """A Markdown file with the tables, and PNG plots beside it (<stem>-speed.png, <stem>-quality.png)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    speed_png = plot_speed(run, path.with_name(path.stem + "-speed.png"))
    quality_png = plot_quality(run, path.with_name(path.stem + "-quality.png"))
    bw = f"{run.bandwidth / 1e9:.1f} GB/s with {run.threads} threads" if run.bandwidth else "not measured"
    parts = [f"# {title}", "",
             f"Machine: {run.machine}. Date: {run.date}. Commit: {run.commit}. Python {run.python}. "
             f"Read bandwidth measured in the same run: {bw}.", ""]
    for note in (n for n in run.notes if n.strip()):
        parts += [note, ""]  # a paragraph each
    if run.results:
        parts += ["## Speed", "",
                  "decode: tokens/s generating 64 tokens after a 16-token prompt, one token per call through the "
                  "Python API, greedy pick included; prefill: one prompt of 64 or 512 tokens from an empty cache; "
                  "first token: a 16-token prompt and the first pick; resident: memory that loading and one token "
                  "added to the process. Best of the rounds. limit = read bandwidth / bytes of weights one token "
                  "reads (every matrix of the file once; the embedding table is only looked up).", "",
                  speed_table(run), ""]
        if speed_png:
            parts += [f"![tokens per second]({speed_png.name})", ""]
    if run.quality:
        parts += ["## Quality", "",
                  f"Perplexity scored like llama.cpp's `llama-perplexity` on {run.quality_text}; KL divergence and "
                  f"top-token agreement against {run.base_model or 'no base'} on the same windows "
                  "(`llama2 perplexity`, `llama2 kl-divergence`). ± is one standard error.", "",
                  quality_table(run), ""]
        if quality_png:
            parts += [f"![perplexity against bits per weight]({quality_png.name})", ""]
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, path)
    return path


def merge_runs(runs: Sequence[Run]) -> Run:
    """One run from several (e.g. the suite's speed JSON and a quality run)."""
    out = Run(machine=runs[0].machine, date=runs[0].date, commit=runs[0].commit, python=runs[0].python)
    for r in runs:
        out.bandwidth = out.bandwidth or r.bandwidth
        out.threads = out.threads or r.threads
        out.results += r.results
        out.quality += r.quality
        out.quality_text = out.quality_text or r.quality_text
        out.base_model = out.base_model or r.base_model
        out.notes += r.notes
    return out
