"""Payloads of the catalogue API. The OpenAPI document is generated from these."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model

from .schema import Image, Pool, Profile

Action = Literal["create", "update", "delete", "revert", "import"]


class ItemState(BaseModel):
    """Where a stored item stands. Send ``revision`` back (``If-Match`` header or ``revision``
    field) when you change it: a change made meanwhile by someone else is then refused."""

    revision: int = Field(1, description="the item's revision; also its ETag")
    updated_at: dt.datetime | None = Field(None, description="last change (UTC)")
    updated_by: str | None = Field(None, description="who made the last change")


class ImageItem(ItemState, Image):
    pass


class PoolItem(ItemState, Pool):
    pass


class ProfileOut(ItemState, Profile):
    available: bool = True
    unavailable_reason: str | None = None


class ImageList(BaseModel):
    images: list[ImageItem]


class PoolList(BaseModel):
    pools: list[PoolItem]


class ProfileList(BaseModel):
    profiles: list[ProfileOut]
    pools: list[PoolItem]


class CatalogState(BaseModel):
    """The whole catalogue with each item's revision (admins)."""

    images: list[ImageItem]
    profiles: list[ProfileOut]
    pools: list[PoolItem]
    version: str = Field(description="changes whenever any item changes; If-Match for PUT catalog")


def _update_model(model: type[BaseModel], name: str) -> type[BaseModel]:
    """Every field of ``model`` optional (a partial update), plus the revision it applies to."""
    fields: dict[str, Any] = {
        field: (Optional[info.annotation], Field(None, description=info.description))
        for field, info in model.model_fields.items()
    }
    fields["revision"] = (Optional[int], Field(
        None, description="the revision you loaded (or send the If-Match header)"))
    return create_model(
        name, __config__=ConfigDict(extra="forbid"),
        __doc__=f"A partial update of a {model.__name__.lower()}: only the fields sent change.",
        **fields,
    )


ImageUpdate = _update_model(Image, "ImageUpdate")
ProfileUpdate = _update_model(Profile, "ProfileUpdate")
PoolUpdate = _update_model(Pool, "PoolUpdate")


class RevertItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    revision: int = Field(ge=1, description="the revision whose content is restored")
    current_revision: int | None = Field(
        None, description="the item's revision as you loaded it (or send the If-Match header)")


class ItemDeleted(BaseModel):
    kind: str
    slug: str
    revision: int = Field(description="the revision that records the deletion")


class ItemRevision(BaseModel):
    kind: str
    slug: str
    revision: int
    action: Action
    data: dict[str, Any] | None = Field(
        description="the whole item after the change; null: deleted")
    by: str
    at: dt.datetime


class ItemHistory(BaseModel):
    kind: str
    slug: str
    current_revision: int | None = Field(description="null when the item is deleted")
    revisions: list[ItemRevision] = Field(description="newest first")


class ItemRevisionDetail(ItemRevision):
    previous_revision: int | None
    diff: dict[str, tuple[Any, Any]] = Field(
        description="field: [before, after], against the previous revision")


class KindChanges(BaseModel):
    created: list[str] = Field(default_factory=list)
    updated: list[str] = Field(default_factory=list)
    deleted: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)
    fields: dict[str, list[str]] = Field(default_factory=dict,
                                         description="slug: the fields an update changes")


class ImportPlan(BaseModel):
    """What an import changes (or, with dry_run, would change)."""

    dry_run: bool
    changed: bool
    changes: dict[str, KindChanges] = Field(description="per kind: images, profiles, pools")
    version: str = Field(description="the catalogue's version after the import")
