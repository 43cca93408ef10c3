"""The recipes/hazmat split of crypto.engine, and the plaintext engine that must be chosen by name.

crypto.hazmat holds raw SEAL and plaintext-chunk calls with no checks (wrong keys, unbounded values
and unverified bytes pass straight through). Only crypto/ may import it: everything else goes through
the recipes in crypto.engine, which carry the checks. Plaintext is never the silent fallback of
SumEncryptor: it is the loudly named UnencryptedSumForComparisonOnly.
"""

import ast
from pathlib import Path

import numpy as np
import pytest

from crypto.engine import (
    PLAIN_FINGERPRINT,
    ChunkVerifier,
    SumEncryptor,
    UnencryptedSumForComparisonOnly,
    UpdateEncryptor,
    accumulate_batches,
    decrypt_weighted_mean,
    encrypt_weighted_update,
)
from crypto.errors import FingerprintMismatchError, ManifestError
from crypto.keys import generate_key_set

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".venv", ".git", "crypto", "node_modules", "build", "dist"}


def _python_files_outside_crypto() -> list[Path]:
    files = []
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if parts[0] in SKIP_DIRS or any(p.startswith(".") for p in parts[:-1]):
            continue
        files.append(path)
    return files


def _called_name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _hazmat_imports(path: Path) -> list[str]:
    """Every import of crypto.hazmat in a file: `import crypto.hazmat...`, `from crypto.hazmat... import`,
    `from crypto import hazmat`, and `importlib.import_module("crypto.hazmat...")`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("crypto.hazmat")]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("crypto.hazmat"):
                found.append(node.module)
            elif node.module == "crypto" and any(a.name == "hazmat" for a in node.names):
                found.append("crypto.hazmat")
        elif (
            isinstance(node, ast.Call)
            and _called_name(node.func) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and node.args[0].value.startswith("crypto.hazmat")
        ):
            found.append(node.args[0].value)
    return found


def test_nothing_outside_crypto_imports_hazmat():
    files = _python_files_outside_crypto()
    assert len(files) > 50  # the scan really covers aggregator/, silo_node/, tests/, benchmarks/, ...
    offenders = {str(p.relative_to(ROOT)): found for p in files if (found := _hazmat_imports(p))}
    assert not offenders, f"only crypto/ may import crypto.hazmat (use the recipes in crypto.engine): {offenders}"


def test_every_hazmat_module_says_why_it_is_hazardous():
    for path in sorted((ROOT / "crypto" / "hazmat").glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        assert "HAZ" in doc.upper() and "check" in doc.lower(), f"{path.name} lacks its hazard warning"


def test_the_recipes_are_where_other_packages_import_them_from():
    import crypto.engine as engine

    for name in (
        "Accumulator",
        "ChunkVerifier",
        "encrypt_weighted_update",
        "decrypt_weighted_mean",
        "accumulate_batches",
        "EncryptedBatch",
        "WeightedMean",
        "SumEncryptor",
        "UnencryptedSumForComparisonOnly",
    ):
        assert hasattr(engine, name), name


@pytest.mark.parametrize("bad", [None, b"secret export bytes", "sum"])
def test_sum_encryptor_without_a_key_set_fails_closed_and_names_the_plaintext_class(bad):
    with pytest.raises(TypeError, match="UnencryptedSumForComparisonOnly"):
        SumEncryptor(bad)


def test_sum_encryptor_refuses_a_public_context():
    keys = generate_key_set("sum")
    with pytest.raises(TypeError, match="SecretKeySet"):
        SumEncryptor(keys.public)  # type: ignore[arg-type]


def test_the_plaintext_engine_is_not_a_sum_encryptor_and_says_so():
    plain = UnencryptedSumForComparisonOnly()
    assert isinstance(plain, UpdateEncryptor) and not isinstance(plain, SumEncryptor)
    assert plain.profile.name == "none" and plain.fingerprint == PLAIN_FINGERPRINT
    assert "NOT ENCRYPTED" in (type(plain).__doc__ or "")


def test_plaintext_uploads_cannot_enter_an_encrypted_job_nor_decrypt_as_one():
    keys = generate_key_set("sum")
    plain = encrypt_weighted_update(UnencryptedSumForComparisonOnly(), {"v": np.ones(10)}, 2.0)
    with pytest.raises(FingerprintMismatchError):
        ChunkVerifier(keys.public, plain.manifest, keys.fingerprint)
    forged = type(plain.manifest)(**{**plain.manifest.__dict__, "fingerprint": keys.fingerprint})
    with pytest.raises(ManifestError, match="does not match the job's encryption"):
        ChunkVerifier(keys.public, forged, keys.fingerprint)
    enc = SumEncryptor(keys)
    acc = accumulate_batches(None, PLAIN_FINGERPRINT, [plain])
    with pytest.raises(FingerprintMismatchError):
        decrypt_weighted_mean(enc, plain.manifest, acc.serialize())
