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
