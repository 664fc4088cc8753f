"""Payloads of the catalogue API."""

from __future__ import annotations

from pydantic import BaseModel

from .model import Image, Pool, Profile


class ProfileOut(Profile):
    available: bool = True
    unavailable_reason: str | None = None


class ImageList(BaseModel):
    images: list[Image]


class ProfileList(BaseModel):
    profiles: list[ProfileOut]
    pools: list[Pool]
