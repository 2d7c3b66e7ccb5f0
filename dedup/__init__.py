"""Copy-on-write page sharing: the mechanism and duplicate detection.

Pure numpy: nothing here knows about Ray, scenarios or Prometheus.
"""

from dedup.content import PAGE_SIZE, ZERO_CONTENT, ContentStore
from dedup.errors import CowsimError, ImageError, ShareError
from dedup.hints import HintBatch, HintTable
from dedup.memory import HostMemory

__all__ = [
    "PAGE_SIZE",
    "ZERO_CONTENT",
    "ContentStore",
    "CowsimError",
    "HintBatch",
    "HintTable",
    "HostMemory",
    "ImageError",
    "ShareError",
]
