import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_three_hospitals_end_to_end(tmp_path):
    out = tmp_path / "demo.json"
    proc = subprocess.run([sys.executable, "-m", "cipherfed", "demo", "--workdir", str(tmp_path / "w"),
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in ("partition", "dataset", "silos", "rounds", "final", "centralized", "plaintext_federated",
                "upload_bytes_total", "wall_s"):
        assert key in result
    assert result["silos"] == 3 and result["partition"] == "horizontal"
    assert result["final"]["accuracy"] >= result["centralized"]["accuracy"] - 0.02
    assert result["all_silos_hold_the_same_model"]
    assert result["upload_bytes_total"] > 0
    # the workdir is kept: certificates, configs, logs, SQLite, models
    w = tmp_path / "w"
    assert (w / "aggregator" / "state" / "aggregator.sqlite").exists()
    assert (w / "hospital-1" / "node.toml").exists() and (w / "logs" / "aggregator.log").exists()
    # the aggregator never received a secret key: only the public context is in its directory
    from crypto.errors import KeyMaterialError
    from crypto.keys import load_public_context, load_secret_key_set

    for ctx in (w / "aggregator" / "keys").glob("*.ctx"):
        load_public_context(ctx.read_bytes())
        with pytest.raises(KeyMaterialError):
            load_secret_key_set(ctx.read_bytes())
