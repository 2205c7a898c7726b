"""The model zoo. Importing this package registers every model in ``mmer.registry.MODELS``."""

from mmer.models import asf, audio_student, late_fusion, teacher, visual_student  # noqa: F401
from mmer.registry import MODELS

__all__ = ["MODELS"]
