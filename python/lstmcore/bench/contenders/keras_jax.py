"""Keras 3 on JAX (jit-compiled), the one-layer classifier only, and only at all cores: XLA
sizes its pool once per process."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from lstmcore.bench.cases import CLASSES, Case
from lstmcore.bench.contenders.common import Builder, RefusedError, Step, single_layer_classifier

REQUIRES = ("keras", "jax")


def _model(case: Case) -> Any:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    if keras.backend.backend() != "jax":
        raise RefusedError(f"keras uses the {keras.backend.backend()} backend, not jax: skipped")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((case.T, case.I)), keras.layers.LSTM(case.H), keras.layers.Dense(CLASSES)]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        jit_compile=True,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def train(case: Case, rng: np.random.Generator, threads: int) -> Step:
    single_layer_classifier(case, "keras")
    model = _model(case)
    x = rng.random((case.B, case.T, case.I), dtype=np.float32)
    y = rng.integers(0, CLASSES, case.B)

    def step() -> None:
        model.train_on_batch(x, y)

    return step


def infer(case: Case, rng: np.random.Generator, threads: int) -> Step:
    model = _model(case)
    x = rng.random((case.B, case.T, case.I), dtype=np.float32)

    def step() -> None:
        model.predict_on_batch(x)

    return step


BUILDERS: dict[str, dict[str, Builder]] = {"train": {"keras": train}, "infer": {"keras": infer}}
