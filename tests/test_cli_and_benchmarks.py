import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from crypto import pki

CLI = [sys.executable, "-m", "cipherfed"]


def run(*args, **kw):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, **kw)


def run_benchmark(module, args, tmp_path):
    """Run a benchmark script as a user would, and return the JSON it wrote."""
    out_path = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", module, *map(str, args), "--json", str(out_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(out_path.read_text())


def test_help_lists_the_role_commands():
    out = run("--help")
    assert out.returncode == 0
    for cmd in ("ca", "demo"):
        assert cmd in out.stdout


def test_ca_commands_end_to_end(tmp_path):
    ca = tmp_path / "ca"
    assert run("ca", "init", str(ca), "--consortium", "Acme Health").returncode == 0
    assert stat.S_IMODE(os.stat(ca / "ca.key").st_mode) == 0o600
    key, csr = pki.make_csr("hospital-a", tmp_path)
    out = run("ca", "sign", str(ca), str(csr), "--role", "silo")
    assert out.returncode == 0, out.stderr
    cert = pki.load_certificate(out.stdout.splitlines()[0])
    assert pki.certificate_role(cert) == "silo"
    out = run("ca", "revoke", str(ca), f"{cert.serial_number:x}")
    assert out.returncode == 0
    crl = pki.RevocationList(ca / "crl.pem", pki.load_certificate(ca / "ca.crt"))
    assert crl.is_revoked(cert.serial_number)
    bad = run("ca", "revoke", str(ca), "not-hex")
    assert bad.returncode == 1 and "not a hexadecimal number" in bad.stderr


def test_crypto_benchmark_runs_on_a_tiny_size(tmp_path):
    result = run_benchmark("benchmarks.crypto_throughput", ["--params", 20000, "--silos", 2], tmp_path)
    for key in (
        "upload_bytes_per_param",
        "aggregate_bytes_per_param",
        "encrypt_params_per_s",
        "aggregate_params_per_s",
        "decrypt_params_per_s",
        "max_abs_error",
    ):
        assert result[key] > 0
        assert result["baseline"][key] > 0
    assert result["max_abs_error"] < 1e-6
    # the measured engine is smaller on the wire than the baseline: that is the point of it
    assert result["upload_bytes_per_param"] < result["baseline"]["upload_bytes_per_param"] / 4


def test_round_overhead_benchmark_runs_on_a_tiny_size(tmp_path):
    result = run_benchmark(
        "benchmarks.round_overhead",
        ["--silos", 2, "--rounds", 2, "--features", 5, "--hidden", 8, "--rows", "60,90", "--workdir", tmp_path / "w"],
        tmp_path,
    )
    assert result["plain_round_s"] > 0 and result["he_round_s"] > 0
    assert result["ratio"] == result["he_round_s"] / result["plain_round_s"]
    assert result["model_parameters"] == 5 * 8 + 8 + 8 + 1
    assert result["upload_bytes_per_param"]["he"] > result["upload_bytes_per_param"]["plain"] > 0
    # one comparison per record count, in the order given; the headline is the first
    assert [s["rows_per_silo"] for s in result["sweep"]] == [60, 90]
    assert result["sweep"][0]["ratio"] == result["ratio"]
    for point in result["sweep"]:
        assert point["target_met"] == (point["ratio"] <= result["target_ratio"])
        assert point["he_added_s_per_round"] == point["he_round_s"] - point["plain_round_s"]
        assert point["cpu_s_the_target_allows"] > 0
    assert result["target_met_at_rows"] == [s["rows_per_silo"] for s in result["sweep"] if s["target_met"]]
    crypto = result["crypto_cpu_s_per_round"]
    assert crypto["silo_encrypt_s"] > 0 and crypto["silo_decrypt_s"] > 0 and crypto["aggregator_s"] > 0
    expected_total = 2 * (crypto["silo_encrypt_s"] + crypto["silo_decrypt_s"]) + crypto["aggregator_s"]
    assert abs(crypto["total_s"] - expected_total) < 1e-3
    floor = result["seal_arithmetic_cpu_s_per_round"]
    assert set(floor["ns_per_value"]) == {"encode", "encrypt", "decrypt", "decode"}
    assert all(ns > 0 for ns in floor["ns_per_value"].values())
    assert abs(floor["total_s"] - (2 * floor["silo_s"] + floor["aggregator_add_s"])) < 1e-3


def test_round_overhead_benchmark_with_secure_aggregation_on_a_tiny_size(tmp_path):
    """Masked and unmasked compact jobs run interleaved in one consortium and are pooled; uploads keep their size."""
    result = run_benchmark(
        "benchmarks.round_overhead",
        ["--silos", 3, "--rounds", 2, "--features", 5, "--hidden", 8, "--rows", 60, "--profile", "compact",
         "--secure-aggregation", "--secagg-pairs", 2, "--workdir", tmp_path / "w"],
        tmp_path,
    )  # fmt: skip
    sa = result["secure_aggregation"]
    assert result["profile"] == "compact" and sa["compact_round_s"] > 0 and result["he_round_s"] > 0
    assert result["secagg_over_compact"] == sa["round_s"] / sa["compact_round_s"]
    assert sa["target_met"] == (result["secagg_over_compact"] <= sa["target_ratio"] == 1.15)
    # two jobs of each kind (C M, then M C), two rounds each; the pooled means leave out round 0 of each job
    assert sa["jobs_each"] == 2 and len(sa["pair_ratios"]) == 2 and all(r > 0 for r in sa["pair_ratios"])
    assert len(sa["rounds_s"]["secagg"]) == len(sa["rounds_s"]["compact"]) == 4
    steady = sa["rounds_s"]["secagg"][1::2]
    assert abs(sa["round_s"] - sum(steady) / len(steady)) < 2e-3  # round_s_each is rounded to ms
    # masks ride inside the compact lanes: same upload bytes; keys and shares travel on the relay
    assert sa["upload_bytes_per_param"]["secagg"] == sa["upload_bytes_per_param"]["compact"] > 0
    assert sa["relay_bytes_per_silo_per_round"] > 0
    assert result["sweep"][0]["secagg_over_compact"] == result["secagg_over_compact"]
    low, high = sa["ratio_interval_95"]
    assert 0 < low <= round(result["secagg_over_compact"], 3) <= high
    assert [t["round"] for t in sa["sessions"]] == [0, 1, 0, 1]
    assert all(t["outcome"] == "unmasked" and t["setup_s"] >= 0 and t["unmask_s"] >= 0 for t in sa["sessions"])


def test_the_ratio_interval_covers_what_round_noise_allows_and_no_more():
    from benchmarks.round_overhead import ratio_interval

    rng = np.random.default_rng(7)
    compact = list(1.5 + rng.normal(0, 0.02, 15))
    low, high = ratio_interval([1.2 * t for t in compact], compact)
    assert 1.17 < low < 1.2 < high < 1.23  # 20% slower, little noise: a narrow interval around 1.2
    noisy = list(1.5 + rng.normal(0, 0.2, 15))
    low, high = ratio_interval(noisy, compact)
    estimate = float(np.mean(noisy) / np.mean(compact))
    assert low < estimate < high and high - low > 0.1  # +-13% per round: ten times wider
    assert ratio_interval(noisy, compact) == [low, high]  # seeded


def test_round_overhead_benchmark_refuses_secure_aggregation_it_cannot_run(tmp_path):
    TINY = ["--rounds", "1", "--features", "3", "--hidden", "4", "--rows", "20"]  # quick, should it ever run
    for args in (["--secure-aggregation"], ["--profile", "compact", "--secure-aggregation", "--silos", "2"]):
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.round_overhead", *args, *TINY, "--workdir", str(tmp_path / "w")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and "use --profile compact and --silos >= 3" in proc.stderr
        assert "Traceback" not in proc.stderr and not (tmp_path / "w").exists()


def test_vertical_benchmark_runs_on_a_tiny_size(tmp_path):
    result = run_benchmark(
        "benchmarks.vertical",
        [
            "--entities",
            200,
            "--features",
            3,
            "--epochs",
            2,
            "--batch-size",
            32,
            "--psi-ids",
            500,
            "--workdir",
            tmp_path / "w",
        ],
        tmp_path,
    )
    for key in ("psi_ids_per_s", "epoch_s_he", "epoch_s_plain", "ratio"):
        assert result[key] > 0
    assert result["ratio"] == result["epoch_s_he"] / result["epoch_s_plain"]
    assert result["relay_bytes"]["vertical"] > result["relay_bytes"]["none"] > 0


def test_stream_flood_benchmark_runs_on_a_tiny_size(tmp_path):
    result = run_benchmark(
        "benchmarks.stream_flood", ["--streams", 12, "--samples", 5, "--workdir", tmp_path / "w"], tmp_path
    )
    for phase in ("baseline_ms", "flood_ms"):
        for call in ("poll", "list_jobs"):
            assert 0 < result[phase][call]["p50"] <= result[phase][call]["p95"] <= result[phase][call]["max"]
            assert result[phase][call]["failed"] == 0
    for key, ratio in result["ratios"].items():
        call, q = key.rsplit("_", 1)
        assert ratio == round(result["flood_ms"][call][q] / result["baseline_ms"][call][q], 3)
    # one member holds at most its per-identity share (8 by default); the rest is refused
    streams = result["flood_streams"]
    assert streams["upload"]["opened"] == streams["watch"]["opened"] == 12
    held = streams["upload"]["held"] + streams["watch"]["held"]
    assert held <= 8 and streams["upload"]["refused"] + streams["watch"]["refused"] == 24 - held
    assert result["aggregator_alive"]


def test_benchmark_workdir_is_removed_after_a_run_and_kept_after_a_failure(tmp_path, monkeypatch):
    """A benchmark's consortium takes gigabytes: gone after a good run, kept (for its logs) after a bad one."""
    import tempfile

    from benchmarks.common import workdir_for

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with workdir_for(None, "bench-ok-") as workdir:
        (workdir / "state").write_text("x")
    assert not workdir.exists()
    with pytest.raises(RuntimeError), workdir_for(None, "bench-bad-") as failed:
        raise RuntimeError("job failed")
    assert failed.exists()
    given = tmp_path / "given"
    given.mkdir()
    with workdir_for(given, "unused-") as workdir:
        assert workdir == given
    assert given.exists()
