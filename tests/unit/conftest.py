"""Make the repository's plugins and scripts importable as plain modules."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for folder in ("roles/common/filter_plugins", "plugins/action", "lab", "scripts", "library"):
    sys.path.insert(0, str(ROOT / folder))
