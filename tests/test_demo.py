import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("demo")]


def test_demo_three_hospitals_end_to_end(demo_run):
    w, result, stdout = demo_run
    for key in (
        "partition",
        "dataset",
        "silos",
        "rounds",
        "final",
        "centralized",
        "plaintext_federated",
        "upload_bytes_total",
        "wall_s",
    ):
        assert key in result
    assert result["silos"] == 3 and result["partition"] == "horizontal"
    assert result["final"]["accuracy"] >= result["centralized"]["accuracy"] - 0.02
    assert result["all_silos_hold_the_same_model"]
    assert result["upload_bytes_total"] > 0
    assert result["wall_s"] < 120
    # the workdir is kept: certificates, configs, logs, SQLite, models
    assert (w / "aggregator" / "state" / "aggregator.sqlite").exists()
    assert (w / "hospital-1" / "node.toml").exists() and (w / "logs" / "aggregator.log").exists()
    # it ends with the audit verification and the report path
    assert result["audit"]["verified"] and "verified" in stdout and "compliance-report.html" in stdout
    # the aggregator never received a secret key: only the public context is in its directory
    from crypto.errors import KeyMaterialError
    from crypto.keys import load_public_context, load_secret_key_set

    contexts = list((w / "aggregator" / "keys").glob("*.ctx"))
    assert contexts
    for ctx in contexts:
        load_public_context(ctx.read_bytes())
        with pytest.raises(KeyMaterialError):
            load_secret_key_set(ctx.read_bytes())


def test_logs_and_state_hold_no_secrets(demo_run):
    """No HE secret key bytes and no silo private key in any log, audit record or aggregator file."""
    w, result, _ = demo_run
    he_secret = (w / "hospital-1" / "he_secret.key").read_bytes()[-64:]  # a slice of the serialized secret key
    silo_keys = [(w / f"hospital-{i}" / f"hospital-{i}.key").read_bytes()[40:80] for i in (1, 2, 3)]
    files = list((w / "logs").glob("*.log")) + list(w.glob("*/state/audit.jsonl"))
    files += [p for p in (w / "aggregator").rglob("*") if p.is_file() and p.name != "aggregator.key"]
    assert len(files) > 5
    for path in files:
        data = path.read_bytes()
        assert he_secret not in data, path
        assert b"PRIVATE KEY" not in data, path
        for key in silo_keys:
            assert key not in data, path
