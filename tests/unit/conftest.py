"""Make the repository's plugins and scripts importable as plain modules."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# module_utils last-inserted first: modules import the policy as a plain module outside Ansible.
for folder in ("roles/common/filter_plugins", "plugins/action", "plugins/filter", "lab", "scripts", "bootstrap", "library",
               "module_utils"):
    sys.path.insert(0, str(ROOT / folder))
