"""What every contender module shares: a step, the builder that makes one, and the refusal."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lstmcore.bench.cases import Case

Step = Callable[[], None]  # one timed step: a training step, an inference or a stream step
# (case, the contender's own seeded generator, the row's threads) -> its step, built and warm
Builder = Callable[[Case, np.random.Generator, int], Step]


class RefusedError(Exception):
    """A contender that cannot run a case faithfully (its numbers disagree, wrong backend)."""


def single_layer_classifier(case: Case, contender: str) -> None:
    """RefusedError unless the case is the one-layer, one-direction classifier that the
    contender's builder implements."""
    if case.layers != 1 or case.bidirectional or case.every_step:
        raise RefusedError(
            f"{contender} runs the one-layer classification cases only, not {case.name}"
        )
