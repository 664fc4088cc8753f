"""The catalogue as data in the platform database, seeded once from ``hub_config/catalog.yaml``."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from ..caller import Caller
from ..db import CatalogItem, CatalogRevision
from ..errors import InvalidInput, NotFound
from .access import PLATFORM, choose_image, choose_profile
from .schema import Catalog, Image, Pool, Profile

KINDS = {"images": Image, "profiles": Profile, "pools": Pool}


def seed_path() -> str:
    """The catalogue YAML an empty platform database is seeded from: $FERMI_CATALOG, else
    hub_config/catalog.yaml."""
    import os

    from ..paths import shipped

    return os.environ.get("FERMI_CATALOG") or str(shipped("hub_config") / "catalog.yaml")


def load_catalog_file(path: Path | str) -> Catalog:
    """Read and validate a catalogue YAML file; errors name the file and the field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise InvalidInput(f"{path}: not valid YAML: {error}") from None
    try:
        return Catalog.model_validate(raw or {})
    except ValidationError as error:
        raise InvalidInput(f"{path}: {validation_message(error)}") from None


def validation_message(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "the document"
    message = first["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if first["loc"] else message


@dataclass(frozen=True)
class ItemMeta:
    """Where an item stands: its revision (the optimistic-concurrency token) and last change."""

    revision: int
    updated_at: dt.datetime | None
    updated_by: str | None


def catalog_version(meta: dict[tuple[str, str], ItemMeta]) -> str:
    """A token that changes whenever any item changes (revision numbers never repeat per slug)."""
    text = "\n".join(f"{kind}/{slug}/{m.revision}" for (kind, slug), m in sorted(meta.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class CatalogStore:
    """Reads the catalogue from the database on every call, so that every spawn, job submit and
    deployment sees the last change at once, in this process or any other. Changes go through
    ``catalog.editing.CatalogEditor``."""

    def __init__(self, session_factory: sessionmaker):
        self.session_factory = session_factory

    def seed_if_empty(self, catalog: Catalog) -> bool:
        with self.session_factory() as session:
            if session.scalar(select(CatalogItem).limit(1)) is not None:
                return False
            for kind in KINDS:
                for position, item in enumerate(getattr(catalog, kind)):
                    data = item.model_dump(mode="json")
                    session.add(CatalogItem(kind=kind, slug=item.slug, data=data,
                                            position=position, revision=1, updated_by="seed"))
                    # revision 1 of every item, so that its history starts with what was seeded
                    session.add(CatalogRevision(kind=kind, slug=item.slug, revision=1,
                                                action="import", data=data, by="seed"))
            session.commit()
            return True

    def snapshot(self) -> tuple[Catalog, dict[tuple[str, str], ItemMeta]]:
        """The catalogue and, per (kind, slug), its revision and last change, read together."""
        with self.session_factory() as session:
            rows = session.scalars(
                select(CatalogItem).order_by(CatalogItem.kind, CatalogItem.position)
            ).all()
        parts: dict[str, list] = {kind: [] for kind in KINDS}
        meta = {}
        for row in rows:
            parts[row.kind].append(row.data)
            meta[(row.kind, row.slug)] = ItemMeta(row.revision, row.updated_at, row.updated_by)
        return Catalog.model_validate(parts), meta

    def catalog(self) -> Catalog:
        with self.session_factory() as session:
            rows = session.scalars(
                select(CatalogItem).order_by(CatalogItem.kind, CatalogItem.position)
            ).all()
        parts: dict[str, list] = {kind: [] for kind in KINDS}
        for row in rows:
            parts[row.kind].append(row.data)
        return Catalog.model_validate(parts)

    def resolve(self, image: str | None, profile: str | None,
                caller: Caller = PLATFORM) -> tuple[Catalog, Image, Profile]:
        """The image and profile a request names, or the defaults, as ``caller`` may use them
        (``access.py``); 400/403 naming the valid choices. ``caller`` defaults to the platform
        itself, which every profile is offered to: requests always pass who asks."""
        catalog = self.catalog()
        return catalog, choose_image(catalog, image), choose_profile(catalog, caller, profile)

    def get(self, kind: str, slug: str):
        return self.get_with_meta(kind, slug)[0]

    def get_with_meta(self, kind: str, slug: str):
        with self.session_factory() as session:
            row = session.get(CatalogItem, (kind, slug))
        if row is None:
            raise NotFound(f"No {kind[:-1]} {slug!r} in the catalogue.")
        return (KINDS[kind].model_validate(row.data),
                ItemMeta(row.revision, row.updated_at, row.updated_by))
