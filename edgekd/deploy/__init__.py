"""Run edgekd's unchanged ClientApp/ServerApp on Flower's deployment runtime.

- :mod:`edgekd.deploy.certs`: self-signed development TLS certificates and SuperNode
  authentication keys;
- :mod:`edgekd.deploy.local`: :class:`LocalDeployment`, a secured SuperLink + SuperNodes on
  ``127.0.0.1`` that is started, used with ``flwr run`` and stopped, also on errors;
- ``python -m edgekd.deploy {certs,run,up}``: the command line (see ``docs/deploy.md``).
"""

from edgekd.deploy.certs import DevCredentials, generate_dev_credentials, generate_node_key
from edgekd.deploy.local import (
    CONNECTION,
    DeploymentError,
    LocalDeployment,
    ManagedProcess,
    RunResult,
    alive_flower_processes,
    format_node_config,
)

__all__ = [
    "CONNECTION",
    "DeploymentError",
    "DevCredentials",
    "LocalDeployment",
    "ManagedProcess",
    "RunResult",
    "alive_flower_processes",
    "format_node_config",
    "generate_dev_credentials",
    "generate_node_key",
]
