"""Checkpoints are read within a budget (issue 16, item 3), and a model reads exactly the images
it was trained on from a true stored permutation (item 11).

Every forged file must end in one CheckpointError line naming the file, with no traceback and no
allocation of what the file declares; the fuzz targets mutate real checkpoints (600 cases per
run in all) and accept either that error or a model that loads and predicts.
"""

from __future__ import annotations

import io
import json
import re
import tempfile
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from trained import trained_run

import lstmcore
from lstmcore.mnist import checkpoint
from lstmcore.mnist.model import Classifier, Task, make_permutation, task_record
from lstmcore.nn import SequenceClassifier

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
BUDGET = 16 * 2**20  # bytes: a checkpoint of the H=4 models here, read and run, needs < 1 MiB
WEIGHT_HH = "param/lstm.weight_hh_l0.npy"

# a real run of the trainer: Adam state, epoch order, RNG states, history and a permutation
TINY_RUN = (
    "--iters", "3", "--hidden", "4", "--batch-size", "16", "--train-subset", "200",
    "--val-size", "40", "--threads", "1", "--task", "permuted",
)  # fmt: skip


# ---- making and forging checkpoints ----------------------------------------------------------


def save_model(
    path: Path,
    task: Task | None = None,
    hidden: int = 4,
    **config: Any,
) -> Path:
    """A checkpoint as the trainer writes it (checkpoint.save with the task record)."""
    task = task or Task()
    net = SequenceClassifier(task.input_size((28, 28)), hidden, 10, **config)
    task_meta, arrays = task_record(task, (28, 28))
    checkpoint.save(path, net.params, {}, {"model": net.config, "task": task_meta}, arrays)
    return path


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def npy(shape: tuple[int, ...], descr: str, data: bytes = b"") -> bytes:
    """A .npy file whose header says ``shape`` and ``descr``, whatever ``data`` holds."""
    out = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue() + data


def npy_text(text: str) -> bytes:
    """The metadata member as checkpoint.save writes it: a 0-d unicode array."""
    out = io.BytesIO()
    np.lib.format.write_array(out, np.array(text))
    return out.getvalue()


def write_zip(
    path: Path,
    files: dict[str, bytes],
    methods: dict[str, int] | None = None,
    patch: Callable[[zipfile.ZipFile], None] | None = None,
) -> Path:
    """``files`` as a zip (stored unless ``methods`` says otherwise); ``patch`` may change
    the entries (flags, sizes, methods) before the central directory is written."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            method = (methods or {}).get(name, zipfile.ZIP_STORED)
            archive.writestr(name, data, compress_type=method)
        if patch is not None:
            patch(archive)
    return path


def data_offset(path: Path, name: str) -> int:
    """Where the (compressed) data of member ``name`` starts in the file."""
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        start = archive.getinfo(name).header_offset
    name_len, extra_len = np.frombuffer(raw[start + 26 : start + 30], "<u2")
    return start + 30 + int(name_len) + int(extra_len)


def outcome(path: Path) -> tuple[str | None, int]:
    """(the CheckpointError's message or None after a load and a prediction, peak bytes)."""
    tracemalloc.start()
    try:
        model = lstmcore.load(path)
        rows, cols = model.image_shape
        batch = 2 if rows * cols <= 4096 else 0  # a forged, huge image shape: run the empty batch
        probs = model.predict_proba(np.zeros((batch, rows, cols), np.uint8))
        assert probs.shape == (batch, model.num_classes)
        message = None
    except checkpoint.CheckpointError as err:
        message = str(err)
        assert str(path) in message and "\n" not in message, message
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < BUDGET, f"peak {peak / 2**20:.1f} MiB"
    return message, peak


def fuzzed(path: Path) -> None:
    """:func:`outcome`, its kind recorded (pytest --hypothesis-show-statistics lists them)."""
    message, _ = outcome(path)
    reason = "loaded and predicted" if message is None else message[len(str(path)) + 2 :]
    event(re.split(r"[\d'\[(]", reason, maxsplit=1)[0][:60])  # the words before any value


def assert_refused(path: Path, match: str = "") -> str:
    message, _ = outcome(path)
    assert message is not None, f"{path} loaded"
    assert re.search(match, message), message
    return message


# ---- the reproductions of the issue, one test each ---------------------------------------------


def zip64_64gib(base: Path, out: Path) -> Path:
    """1 MB of data in a member whose header and zip64 size field both claim 64 GiB."""
    files = members(base)
    files[WEIGHT_HH] = npy((2**32, 4), "<f4", bytes(2**20))
    header = len(npy((2**32, 4), "<f4"))

    def claim(archive: zipfile.ZipFile) -> None:
        archive.getinfo(WEIGHT_HH).file_size = header + 2**36

    return write_zip(out, files, patch=claim)


BOMB = 2**28  # bytes of zeros: 256 MiB, deflated into 256 KiB
BOMB_HEADERS = {  # each declares exactly the bomb's size
    WEIGHT_HH: npy((2**16, 2**10), "<f4"),
    "meta.npy": npy((), f"<U{BOMB // 4}"),
    "bomb.npy": npy((BOMB,), "|u1"),
}


def zero_bomb(base: Path, out: Path, name: str) -> Path:
    """A deflated member of 256 MiB of zeros: a parameter, the metadata or a new member."""
    files = {k: v for k, v in members(base).items() if k != name}
    with zipfile.ZipFile(write_zip(out, files), "a") as archive:
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as member:
            member.write(BOMB_HEADERS[name])
            for _ in range(BOMB // 2**20):
                member.write(bytes(2**20))
    return out


def replace_members(base: Path, out: Path, **replaced: bytes) -> Path:
    return write_zip(out, {**members(base), **replaced})


def replace_meta(base: Path, out: Path, text: str, **replaced: bytes) -> Path:
    return replace_members(base, out, **{"meta.npy": npy_text(text), **replaced})


def big_model_meta(hidden: int, inputs: int) -> str:
    model = {"input_size": inputs, "hidden_size": hidden, "num_classes": 10}
    return json.dumps({"format": 1, "model": model})


def zero_byte_type(base: Path, out: Path) -> Path:
    """lstm.weight_ih_l0 and head.weight of element type |S0: 0 bytes whatever their shape, so
    the old size check passed and a model of hidden size 2000 was built from their shapes."""
    return replace_meta(
        base,
        out,
        big_model_meta(2000, 28),
        **{
            "param/lstm.weight_ih_l0.npy": npy((8000, 28), "|S0"),
            "param/head.weight.npy": npy((10, 2000), "|S0"),
        },
    )


def missing_weight_hh(base: Path, out: Path) -> Path:
    """A model of hidden size 2000 without its 64 MB lstm.weight_hh_l0 (a 160 KB file)."""
    h = 2000
    params = {
        "lstm.weight_ih_l0": np.zeros((4 * h, 1), np.float32),
        "lstm.bias_ih_l0": np.zeros(4 * h, np.float32),
        "lstm.bias_hh_l0": np.zeros(4 * h, np.float32),
        "head.weight": np.zeros((10, h), np.float32),
        "head.bias": np.zeros(10, np.float32),
    }
    model = {"input_size": 1, "hidden_size": h, "num_classes": 10}
    checkpoint.save(out, params, {}, {"model": model})
    return out


def corrupt_stream(base: Path, out: Path, method: int) -> Path:
    """lstm.weight_hh_l0 compressed, then its stream made invalid (not only its CRC): a deflate
    block of the reserved type 3; LZMA properties out of range."""
    path = write_zip(out, members(base), methods={WEIGHT_HH: method})
    raw = bytearray(path.read_bytes())
    start = data_offset(path, WEIGHT_HH)
    if method == zipfile.ZIP_DEFLATED:
        raw[start] = 0b111  # final block, type 3
    else:
        raw[start + 4] = 0xFF  # zip's LZMA: version (2), properties size (2), then lc/lp/pb
    path.write_bytes(bytes(raw))
    return path


def entry_flag(base: Path, out: Path, field: str, value: int) -> Path:
    """The central directory entry of lstm.weight_hh_l0 says encrypted, or compression method 9."""

    def forge(archive: zipfile.ZipFile) -> None:
        setattr(archive.getinfo(WEIGHT_HH), field, value)

    return write_zip(out, members(base), patch=forge)


FORGERIES: dict[str, Callable[[Path, Path], Path]] = {
    "zip64-size-64GiB": zip64_64gib,
    "zero-bomb-in-a-parameter": lambda base, out: zero_bomb(base, out, WEIGHT_HH),
    "zero-bomb-in-the-metadata": lambda base, out: zero_bomb(base, out, "meta.npy"),
    "zero-bomb-in-a-new-member": lambda base, out: zero_bomb(base, out, "bomb.npy"),
    "zero-byte-type-S0": zero_byte_type,
    "missing-weight_hh_l0": missing_weight_hh,
    "corrupt-deflate": lambda base, out: corrupt_stream(base, out, zipfile.ZIP_DEFLATED),
    "corrupt-lzma": lambda base, out: corrupt_stream(base, out, zipfile.ZIP_LZMA),
    "encrypted-flag": lambda base, out: entry_flag(base, out, "flag_bits", 0x1),
    "compression-method-9": lambda base, out: entry_flag(base, out, "compress_type", 9),
    "shape-2**64-by-0": lambda base, out: replace_members(
        base, out, **{WEIGHT_HH: npy((2**64, 0), "<f4")}
    ),
    "metadata-nested-100000-deep": lambda base, out: replace_meta(
        base, out, '{"format": 1, "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    ),
    "a-5000-digit-integer": lambda base, out: replace_meta(
        base, out, '{"format": 1, "big": 1' + "0" * 4999 + "}"
    ),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("base") / "small.npz")


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_a_forged_checkpoint_is_one_error_line_within_the_budget(
    base: Path, tmp_path: Path, forgery: str
) -> None:
    path = FORGERIES[forgery](base, tmp_path / "forged.npz")
    assert path.stat().st_size < 2 * 2**20  # small files: what they declare is never allocated
    assert_refused(path)


def test_a_missing_parameter_is_named_before_any_model_is_built(base: Path, tmp_path: Path) -> None:
    path = missing_weight_hh(base, tmp_path / "forged.npz")
    assert_refused(path, r"missing \['param/lstm\.weight_hh_l0'\]")


def test_a_forged_size_is_named_with_what_the_model_needs(base: Path, tmp_path: Path) -> None:
    path = zip64_64gib(base, tmp_path / "forged.npz")
    assert_refused(path, r"lstm\.weight_hh_l0 declares \(4294967296, 4\) float32, .*\(16, 4\)")


@pytest.mark.parametrize("module", ["evaluate", "predict", "export"])
def test_the_commands_give_one_line_for_a_forged_checkpoint(
    base: Path, tmp_path: Path, module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib

    path = zip64_64gib(base, tmp_path / "forged.npz")
    args = {
        "evaluate": [],
        "predict": [str(tmp_path / "x.png")],
        "export": [str(tmp_path / "x.onnx")],
    }
    if module != "evaluate":
        pytest.importorskip("PIL" if module == "predict" else "onnx")
    main = importlib.import_module(f"lstmcore.{module}").main
    assert main([str(path), *args[module]]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and len(err.splitlines()) == 1, err


# ---- the layout of every model shape and of lstmcore 0.1's files ------------------------------


@pytest.mark.parametrize(("layers", "bidirectional"), [(1, False), (2, True), (3, False)])
def test_every_model_shape_loads(tmp_path: Path, layers: int, bidirectional: bool) -> None:
    path = save_model(tmp_path / "m.npz", hidden=5, num_layers=layers, bidirectional=bidirectional)
    model = lstmcore.load(path)
    assert (model.network.lstm.num_layers, model.network.lstm.bidirectional) == (
        layers,
        bidirectional,
    )


def test_a_v01_file_loads_under_its_old_names(tmp_path: Path) -> None:
    net = SequenceClassifier(28, 4, 10, seed=3)
    p = net.params
    old = {k: v for k, v in p.items() if not k.startswith("lstm.")}
    old |= {"lstm.w_ih": p["lstm.weight_ih_l0"], "lstm.w_hh": p["lstm.weight_hh_l0"]}
    old["lstm.bias"] = p["lstm.bias_ih_l0"] + p["lstm.bias_hh_l0"]
    model = {k: net.config[k] for k in ("input_size", "hidden_size", "num_classes")}
    checkpoint.save(tmp_path / "old.npz", old, {}, {"model": model})
    images = np.random.default_rng(0).random((3, 28, 28), np.float32)
    got = lstmcore.load(tmp_path / "old.npz").predict_proba(images)
    np.testing.assert_allclose(
        got, Classifier(net, Task(), (28, 28)).predict_proba(images), atol=1e-6
    )


# ---- property-based: mutations of real checkpoints ---------------------------------------------


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The trainer's own last.npz and best.npz, and a rows model's checkpoint."""
    run = trained_run(tmp_path_factory, TINY_RUN)
    rows = save_model(tmp_path_factory.mktemp("rows") / "rows.npz")
    return {
        "last": (run / "last.npz").read_bytes(),
        "best": (run / "best.npz").read_bytes(),
        "rows": rows.read_bytes(),
    }


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def test_the_unmutated_seeds_load_and_predict(seeds: dict[str, bytes], scratch: Path) -> None:
    for name, data in seeds.items():
        path = scratch / f"{name}.npz"
        path.write_bytes(data)
        assert outcome(path)[0] is None


@settings(FUZZ, max_examples=200)
@given(case=st.data())
def test_flipped_and_truncated_bytes(
    seeds: dict[str, bytes], scratch: Path, case: st.DataObject
) -> None:
    data = bytearray(seeds[case.draw(st.sampled_from(sorted(seeds)))])
    flips = st.tuples(st.integers(0, len(data) - 1), st.integers(1, 255))
    for at, bits in case.draw(st.lists(flips, max_size=8)):
        data[at] ^= bits
    cut = case.draw(st.none() | st.integers(0, len(data)))
    path = scratch / "case.npz"
    path.write_bytes(bytes(data[:cut]))
    fuzzed(path)


# (offset, width) of the fields of the zip's records: flags, method, CRC, sizes, lengths, offsets
RECORDS = {
    b"PK\x03\x04": [(6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)],
    b"PK\x01\x02": [(8, 2), (10, 2), (16, 4), (20, 4), (24, 4), (28, 2), (30, 2), (42, 4)],
    b"PK\x05\x06": [(8, 2), (10, 2), (12, 4), (16, 4), (20, 2)],
    b"\x01\x00\x10\x00": [(4, 8), (12, 8)],  # a zip64 extra field: its two sizes
}
CLAIMS = [0, 1, 99, 2**16, 2**31, 2**32 - 1, 2**32, 2**36, 2**62]  # sizes, zip64 ones too
VALUES = [0, 1, 2, 8, 9, 12, 14, 99, 2**15, 2**16 - 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1]


def zip_fields(data: bytes) -> list[tuple[int, int]]:
    fields = []
    for signature, layout in RECORDS.items():
        at = data.find(signature)
        while at >= 0:
            fields += [
                (at + offset, width) for offset, width in layout if at + offset + width <= len(data)
            ]
            at = data.find(signature, at + 1)
    return fields


@pytest.mark.slow
@settings(FUZZ, max_examples=200)
@given(case=st.data())
def test_zip_header_fields_rewritten(
    seeds: dict[str, bytes], scratch: Path, case: st.DataObject
) -> None:
    data = bytearray(seeds[case.draw(st.sampled_from(sorted(seeds)))])
    fields = zip_fields(bytes(data))
    for _ in range(case.draw(st.integers(1, 3))):
        at, width = case.draw(st.sampled_from(fields))
        value = case.draw(st.sampled_from(VALUES) | st.integers(0, 2 ** (8 * width) - 1))
        data[at : at + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
    path = scratch / "case.npz"
    path.write_bytes(bytes(data))
    fuzzed(path)


DIMS = st.sampled_from([0, 1, 2, 4, 10, 16, 28, 784, 2**31, 2**32, 2**63, 2**64]) | st.integers(
    0, 40
)
SHAPES = st.lists(DIMS, max_size=3).map(tuple)
DESCRS = st.sampled_from(
    ["<f4", "<f8", ">f4", "<i8", "<i4", "|u1", "|S0", "|O", "<U8", "|V0", "<c8"]
)
JSON_VALUES = (
    st.none() | st.booleans() | st.sampled_from(VALUES) | st.integers(-5, 40) | st.floats()
    | st.text(max_size=5) | st.lists(st.integers(-2, 30), max_size=3)
)  # fmt: skip
META_PATHS = [
    ("format",), ("model",), ("model", "input_size"), ("model", "hidden_size"),
    ("model", "num_classes"), ("model", "num_layers"), ("model", "bidirectional"),
    ("model", "dropout"), ("model", "extra"), ("task",), ("task", "name"),
    ("task", "image_shape"),
]  # fmt: skip


METHODS = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]


def header_of(data: bytes) -> tuple[tuple[int, ...], str, bytes]:
    """(shape, descr, the data after the header) of a .npy member."""
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    read = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, _, dtype = read(f)
    return shape, dtype.str, data[f.tell() :]


def mutate_member(
    case: st.DataObject, files: dict[str, bytes], meta: dict[str, Any], name: str
) -> None:
    action = case.draw(st.sampled_from(["drop", "array", "header", "meta", "append"]))
    if action == "drop":
        files.pop(name, None)
    elif action == "array":  # any shape and type, any bytes
        data = case.draw(st.binary(max_size=300) | st.integers(0, 4096).map(bytes))
        files[name] = npy(case.draw(SHAPES), case.draw(DESCRS), data)
    elif action == "header" and name in files:  # the same data under another header
        shape, descr, data = header_of(files[name])
        files[name] = npy(
            case.draw(st.just(shape) | SHAPES), case.draw(st.just(descr) | DESCRS), data
        )
    elif action == "meta":  # one field of the metadata, made any JSON value
        *parents, key = case.draw(st.sampled_from(META_PATHS))
        node = meta
        for parent in parents:
            node = node.setdefault(parent, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node[key] = case.draw(JSON_VALUES)
        files["meta.npy"] = npy_text(json.dumps(meta))
    elif action == "append" and name in files:
        files[name] += case.draw(st.binary(min_size=1, max_size=64))


@pytest.mark.slow
@settings(FUZZ, max_examples=200)
@given(case=st.data())
def test_members_replaced_recompressed_or_resized(
    seeds: dict[str, bytes], scratch: Path, case: st.DataObject
) -> None:
    files = members_of(seeds[case.draw(st.sampled_from(sorted(seeds)))])
    meta = json.loads(str(np.load(io.BytesIO(files["meta.npy"]))))
    names = st.sampled_from([*sorted(files), "param/lstm.extra.npy", "bomb.npy"])
    for _ in range(case.draw(st.integers(1, 3))):
        mutate_member(case, files, meta, case.draw(names))
    entries = st.sampled_from(sorted(files))
    methods = case.draw(st.dictionaries(entries, st.sampled_from(METHODS)))
    fields = st.sampled_from(["file_size", "compress_size", "flag_bits"])
    claims = case.draw(st.lists(st.tuples(entries, fields, st.sampled_from(CLAIMS)), max_size=2))

    def claim(archive: zipfile.ZipFile) -> None:
        for name, field, value in claims:
            setattr(archive.getinfo(name), field, value % 2**16 if field == "flag_bits" else value)

    path = write_zip(scratch / "case.npz", files, methods, claim)
    fuzzed(path)


def members_of(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


# ---- item 11: the image shape and the stored permutation --------------------------------------


@pytest.mark.parametrize("rows", [0, 5, 27, 29, 10_000])
def test_a_rows_model_reads_exactly_the_image_shape_it_was_trained_on(
    base: Path, rows: int
) -> None:
    model = lstmcore.load(base)
    want = f"images: expected shape (B, 28, 28), got (2, {rows}, 28)"
    with pytest.raises(ValueError, match=re.escape(want)):
        model.predict(np.zeros((2, rows, 28), np.uint8))
    assert model.predict(np.zeros((2, 28, 28), np.uint8)).shape == (2,)


def permuted(tmp_path: Path, permutation: np.ndarray) -> Path:
    """A permuted-task checkpoint whose stored permutation is ``permutation``."""
    path = save_model(tmp_path / "permuted.npz", Task("permuted", make_permutation(784, 0)))
    files = members(path)
    out = io.BytesIO()
    np.lib.format.write_array(out, permutation)
    files["task.permutation.npy"] = out.getvalue()
    return write_zip(path, files)


@pytest.mark.parametrize("stored", ["floats", "a-repeated-index", "too-short"])
def test_a_stored_permutation_must_be_a_true_integer_permutation(
    tmp_path: Path, stored: str
) -> None:
    perm = make_permutation(784, 0)
    forged = {
        "floats": perm + 0.5,  # truncated to the right permutation by a cast
        "a-repeated-index": np.concatenate([perm[:-1], perm[:1]]),
        "too-short": perm[:-1],
    }[stored]
    path = permuted(tmp_path, forged)
    assert_refused(path, r"permutation")


def test_a_true_stored_permutation_is_applied(tmp_path: Path) -> None:
    perm = make_permutation(784, 0)
    model = lstmcore.load(permuted(tmp_path, perm))
    np.testing.assert_array_equal(model.task.permutation, perm)
    images = np.random.default_rng(1).random((3, 28, 28), np.float32)
    sequences = images.reshape(3, -1)[:, perm, None]
    np.testing.assert_allclose(model.logits(images), model.network.logits(sequences), atol=1e-6)
