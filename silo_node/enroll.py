"""Enrolling a node: its private key is born here and never leaves; the admin only sees a CSR."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crypto import pki

NODE_TOML = """# cipherfed silo node: {name}
# Fill in the [data] section, then run `cipherfed node doctor --config {config}`.
# The node only dials out to the aggregator (TCP {aggregator}); it opens no port.

name = "{name}"                     # must equal the common name of this node's certificate
consortium = "{consortium}"
aggregator = "{aggregator}"         # host:port of the consortium's aggregator
{server_name_line}
state_dir = "{state_dir}"{state_pad}# job state, privacy ledger, trained models (jobs/<job>/final_model.npz) and
                                    # the signed audit log (audit.jsonl); must be writable by the node
poll_wait_s = 5.0
# site_policy = "site-policy.toml"  # your privacy officer's policy; see `cipherfed policy validate`

[tls]
ca = "ca.crt"                       # the consortium CA certificate (from the consortium admin)
cert = "{name}.crt"                 # returned by the admin after `cipherfed ca sign ... {name}.csr --role silo`
key = "{name}.key"                  # created by `node init`, mode 0600; never copy it anywhere
# crl = "crl.pem"                   # the consortium's revocation list: refuse HE keys shared with revoked members

[data]
path = "data.csv"                   # CSV or Parquet, one row per record
# format = "csv"                    # or "parquet"; inferred from the file suffix if omitted
# id_column = "patient_id"          # entity ids (vertical jobs, predictions)
# label = "outcome"                 # columns this node offers; `node doctor` checks they exist
# features = ["age", "bmi", "sbp"]
validation_fraction = 0.2

[keys]
# The consortium's HE key is fetched from the aggregator, wrapped to this node's certificate, on first use.
# Set secret_key only on the key custodian (written by `cipherfed keys create`).
scope = "consortium"
# secret_key = "he_secret.key"
"""


@dataclass
class Enrollment:
    key: Path
    csr: Path
    config: Path
    state_dir: str = "state"


SYSTEM_STATE_DIR = Path("/var/lib/cipherfed")  # what deploy/systemd/cipherfed-node.service may write


def default_state_dir(config_dir: Path) -> str:
    """``/var/lib/cipherfed`` for a system install (config under /etc, read-only under the systemd unit),
    else ``state`` next to node.toml."""
    resolved = Path(config_dir).resolve()
    return str(SYSTEM_STATE_DIR) if resolved.parts[:2] == ("/", "etc") else "state"


def init_node(
    name: str,
    aggregator: str,
    directory: Path,
    consortium: str = "",
    state_dir: str | None = None,
    server_name: str | None = None,
) -> Enrollment:
    directory = Path(directory)
    state = state_dir or default_state_dir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "node.toml"
    if (directory / f"{name}.key").exists():
        raise FileExistsError(f"{directory / (name + '.key')} exists: this node is already initialised")
    key, csr = pki.make_csr(name, directory)
    if not config.exists():
        config.write_text(
            NODE_TOML.format(
                name=name,
                aggregator=aggregator,
                config=config,
                consortium=consortium or "CHANGE ME: the consortium's name",
                state_dir=state,
                server_name_line=f'server_name = "{server_name}"   # the name in the aggregator\'s certificate'
                if server_name
                else '# server_name = "aggregator.example.org"   # if the aggregator\'s certificate names another host',
                state_pad=" " * max(1, 23 - len(state)),
            )
        )
    return Enrollment(key, csr, config, state)
