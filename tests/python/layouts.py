"""Views of a flat float64 leaf as [B, N, H, D] in every stride pattern torch allows (each
function takes the leaf and the shape): size-1 dimensions with odd strides, stride 0, storage
offsets, overlapping heads, permutations. Shared by the layout and the property tests."""


def _sequence_first(base, shape):
    """[N, B, H, D] storage seen as [B, N, H, D]."""
    b, n, h, d = shape
    return base[: n * b * h * d].view(n, b, h, d).transpose(0, 1)


def _sliced_sequence_first(base, shape):
    """Rows 1..N of a longer sequence-first tensor: a storage offset as well."""
    b, n, h, d = shape
    return base[: (n + 2) * b * h * d].view(n + 2, b, h, d)[1 : n + 1].transpose(0, 1)


def _odd_size_one_strides(base, shape):
    """Contiguous addressing, but every size-1 dimension reports stride 977."""
    b, n, h, d = shape
    contiguous = [n * h * d, h * d, d, 1]
    strides = [977 if size == 1 else st for size, st in zip(shape, contiguous)]
    return base.as_strided(shape, strides, 3)


def _expanded_rows(base, shape):
    """One row per batch repeated over the sequence (stride 0)."""
    b, n, h, d = shape
    return base[: b * h * d].view(b, 1, h, d).expand(b, n, h, d)


def _expanded_batch(base, shape):
    b, n, h, d = shape
    return base[: n * h * d].view(1, n, h, d).expand(b, n, h, d)


def _overlapping_heads(base, shape):
    """Heads that share storage: head h reads features h .. h + D - 1 of its row."""
    b, n, h, d = shape
    return base.as_strided(shape, ((n * (h + d)), h + d, 1, 1), 1)


def _permuted(base, shape):
    b, n, h, d = shape
    return base[: b * n * h * d].view(d, h, n, b).permute(3, 2, 1, 0)


LAYOUTS = {
    "sequence_first": _sequence_first,
    "sliced_sequence_first": _sliced_sequence_first,
    "odd_size_one_strides": _odd_size_one_strides,
    "expanded_rows": _expanded_rows,
    "expanded_batch": _expanded_batch,
    "overlapping_heads": _overlapping_heads,
    "permuted": _permuted,
}


def storage_size(shape):
    """A flat leaf long enough for every layout of `shape`."""
    b, n, h, d = shape
    return 4 * (b + 2) * (n + 2) * (h + d + 1) * (d + 1) + 8
