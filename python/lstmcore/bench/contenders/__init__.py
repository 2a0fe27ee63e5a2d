"""The contenders: one module per library family, each a table of builders by case kind
(``BUILDERS``) and the modules it needs (``REQUIRES``); here all of them together, the order
of the table's columns, and which lstmcore row each row is compared with.

A builder makes a contender's step for a case, built and checked before any timing; it raises
:class:`RefusedError` for a case it cannot run faithfully. Peer libraries are imported inside
the builders only, never here."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.util import find_spec

from lstmcore._argtypes import usable_cores
from lstmcore.bench.contenders import keras_jax, onnx_runtime, ours, pytorch, reference
from lstmcore.bench.contenders.common import Builder, RefusedError, Step

__all__ = [
    "BASELINES",
    "BUILDERS",
    "CONTENDERS",
    "FAMILIES",
    "Builder",
    "RefusedError",
    "Step",
    "baseline",
    "precision_of",
    "unavailable",
]

# family (a --contenders name) -> its module; the order of the families everywhere
_MODULES = {
    "lstmcore": ours,
    "reference": reference,
    "torch": pytorch,
    "onnxruntime": onnx_runtime,
    "keras": keras_jax,
}
FAMILIES = tuple(_MODULES)
# (family, kind) -> {contender name: builder}; a missing pair: the family does not run that kind
BUILDERS: dict[tuple[str, str], dict[str, Builder]] = {
    (family, kind): builders
    for family, module in _MODULES.items()
    for kind, builders in module.BUILDERS.items()
}
# the order of the table's columns and rows, whatever order the workers finished in
CONTENDERS = list(dict.fromkeys(name for builders in BUILDERS.values() for name in builders))
BASELINES = ("lstmcore", "lstmcore-lengths", "lstmcore-padded")  # "x lstmcore": the first found
BF16 = "-bf16"  # the suffix of every bf16 contender; its baseline is lstmcore-bf16


def precision_of(contender: str) -> str:
    return "bf16" if contender.endswith(BF16) else "fp32"


def baseline(contender: str, present: Sequence[str]) -> str | None:
    """The lstmcore contender a row's "x lstmcore" compares with: the same precision's."""
    if precision_of(contender) == "bf16":
        return "lstmcore" + BF16 if "lstmcore" + BF16 in present else None
    return next((b for b in BASELINES if b in present), None)


def unavailable(family: str, threads: int) -> str | None:
    """Why a family cannot run here (None: it can), found without importing it: an import
    would start nothing, but the parent of isolated runs should stay free of peers."""
    absent = [m for m in _MODULES[family].REQUIRES if find_spec(m) is None]
    if absent:
        names = ", ".join(absent)
        return f"{family} skipped: {names} not importable (pip install {' '.join(absent)})"
    if family == "keras" and threads != usable_cores():
        return f"keras runs only with all cores (XLA sizes its pool once), not with {threads}"
    return None
