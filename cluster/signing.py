"""Node-to-node requests carry X-Mixer-Cluster: `<node id> <unix time> <HMAC-SHA256>` under
CLUSTER_SECRET, over the time, the method, the path with its query and a SHA-256 of the body.

A signed request is served by the node it reaches, never forwarded again; a forged or stale one
is refused, so nobody without the secret can make a node act as if another had asked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

HEADER = "X-Mixer-Cluster"
# Nodes' clocks may differ a little; a captured request is useless after this.
TOLERANCE_S = 60


class ClusterSignatureError(Exception):
    pass


class Signer:
    def __init__(self, secret: str, node_id: str) -> None:
        self._key = hashlib.sha256(b"cluster:" + secret.encode()).digest()
        self.node_id = node_id

    def _mac(self, node_id: str, at: str, method: str, target: str, body: bytes) -> str:
        message = "\n".join((node_id, at, method.upper(), target, hashlib.sha256(body).hexdigest()))
        digest = hmac.new(self._key, message.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def sign(self, method: str, target: str, body: bytes = b"") -> str:
        at = str(int(time.time()))
        return f"{self.node_id} {at} {self._mac(self.node_id, at, method, target, body)}"

    def verify(self, header: str, method: str, target: str, body: bytes) -> str:
        """The signing node's id; ClusterSignatureError when the header is malformed, stale or forged."""
        parts = header.split(" ")
        if len(parts) != 3 or not parts[1].isdigit():
            raise ClusterSignatureError("malformed cluster signature")
        node_id, at, mac = parts
        if abs(time.time() - int(at)) > TOLERANCE_S:
            raise ClusterSignatureError("stale cluster signature")
        if not hmac.compare_digest(mac.encode(), self._mac(node_id, at, method, target, body).encode()):
            raise ClusterSignatureError("cluster signature does not match")
        return node_id
