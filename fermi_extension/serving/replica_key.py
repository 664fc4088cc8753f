"""The secret a model-server replica accepts from the router, and only from it.

A replica answers only requests that show ``Authorization: Bearer <its key>``, so nothing that can
reach its address (any local process at 127.0.0.1:PORT, any pod at a Service inside the cluster)
gets past the router's API-key check by going round it. Each replica's key is derived from the
router's admin token and the replica's URL (a local process's ``http://127.0.0.1:PORT``, a
Kubernetes revision's Service URL), which both the control plane (which starts the replica) and
the router (which reads the URL in the routes file) already know: nothing new is stored, and a
key leaked by one replica's model code opens that replica alone, never another nor the router.

The router's own imports are kept to a minimum for its start-up time; this module adds only
``hmac`` and ``hashlib``, which it imports anyway.
"""

from __future__ import annotations

import hashlib
import hmac

# The environment variable the model server reads its key from (and removes at once).
ENV_REPLICA_KEY = "FERMI_REPLICA_KEY"
# vLLM's OpenAI server checks ``Authorization: Bearer`` against this one.
ENV_VLLM_API_KEY = "VLLM_API_KEY"


def replica_key(master: str, url: str) -> str:
    """The key of the replica at ``url`` under ``master`` (the router's admin token), as hex."""
    return hmac.new(master.encode(), url.encode(), hashlib.sha256).hexdigest()


def replica_auth_header(master: str, url: str) -> dict[str, str]:
    """The header that lets a request through to the replica at ``url``."""
    return {"Authorization": f"Bearer {replica_key(master, url)}"}
