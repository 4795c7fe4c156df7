"""The Dagster code location of this project (written by `trellis init`): Trellis' assets, pointed at this folder.

`dagster dev -w workspace.yaml` loads ``defs`` from here."""

import os
from pathlib import Path

os.environ["TRELLIS_PROJECT"] = str(Path(__file__).resolve().parent)

from assets.definitions import defs  # noqa: E402 - the code location reads TRELLIS_PROJECT when it loads

__all__ = ["defs"]
