"""``ray start --address 127.0.0.1:PORT ...`` for a second node of a one-machine cluster that listens on 127.0.0.1 only.

Ray's loopback mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: the node IP is 127.0.0.1 and every server binds
to it) refuses to start a worker node, and Ray's multi-node mode turns the address 127.0.0.1 into the
machine's network address (``services.resolve_ip_for_localhost``), where the head, in loopback mode, does not
listen. This launcher runs Ray's own ``ray start`` command with the multi-node check passed and 127.0.0.1 kept
as it is, in an environment with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (which the node's raylet and agents
inherit: they bind to 127.0.0.1). For tests and CI on one machine only (scripts/ci_two_node.sh); a real
cluster's nodes run plain ``ray start --address HEAD:PORT``.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 python scripts/ray_loopback_node.py start --block --address 127.0.0.1:PORT ...
"""
import sys

from ray._private import ray_constants, services
from ray.scripts import scripts


def keep(host: str) -> str:
    return host


ray_constants.ENABLE_RAY_CLUSTER = True  # `ray start --address` refuses to run without it
services.resolve_ip_for_localhost = keep  # 127.0.0.1 stays 127.0.0.1 (the head listens there only)
scripts.services.resolve_ip_for_localhost = keep

if __name__ == "__main__":
    sys.argv = ["ray", *sys.argv[1:]]
    scripts.main()
