"""The job engine's restart behaviour, on a real SQLite file (no network needed for this part)."""

from aggregator.aggregate_files import AggregateFiles
from aggregator.core.jobs import Jobs
from aggregator.keyring import PublicKeyring
from aggregator.store import StateStore
from audit.events import LogSink
from cipherfed.demo_vertical import PARTIES, vertical_job_toml
from cipherfed.localconsortium import job_toml
from crypto.keys import generate_key_set
from crypto.pki import Identity


def _engine(tmp_path, keyring):
    store = StateStore(tmp_path / "state.sqlite")
    return Jobs(store, AggregateFiles(tmp_path / "aggregates"), keyring, tmp_path, LogSink("test"))


def test_restart_reopens_horizontal_rounds_but_leaves_vertical_jobs_alone(tmp_path):
    keys = generate_key_set("sum")
    keyring = PublicKeyring()
    keyring.add(keys.export_public())
    admin = Identity("coordinator", "admin", 1, "f" * 64, None)  # type: ignore[arg-type]
    engine = _engine(tmp_path, keyring)
    horizontal = engine.submit(job_toml("h", ["a", "b"], keys.fingerprint, ["x"], round_timeout_s=600), admin)
    columns = {p: [f"{p}_x"] for p in PARTIES}
    vertical = engine.submit(vertical_job_toml("v", "vertical", columns, epochs=2), admin)
    assert engine.rounds.open_job_ids() == {horizontal}
    engine.store.close()

    restarted = _engine(tmp_path, keyring)  # same SQLite file, as after a crash
    assert restarted.rounds.open_job_ids() == {horizontal}  # a vertical job has no rounds to reopen
    restarted.tick(now=10**12)  # far past every deadline
    assert restarted.store.job(vertical).status == "running"
    assert restarted.store.rounds(vertical) == []
