"""The deprecation notice of a deprecated op's class, as a real DeprecationWarning, once per class
per process. The text is the library's own (the ``deprecation_warning`` of the op's row in the
named-op table), the same the op name itself gives."""

import warnings
from typing import Mapping

_warned = set()


def warn_deprecated(row: Mapping[str, object]) -> None:
    """Warns with `row`'s notice if its op is deprecated. Call it from the class's ``__init__``:
    the warning is attributed to the code that constructs the class (stacklevel 3)."""
    class_name = row["deprecated_class"]
    if class_name is None or class_name in _warned:
        return
    _warned.add(class_name)
    warnings.warn(row["deprecation_warning"], DeprecationWarning, stacklevel=3)
