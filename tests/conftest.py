import json
import subprocess
import sys

import pytest

from cipherfed.localconsortium import LocalConsortium


@pytest.fixture(scope="module")
def running_aggregator(tmp_path_factory):
    """A real aggregator process with 4 provisioned silos and no nodes running (tests drive the silos)."""
    consortium = LocalConsortium(tmp_path_factory.mktemp("consortium"), ["silo-a", "silo-b", "silo-c", "silo-d"])
    consortium.provision()
    consortium.write_aggregator_config()
    consortium.start_aggregator()
    consortium.write_admin_config()
    yield consortium
    consortium.stop_all()


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One real `cipherfed demo` run (separate processes, mTLS, HE); its workdir and JSON result."""
    root = tmp_path_factory.mktemp("demo")
    out = root / "demo.json"
    proc = subprocess.run(
        [sys.executable, "-m", "cipherfed", "demo", "--workdir", str(root / "w"), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "w", json.loads(out.read_text()), proc.stdout
