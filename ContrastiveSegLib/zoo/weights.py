"""Weights files: safetensors tensors plus one JSON header, never pickle.

The header (safetensors metadata key ``contrastiveseg``) says what the file is (``kind``: ``model`` for a
fine-tuned segmentation network, ``encoder`` for a pretrained encoder), how to rebuild the network, what input it
expects and, for models, the label values its classes stand for.

Every loader reads a file in two steps: :func:`read_weights_header` (the header, checked field by field by
:func:`check_header`, and the tensors' shapes, no data), then, once :func:`check_tensors` has found the shapes to
fit what the header declares, :func:`read_tensors`. A crafted header is refused with one line before anything is
built or allocated.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import NamedTuple

import torch

from ContrastiveSegLib.errors import InputError
from ContrastiveSegLib.io.annotations import IGNORE
from ContrastiveSegLib.io.volume import IncompleteWriteError, atomic_write
from ContrastiveSegLib.io.files import check_input_file

HEADER_KEY = "contrastiveseg"
FORMAT_VERSION = 1


def save_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], header: dict) -> None:
    """Write ``state_dict`` and ``header`` (JSON-serialisable) atomically to a .safetensors file, read back and
    compared before it replaces anything; OutputError (one line) when it cannot be written completely."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
    metadata = {HEADER_KEY: json.dumps({**header, "format_version": FORMAT_VERSION})}

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as error:  # "Error while serializing: I/O error: No space left on device (os error 28)"
            raise IncompleteWriteError(str(error).splitlines()[0][:200]) from None

    atomic_write(path, write, verify=lambda tmp: _verify_weights(tmp, tensors, metadata))


def _verify_weights(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Read the file just written back and compare it with what was meant to be written: a short write (full disk,
    network share) must not be renamed into place as a model."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            same = (handle.metadata() == metadata and set(handle.keys()) == set(tensors)
                    and all(_same(handle.get_tensor(name), tensor) for name, tensor in tensors.items()))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise IncompleteWriteError(f"the file written does not read back ({str(error).splitlines()[0][:120]})") \
            from None
    if not same:
        raise IncompleteWriteError("the file written does not read back as what was written")


def _same(read: torch.Tensor, written: torch.Tensor) -> bool:
    """Equal values, NaN where NaN was written (a diverged run's weights are still saved as they are)."""
    if read.dtype != written.dtype or read.shape != written.shape:
        return False
    if torch.equal(read, written):
        return True
    return read.is_floating_point() and torch.equal(read.isnan(), written.isnan()) and \
        torch.equal(read.nan_to_num(0.0), written.nan_to_num(0.0))


class TensorInfo(NamedTuple):
    """What the file's header says of one tensor: safetensors dtype ("F32", "I64", ...) and shape."""

    dtype: str
    shape: tuple[int, ...]


def read_weights_header(path: str | os.PathLike, *, kind: str | None = None,
                        what: str = "weights file") -> tuple[dict, dict[str, TensorInfo]]:
    """The JSON header of a weights file, checked by :func:`check_header`, and each tensor's dtype and shape, read
    without reading any tensor data; InputError (one line) if the file is missing, corrupt, truncated, not ours, of
    another ``kind`` or its header is unusable.

    Loaders compare these shapes with what the header declares before they build anything: a header that declares
    a huge network must be refused at the cost of reading it, not of allocating the network.
    """
    from safetensors import SafetensorError, safe_open

    path = check_input_file(path, what, hint="give a .safetensors file")
    where = f"{what} {path}"
    try:
        with safe_open(str(path), framework="pt") as handle:  # checks the layout: offsets, sizes, truncation
            metadata = handle.metadata() or {}
        tensors = _tensor_table(path)
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        raise InputError(f"{where} is not a readable safetensors file ({str(error).splitlines()[0][:120]})") \
            from None
    if HEADER_KEY not in metadata:
        raise InputError(f"{where} was not written by ContrastiveSeg (no '{HEADER_KEY}' header)")
    try:
        header = json.loads(metadata[HEADER_KEY])
    except (ValueError, RecursionError):  # bad JSON, an integer of thousands of digits, nesting beyond the stack
        raise InputError(f"{where} has a corrupt header") from None
    if not isinstance(header, dict):
        raise InputError(f"{where} has a corrupt header (not a JSON object)")
    if kind is not None and header.get("kind") != kind:
        found = printable(header.get("kind"), 40) if isinstance(header.get("kind"), str) else "unknown"
        raise InputError(f"{where} holds a {found}, not a {kind}")
    check_header(header, where)
    return header, tensors


def _tensor_table(path: Path) -> dict[str, TensorInfo]:
    """Each tensor's dtype and shape from the safetensors header (8-byte little-endian length, then JSON), which
    safe_open has just validated; read directly so that no tensor data is touched, with any safetensors version."""
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        table = json.loads(handle.read(length))
    return {name: TensorInfo(str(entry["dtype"]), tuple(int(n) for n in entry["shape"]))
            for name, entry in table.items() if name != "__metadata__"}


def read_tensors(path: str | os.PathLike, *, what: str = "weights file") -> dict[str, torch.Tensor]:
    """Every tensor of a weights file (call :func:`read_weights_header` first); InputError (one line) when the
    data cannot be read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise InputError(f"{what} {path} is not a readable safetensors file ({str(error).splitlines()[0][:120]})") \
            from None
    check_finite_tensors(tensors, f"{what} {path}")
    return tensors


def check_finite_tensors(tensors: dict[str, torch.Tensor], where: str) -> None:
    """InputError naming the first tensor holding NaN or infinite values: such weights (a diverged run's, a
    damaged file) predict all background or make training diverge at its first step, so they are refused when
    loaded, not used."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise InputError(f"{where} holds {bad} NaN or infinite values in tensor '{printable(name)}'; its "
                             "weights are unusable (a diverged or damaged run?)")


def load_weights(path: str | os.PathLike, *, kind: str | None = None,
                 what: str = "weights file") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a weights file written by :func:`save_weights`: its tensors and its checked header; InputError (one
    line) if it is missing, corrupt, truncated, not ours, of another ``kind`` or its header is unusable."""
    header, _ = read_weights_header(path, kind=kind, what=what)
    return read_tensors(path, what=what), header


# ------------------------------------------------------------------------------------------------ header checks
# Bounds on what a header may declare. Generous for any network this library trains (widths 8-128, 2-10 classes,
# one neighbour slice) and small enough that no crafted header builds a network of gigabytes.
MAX_FEATURES = 1024  # channels per encoder level and of the last decoder level
MAX_CLASSES = IGNORE - 1  # background included; the label value IGNORE (255) marks unannotated voxels
MAX_LABEL_VALUE = 2**64 - 1  # the widest output type (uint64)
MAX_CONTEXT = 8  # neighbour slices on each side of the 2.5D input
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
INTEGER_DTYPES = frozenset({"I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64"})


def check_header(header: dict, where: str) -> dict:
    """Check the type and range of every field a loader reads from a header of its ``kind`` ("model", "encoder",
    "pretrain-checkpoint"; other kinds only get the common fields); InputError with one line naming the first bad
    field. Returns ``header``. Loaders may then convert its fields without further checks.

    Fields whose values must agree are checked together too: a model's ``num_classes`` and its label values, and
    its (or an encoder's) input channels and input spec.
    """
    fields = _Fields(header, where)
    version = fields.integer("format_version", 1, None, required=False)
    if version is not None and version > FORMAT_VERSION:
        raise InputError(f"{where} was written by a newer ContrastiveSeg (format {version}; this version reads "
                         f"format {FORMAT_VERSION} and older): update ContrastiveSeg")
    kind = header.get("kind")
    if kind == "model":
        _check_model(fields)
    elif kind == "encoder":
        _check_encoder(fields)
    elif kind == "pretrain-checkpoint":
        _check_checkpoint(fields)
    return header


def _check_model(fields: "_Fields") -> None:
    network = fields.section("network")
    classes = network.integer("num_classes", 2, MAX_CLASSES)
    channels = network.integer("in_channels", 1, None)
    network.widths("features")
    network.integer("decoder_features", 1, MAX_FEATURES)
    network.choice("norm", _norms(), required=False)
    network.integer("decoders", 1, 2, required=False)
    spec = fields.input_spec("input")
    if channels != spec.in_channels:
        raise InputError(f"{fields.where}: header field 'network.in_channels' is {channels}, but its input spec "
                         f"{spec.to_dict()} gives {spec.in_channels} channels")
    fields.label_values("label_values", classes)
    fields.integer("axis", 0, 2)
    fields.numbers("spacing", 3, positive=True)
    fields.text("encoder", required=False)


def _check_encoder(fields: "_Fields") -> None:
    channels = fields.integer("input_channels", 1, None, required=False)
    fields.widths("features", required=False)
    fields.choice("norm", _norms(), required=False)
    if "network" in fields.header:  # an older layout: the widths and channels under "network"
        network = fields.section("network")
        legacy = network.integer("in_channels", 1, None, required=False)
        channels = legacy if channels is None else channels
        network.widths("features", required=False)
    spec = fields.input_spec("input", required=False)
    if spec is not None and channels is not None and channels != spec.in_channels:
        raise InputError(f"{fields.where}: header field 'input_channels' is {channels}, but its input spec "
                         f"{spec.to_dict()} gives {spec.in_channels} channels")
    fields.text("method", required=False)
    fields.section("method_params", required=False)
    fields.integer("steps", 0, None, required=False)
    fields.numbers("seconds", None, required=False)
    fields.integer("axis", 0, 2, required=False)


def _check_checkpoint(fields: "_Fields") -> None:
    fields.text("method")
    fields.section("params", required=False)
    fields.widths("features")
    fields.choice("norm", _norms())
    fields.input_spec("input")
    fields.integer("step", 0, None, required=False)
    fields.numbers("seconds", None, required=False)
    fields.integer("seed", None, None, required=False)
    fields.integer("batch_size", 1, None, required=False)
    optimizer = fields.section("optimizer", required=False)
    if optimizer is not None:
        groups = optimizer.header.get("param_groups")
        if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
            optimizer.fail("param_groups", "must be a non-empty list of objects", groups)
        for index, group in enumerate(groups):
            params = group.get("params")
            if not isinstance(params, list) or not all(_is_int(p) and p >= 0 for p in params):
                optimizer.fail(f"param_groups[{index}].params", "must be a list of parameter indices", params)
        scalars = optimizer.section("scalars", required=False)
        for key, values in ({} if scalars is None else scalars.header).items():
            if not (key.isascii() and key.isdigit()) or not isinstance(values, dict):
                scalars.fail(key, "must map a parameter index to an object", values)
            for name, value in values.items():  # per-parameter state that is no tensor: a count, or None
                if value is not None and not _is_number(value):
                    scalars.fail(f"{key}.{name}", "must be a finite number or null", value)


def _norms() -> tuple[str, ...]:
    from ContrastiveSegLib.networks.unet import NORMS

    return tuple(NORMS)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no count


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def printable(name: str, limit: int = 80) -> str:
    """A name from a file (a tensor's, a header key) as it may appear in a one-line message: control characters
    escaped, cut to ``limit`` characters."""
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(name))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _shown(value) -> str:
    """A header value as JSON (NaN as NaN), cut to fit the one-line message."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Fields:
    """Typed reads of one header object (or a section of it), each refusing a bad value with one line that names
    the field by its path ("network.features")."""

    def __init__(self, header: dict, where: str, prefix: str = ""):
        self.header, self.where, self.prefix = header, where, prefix

    def fail(self, name: str, problem: str, value) -> None:
        raise InputError(f"{self.where}: header field '{printable(self.prefix + name)}' {problem}, "
                         f"got {_shown(value)}")

    def _get(self, name: str, required: bool):
        if name not in self.header:
            if required:
                raise InputError(f"{self.where}: header field '{self.prefix}{name}' is missing")
            return _MISSING
        return self.header[name]

    def section(self, name: str, required: bool = True) -> "_Fields | None":
        value = self._get(name, required)
        if value is _MISSING:
            return None
        if not isinstance(value, dict):
            self.fail(name, "must be an object", value)
        return _Fields(value, self.where, f"{self.prefix}{name}.")

    def integer(self, name: str, low: int | None, high: int | None, required: bool = True) -> int | None:
        value = self._get(name, required)
        if value is _MISSING:
            return None
        if not _is_int(value) or (low is not None and value < low) or (high is not None and value > high):
            self.fail(name, _integer_range(low, high), value)
        return value

    def numbers(self, name: str, count: int | None, *, positive: bool = False, required: bool = True):
        """``count`` finite numbers (None: one number, not a list); >= 0, or > 0 when ``positive``."""
        value = self._get(name, required)
        if value is _MISSING:
            return None
        items = [value] if count is None else value
        sign = "> 0" if positive else ">= 0"
        if (count is not None and (not isinstance(value, list) or len(value) != count)) or \
                not all(_is_number(v) and (v > 0 if positive else v >= 0) for v in items):
            self.fail(name, f"must be a finite number {sign}" if count is None else
                      f"must be {count} finite numbers {sign}", value)
        return value

    def widths(self, name: str, required: bool = True) -> list[int] | None:
        value = self._get(name, required)
        if value is _MISSING:
            return None
        if not isinstance(value, list) or len(value) != 5 or not all(_is_int(v) and 1 <= v <= MAX_FEATURES
                                                                      for v in value):
            self.fail(name, f"must be 5 integer widths from 1 to {MAX_FEATURES}", value)
        return value

    def text(self, name: str, required: bool = True) -> str | None:
        value = self._get(name, required)
        if value is _MISSING:
            return None
        # A name or a path (the encoder a model started from may be the user's file): one line, as messages and
        # the run's summary show it.
        if not isinstance(value, str) or not value or len(value) > 4096 or "\n" in value or "\r" in value:
            self.fail(name, "must be a one-line name", value)
        # Shown in messages and the run's summary: terminal escape codes and other control characters escaped.
        self.header[name] = value = printable(value, 4096)
        return value

    def choice(self, name: str, choices: tuple[str, ...], required: bool = True) -> str | None:
        value = self._get(name, required)
        if value is _MISSING:
            return None
        if value not in choices or not isinstance(value, str):
            self.fail(name, f"must be one of {', '.join(choices)}", value)
        return value

    def input_spec(self, name: str, required: bool = True):
        """The input spec (:class:`~ContrastiveSegLib.data.slices.InputSpec`) stored under ``name``."""
        from ContrastiveSegLib.data.slices import InputSpec

        spec = self.section(name, required)
        if spec is None:
            return None
        context = spec.integer("context", 0, MAX_CONTEXT)
        coordinates = spec._get("coordinates", True)
        if not isinstance(coordinates, bool):
            spec.fail("coordinates", "must be true or false", coordinates)
        window = spec._get("window", False)
        if window is _MISSING:
            return InputSpec(context=context, coordinates=coordinates)
        # Quantiles of the scan's intensities: a reversed or empty window maps every voxel to one value.
        if not isinstance(window, list) or len(window) != 2 or not all(_is_number(v) for v in window) or \
                not 0.0 <= window[0] < window[1] <= 1.0:
            spec.fail("window", "must be two quantiles low < high between 0 and 1", window)
        return InputSpec(context=context, coordinates=coordinates, window=(float(window[0]), float(window[1])))

    def label_values(self, name: str, classes: int) -> list[int]:
        value = self._get(name, True)
        if not isinstance(value, list) or not all(_is_int(v) for v in value):
            self.fail(name, "must be a list of integers", value)
        if len(value) != classes:
            self.fail(name, f"must list one value per class (network.num_classes = {classes})", value)
        if value[0] != 0 or any(b <= a for a, b in zip(value, value[1:])):
            self.fail(name, "must start with background 0 and increase", value)
        if value[-1] > MAX_LABEL_VALUE:
            self.fail(name, f"must fit in 64 bits (at most {MAX_LABEL_VALUE})", value)
        if IGNORE in value:
            self.fail(name, f"cannot hold {IGNORE} (it marks unannotated voxels)", value)
        return value


_MISSING = object()


def _integer_range(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"must be an integer from {low} to {high}"
    if low is not None:
        return f"must be an integer >= {low}"
    return "must be an integer"


def check_tensors(where: str, found: dict[str, TensorInfo], expected: dict[str, torch.Tensor],
                  prefix: str = "", *, against: str = "the network its header declares") -> None:
    """Compare a file's tensors (``found``, from :func:`read_weights_header`; only names starting with ``prefix``
    are looked at, without it) with what the module they are meant for holds (``expected``: its state dict, which
    may live on the meta device). InputError (one line) for a missing or unexpected name, another shape, or
    integer weights where floating-point ones belong: ``load_state_dict`` would cast int8 weights to float without
    a word and the network would segment nothing. ``against`` names what ``expected`` is, for the message."""
    found = {name[len(prefix):]: info for name, info in found.items() if name.startswith(prefix)}
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        first = f"no tensor '{prefix}{missing[0]}'" if missing else \
            f"an unexpected tensor '{printable(prefix + unexpected[0])}'"
        raise InputError(f"{where} does not match {against}: {first} ({len(missing)} "
                         f"missing, {len(unexpected)} unexpected)")
    for name, tensor in expected.items():
        info = found[name]
        if info.shape != tuple(tensor.shape):
            raise InputError(f"{where}: tensor '{prefix}{name}' has shape {list(info.shape)}, {against} needs "
                             f"{list(tensor.shape)}")
        allowed = FLOAT_DTYPES if tensor.is_floating_point() else INTEGER_DTYPES
        if info.dtype not in allowed:
            wanted = "floating-point" if tensor.is_floating_point() else "integer"
            raise InputError(f"{where}: tensor '{prefix}{name}' holds {info.dtype} values; it must be {wanted}")


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
