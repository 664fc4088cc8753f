"""/api/catalog: images and profiles (read by everyone; edited by admins in a later step)."""

from __future__ import annotations

from ..catalog.model import Image
from ..catalog.models import ImageList, ProfileList, ProfileOut
from ..errors import NotFound
from .base import APIHandler, operation


def visible_profiles(settings, caller) -> ProfileList:
    catalog = settings["catalog"].catalog()
    pools = {p.slug: p for p in catalog.pools}
    out = []
    for profile in catalog.profiles:
        if profile.allowed_groups and not caller.admin and not (
            set(profile.allowed_groups) & set(caller.groups)
        ):
            continue
        available, reason = settings["job_backend"].availability(profile, pools[profile.pool])
        out.append(ProfileOut(**profile.model_dump(), available=available,
                              unavailable_reason=reason))
    return ProfileList(profiles=out, pools=catalog.pools)


class ImagesHandler(APIHandler):
    @operation("The image catalogue", response=ImageList)
    def get(self):
        catalog = self.settings["catalog"].catalog()
        images = [i for i in catalog.images if not i.hidden or self.caller.admin]
        images.sort(key=lambda i: (not i.featured,))
        self.send(ImageList(images=images))


class ImageHandler(APIHandler):
    @operation("One image with its versions", response=Image)
    def get(self, slug: str):
        self.send(self.settings["catalog"].get("images", slug))


class ProfilesHandler(APIHandler):
    @operation("Profiles offered to you, with availability on this platform", response=ProfileList)
    def get(self):
        self.send(visible_profiles(self.settings, self.caller))


class ProfileHandler(APIHandler):
    @operation("One profile with its availability", response=ProfileOut)
    def get(self, slug: str):
        for profile in visible_profiles(self.settings, self.caller).profiles:
            if profile.slug == slug:
                return self.send(profile)
        raise NotFound(f"No profile {slug!r} in the catalogue (or it is not offered to you).")


routes = [
    ("/api/catalog/images", ImagesHandler),
    ("/api/catalog/images/{slug}", ImageHandler),
    ("/api/catalog/profiles", ProfilesHandler),
    ("/api/catalog/profiles/{slug}", ProfileHandler),
]
