# Mitogen's linear strategy, found through ansible.cfg's strategy_plugins
# without naming the venv's site-packages path.  Mitogen runs modules inside
# one persistent Python per host instead of starting a new one per task: a
# no-op converge of the lab takes about half the time (bench/RESULTS.md).
#
# Switch it off with one setting: ANSIBLE_STRATEGY=linear (or `strategy =
# linear` in ansible.cfg).  ansible-core 2.19 deprecates third-party strategy
# plugins; when a release drops them, or mitogen is not installed, this
# plugin says so once and runs Ansible's own linear strategy instead, so
# playbooks keep working, only slower.
from __future__ import annotations

from ansible.plugins.loader import strategy_loader
from ansible.utils.display import Display

try:
    import ansible_mitogen.loaders  # noqa: F401  (mitogen checks the ansible-core version here)
    import ansible_mitogen.strategy
except ImportError as exc:  # mitogen missing, or too old for this ansible-core
    Display().warning(f"mitogen is not usable ({exc}); running the linear strategy instead")
    StrategyModule = strategy_loader.get("linear", class_only=True)
else:
    class StrategyModule(ansible_mitogen.strategy.StrategyMixin,
                         strategy_loader.get("linear", class_only=True)):
        """Ansible's linear strategy with Mitogen's connection and executor."""
