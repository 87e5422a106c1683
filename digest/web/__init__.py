"""The web side: reader pages, editors' and admins' pages, provider webhooks (FastAPI)."""
