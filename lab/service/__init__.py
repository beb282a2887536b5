"""The Device Update Web service: front ends with internal and external sites, and the edge.

``ServicePool`` is the entry point: it starts every front end of the config (each an
internal site behind the firewall and an external site published by the edge), answers
update checks from the store's decision, serves image files, signs users in with NTLM and
takes servers in and out of maintenance. ``lab.service.run`` runs one on its own (uvloop
where available): ``python -m lab.service``.
"""

from __future__ import annotations

from lab.service.edge import Edge, PublishingRule, Upstream
from lab.service.frontend import FrontEndServer, Mode, Role, ServerStatus, ServiceContext
from lab.service.ntlm import Directory
from lab.service.pool import ServicePool, file_store_path
from lab.service.updates import SnapshotWatcher

__all__ = [
    "Directory",
    "Edge",
    "FrontEndServer",
    "Mode",
    "PublishingRule",
    "Role",
    "ServerStatus",
    "ServiceContext",
    "ServicePool",
    "SnapshotWatcher",
    "Upstream",
    "file_store_path",
]
