"""The header ranks exchange before a gather: sizes, and what they must agree on.

Each rank encodes its header as one fixed-length list of int64 words; one all-gather
gives every rank every header, and :func:`check_headers` then raises the same
``ValueError`` on every rank, or on none. Nothing here communicates (see
:func:`nodulebench.distributed.gather_sizes`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

# Layout: dtype code, ndim, the sizes padded to MAX_NDIM, then one slot per agreed field.
# Fixed length, so that ranks whose calls differ in anything (even in the tensor's rank)
# still meet in one all-gather. A slot holds a digest of the field's canonical text
# ``name=value`` (what is compared) and its first bytes (what the message shows).
MAX_NDIM = 8
_MAX_FIELDS = 16
_TEXT_WORDS = 4
_SLOT_WORDS = 1 + _TEXT_WORDS
HEADER_WORDS = 2 + MAX_NDIM + _MAX_FIELDS * _SLOT_WORDS
_ABANDONED = -1  # the ndim word of a rank that joins the exchange only to bow out
_DTYPES = (
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.complex64,
    torch.complex128,
)


def _dtype_code(dtype: torch.dtype) -> int:
    return _DTYPES.index(dtype) if dtype in _DTYPES else len(_DTYPES)


def _canonical(name: str, value: object) -> str:
    """``value`` as text that is equal on two ranks exactly when the values are equal."""
    if value is None or isinstance(value, bool | str):
        return repr(value)
    if isinstance(value, int):
        # 1 and 1.0 configure a loss alike; integers beyond 2**53 keep their digits.
        return repr(float(value)) if abs(value) <= 2**53 else repr(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, torch.Tensor):
        return _canonical_tensor(value)
    raise TypeError(
        f"agree[{name!r}] must be None, a bool, an int, a float, a str or a tensor; "
        f"got {type(value).__name__}"
    )


def _canonical_tensor(value: torch.Tensor) -> str:
    """A tensor's value as text: a one-element tensor as its number, others by digest.

    Reads the tensor (one host synchronisation): the exchange synchronises anyway.
    """
    data = value.detach()
    if data.numel() == 1 and not data.is_complex():
        number = data.reshape(()).item()
        return _canonical("tensor", float(number) if not isinstance(number, bool) else number)
    raw = data.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    digest = hashlib.blake2b(raw, digest_size=8).hexdigest()
    return f"tensor{tuple(data.shape)}:{data.dtype}:{digest}"


def agreed_fields(agree: Mapping[str, object] | None) -> list[str]:
    """The ``name=value`` texts of ``agree``, validated, in the caller's order."""
    if agree is None:
        return []
    if not isinstance(agree, Mapping):
        raise TypeError(
            f"agree must be a mapping of names to values or None; got {type(agree).__name__}"
        )
    if len(agree) > _MAX_FIELDS:
        raise ValueError(f"agree must hold at most {_MAX_FIELDS} fields; got {len(agree)}")
    fields = []
    for name, value in agree.items():
        if not isinstance(name, str):
            raise TypeError(f"agree's keys must be strings; got {type(name).__name__}")
        if not name or "=" in name:
            raise ValueError(f"agree's keys must be non-empty and without '='; got {name!r}")
        fields.append(f"{name}={_canonical(name, value)}")
    return fields


def _digest(text: str) -> int:
    raw = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(raw, "little", signed=True)


def _encode_field(text: str) -> list[int]:
    shown = text.encode()[: 8 * _TEXT_WORDS].ljust(8 * _TEXT_WORDS, b"\0")
    words = [
        int.from_bytes(shown[i : i + 8], "little", signed=True) for i in range(0, len(shown), 8)
    ]
    return [_digest(text), *words]


def _decode_field(slot: list[int]) -> str:
    """The text of a field as far as it travelled, ``...`` where it was cut."""
    if slot[0] == 0:
        return ""
    raw = b"".join(word.to_bytes(8, "little", signed=True) for word in slot[1:])
    text = raw.rstrip(b"\0").decode(errors="ignore")
    return text if _digest(text) == slot[0] else text + "..."


def encode_header(tensor: torch.Tensor, fields: list[str]) -> list[int]:
    """This rank's header: ``tensor``'s dtype and shape, and the texts of ``fields``."""
    shape = list(tensor.shape) + [0] * (MAX_NDIM - tensor.ndim)
    slots = [word for text in fields for word in _encode_field(text)]
    padding = [0] * (_SLOT_WORDS * (_MAX_FIELDS - len(fields)))
    return [_dtype_code(tensor.dtype), tensor.ndim, *shape, *slots, *padding]


def check_headers(name: str, rows: list[list[int]]) -> None:
    """Raise the same ``ValueError`` on every rank if the ranks' headers disagree.

    The agreed fields are compared first (what was called, and with what), then the
    shapes and the dtypes: ranks that pass a reference set and ranks that do not name
    the reference set, not the shapes of two different tensors.
    """
    abandoned = [str(r) for r, row in enumerate(rows) if row[1] == _ABANDONED]
    if abandoned:
        who = f"rank {abandoned[0]}" if len(abandoned) == 1 else f"ranks {', '.join(abandoned)}"
        raise ValueError(
            f"{who} rejected {'its' if len(abandoned) == 1 else 'their'} own input before "
            "the gather (the error raised there says why), so no rank can gather"
        )
    for start in range(2 + MAX_NDIM, HEADER_WORDS, _SLOT_WORDS):
        if len({row[start] for row in rows}) == 1:
            continue
        texts = [_decode_field(row[start : start + _SLOT_WORDS]) for row in rows]
        fields = {text.partition("=")[0] for text in texts}
        if len(fields) == 1:
            field = fields.pop()
            listed = ", ".join(
                f"rank {r}: {text.partition('=')[2]}" for r, text in enumerate(texts)
            )
            raise ValueError(f"every rank must pass the same {field}; got {listed}")
        listed = ", ".join(f"rank {r}: {text or 'nothing'}" for r, text in enumerate(texts))
        raise ValueError(f"every rank must pass the same fields in the same order; got {listed}")
    rank_shapes = [tuple(row[2 : row[1] + 2]) for row in rows]
    if len({shape[1:] for shape in rank_shapes}) > 1:
        listed = ", ".join(f"rank {r}: {shape}" for r, shape in enumerate(rank_shapes))
        raise ValueError(
            f"{name} must have the same shape on every rank except for the first "
            f"dimension; got {listed}"
        )
    if len({row[0] for row in rows}) > 1:
        dtypes = [str(_DTYPES[row[0]]) if row[0] < len(_DTYPES) else "other" for row in rows]
        listed = ", ".join(f"rank {r}: {dtype}" for r, dtype in enumerate(dtypes))
        raise ValueError(f"{name} must have the same dtype on every rank; got {listed}")


def abandoned_header() -> list[int]:
    """The header of a rank that joins the exchange only to say it cannot take part."""
    header = [0] * HEADER_WORDS
    header[1] = _ABANDONED
    return header
