"""``python -m lstmcore.export CHECKPOINT OUT.onnx``: a trained checkpoint as an ONNX model
(see :mod:`lstmcore.mnist.export` for the graph)."""

from __future__ import annotations

import argparse
import sys

from lstmcore.mnist import checkpoint
from lstmcore.mnist.export import ExportError, export


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lstmcore.export",
        description="Export a trained checkpoint to ONNX (needs: pip install 'lstmcore[onnx]').",
    )
    parser.add_argument("checkpoint", help="a best.npz or last.npz written by lstmcore.train")
    parser.add_argument("out", help="the .onnx file to write")
    args = parser.parse_args(argv)
    try:
        export(args.checkpoint, args.out)
    except (ExportError, checkpoint.CheckpointError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
