"""The key check of the rollout servers: every route but ``/health`` needs ``Bearer $OVR_ROLLOUT_KEY``.

A rollout server runs vLLM in development mode (``VLLM_SERVER_DEV_MODE=1``): TRL pushes weights
through ``/init_weight_transfer_engine`` and ``/update_weights``, and vLLM's own ``--api-key``
guards only ``/v1``, ``/v2``, ``/inference`` and ``/cohere``, so anyone who can reach the port could
replace the model or call ``/collective_rpc``. Loaded with ``--middleware
ovr_train.rollouts.auth.RolloutKeyGuard``; the trainer's client (`ovr_train.rollouts.client`) sends the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os

KEY_ENV = "OVR_ROLLOUT_KEY"
OPEN_PATHS = frozenset({"/health"})  # TRL's client polls it before it has any header


def bearer(key: str) -> dict[str, str]:
    """The header a client sends."""
    return {"Authorization": f"Bearer {key}"}


class RolloutKeyGuard:
    """Pure ASGI middleware: 401 without the key; the key comes from the server's environment."""

    def __init__(self, app, key: str | None = None):
        self.app = app
        key = key if key is not None else os.environ.get(KEY_ENV, "")
        if not key:
            raise RuntimeError(f"rollout server guard: set {KEY_ENV} (the trainers send it)")
        self.digest = hashlib.sha256(key.encode()).digest()

    def allowed(self, scope) -> bool:
        if scope.get("path", "") in OPEN_PATHS or scope.get("method") == "OPTIONS":
            return True
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                given = hashlib.sha256(token.encode()).digest()
                return scheme.lower() == "bearer" and hmac.compare_digest(given, self.digest)
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or self.allowed(scope):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        body = json.dumps({"error": f"unauthorized: send 'Authorization: Bearer ${KEY_ENV}'"})
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})
