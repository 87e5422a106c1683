"""Provider webhooks: delivery events flowing back into the subscriber store."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
