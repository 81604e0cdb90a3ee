"""Hatch build hook: in an editable install ship only the startup .pth.

A regular wheel force-includes task_configs/ as compfair_tasks/task_configs and compfair.pth at the
site-packages root (see pyproject.toml). An editable install must not copy task_configs into
site-packages (it would shadow the checkout), so it gets the .pth alone; the hook then finds
task_configs/ beside the checkout's compfair_tasks/.
"""

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version, build_data):
        if self.target_name == "wheel" and version == "editable":
            build_data["force_include_editable"] = {"compfair_tasks/compfair.pth": "compfair.pth"}
