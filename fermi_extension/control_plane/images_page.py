"""The images page for users at ``{prefix}images``: browse, search and filter the image catalogue,
see an image's versions and labels, and start a dev environment with it.

Rendered on the server from the catalogue (it works without JavaScript); a small script (``static/images.js``)
searches, filters by framework, and builds the start link from the chosen profile and server
name. The link opens the hub's spawn form with the image preselected (``/hub/spawn#image=…``):
a fragment, because query arguments would start the server without showing the form.

Admins also pull a tag of a custom image from its registry and build one from a Dockerfile
here, following the build's log as the engine writes it (``catalog/builds.py``); in process
mode the page says why that is off instead of offering buttons that would only fail.
"""

from __future__ import annotations

from urllib.parse import quote

from tornado import web

from ..catalog.api import visible_profiles
from ..catalog.schema import Image
from ..containers.engine import Isolation
from .pages import PageHandler


def frameworks(image: Image) -> list[str]:
    return sorted({v.labels["framework"] for v in image.versions if v.labels.get("framework")})


def start_link(image: Image, version: str | None = None, profile: str | None = None) -> str:
    fragment = f"image={quote(image.slug)}"
    if version:
        fragment += f"&image_version={quote(version)}"
    if profile:
        fragment += f"&profile={quote(profile)}"
    return f"/hub/spawn#{fragment}"


def search_text(image: Image) -> str:
    """What the page's search box matches against, lower-cased."""
    return " ".join([image.slug, image.name, image.description, image.kind,
                     image.redirect_message or "",
                     *(f"{k} {x}" for v in image.versions for k, x in v.labels.items()),
                     *(v.tag for v in image.versions)]).lower()


class ImagesPage(PageHandler):
    """Every user's view of the image catalogue (镜像管理), with a start link per image."""

    @web.authenticated
    def get(self):
        caller = self.caller
        xsrf = None
        if caller.admin:  # the pull and build buttons call the API with the XSRF token
            xsrf = self.xsrf_token
            xsrf = xsrf.decode() if isinstance(xsrf, bytes) else xsrf
        catalog, _meta = self.services.catalog.snapshot()
        images = [i for i in catalog.images if i.offered_to(caller)]
        images.sort(key=lambda i: (not i.featured, i.deprecated))
        self.render_page(
            "images.html", images=images, caller_name=caller.name,
            profiles=visible_profiles(self.settings, caller).profiles,
            default_profile=catalog.default_profile().slug,
            every_framework=sorted({f for i in images for f in frameworks(i)}),
            frameworks=frameworks, start_link=start_link, search_text=search_text,
            admin=caller.admin, xsrf=xsrf, isolation=Isolation.from_env())
