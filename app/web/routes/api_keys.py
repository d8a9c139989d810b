"""API keys for `/v1` with login on: the settings page that creates, lists and revokes them."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
