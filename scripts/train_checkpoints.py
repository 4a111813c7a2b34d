"""Regenerate the shipped checkpoints (lvm/checkpoints/) and the decoded-digit figures.

    python scripts/train_checkpoints.py [--names prior-iwae-k2 jensen-k2 vae-k2 iwae-k2] [--no-progress]

Trains each name (default: ``lvm.zoo.SHIPPED``) with its default zoo recipe
(``lvm.zoo.recipe``, one torch thread): the prior families 1,000 steps, batch 256,
N = 128, seed 0, about 15 s per model on a CPU; vae-k2 and iwae-k2 (decoder and
encoder, 1,000 steps, k = 1 and 5 draws of q(z|x) per datapoint) about 25 and 90 s,
plus about 25 s each for the test-set bounds their metadata records.
It writes ``lvm/checkpoints/<name>.pt`` + ``.json``, then draws
``results/figures/decoded_grid_k2.png`` (prior-iwae-k2) and
``results/figures/decoded_grid_jensen_k2.png`` from the written files.
Bit-identical weights need the same machine type and torch build.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lvm import checkpoint, zoo  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--names", nargs="+", default=list(zoo.SHIPPED))
    p.add_argument("--out", default=str(zoo.CHECKPOINT_DIR))
    p.add_argument("--figures", default=str(ROOT / "results" / "figures"))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    zoo.train_models(args.names, out_dir=args.out, progress=not args.no_progress)
    figures = Path(args.figures)
    for name, file in (("prior-iwae-k2", "decoded_grid_k2.png"), ("jensen-k2", "decoded_grid_jensen_k2.png")):
        path = Path(args.out) / f"{name}.pt"
        if name in args.names and path.is_file():
            model = checkpoint.load_checkpoint(path, zoo.parse(name).architecture())
            meta = checkpoint.read_metadata(path)
            title = f"{name}: pixel means on a grid of z (train loss {meta['final_train_loss']:.1f} nats)"
            out = zoo.save_decoded_grid(model, figures / file, title=title)
            print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
