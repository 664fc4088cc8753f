"""/api/catalog: images, profiles and pools — read by everyone, changed by admins.

Each item carries its ``revision`` (also its ``ETag``); a change (PATCH, DELETE, revert) says
which revision it applies to (``If-Match`` or a ``revision`` field), so that two admins never
overwrite each other unseen. Every change is a new revision with its history, and an audit
event. The domain logic is ``catalog.editing.CatalogEditor``; these handlers only translate HTTP.

/api/catalog/builds: custom images built from a Dockerfile (admins);
/api/catalog/images/{slug}/pull: a tag of a custom image's reference pulled from its registry,
checked and pinned (admins).
"""

from __future__ import annotations


from pydantic import BaseModel

from .service import (
    SINGULAR,
    CatalogEditor,
    expected_revision,
    parse_catalog_document,
)
from .access import offered_profiles, readable_images
from .schema import Catalog, Image, Pool, Profile
from .models import (
    CatalogState,
    ImageItem,
    ImageList,
    ImageUpdate,
    ImportPlan,
    ItemDeleted,
    ItemHistory,
    ItemRevisionDetail,
    PoolItem,
    PoolList,
    PoolUpdate,
    ProfileList,
    ProfileOut,
    ProfileUpdate,
    RevertItem,
)
from .store import ItemMeta
from ..errors import InvalidInput, NotFound
from .builds import CreateBuild, DescribeBuild, PulledImage, PullImage
from ..control_plane.base import APIHandler, operation


def meta_fields(meta: ItemMeta | None) -> dict:
    if meta is None:
        return {}
    return {"revision": meta.revision, "updated_at": meta.updated_at,
            "updated_by": meta.updated_by}


def profile_out(services, profile: Profile, pool: Pool, meta: ItemMeta | None) -> ProfileOut:
    available, reason = services.job_backend.availability(profile, pool)
    return ProfileOut(**profile.model_dump(), **meta_fields(meta), available=available,
                      unavailable_reason=reason)


def visible_profiles(settings, caller) -> ProfileList:
    """The profiles ``caller`` may use (``access.py``), with availability: the API and pages."""
    services = settings["services"]
    catalog, meta = services.catalog.snapshot()
    pools = {p.slug: p for p in catalog.pools}
    out = []
    for profile in offered_profiles(catalog, caller):
        out.append(profile_out(services, profile, pools[profile.pool],
                               meta.get(("profiles", profile.slug))))
    return ProfileList(profiles=out, pools=[
        PoolItem(**p.model_dump(), **meta_fields(meta.get(("pools", p.slug))))
        for p in catalog.pools
    ])


class CatalogHandler(APIHandler):
    """Shared by the catalogue handlers: the editor (admins only) and item answers."""

    def editor(self) -> CatalogEditor:
        return CatalogEditor(self.services.catalog, self.caller)

    def expected(self, body_revision: int | None):
        return expected_revision(self.request.headers.get("If-Match"), body_revision)

    def send_item(self, kind: str, item: BaseModel, meta: ItemMeta, status: int = 200) -> None:
        self.set_header("ETag", f'"{meta.revision}"')
        if kind == "profiles":
            pool = self.services.catalog.get("pools", item.pool)
            out: BaseModel = profile_out(self.services, item, pool, meta)
        elif kind == "images":
            out = ImageItem(**item.model_dump(), **meta_fields(meta))
        else:
            out = PoolItem(**item.model_dump(), **meta_fields(meta))
        if status == 201:
            self.set_header("Location", f"{self.request.path.rstrip('/')}/{item.slug}")
        self.send(out, status)

    # the writes, the same for every kind
    def create_item(self, kind: str, model: type[BaseModel]) -> None:
        editor = self.editor()  # admins only, checked before the body is even read
        item = self.parse(model)
        created, meta = editor.create(kind, item.model_dump(mode="json"))
        self.send_item(kind, created, meta, 201)

    def patch_item(self, kind: str, model: type[BaseModel], slug: str) -> None:
        editor = self.editor()
        changes = self.parse(model).model_dump(mode="json", exclude_unset=True)
        revision = changes.pop("revision", None)
        item, meta = editor.update(kind, slug, changes, self.expected(revision))
        self.send_item(kind, item, meta)

    def delete_item(self, kind: str, slug: str) -> None:
        editor = self.editor()
        body = self.body_dict() if self.request.body else {}
        unknown = set(body) - {"revision"}
        if unknown:
            raise InvalidInput(f"{sorted(unknown)[0]}: Extra inputs are not permitted "
                               "(DELETE takes only `revision`).")
        revision = body.get("revision")
        if revision is not None and not isinstance(revision, int):
            raise InvalidInput("revision: must be an integer.")
        self.send(editor.delete(kind, slug, self.expected(revision)))

    def revert_item(self, kind: str, slug: str) -> None:
        editor = self.editor()
        request = self.parse(RevertItem)
        item, meta = editor.revert(kind, slug, request.revision,
                                   self.expected(request.current_revision))
        self.send_item(kind, item, meta)


# -- collections --------------------------------------------------------------------------------


class CatalogDocumentHandler(CatalogHandler):
    @operation("The whole catalogue with each item's revision (admins); `format=yaml`: the "
               "export, in the format of hub_config/catalog.yaml", response=CatalogState,
               admin=True, query={"format": "json (default) or yaml"})
    def get(self):
        editor = self.editor()
        catalog, meta, version = editor.state()
        if self.get_query_argument("format", "json") in ("yaml", "yml"):
            self.set_header("Content-Type", "application/yaml; charset=UTF-8")
            self.set_header("ETag", f'"{version}"')
            return self.finish(editor.export())
        pools = {p.slug: p for p in catalog.pools}
        self.set_header("ETag", f'"{version}"')
        self.send(CatalogState(
            images=[ImageItem(**i.model_dump(), **meta_fields(meta.get(("images", i.slug))))
                    for i in catalog.images],
            profiles=[profile_out(self.services, p, pools[p.pool], meta.get(("profiles", p.slug)))
                      for p in catalog.profiles],
            pools=[PoolItem(**p.model_dump(), **meta_fields(meta.get(("pools", p.slug))))
                   for p in catalog.pools],
            version=version,
        ))

    @operation("Replace the whole catalogue (an import; admins): JSON, or YAML with "
               "Content-Type application/yaml. `dry_run=true` only says what would change. "
               "Optional If-Match: the catalogue's version.", request=Catalog,
               response=ImportPlan, admin=True, query={"dry_run": "true: change nothing"})
    def put(self):
        editor = self.editor()
        raw = parse_catalog_document(self.request.body,
                                     self.request.headers.get("Content-Type"))
        dry_run = self.get_query_argument("dry_run", "false").lower() in ("1", "true", "yes")
        header = self.request.headers.get("If-Match")
        expected = header.strip().removeprefix("W/").strip('"') if header else None
        self.send(editor.replace(raw, dry_run=dry_run, expected_version=expected))


class ImagesHandler(CatalogHandler):
    @operation("The image catalogue (hidden images: admins only)", response=ImageList)
    def get(self):
        catalog, meta = self.services.catalog.snapshot()
        self.send(ImageList(images=[
            ImageItem(**i.model_dump(), **meta_fields(meta.get(("images", i.slug))))
            for i in readable_images(catalog, self.caller)
        ]))

    @operation("Add an image (admins); 409 if the slug is taken", request=Image,
               response=ImageItem, status=201, admin=True)
    def post(self):
        self.create_item("images", Image)


class ProfilesHandler(CatalogHandler):
    @operation("Profiles offered to you, with availability on this platform", response=ProfileList)
    def get(self):
        self.send(visible_profiles(self.settings, self.caller))

    @operation("Add a profile (admins); 409 if the slug is taken", request=Profile,
               response=ProfileOut, status=201, admin=True)
    def post(self):
        self.create_item("profiles", Profile)


class PoolsHandler(CatalogHandler):
    @operation("Resource pools: capacity and GPUs", response=PoolList)
    def get(self):
        catalog, meta = self.services.catalog.snapshot()
        self.send(PoolList(pools=[
            PoolItem(**p.model_dump(), **meta_fields(meta.get(("pools", p.slug))))
            for p in catalog.pools
        ]))

    @operation("Add a pool (admins); 409 if the slug is taken", request=Pool,
               response=PoolItem, status=201, admin=True)
    def post(self):
        self.create_item("pools", Pool)


# -- items, their history and revert (the same shape for every kind) ----------------------------


def item_handlers(kind: str, out: type[BaseModel], update: type[BaseModel]) -> list[tuple]:
    one = SINGULAR[kind]

    class ItemHandler(CatalogHandler):
        @operation(f"One {one}, with its revision (also its ETag)", response=out)
        def get(self, slug: str):
            if kind == "profiles":
                for profile in visible_profiles(self.settings, self.caller).profiles:
                    if profile.slug == slug:
                        self.set_header("ETag", f'"{profile.revision}"')
                        return self.send(profile)
                raise NotFound(
                    f"No profile {slug!r} in the catalogue (or it is not offered to you).")
            item, meta = self.services.catalog.get_with_meta(kind, slug)
            if kind == "images" and not item.offered_to(self.caller):
                raise NotFound(f"No image {slug!r} in the catalogue.")  # as if it did not exist
            self.send_item(kind, item, meta)

        @operation(f"Change fields of a {one} (admins). Send If-Match: <revision> or "
                   "`revision`; 409 if it changed since; 400 naming the field if the "
                   "catalogue would be invalid", request=update, response=out, admin=True)
        def patch(self, slug: str):
            self.patch_item(kind, update, slug)

        @operation(f"Delete a {one} (admins; If-Match: <revision> or body `revision`). 409 for "
                   "the default profile or a pool still in use", response=ItemDeleted,
                   admin=True)
        def delete(self, slug: str):
            self.delete_item(kind, slug)

    class HistoryHandler(CatalogHandler):
        @operation(f"Every revision of a {one}, newest first (admins)", response=ItemHistory,
                   admin=True)
        def get(self, slug: str):
            self.send(self.editor().history(kind, slug))

    class RevisionHandler(CatalogHandler):
        @operation(f"One revision of a {one} with its diff against the previous one (admins)",
                   response=ItemRevisionDetail, admin=True)
        def get(self, slug: str, revision: str):
            try:
                number = int(revision)
            except ValueError:
                raise NotFound(f"No revision {revision!r}: revisions are numbers.") from None
            self.send(self.editor().revision(kind, slug, number))

    class RevertHandler(CatalogHandler):
        @operation(f"Restore a {one} to the content of an earlier revision, as a new revision "
                   "(admins; If-Match: <current revision> or `current_revision`)",
                   request=RevertItem, response=out, admin=True)
        def post(self, slug: str):
            self.revert_item(kind, slug)

    name = one.capitalize()
    for handler, suffix in ((ItemHandler, "Handler"), (HistoryHandler, "HistoryHandler"),
                            (RevisionHandler, "RevisionHandler"), (RevertHandler, "RevertHandler")):
        handler.__name__ = handler.__qualname__ = f"{name}{suffix}"
    return [
        (f"/api/catalog/{kind}/{{slug}}", ItemHandler),
        (f"/api/catalog/{kind}/{{slug}}/history", HistoryHandler),
        (f"/api/catalog/{kind}/{{slug}}/history/{{revision}}", RevisionHandler),
        (f"/api/catalog/{kind}/{{slug}}/revert", RevertHandler),
    ]


class BuildsHandler(APIHandler):
    @operation("Build an image from a Dockerfile: with the container engine, the admin's package "
               "settings as build arguments (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, "
               "PIP_TRUSTED_HOST, PIP_CERT=/fermi-ca.pem), the result checked and pinned as a "
               "version of the catalogue image `slug`; else with this machine's builder (422 "
               "where none is installed)", request=CreateBuild, response=DescribeBuild,
               status=202, admin=True)
    def post(self):
        self.send(self.services.builds.start(self.caller, self.parse(CreateBuild)), 202)


class ImagePullHandler(APIHandler):
    @operation("Pull a tag of the image's reference through the container engine, check that "
               "it has what dev servers and jobs need (jupyterhub-singleuser, papermill, "
               "ipykernel, fermi-cluster), and pin it by the registry's digest as the image's "
               "first version (admins). 422 naming what is missing (nothing is written); 404 "
               "or 422 with the registry's message when the pull fails; 409 without an engine",
               request=PullImage, response=PulledImage, admin=True)
    async def post(self, slug: str):
        self.send(await self.services.builds.pull(self.caller, slug, self.parse(PullImage)))


class BuildHandler(APIHandler):
    @operation("A build's status and log", response=DescribeBuild)
    def get(self, build_id: str):
        self.send(self.services.builds.get(self.caller, build_id))


routes = [
    ("/api/catalog", CatalogDocumentHandler),
    ("/api/catalog/images", ImagesHandler),
    ("/api/catalog/profiles", ProfilesHandler),
    ("/api/catalog/pools", PoolsHandler),
    *item_handlers("images", ImageItem, ImageUpdate),
    *item_handlers("profiles", ProfileOut, ProfileUpdate),
    *item_handlers("pools", PoolItem, PoolUpdate),
    ("/api/catalog/images/{slug}/pull", ImagePullHandler),
    ("/api/catalog/builds", BuildsHandler),
    ("/api/catalog/builds/{build_id}", BuildHandler),
]
