# Mitogen's linear strategy, found through ansible.cfg's strategy_plugins
# without naming the venv's site-packages path.  Mitogen runs modules inside
# one persistent Python per host instead of starting a new one per task: a
# no-op converge of the lab takes about a third of the time (bench/RESULTS.md).
#
# Switch it off with one setting: ANSIBLE_STRATEGY=linear (or `strategy =
# linear` in ansible.cfg).  ansible-core 2.19 deprecates third-party strategy
# plugins; when a release drops them, or mitogen is not installed, this
# plugin says so once and runs Ansible's own linear strategy instead, so
# playbooks keep working, only slower.
#
# A play with an `async` task runs on Ansible's own linear strategy too:
# under Mitogen with ansible-core 2.19 async jobs can hang (Molecule's podman
# create and destroy steps start containers that way).
from __future__ import annotations

from ansible.playbook.block import Block
from ansible.plugins.loader import strategy_loader
from ansible.utils.display import Display

Linear = strategy_loader.get("linear", class_only=True)
display = Display()


def has_async_task(blocks) -> bool:
    """True when a task of these blocks (nested blocks included) runs async."""
    for block in blocks:
        for item in [*block.block, *block.rescue, *block.always]:
            if isinstance(item, Block):
                if has_async_task([item]):
                    return True
            elif getattr(item, "async_val", 0):
                return True
    return False


try:
    import ansible_mitogen.loaders
    import ansible_mitogen.strategy
except ImportError as exc:  # mitogen missing, or too old for this ansible-core
    display.warning(f"mitogen is not usable ({exc}); running the linear strategy instead")
    StrategyModule = Linear
else:

    class StrategyModule(ansible_mitogen.strategy.StrategyMixin, Linear):
        """Ansible's linear strategy with Mitogen's connection and executor."""

        def run(self, iterator, play_context, result=0):
            if has_async_task(iterator._blocks):
                display.vv(
                    f"play {iterator._play.get_name()!r} has async tasks: "
                    "running it on Ansible's linear strategy, without Mitogen"
                )
                return Linear.run(self, iterator, play_context)
            return super().run(iterator, play_context, result)
