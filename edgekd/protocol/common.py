"""Keys every edgekd message uses, whatever the method.

Flower's own record names (``"arrays"``, ``"config"``, ``"metrics"``) carry the model, the
per-message settings and the reply's numbers; ``"query.whoami"`` lets a server map
partitions to node ids. Each method's format is in its own module of :mod:`edgekd.protocol`.

Query ``"query.whoami"``: no content needed; the reply's ``metrics`` holds ``partition-id``,
``num-partitions`` (the node's: its node config's, else the run config's) and
``num-examples`` (the node's training examples), so a server can order the edges by
partition (node ids are random; only the node knows its partition). Optional for every
strategy: a node that does not answer it is still an edge, ordered by node id.
"""

from __future__ import annotations

__all__ = [
    "ARRAYS",
    "CONFIG",
    "METRICS",
    "NUM_EXAMPLES",
    "NUM_PARTITIONS",
    "PARTITION_ID",
    "WHOAMI",
]

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
WHOAMI = "whoami"
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
NUM_EXAMPLES = "num-examples"
