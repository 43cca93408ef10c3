"""Regenerate the gRPC stubs from ``protocol/cipherfed.proto`` with the pinned grpcio-tools.

python -m protocol.codegen            # writes the stubs next to the .proto
python -m protocol.codegen --out DIR  # writes them under DIR (the sync test compares)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = "protocol/cipherfed.proto"
GENERATED = ("cipherfed_pb2.py", "cipherfed_pb2_grpc.py", "cipherfed_pb2.pyi")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpc_tools) with the repository root as include path."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        code = protoc.main(
            [
                "protoc",
                f"-I{ROOT}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(ROOT / PROTO),
            ]
        )
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            target = out_dir / name
            shutil.copyfile(Path(tmp) / "protocol" / name, target)
            written.append(target)
        return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "protocol")
    for path in generate(parser.parse_args().out):
        print(path)


if __name__ == "__main__":
    main()
