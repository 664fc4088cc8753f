"""Changing the catalogue while the platform runs: versioned, audited, checked as a whole.

Every change is validated twice before anything is written: the item alone (its fields), then
the whole catalogue as it would be after the change (``Catalog.model_validate``: duplicates,
pools, GPU counts, one default). Every change writes a new revision of the item
(``CatalogRevision``), bumps ``CatalogItem.revision`` and appends an audit event, in one
transaction. Changes are optimistic: the caller says which revision it loaded, and a change made
meanwhile by someone else is refused (409) instead of silently overwritten.

Readers never cache: ``CatalogStore`` reads the database, so the next spawn or job submit sees a
change at once.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import yaml
from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .. import db
from ..caller import Caller, audit
from ..db import CatalogItem, CatalogRevision
from ..errors import Conflict, FermiError, Forbidden, InvalidInput, NotFound
from .schema import Catalog
from .models import (
    ImportPlan,
    ItemDeleted,
    ItemHistory,
    ItemRevision,
    ItemRevisionDetail,
    KindChanges,
)
from .store import KINDS, CatalogStore, ItemMeta, catalog_version, validation_message

SINGULAR = {"images": "image", "profiles": "profile", "pools": "pool"}
ANY = "*"  # If-Match: * — change whatever the current revision is
EXPORT_HEADER = """\
# The Fermi catalogue (images, profiles, pools), exported with `fermi catalog export`.
# Edit it and load it back with `fermi catalog import FILE` (try --dry-run first): the whole file
# replaces the catalogue, as one change. Same format as hub_config/catalog.yaml.
"""


class PreconditionRequired(FermiError):
    """A change that does not say which revision it applies to (HTTP 428)."""

    status = 428


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise NotFound(f"No catalogue kind {kind!r}; the kinds are: {', '.join(KINDS)}.")
    return kind


def parse_if_match(header: str | None) -> int | str | None:
    """``If-Match: "3"`` (or 3, W/"3") → 3; ``*`` → ANY; absent → None."""
    if header is None or not header.strip():
        return None
    values = [v.strip() for v in header.split(",") if v.strip()]
    if values == ["*"]:
        return ANY
    if len(values) != 1:
        raise InvalidInput("If-Match: send one revision, e.g. If-Match: \"3\".")
    value = values[0].removeprefix("W/").strip('"')
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(
            f"If-Match: {values[0]!r} is not a revision; send the item's `revision` "
            "(its ETag), e.g. If-Match: \"3\"."
        ) from None


def expected_revision(header: str | None, body_revision: int | None) -> int | str | None:
    """The revision a change applies to, from the If-Match header or the body; both must agree."""
    from_header = parse_if_match(header)
    if from_header is not None and body_revision is not None and from_header not in (
            ANY, body_revision):
        raise InvalidInput(
            f"If-Match says revision {from_header} but the body says {body_revision}; send one."
        )
    return from_header if from_header is not None else body_revision


def diff(before: dict | None, after: dict | None) -> dict[str, tuple[Any, Any]]:
    """Top-level fields that differ: ``{field: (before, after)}``."""
    before, after = before or {}, after or {}
    return {
        key: (before.get(key), after.get(key))
        for key in [*before, *(k for k in after if k not in before)]
        if before.get(key) != after.get(key)
    }


def normalized(kind: str, data: dict | None) -> dict | None:
    """Stored data as the current schema reads it (fields added later get their defaults)."""
    if data is None:
        return None
    try:
        return KINDS[kind].model_validate(data).model_dump(mode="json")
    except ValidationError:
        return data


def item_from(kind: str, data: Any) -> BaseModel:
    """Validate one item alone; the error names the field."""
    if not isinstance(data, dict):
        raise InvalidInput(f"A {SINGULAR[kind]} must be a JSON object.")
    try:
        return KINDS[kind].model_validate(data)
    except ValidationError as error:
        raise InvalidInput(validation_message(error)) from None


def catalog_message(error: ValidationError, raw: Any) -> str:
    """Like ``validation_message``, naming the item by slug as well as by position."""
    first = error.errors()[0]
    loc = first["loc"]
    message = validation_message(error)
    if len(loc) >= 2 and loc[0] in KINDS and isinstance(loc[1], int) and isinstance(raw, dict):
        items = raw.get(loc[0])
        if isinstance(items, list) and loc[1] < len(items) and isinstance(items[loc[1]], dict):
            slug = items[loc[1]].get("slug")
            if slug:
                where = ".".join(str(part) for part in loc)
                message = message.replace(
                    where, f"{where} ({SINGULAR[loc[0]]} {slug!r})", 1)
    return message


def validate_catalog(parts: dict[str, list[dict]]) -> Catalog:
    try:
        return Catalog.model_validate(parts)
    except ValidationError as error:
        raise InvalidInput(catalog_message(error, parts)) from None


def export_yaml(catalog: Catalog) -> str:
    """The catalogue as YAML, in the format of hub_config/catalog.yaml (pools, images, profiles)."""
    document = {kind: [item.model_dump(mode="json", exclude_none=True)
                       for item in getattr(catalog, kind)]
                for kind in ("pools", "images", "profiles")}
    return EXPORT_HEADER + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)


def parse_catalog_document(text: str | bytes, content_type: str | None = None) -> dict:
    """A catalogue sent as JSON (``application/json``) or YAML (anything else); errors say where."""
    if content_type and "json" in content_type:
        try:
            raw = json.loads(text or b"null")
        except ValueError as error:
            raise InvalidInput(f"The catalogue is not valid JSON: {error}.") from None
    else:
        try:
            raw = yaml.safe_load(text) if text else None
        except yaml.YAMLError as error:
            raise InvalidInput(f"The catalogue is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise InvalidInput("The catalogue must be a mapping with images, profiles and pools.")
    return raw


class CatalogEditor:
    """The changes an admin makes to the catalogue. Made for one caller, who must be an admin."""

    def __init__(self, store: CatalogStore, caller: Caller,
                 clock: Callable[[], Any] | None = None):
        if not caller.admin:
            raise Forbidden(
                "Only admins can change the catalogue or see its history; ask a JupyterHub "
                "admin to make this change."
            )
        self.store = store
        self.caller = caller
        self.clock = clock or (lambda: db.utcnow())

    # -- reading ------------------------------------------------------------------------------

    def state(self) -> tuple[Catalog, dict[tuple[str, str], ItemMeta], str]:
        catalog, meta = self.store.snapshot()
        return catalog, meta, catalog_version(meta)

    def export(self) -> str:
        return export_yaml(self.store.catalog())

    def history(self, kind: str, slug: str) -> ItemHistory:
        check_kind(kind)
        with self.store.session_factory() as session:
            row, revisions = self._history(session, kind, slug)
        return ItemHistory(kind=kind, slug=slug, current_revision=row.revision if row else None,
                           revisions=[self._out(r) for r in reversed(revisions)])

    def revision(self, kind: str, slug: str, number: int) -> ItemRevisionDetail:
        check_kind(kind)
        with self.store.session_factory() as session:
            row, revisions = self._history(session, kind, slug)
        wanted = self._find(revisions, kind, slug, number)
        earlier = [r for r in revisions if r.revision < number]
        previous = earlier[-1] if earlier else None
        return ItemRevisionDetail(
            **self._out(wanted).model_dump(),
            previous_revision=previous.revision if previous else None,
            diff=diff(normalized(kind, previous.data) if previous else None,
                      normalized(kind, wanted.data)),
        )

    # -- changing one item --------------------------------------------------------------------

    def create(self, kind: str, data: Any) -> tuple[BaseModel, ItemMeta]:
        check_kind(kind)
        item = item_from(kind, data)
        new = item.model_dump(mode="json")
        with self.store.session_factory() as session:
            existing = session.get(CatalogItem, (kind, item.slug))
            if existing is not None:
                raise Conflict(
                    f"There is already a {SINGULAR[kind]} {item.slug!r} (revision "
                    f"{existing.revision}); choose another slug, or change it with "
                    f"PATCH catalog/{kind}/{item.slug}."
                )
            parts = self._parts(session)
            parts[kind].append(new)
            validate_catalog(parts)
            now = self.clock()
            number = self._next_revision(session, kind, item.slug, None)
            position = (session.scalar(select(func.max(CatalogItem.position))
                                       .where(CatalogItem.kind == kind)) or 0) + 1
            session.add(CatalogItem(kind=kind, slug=item.slug, data=new, revision=number,
                                    position=position, updated_at=now,
                                    updated_by=self.caller.name))
            self._record(session, kind, item.slug, number, "create", new, now)
            audit(session, self.caller, "create", SINGULAR[kind], item.slug, after=new)
            self._commit(session, kind, item.slug)
        return item, ItemMeta(number, now, self.caller.name)

    def update(self, kind: str, slug: str, changes: dict,
               expected: int | str | None) -> tuple[BaseModel, ItemMeta]:
        check_kind(kind)
        if "slug" in changes and changes["slug"] != slug:
            raise InvalidInput(
                f"slug: a {SINGULAR[kind]} cannot be renamed ({slug!r} → {changes['slug']!r}); "
                "create the new one, move its users over, then delete this one."
            )
        with self.store.session_factory() as session:
            row = self._row(session, kind, slug)
            self._check_expected(kind, slug, row.revision, row.updated_by, row.updated_at,
                                 expected)
            before = normalized(kind, row.data)
            item = item_from(kind, {**before, **changes})
            after = item.model_dump(mode="json")
            if after == before:
                return item, ItemMeta(row.revision, row.updated_at, row.updated_by)
            parts = self._parts(session)
            parts[kind] = [after if d.get("slug") == slug else d for d in parts[kind]]
            validate_catalog(parts)
            meta = self._write(session, row, after, "update", before)
        return item, meta

    def delete(self, kind: str, slug: str, expected: int | str | None) -> ItemDeleted:
        check_kind(kind)
        with self.store.session_factory() as session:
            row = self._row(session, kind, slug)
            self._check_expected(kind, slug, row.revision, row.updated_by, row.updated_at,
                                 expected)
            parts = self._parts(session)
            current = validate_catalog(parts)
            if kind == "profiles" and current.default_profile().slug == slug:
                raise Conflict(
                    f"Profile {slug!r} is the default profile: users and jobs that choose none "
                    "get it. Make another profile the default first (set default to false here, "
                    "then to true on the other one), then delete this one."
                )
            if kind == "pools":
                users = [p.slug for p in current.profiles if p.pool == slug]
                if users:
                    raise Conflict(
                        f"Pool {slug!r} is still used by profile(s) {', '.join(users)}; move "
                        "them to another pool or delete them first."
                    )
            parts[kind] = [d for d in parts[kind] if d.get("slug") != slug]
            validate_catalog(parts)
            before = normalized(kind, row.data)
            self._ensure_baseline(session, row)
            now = self.clock()
            number = self._next_revision(session, kind, slug, row)
            result = session.execute(
                CatalogItem.__table__.delete().where(
                    CatalogItem.kind == kind, CatalogItem.slug == slug,
                    CatalogItem.revision == row.revision))
            if result.rowcount != 1:
                session.rollback()
                raise self._stale(kind, slug)
            self._record(session, kind, slug, number, "delete", None, now)
            audit(session, self.caller, "delete", SINGULAR[kind], slug, before=before)
            self._commit(session, kind, slug)
        return ItemDeleted(kind=kind, slug=slug, revision=number)

    def revert(self, kind: str, slug: str, number: int,
               expected: int | str | None) -> tuple[BaseModel, ItemMeta]:
        """Restore the content of revision ``number`` as a new revision (recreating the item if
        it was deleted since)."""
        check_kind(kind)
        with self.store.session_factory() as session:
            row, revisions = self._history(session, kind, slug)
            target = self._find(revisions, kind, slug, number)
            last = revisions[-1]
            if row is not None:
                self._check_expected(kind, slug, row.revision, row.updated_by, row.updated_at,
                                     expected)
            else:
                self._check_expected(kind, slug, last.revision, last.by, last.at, expected)
            if target.data is None:
                raise InvalidInput(
                    f"revision: revision {number} of {SINGULAR[kind]} {slug!r} is its deletion; "
                    "to delete it, use DELETE. Choose a revision that has content."
                )
            item = item_from(kind, normalized(kind, target.data))
            after = item.model_dump(mode="json")
            before = normalized(kind, row.data) if row is not None else None
            if after == before:
                return item, ItemMeta(row.revision, row.updated_at, row.updated_by)
            parts = self._parts(session)
            if row is not None:
                parts[kind] = [after if d.get("slug") == slug else d for d in parts[kind]]
            else:
                parts[kind].append(after)
            try:
                validate_catalog(parts)
            except InvalidInput as error:
                raise InvalidInput(
                    f"Revision {number} cannot be restored into today's catalogue: "
                    f"{error.message}") from None
            if row is not None:
                meta = self._write(session, row, after, "revert", before)
            else:
                now = self.clock()
                new_number = self._next_revision(session, kind, slug, None)
                position = (session.scalar(select(func.max(CatalogItem.position))
                                           .where(CatalogItem.kind == kind)) or 0) + 1
                session.add(CatalogItem(kind=kind, slug=slug, data=after, revision=new_number,
                                        position=position, updated_at=now,
                                        updated_by=self.caller.name))
                self._record(session, kind, slug, new_number, "revert", after, now)
                audit(session, self.caller, "revert", SINGULAR[kind], slug, after=after)
                self._commit(session, kind, slug)
                meta = ItemMeta(new_number, now, self.caller.name)
        return item, meta

    # -- the whole catalogue at once ------------------------------------------------------------

    def replace(self, raw: Any, dry_run: bool = False,
                expected_version: str | None = None) -> ImportPlan:
        """Make the catalogue exactly ``raw`` (an import), as one change: one revision per item
        that changes (action ``import``) and one audit event."""
        if not isinstance(raw, dict):
            raise InvalidInput("The catalogue must be a mapping with images, profiles and pools.")
        missing = [kind for kind in ("pools", "images", "profiles") if kind not in raw]
        if missing:  # an import replaces everything: a missing list would delete a whole kind
            raise InvalidInput(
                f"{missing[0]}: missing; an import replaces the whole catalogue, so it needs "
                "pools, images and profiles (fermi catalog export writes all three)."
            )
        try:
            catalog = Catalog.model_validate(raw)
        except ValidationError as error:
            raise InvalidInput(catalog_message(error, raw)) from None
        with self.store.session_factory() as session:
            rows = {(r.kind, r.slug): r for r in session.scalars(select(CatalogItem)).all()}
            version = catalog_version({key: ItemMeta(r.revision, r.updated_at, r.updated_by)
                                       for key, r in rows.items()})
            if expected_version not in (None, ANY, version):
                raise Conflict(
                    "The catalogue was changed since you loaded it (version "
                    f"{expected_version}, now {version}); export it again and apply your "
                    "change again."
                )
            changes: dict[str, KindChanges] = {}
            writes: list[tuple[str, str, dict | None, dict | None]] = []
            for kind in KINDS:
                plan = changes[kind] = KindChanges()
                new_items = {i.slug: i.model_dump(mode="json") for i in getattr(catalog, kind)}
                for slug, data in new_items.items():
                    row = rows.get((kind, slug))
                    if row is None:
                        plan.created.append(slug)
                        writes.append((kind, slug, None, data))
                        continue
                    before = normalized(kind, row.data)
                    if before == data:
                        plan.unchanged.append(slug)
                    else:
                        plan.updated.append(slug)
                        plan.fields[slug] = list(diff(before, data))
                        writes.append((kind, slug, before, data))
                for (row_kind, slug), row in rows.items():
                    if row_kind == kind and slug not in new_items:
                        plan.deleted.append(slug)
                        writes.append((kind, slug, normalized(kind, row.data), None))
            changed = bool(writes)
            if dry_run or not changed:
                if not dry_run:  # positions may still differ: keep the file's order
                    self._reorder(session, catalog)
                    session.commit()
                return ImportPlan(dry_run=dry_run, changed=changed, changes=changes,
                                  version=version)
            now = self.clock()
            new_meta = {key: ItemMeta(r.revision, r.updated_at, r.updated_by)
                        for key, r in rows.items()}
            for kind, slug, before, after in writes:
                row = rows.get((kind, slug))
                if row is not None:
                    self._ensure_baseline(session, row)
                number = self._next_revision(session, kind, slug, row)
                if after is None:
                    session.delete(row)
                    new_meta.pop((kind, slug))
                elif row is None:
                    session.add(CatalogItem(kind=kind, slug=slug, data=after, revision=number,
                                            position=0, updated_at=now,
                                            updated_by=self.caller.name))
                    new_meta[(kind, slug)] = ItemMeta(number, now, self.caller.name)
                else:
                    row.data, row.revision = after, number
                    row.updated_at, row.updated_by = now, self.caller.name
                    new_meta[(kind, slug)] = ItemMeta(number, now, self.caller.name)
                self._record(session, kind, slug, number, "import", after, now)
            session.flush()
            self._reorder(session, catalog)
            summary = {kind: {k: v for k, v in plan.model_dump().items() if v and k != "unchanged"}
                       for kind, plan in changes.items()}
            audit(session, self.caller, "import", "catalog", "catalog",
                  before={f"{k}/{s}": b for k, s, b, _ in writes},
                  after={"changes": summary, **{f"{k}/{s}": a for k, s, _, a in writes}})
            self._commit(session, "catalog", "catalog")
        return ImportPlan(dry_run=False, changed=True, changes=changes,
                          version=catalog_version(new_meta))

    # -- helpers ------------------------------------------------------------------------------

    def _parts(self, session: Session) -> dict[str, list[dict]]:
        rows = session.scalars(
            select(CatalogItem).order_by(CatalogItem.kind, CatalogItem.position)).all()
        parts: dict[str, list[dict]] = {kind: [] for kind in KINDS}
        for row in rows:
            parts[row.kind].append(normalized(row.kind, row.data))
        return parts

    def _row(self, session: Session, kind: str, slug: str) -> CatalogItem:
        row = session.get(CatalogItem, (kind, slug))
        if row is None:
            raise NotFound(f"No {SINGULAR[kind]} {slug!r} in the catalogue "
                           f"(GET catalog/{kind} lists them).")
        return row

    def _check_expected(self, kind, slug, current: int, by, at, expected) -> None:
        if expected is None:
            raise PreconditionRequired(
                f"Say which revision of {SINGULAR[kind]} {slug!r} you are changing: send the "
                f"header If-Match: \"{current}\" (its `revision` or ETag as you loaded it) or a "
                "`revision` field in the body, so that nobody's change is overwritten unseen."
            )
        if expected != ANY and expected != current:
            when = f"{at:%Y-%m-%d %H:%M:%S} UTC" if at else "an unknown time"
            raise Conflict(
                f"{SINGULAR[kind].capitalize()} {slug!r} was changed by {by or 'someone'} at "
                f"{when} since you loaded it; reload and apply your change again (you sent "
                f"revision {expected}, it is now at revision {current})."
            )

    def _stale(self, kind: str, slug: str) -> Conflict:
        return Conflict(
            f"{SINGULAR[kind].capitalize()} {slug!r} was changed by someone else while this "
            "change was being saved; reload and apply your change again."
        )

    def _history(self, session: Session, kind: str,
                 slug: str) -> tuple[CatalogItem | None, list[CatalogRevision]]:
        """The item (None once deleted) and its revisions, oldest first; an item from before
        revisions were kept gets its current state as its first revision. 404 if it never was."""
        row = session.get(CatalogItem, (kind, slug))
        revisions = list(session.scalars(
            select(CatalogRevision)
            .where(CatalogRevision.kind == kind, CatalogRevision.slug == slug)
            .order_by(CatalogRevision.revision)).all())
        if not revisions and row is not None:
            revisions = [self._baseline(row)]
        if not revisions:
            raise NotFound(f"No {SINGULAR[kind]} {slug!r} in the catalogue, now or before.")
        return row, revisions

    @staticmethod
    def _baseline(row: CatalogItem) -> CatalogRevision:
        return CatalogRevision(kind=row.kind, slug=row.slug, revision=row.revision,
                               action="import", data=row.data, by=row.updated_by or "seed",
                               at=row.updated_at)

    def _ensure_baseline(self, session: Session, row: CatalogItem) -> None:
        exists = session.scalar(select(CatalogRevision.id).where(
            CatalogRevision.kind == row.kind, CatalogRevision.slug == row.slug).limit(1))
        if exists is None:
            session.add(self._baseline(row))

    @staticmethod
    def _find(revisions: list[CatalogRevision], kind: str, slug: str,
              number: int) -> CatalogRevision:
        for revision in revisions:
            if revision.revision == number:
                return revision
        raise NotFound(
            f"No revision {number} of {SINGULAR[kind]} {slug!r}; it has revisions "
            f"{', '.join(str(r.revision) for r in revisions)} "
            f"(GET catalog/{kind}/{slug}/history lists them)."
        )

    def _next_revision(self, session: Session, kind: str, slug: str,
                       row: CatalogItem | None) -> int:
        """Revision numbers of a slug never repeat, even across a delete and a re-create."""
        last = session.scalar(select(func.max(CatalogRevision.revision)).where(
            CatalogRevision.kind == kind, CatalogRevision.slug == slug)) or 0
        return max(last, row.revision if row is not None else 0) + 1

    def _write(self, session: Session, row: CatalogItem, after: dict, action: str,
               before: dict | None) -> ItemMeta:
        kind, slug, loaded = row.kind, row.slug, row.revision
        self._ensure_baseline(session, row)
        now = self.clock()
        number = self._next_revision(session, kind, slug, row)
        # conditional on the revision read above: a concurrent writer makes this match nothing
        result = session.execute(
            update(CatalogItem)
            .where(CatalogItem.kind == kind, CatalogItem.slug == slug,
                   CatalogItem.revision == loaded)
            .values(data=after, revision=number, updated_at=now, updated_by=self.caller.name)
            .execution_options(synchronize_session=False))
        if result.rowcount != 1:
            session.rollback()
            raise self._stale(kind, slug)
        self._record(session, kind, slug, number, action, after, now)
        audit(session, self.caller, action, SINGULAR[kind], slug, before=before, after=after)
        self._commit(session, kind, slug)
        return ItemMeta(number, now, self.caller.name)

    def _record(self, session: Session, kind: str, slug: str, number: int, action: str,
                data: dict | None, now) -> None:
        session.add(CatalogRevision(kind=kind, slug=slug, revision=number, action=action,
                                    data=data, by=self.caller.name, at=now))

    @staticmethod
    def _reorder(session: Session, catalog: Catalog) -> None:
        for kind in KINDS:
            for position, item in enumerate(getattr(catalog, kind)):
                session.execute(update(CatalogItem)
                                .where(CatalogItem.kind == kind, CatalogItem.slug == item.slug)
                                .values(position=position)
                                .execution_options(synchronize_session=False))

    def _commit(self, session: Session, kind: str, slug: str) -> None:
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            raise Conflict(
                f"The catalogue ({kind} {slug!r}) was changed by someone else while this change "
                "was being saved; reload and apply your change again."
            ) from None

    @staticmethod
    def _out(revision: CatalogRevision) -> ItemRevision:
        return ItemRevision(kind=revision.kind, slug=revision.slug, revision=revision.revision,
                            action=revision.action, data=revision.data, by=revision.by,
                            at=revision.at)
