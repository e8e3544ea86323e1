"""The library's one table of named distributed ops, read once from the library itself.

``torch.ops.dilated_attention.named_op_table()`` returns the rows of the loaded build, a dict
each: ``{"name", "signature", "backend", "contract", "deprecated_class", "deprecation_warning"}``.
Each distributed class names its op (``OP_NAME``) and takes the op's backend, contract and
deprecation notice from its row, so the package keeps no second copy of them. A library built
with ``-DDILATED_ATTENTION_WITHOUT_DEPRECATED=ON`` has no deprecated rows: constructing a class
whose op the build leaves out raises a RuntimeError that says so.
"""

import functools
from types import MappingProxyType
from typing import Mapping

import torch

from . import _library

WITHOUT_DEPRECATED_OPTION = "DILATED_ATTENTION_WITHOUT_DEPRECATED"


@functools.lru_cache(maxsize=None)
def rows() -> Mapping[str, Mapping[str, object]]:
    """The table of this build: op name -> its row (read-only), in the library's order."""
    _library.load_library()
    try:
        table = torch.ops.dilated_attention.named_op_table()
    except (AttributeError, RuntimeError) as error:
        raise RuntimeError(
            f"dilated_attention_pytorch: the op library at {_library.library_path()} has no "
            f"named_op_table op (it predates this package); rebuild it from this checkout"
        ) from error
    return MappingProxyType(
        {row["name"]: MappingProxyType(dict(row)) for row in table})


def row(op_name: str, signature: str, user: str) -> Mapping[str, object]:
    """The row of `op_name`, whose inputs must be `signature`; `user` (a class name) is named in
    the error when this build has no such op."""
    table = rows()
    found = table.get(op_name)
    if found is None:
        recommended = ", ".join(name for name, r in table.items() if r["deprecated_class"] is None)
        raise RuntimeError(
            f"{user} runs the op {op_name!r}, which this build of {_library.LIBRARY_NAME} "
            f"({_library.library_path()}) leaves out: a library configured with "
            f"-D{WITHOUT_DEPRECATED_OPTION}=ON has none of the deprecated all_gather ops. "
            f"The distributed ops of this build: {recommended}"
        )
    if found["signature"] != signature:
        raise RuntimeError(
            f"{user} calls {op_name!r} with {signature} inputs, but the library's table says its "
            f"signature is {found['signature']!r}: the package and the library do not match"
        )
    return found
