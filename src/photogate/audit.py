"""The audit trail: who changed what, from which address (one structlog event per change)."""

from __future__ import annotations

from typing import Any

import structlog

audit_log = structlog.get_logger("photogate.audit")


def audit(action: str, *, who: str, ip: str, **details: Any) -> None:
    """One audit event: who did what, from which address. Never pass a secret here."""
    audit_log.info("audit", action=action, who=who, client_ip=ip, **details)
