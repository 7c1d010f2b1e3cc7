"""Signatures over the guard's own records, so that a registry user cannot forge them.

Anyone with MLflow's EDIT permission on a registered model can set any of its tags, so a tag proves nothing
about who wrote it. What the worker writes as its own state (``tfexport.accepted.*``, ``tfexport.history.*``)
and the validation outcome an export writes on a version carry an HMAC-SHA256 over their content, keyed with a
secret only the worker (and whoever else the operator gives it to) holds. A record whose signature is missing
or does not match is *unverified*: shown, never trusted.

The key is derived from the worker's secret (``MLFLOW_TFEXPORT_GUARD_SECRET``, else the webhook secret
``MLFLOW_TFEXPORT_WEBHOOK_SECRET``) with a fixed label, so a record signature can never be replayed as a
webhook signature or the other way round. A signature covers the registered model's name and the record's
kind, so a signed value copied onto another model, alias or version does not verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from typing import Any, Mapping, Optional, Tuple

from mlflow_tfexport.constants import Tag

#: The guard's own secret; when unset, the webhook secret (``worker.webhook.SECRET_ENV``) is used.
GUARD_SECRET_ENV = "MLFLOW_TFEXPORT_GUARD_SECRET"
WEBHOOK_SECRET_ENV = "MLFLOW_TFEXPORT_WEBHOOK_SECRET"
_LABEL = b"mlflow-tfexport record signature v1"
PREFIX = "v1."
#: The version tags a validation signature covers (``tfexport.attestation``).
VALIDATION_TAGS: Tuple[str, ...] = (
    Tag.FORMAT, Tag.TASK, Tag.VALIDATION, Tag.DATA_ROWS, Tag.DATA_DIGEST, Tag.AGREEMENT_METRIC, Tag.AGREEMENT,
    Tag.AGREEMENT_THRESHOLD, Tag.EXPORT_KEY,
)


class Signer:
    """Signs and verifies records with a key derived from ``secret``."""

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError(f"a record signing secret is required ({GUARD_SECRET_ENV} or {WEBHOOK_SECRET_ENV})")
        self._key = hmac.new(secret.encode("utf-8"), _LABEL, hashlib.sha256).digest()

    @classmethod
    def from_env(cls) -> Optional[Signer]:
        """The signer of this process's secret (``MLFLOW_TFEXPORT_GUARD_SECRET``, else the webhook secret);
        None when neither is set (records written then are unsigned, and nothing verifies)."""
        secret = os.environ.get(GUARD_SECRET_ENV) or os.environ.get(WEBHOOK_SECRET_ENV)
        return cls(secret) if secret else None

    def sign(self, kind: str, *fields: Any) -> str:
        """``v1.<base64url HMAC-SHA256>`` over ``kind`` and ``fields`` (JSON, so no two field lists collide)."""
        message = json.dumps([kind, *fields], separators=(",", ":"), ensure_ascii=False, sort_keys=True)
        digest = hmac.new(self._key, message.encode("utf-8"), hashlib.sha256).digest()
        return PREFIX + base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def verify(self, signature: Optional[str], kind: str, *fields: Any) -> bool:
        if not signature or not isinstance(signature, str):
            return False
        return hmac.compare_digest(self.sign(kind, *fields).encode(), signature.encode("utf-8", "replace"))


def resolve(signer: Optional[Signer]) -> Optional[Signer]:
    """``signer``, else the one of this process's environment (None when no secret is set)."""
    return signer if signer is not None else Signer.from_env()


def _validation_fields(tags: Mapping[str, str]) -> dict:
    return {k: tags.get(k) for k in VALIDATION_TAGS}


def sign_validation(signer: Signer, name: str, version: str, tags: Mapping[str, str]) -> str:
    """The ``tfexport.attestation`` value for version ``version`` of ``name`` with these validation tags."""
    return signer.sign("validation", name, str(version), _validation_fields(tags))


def validation_state(signer: Optional[Signer], name: str, version: str, tags: Mapping[str, str]) -> str:
    """``"signed"`` (the validation tags are the ones a secret holder signed), ``"unsigned"`` (no attestation) or
    ``"mismatch"`` (an attestation that does not match: the tags were edited since, or it was forged);
    ``"unverifiable"`` when this process has no secret to check with."""
    signature = tags.get(Tag.ATTESTATION)
    if not signature:
        return "unsigned"
    if signer is None:
        return "unverifiable"
    ok = signer.verify(signature, "validation", name, str(version), _validation_fields(tags))
    return "signed" if ok else "mismatch"


def attest_version(client: Any, signer: Optional[Signer], name: str, version: str,
                   tags: Mapping[str, str]) -> bool:
    """Sign the validation tags ``tags`` (what the exporter itself wrote) of a version; False without a signer."""
    if signer is None:
        return False
    client.set_model_version_tag(name, str(version), Tag.ATTESTATION, sign_validation(signer, name, version, tags))
    return True
