"""The model zoo. Importing this package registers every model in ``mmer.registry.MODELS``."""

from mmer.models import (asf, audio_student, cenet, cmath, derl, late_fusion, mmiln, teacher,  # noqa: F401
                         visual_student)
from mmer.registry import MODELS

__all__ = ["MODELS"]
