"""`llama2 bench`, its report, and the numbers the benchmark suite builds on."""

from __future__ import annotations

import json

import pytest

from llama2.bench import bits_per_weight, load_memory_estimate, weight_bytes_per_token
from llama2.cli import main
from llama2.model_file import ModelFile
from llama2.report import run_from_json


def test_weight_bytes_per_token(tiny_model) -> None:
    untied = ModelFile(tiny_model("gqa", "Q8_0"))
    tied = ModelFile(tiny_model("gqa", "Q8_0", tied=True))
    try:
        embd = untied.tensors["token_embd.weight"].n_bytes
        every = sum(t.n_bytes for t in untied.tensors.values())
        assert weight_bytes_per_token(untied) == every - embd  # the embedding is only looked up
        assert weight_bytes_per_token(tied) == sum(t.n_bytes for t in tied.tensors.values())  # it is the output
        assert 8.4 < bits_per_weight(untied) < 9  # 34 bytes per 32 weights, plus F32 norms
        assert load_memory_estimate(untied, native_types=(0, 8)) == 0
        assert load_memory_estimate(untied, native_types=(0,)) > 3 * every
    finally:
        untied.close()
        tied.close()


def test_bench_cli_table_json_and_report(tiny_model, tmp_path, capsys) -> None:
    q8, f32 = tiny_model("gqa", "Q8_0"), tiny_model("gqa", "F32")
    report = tmp_path / "out" / "report.md"
    saved = tmp_path / "run.json"
    assert main(["bench", str(q8), "--backends", "cpu_f32,no_such_backend", "--threads", "1", "--rounds", "1",
                 "--quality", "@pydoc", "--base", str(f32), "--windows", "2", "--ctx", "64", "--quiet",
                 "--json", str(saved), "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "read bandwidth:" in out and "cpu_f32" in out
    assert "skipped: no backend 'no_such_backend' is registered" in out
    data = json.loads(saved.read_text())
    (result,) = [r for r in data["results"] if r["backend"] == "cpu_f32"]
    assert set(result["tok_s"]) == {"decode", "prefill-64", "prefill-512", "ttft"}
    assert all(v > 0 for v in result["tok_s"].values())
    assert result["load_seconds"] > 0 and result["resident_bytes"] > 0
    assert [q["model"] for q in data["quality"]] == [f32.name, q8.name]
    assert data["quality"][1]["kld"] > 0
    text = report.read_text()
    assert "| " + q8.name in text and "KLD vs base" in text
    for png in ("report-speed.png", "report-quality.png"):
        assert (report.parent / png).read_bytes()[:4] == b"\x89PNG"
    # a saved run turns into the same report without measuring again
    again = tmp_path / "again.md"
    assert main(["bench", "--from-json", str(saved), "--report", str(again)]) == 0
    assert run_from_json(saved).results[0].tok_s == result["tok_s"]
    assert "| " + q8.name in again.read_text()


def test_bench_reads_pytest_benchmark_json(tmp_path) -> None:
    """The suite's --benchmark-json output (shape as pytest-benchmark writes it) becomes a report."""
    common = {"model": "m.gguf", "backend": "cpu_q8", "threads": 2, "main_type": "Q8_0",
              "bits_per_weight": 8.5, "weight_bytes_per_token": 1_000_000}
    data = {
        "machine_info": {"cpu": {"brand_raw": "Test CPU", "count": 2}, "system": "Linux", "release": "6",
                         "python_version": "3.11.7"},
        "commit_info": {"id": "0123456789abcdef"}, "datetime": "2026-11-28T23:00:00.000000",
        "benchmarks": [
            {"extra_info": {"workload": "bandwidth", "bytes_per_s": 2e10, "GB_s": 20.0, "threads": 2}},
            {"extra_info": {**common, "workload": "decode", "tok_s": 10000.0, "seconds": [0.0064],
                            "bandwidth_GB_s": 20.0}},
            {"extra_info": {**common, "workload": "load", "load_seconds": 0.5, "resident_bytes": 2**20}},
        ],
    }
    path = tmp_path / "pytest.json"
    path.write_text(json.dumps(data))
    run = run_from_json(path)
    assert run.bandwidth == pytest.approx(2e10) and run.commit == "0123456"
    (r,) = run.results
    assert r.tok_s == {"decode": 10000.0} and r.load_seconds == 0.5
    assert r.limit_tok_s(run.bandwidth) == pytest.approx(20000.0)
