#!/usr/bin/env bash
# Provisioning for scripts/deploy-test.sh, run INSIDE the cipherfed image (as root, the work directory
# mounted at /work), so it uses exactly the CLI the containers run, and the host needs no Python:
#   provision          CA, certificates, node keys (node init + ca sign), configs, policies, records
#   job FINGERPRINT    the coordinator's job.toml, once the custodian's `keys create` printed the key
# It does what docs/run-consortium.md and docs/install-node.md tell each party to do, each party in its own
# folder (/work/consortium/<party>, mounted at /etc/cipherfed in that party's container), and at the end
# hands the files to uid 10001, the image's user, which must read its 0600 keys.
set -euo pipefail

WORK=/work
CONSORTIUM="Demo Health Consortium"
HOSPITALS=(hospital-1 hospital-2 hospital-3)

fingerprint() {  # SHA-256 of the DER certificate: what policies pin
    python -c 'import sys; from crypto import pki; print(pki.certificate_fingerprint(pki.load_certificate(sys.argv[1])))' "$1"
}

provision() {
    local ca=$WORK/ca c=$WORK/consortium
    cipherfed ca init "$ca" --consortium "$CONSORTIUM" >/dev/null
    # the nodes dial aggregator:7443 on the compose network; the container's own probe dials localhost
    cipherfed ca issue "$ca" aggregator --role aggregator --dns aggregator --dns localhost --ip 127.0.0.1 \
        --out "$c/aggregator" >/dev/null
    cipherfed ca issue "$ca" coordinator --role admin --out "$c/coordinator" >/dev/null
    for h in "${HOSPITALS[@]}"; do
        cipherfed node init --name "$h" --aggregator aggregator:7443 --dir "$c/$h" --consortium "$CONSORTIUM" >/dev/null
        cipherfed ca sign "$ca" "$c/$h/$h.csr" --role silo >/dev/null  # the certificate lands next to the CSR
    done
    for party in aggregator coordinator "${HOSPITALS[@]}"; do cp "$ca/ca.crt" "$c/$party/"; done
    cp "$ca/crl.pem" "$c/aggregator/"
    # the custodian wraps the HE key to the other members' certificates, which the coordinator hands it
    mkdir -p "$c/hospital-1/members"
    cp "$c/hospital-2/hospital-2.crt" "$c/hospital-3/hospital-3.crt" "$c/hospital-1/members/"
    AGG_FP=$(fingerprint "$c/aggregator/aggregator.crt")
    write_aggregator_config "$c/aggregator"
    for h in "${HOSPITALS[@]}"; do write_node_config "$h" "$c/$h"; done
    write_admin_config "$c/coordinator"
    write_data
    cipherfed policy validate "$c/aggregator/consortium-policy.toml" >/dev/null
    for h in "${HOSPITALS[@]}"; do cipherfed policy validate "$c/$h/site-policy.toml" >/dev/null; done
    chown -R 10001:10001 "$WORK/consortium" "$WORK/data"
}

write_aggregator_config() {
    local dir=$1 members="" h
    cat >"$dir/aggregator.toml" <<EOF
consortium = "$CONSORTIUM"
listen = "0.0.0.0:7443"
state_dir = "/var/lib/cipherfed"
consortium_policy = "/etc/cipherfed/consortium-policy.toml"

[tls]
cert = "/etc/cipherfed/aggregator.crt"
key = "/etc/cipherfed/aggregator.key"
ca = "/etc/cipherfed/ca.crt"
crl = "/etc/cipherfed/crl.pem"
EOF
    members+=$'[[members]]\nname = "coordinator"\nrole = "admin"\n'
    members+="cert_fingerprint = \"$(fingerprint "$WORK/consortium/coordinator/coordinator.crt")\""$'\n'
    for h in "${HOSPITALS[@]}"; do
        members+=$'\n[[members]]\n'"name = \"$h\""$'\nrole = "silo"\n'
        members+="cert_fingerprint = \"$(fingerprint "$WORK/consortium/$h/$h.crt")\""$'\n'
    done
    cat >"$dir/consortium-policy.toml" <<EOF
kind = "consortium"
consortium = "$CONSORTIUM"
min_silos_per_aggregate = 3
allowed_he_profiles = ["sum"]
max_rounds = 50
job_submitters = ["coordinator"]

$members
EOF
}

write_node_config() {
    local name=$1 dir=$2
    cat >"$dir/node.toml" <<EOF
# written by scripts/deploy-test-provision.sh over the one \`cipherfed node init\` made: container paths
name = "$name"
consortium = "$CONSORTIUM"
aggregator = "aggregator:7443"
state_dir = "/var/lib/cipherfed"
site_policy = "/etc/cipherfed/site-policy.toml"
poll_wait_s = 2.0

[tls]
ca = "/etc/cipherfed/ca.crt"
cert = "/etc/cipherfed/$name.crt"
key = "/etc/cipherfed/$name.key"

[data]
path = "/data/records.csv"
label = "readmitted_30d"
features = ["age", "bmi", "sbp", "hba1c"]
validation_fraction = 0.2

[keys]
scope = "consortium"
EOF
    cat >"$dir/site-policy.toml" <<EOF
kind = "site"
site = "$name"
trusted_aggregators = ["$AGG_FP"]
trusted_consortia = ["$CONSORTIUM"]
allowed_job_types = ["horizontal"]
allowed_models = ["logreg"]
min_participants = 3
min_he_profile = "sum"
max_rounds = 50
EOF
}

write_admin_config() {
    cat >"$1/admin.toml" <<EOF
aggregator = "aggregator:7443"

[tls]
ca = "/etc/cipherfed/ca.crt"
cert = "/etc/cipherfed/coordinator.crt"
key = "/etc/cipherfed/coordinator.key"
EOF
}

write_job() {
    cat >"$WORK/consortium/coordinator/job.toml" <<EOF
name = "deploy-test-logreg"
partition = "horizontal"
rounds = 3
local_epochs = 1
batch_size = 32
lr = 0.1
min_silos = 3
round_timeout_s = 120
max_round_retries = 1
he_profile = "sum"
key_fingerprint = "$1"
participants = [$(printf '"%s", ' "${HOSPITALS[@]}" | sed 's/, $//')]
seed = 7

[model]
type = "logreg"

[dataset]
features = ["age", "bmi", "sbp", "hba1c"]
label = "readmitted_30d"
scaling = "federated"
EOF
    chown 10001:10001 "$WORK/consortium/coordinator/job.toml"
}

write_data() {
    # synthetic records, different at each hospital; the label depends on the features so training learns
    python - "$WORK/data" "${HOSPITALS[@]}" <<'EOF'
import sys
from pathlib import Path

import numpy as np

root, hospitals = Path(sys.argv[1]), sys.argv[2:]
for i, name in enumerate(hospitals):
    rng = np.random.default_rng(100 + i)
    n = 240
    x = np.column_stack([rng.normal(60, 12, n), rng.normal(27, 4, n), rng.normal(130, 15, n), rng.normal(6, 1, n)])
    score = 0.04 * (x[:, 0] - 60) + 0.1 * (x[:, 1] - 27) + 0.5 * (x[:, 3] - 6) + rng.normal(0, 0.5, n)
    (root / name).mkdir(parents=True)
    with open(root / name / "records.csv", "w") as f:
        f.write("age,bmi,sbp,hba1c,readmitted_30d\n")
        for row, y in zip(x, score > 0, strict=True):
            f.write(",".join(f"{v:.3f}" for v in row) + f",{int(y)}\n")
EOF
}

case ${1:-} in
    provision) provision ;;
    job) write_job "${2:?job needs the key fingerprint}" ;;
    *) echo "usage: $0 provision | job FINGERPRINT" >&2; exit 2 ;;
esac
