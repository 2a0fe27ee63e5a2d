"""How a trained model's test result is shown: the confusion matrix and the accuracy line.

Shared by the trainer (``lstmcore.train``) and ``lstmcore.evaluate``, so both print exactly the
same last line: ``test accuracy: XX.XX% (correct/total)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["accuracy_line", "confusion_matrix", "format_confusion"]


def confusion_matrix(
    labels: NDArray[Any], predicted: NDArray[Any], classes: int
) -> NDArray[np.int64]:
    """m[true, predicted] counts."""
    m = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(m, (labels, predicted), 1)
    return m


def format_confusion(m: NDArray[np.int64]) -> str:
    width = max(5, len(str(m.max(initial=0))) + 1)
    head = "true\\pred" + "".join(f"{c:>{width}}" for c in range(m.shape[1]))
    rows = [f"{r:>9}" + "".join(f"{v:>{width}}" for v in m[r]) for r in range(m.shape[0])]
    return "\n".join([head, *rows])


def accuracy_line(correct: int, total: int) -> str:
    return f"test accuracy: {100.0 * correct / max(total, 1):.2f}% ({correct}/{total})"
