"""A trained classifier loaded from a checkpoint: ``lstmcore.load(path)``, then ``predict``.

```python
import lstmcore
model = lstmcore.load("runs/20261129-184500/best.npz")
labels = model.predict(images)        # images (B, 28, 28), uint8 or float in [0, 1]
probs = model.predict_proba(images)   # (B, classes) float32, rows sum to 1
```

The task (how an image becomes a sequence) is stored in the checkpoint and applied here, so a
model trained on ``--task pixels`` or ``--task permuted`` is called with plain images too:

- ``rows``: each image is a sequence of its rows (28 steps of 28 pixels);
- ``pixels``: each image is a sequence of its pixels in reading order (784 steps of 1);
- ``permuted``: the pixels in one fixed order, ``flat[:, permutation]`` (784 steps of 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lstmcore import ops
from lstmcore.mnist import checkpoint
from lstmcore.nn import PREDICT_BATCH, SequenceClassifier, upgrade_v01_params

Array = NDArray[Any]

__all__ = [
    "TASKS",
    "Classifier",
    "Task",
    "load",
    "load_network",
    "make_permutation",
    "task_from",
    "task_record",
]

TASKS = ("rows", "pixels", "permuted")

_PERM_KEY = checkpoint.PERMUTATION
_MAX_SIDE = 2**16  # pixels of an image side


def make_permutation(size: int, seed: int) -> NDArray[np.int64]:
    """The fixed pixel order of ``--task permuted`` for ``--perm-seed seed``."""
    return np.random.default_rng(seed).permutation(size).astype(np.int64)


@dataclass(frozen=True)
class Task:
    """How an image (rows, cols) becomes the sequence (T, I) that the LSTM reads."""

    name: str = "rows"
    permutation: NDArray[np.int64] | None = None  # (rows * cols,), only for "permuted"

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise ValueError(f"unknown task {self.name!r}: expected one of {', '.join(TASKS)}")
        if (self.name == "permuted") != (self.permutation is not None):
            raise ValueError("a permutation is needed by, and only by, the permuted task")
        p = self.permutation
        if p is not None and not (
            p.ndim == 1 and np.array_equal(np.sort(p), np.arange(p.size, dtype=p.dtype))
        ):
            raise ValueError("permutation: expected a permutation of 0..N-1")

    def input_size(self, image_shape: tuple[int, int]) -> int:
        """I, the number of values the LSTM reads per step."""
        return image_shape[1] if self.name == "rows" else 1

    def steps(self, image_shape: tuple[int, int]) -> int:
        """T, the sequence length."""
        return image_shape[0] if self.name == "rows" else image_shape[0] * image_shape[1]

    def images(self, sequences: Array, image_shape: tuple[int, int]) -> Array:
        """The inverse of :meth:`sequences`: (B, T, I) -> (B, rows, cols)."""
        if self.name == "rows":
            return sequences
        flat = sequences.reshape(sequences.shape[0], -1)
        if self.permutation is not None:
            unpermuted = np.empty_like(flat)
            unpermuted[:, self.permutation] = flat
            flat = unpermuted
        return flat.reshape(-1, *image_shape)

    def sequences(self, images: Array) -> Array:
        """(B, rows, cols) -> (B, T, I): a view for rows and pixels, a copy for permuted."""
        if self.name == "rows":
            return images
        flat = images.reshape(images.shape[0], -1)
        if self.permutation is not None:
            if self.permutation.size != flat.shape[1]:
                raise ValueError(
                    f"images: {flat.shape[1]} pixels, the permutation orders "
                    f"{self.permutation.size}"
                )
            flat = flat[:, self.permutation]
        return flat[:, :, None]


class Classifier:
    """A trained sequence classifier and the task it was trained on.

    ``image_shape`` is (rows, cols) of the images it was trained on, the only shape it takes.
    """

    def __init__(
        self,
        network: SequenceClassifier,
        task: Task,
        image_shape: tuple[int, int],
        path: str = "",
    ) -> None:
        self.network = network
        self.task = task
        self.image_shape = image_shape
        self.path = path

    @property
    def num_classes(self) -> int:
        return int(self.network.config["num_classes"])

    def __repr__(self) -> str:
        cfg = self.network.config
        return (
            f"Classifier(task={self.task.name!r}, image_shape={self.image_shape}, "
            f"hidden_size={cfg['hidden_size']}, num_classes={cfg['num_classes']})"
        )

    def check_images(self, images: Any) -> NDArray[np.float32]:
        """Images as float32 in [0, 1], shape (B, rows, cols) exactly as trained on (the LSTM
        would read other rows counts too, and answer nonsense); ValueError saying what is
        wrong."""
        arr = np.asarray(images)
        rows, cols = self.image_shape
        if arr.ndim != 3 or arr.shape[1:] != (rows, cols):
            raise ValueError(f"images: expected shape (B, {rows}, {cols}), got {arr.shape}")
        if arr.dtype == np.uint8:
            scaled: NDArray[np.float32] = arr.astype(np.float32) / np.float32(255.0)
            return scaled
        if arr.dtype.kind != "f":
            raise ValueError(
                f"images: expected uint8 (0..255) or float in [0, 1], got dtype {arr.dtype}"
            )
        out = arr.astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise ValueError("images: float pixels must be finite and in [0, 1], got NaN or inf")
        if out.size and (out.min() < 0.0 or out.max() > 1.0):
            raise ValueError(
                f"images: float pixels must be finite and in [0, 1], got values in "
                f"[{out.min():g}, {out.max():g}] (divide 0..255 data by 255)"
            )
        return out

    def logits(self, images: Any) -> NDArray[np.float32]:
        """(B, classes) float32: the network's outputs before the softmax."""
        x = self.check_images(images)
        parts = [
            self.network.logits(self.task.sequences(x[k : k + PREDICT_BATCH]))
            for k in range(0, len(x), PREDICT_BATCH)
        ]
        if not parts:
            return np.zeros((0, self.num_classes), np.float32)
        out: NDArray[np.float32] = np.concatenate(parts).astype(np.float32, copy=False)
        return out

    def predict_proba(self, images: Any) -> NDArray[np.float32]:
        """(B, classes) float32 class probabilities (a stable softmax of the logits)."""
        z = self.logits(images)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        probs: NDArray[np.float32] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return probs

    def predict(self, images: Any) -> NDArray[np.int64]:
        """(B,) int64: the most probable class of each image."""
        labels: NDArray[np.int64] = self.logits(images).argmax(axis=1).astype(np.int64)
        return labels


def task_record(
    task: Task, image_shape: tuple[int, int]
) -> tuple[dict[str, Any], dict[str, Array]]:
    """What a checkpoint stores about the task: metadata under "task", arrays beside the
    parameters (the permutation itself, not only its seed: the data, not the RNG, is the
    contract)."""
    meta = {"name": task.name, "image_shape": [int(image_shape[0]), int(image_shape[1])]}
    arrays = {} if task.permutation is None else {_PERM_KEY: task.permutation}
    return meta, arrays


def task_from(
    path: str | os.PathLike[str], meta: dict[str, Any], other: dict[str, Array], cols: int
) -> tuple[Task, tuple[int, int]]:
    """The task and image shape a checkpoint was trained on. Checkpoints written before tasks
    existed hold none: they are rows of ``cols`` pixels (28 rows for MNIST)."""
    record = meta.get("task")
    if record is None:
        return Task("rows"), (28, cols)
    try:
        name = str(record["name"])
        rows, width = (int(v) for v in record["image_shape"])
        perm = other.get(_PERM_KEY)
        if perm is not None and perm.dtype.kind not in "iu":  # a cast would truncate floats
            raise ValueError(f"a permutation stored as {perm.dtype}, not integers")
        task = Task(name, None if perm is None else np.asarray(perm, dtype=np.int64))
        if not (1 <= rows <= _MAX_SIDE and 1 <= width <= _MAX_SIDE):
            raise ValueError(f"image shape {(rows, width)}")
        if task.input_size((rows, width)) != cols:
            raise ValueError(f"{name} of {(rows, width)} images does not feed {cols} inputs")
        if perm is not None and perm.size != rows * width:
            raise ValueError(f"a permutation of {perm.size} for {rows * width} pixels")
    except (KeyError, TypeError, ValueError) as err:
        raise checkpoint.CheckpointError(f"{path}: bad task description: {err}") from err
    return task, (rows, width)


def network_from(path: str, stored: dict[str, Array], meta: dict[str, Any]) -> SequenceClassifier:
    """The network a checkpoint's metadata describes, its parameters assigned (validated
    first). ``checkpoint.load`` has already checked every array against that description, so
    building the model allocates no more than the file really held."""
    described = checkpoint.model_description(path, meta)
    model = SequenceClassifier(
        described["input_size"],
        described["hidden_size"],
        described["num_classes"],
        num_layers=described["num_layers"],
        bidirectional=described["bidirectional"],
        dropout=described["dropout"],
    )
    # lstmcore 0.1 wrote one bias under other names: the same model under today's names
    checkpoint.assign_params(path, upgrade_v01_params(stored), model.params)
    return model


def load_network(path: str | os.PathLike[str]) -> SequenceClassifier:
    """The network stored in a checkpoint, without its task (see :func:`load`)."""
    stored, _, meta, _ = checkpoint.load(path)
    return network_from(str(path), stored, meta)


def load(path: str | os.PathLike[str], precision: str | None = None) -> Classifier:
    """The trained classifier in a checkpoint (``best.npz`` or ``last.npz`` of a run).

    ``precision``: None / "fp32" (float32) or "bf16" (bf16-rounded GEMM operands, see
    :mod:`lstmcore.ops`); checkpoints hold float32 parameters whatever precision trained them,
    so any model evaluates in either (``classifier.network.precision`` can change later too).

    Raises :class:`lstmcore.checkpoint.CheckpointError` (a ValueError) with one line naming the
    file when it is missing, not a checkpoint, or does not describe a consistent model; a bad
    ``precision`` is a ValueError naming it.
    """
    ops.check_precision(precision, np.dtype(np.float32))  # before the file is read
    stored, _, meta, other = checkpoint.load(path)
    network = network_from(str(path), stored, meta)
    network.precision = precision
    task, shape = task_from(path, meta, other, int(network.config["input_size"]))
    return Classifier(network, task, shape, str(path))
