"""The versioned JSON stream: every object mmer emits carries ``schema_version``.

The shipped JSON Schema (draft 2020-12), ``mmer/assets/schema/stream.schema.json``, describes
each object: predictions, segmentation events and the websocket's acknowledgements and errors
(docs/live.md documents the fields). ``SCHEMA_VERSION`` is "MAJOR.MINOR": a new MINOR adds
fields, a new MAJOR renames, removes or changes one. The schema file names the same version.
"""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA_VERSION = "1.1"  # 1.1: the "interim" object


def schema_path() -> Path:
    """The stream's JSON Schema file (installed: ``mmer/assets/schema``; editable: the source tree)."""
    import mmer

    return Path(mmer.__file__).resolve().parent / "assets" / "schema" / "stream.schema.json"


def load_schema() -> dict:
    """The stream's JSON Schema as a dict (validate with e.g. ``jsonschema.Draft202012Validator``)."""
    return json.loads(schema_path().read_text(encoding="utf-8"))
