"""Decides what the engine records of an operator's request it carried out: one AuditRecord per stage, on engage.audit."""
from __future__ import annotations

import time

from streams import topics


def audit(customer_id: str, stage: str, detail: str, action: str = "forget") -> tuple:
    """(spec, key, record) of an AuditRecord, to send with a stage's outputs."""
    return (topics.AUDIT, customer_id, {"ts": int(time.time() * 1000), "action": action, "customer_id": customer_id,
                                        "stage": stage, "detail": detail})
