"""Storage: one interface (base.Store), one implementation per database."""

from webhookd.store.base import (
    Claim,
    DeliveryFilter,
    EventConflict,
    IngestResult,
    NotFound,
    Outcome,
    Page,
    ScanResult,
    Store,
    StoreUnavailable,
    WebhookPatch,
)

__all__ = [
    "Claim",
    "DeliveryFilter",
    "EventConflict",
    "IngestResult",
    "NotFound",
    "Outcome",
    "Page",
    "ScanResult",
    "Store",
    "StoreUnavailable",
    "WebhookPatch",
]
