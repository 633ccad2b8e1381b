"""torch's `torch.distributed.launcher` call shape on elaunch: change the import, keep the code.

from elaunch.launcher import LaunchConfig, elastic_launch
outputs = elastic_launch(LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=4), fn)(arg)
"""

from elaunch.launcher.api import LaunchConfig, elastic_launch, launch_agent

__all__ = ["LaunchConfig", "elastic_launch", "launch_agent"]
