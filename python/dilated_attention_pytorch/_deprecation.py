"""The deprecation notice of the all_gather implementations, as a real DeprecationWarning,
once per class per process."""

import warnings

MESSAGE = (
    "{name} is deprecated. This implementation uses all_gather which has poor performance "
    "characteristics. Please use RingDilatedAttentionHybridOptimizedV2 or other ring "
    "implementations that use isend/irecv for better performance."
)

_warned = set()


def warn_deprecated(class_name: str) -> None:
    if class_name in _warned:
        return
    _warned.add(class_name)
    warnings.warn(MESSAGE.format(name=class_name), DeprecationWarning, stacklevel=3)
