"""One options model and one spawn form for both spawners, built from the catalogue.

``user_options`` have KubeSpawner's shape, so a script starts a server through the hub REST API
as it would on any JupyterHub (``POST /hub/api/users/NAME/server {"profile": "cpu-small"}``)::

    {"profile": "cpu-small", "image": "python-local", "image_version": "0.1.0"}

Every key is optional: a missing one means the default. ``resolve`` checks the options against
the catalogue as it is *now* and turns them into a ``Resolved`` choice, or refuses them with a
sentence saying why and what to choose instead:

- options the request carries (the form, the REST API, ``/hub/spawn?opt-…``) that name an
  unknown profile, image or version, or a profile reserved for groups the user is not in, are
  refused (400 / 403);
- options *saved* from an earlier start that no longer fit (an admin removed the profile, the
  user left the group) fall back to the defaults, with a notice the user sees in the spawn's
  progress events (never a 500);
- a profile or image that cannot run here (a GPU profile on a machine without GPUs) is refused
  with the reason (422), whoever asked.

Nothing here knows about a spawner: the spawners (``base.FermiSpawnerMixin``) supply who the user
is and what can run where, and turn ``Refused`` into the hub's HTTP error.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any, Callable

from fermi_extension.caller import Caller
from fermi_extension.catalog import access
from fermi_extension.catalog.schema import Catalog, Image, Profile, gpus
from fermi_extension.spec import RuntimeSpec, runtime_spec

OPTION_KEYS = ("profile", "image", "image_version", "datasets")
Check = Callable[..., "tuple[bool, str | None]"]


class Refused(Exception):
    """The options cannot be honoured; ``message`` says why and what to do instead."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Resolved:
    """What one spawn runs: rebuilt from scratch for every spawn."""

    profile: Profile
    image: Image
    version: str | None
    spec: RuntimeSpec
    notices: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)  # references, checked by the spawner

    @property
    def user_options(self) -> dict[str, str]:
        options = {"profile": self.profile.slug, "image": self.image.slug}
        if self.version:
            options["image_version"] = self.version
        if self.datasets:
            options["datasets"] = ",".join(self.datasets)
        return options


def who(groups: set[str] | frozenset[str], admin: bool) -> Caller:
    return Caller("(spawner)", admin=admin, groups=tuple(sorted(groups)))


def offered_profiles(catalog: Catalog, groups: set[str], admin: bool) -> list[Profile]:
    """The profiles this user may choose: the catalogue's one rule (``catalog/access.py``)."""
    return access.offered_profiles(catalog, who(groups, admin))


def offered_images(catalog: Catalog) -> list[Image]:
    """Images users may choose (``catalog/access.py``): not hidden, featured first."""
    return access.runnable_images(catalog)


def _string(options: dict, key: str) -> str | None:
    value = options.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise Refused(400, f"user_options.{key} must be a string (a slug from the catalogue), "
                           f"not {json.dumps(value)[:60]}.")
    return value


def resolve(catalog: Catalog, options: Any, *, groups: set[str] | frozenset[str] = frozenset(),
            admin: bool = False, requested: bool = True,
            profile_check: Check = lambda profile, pool: (True, None),
            image_check: Check = lambda image: (True, None)) -> Resolved:
    """Check ``options`` against ``catalog`` for a user in ``groups``.

    ``requested``: the options come with this request (refuse what does not fit) rather than
    from an earlier start (fall back to the defaults, with a notice). ``profile_check(profile,
    pool)`` and ``image_check(image)`` say whether the spawner can run them here, and why not.
    """
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise Refused(400, "user_options must be a JSON object such as "
                           '{"profile": "cpu-small", "image": "python-local"}.')
    groups = set(groups)
    notices: list[str] = []
    pools = {p.slug: p for p in catalog.pools}

    # -- profile ---------------------------------------------------------------------------------
    mine = offered_profiles(catalog, groups, admin)
    default_profile = access.default_profile(catalog, mine)
    if default_profile is None:
        raise Refused(403, access.nothing_offered())
    profiles = {p.slug: p for p in catalog.profiles}
    wanted = _string(options, "profile")
    if wanted is None:
        profile = default_profile
    elif wanted not in profiles:
        if requested:
            raise Refused(400, f"Unknown profile {wanted!r}; choose one of: "
                               f"{access.choices([p.slug for p in mine])}.")
        notices.append(f"Your saved profile {wanted!r} is no longer offered: starting on the "
                       f"default profile {default_profile.slug!r} ({default_profile.name}) "
                       "instead.")
        profile = default_profile
    elif profiles[wanted] not in mine:
        message = access.reserved(profiles[wanted], mine)
        if requested:
            raise Refused(403, message)
        notices.append(f"{message} Starting on {default_profile.slug!r} instead.")
        profile = default_profile
    else:
        profile = profiles[wanted]
    ok, reason = profile_check(profile, pools.get(profile.pool))
    if not ok:
        raise Refused(422, reason or f"Profile {profile.slug!r} cannot run here.")

    # -- image -----------------------------------------------------------------------------------
    shown = offered_images(catalog)
    runnable = [i for i in shown if image_check(i)[0]]
    default_image = catalog.default_image()
    if default_image not in runnable:
        usable = [i for i in runnable if not i.deprecated]
        default_image = (usable or runnable or [default_image])[0]
    images = {i.slug: i for i in catalog.images}
    wanted_image = _string(options, "image")
    image_fell_back = False
    if wanted_image is None:
        image = default_image
    elif images.get(wanted_image) not in shown:
        known = images.get(wanted_image)
        why = (f"is no longer offered: {known.redirect_message.rstrip('. ')}"
               if known is not None and known.redirect_message else
               "is no longer offered" if known is not None else "is not in the catalogue")
        if requested:
            raise Refused(400, f"Image {wanted_image!r} {why}. Choose one of: "
                               f"{access.choices([i.slug for i in runnable])}.")
        notices.append(f"Your saved image {wanted_image!r} {why}: starting with "
                       f"{default_image.slug!r} ({default_image.name}) instead.")
        image, image_fell_back = default_image, True
    else:
        image = images[wanted_image]
    ok, reason = image_check(image)
    if not ok:
        raise Refused(422, reason or f"Image {image.slug!r} cannot run here.")
    if image.deprecated:
        notices.append(f"Image {image.slug!r} is deprecated"
                       + (f": {image.redirect_message.rstrip('. ')}." if image.redirect_message
                          else ".") + " It still runs; move on when you can.")

    # -- version ---------------------------------------------------------------------------------
    tags = [v.tag for v in image.versions]
    wanted_version = None if image_fell_back else _string(options, "image_version")
    version = tags[0] if tags else None
    if wanted_version is not None and wanted_version in tags:
        version = wanted_version
    elif wanted_version is not None:
        if requested:
            raise Refused(400, f"Image {image.slug!r} has no version {wanted_version!r}; choose "
                               f"one of: {access.choices(tags)}.")
        notices.append(f"Your saved version {wanted_version!r} of image {image.slug!r} is no "
                       f"longer offered: starting with {version!r} instead.")

    return Resolved(profile, image, version, runtime_spec(image, profile, version), notices,
                    dataset_refs(options.get("datasets")))


def dataset_refs(value: Any) -> list[str]:
    """``"wine, images:2"`` (the form) or ``["wine", "images:2"]`` (the REST API)."""
    if value in (None, ""):
        return []
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Refused(400, "user_options.datasets must be dataset names, e.g. "
                           '"wine,images:2" or ["wine", "images:2"].')
    return [v.strip() for v in value if v.strip()]


def options_from_form(formdata: dict[str, list]) -> dict[str, str]:
    """The spawn form's fields (and ``/hub/spawn?opt-…`` query arguments) as ``user_options``.

    Also understands KubeSpawner's ``profile-option-{profile}--image`` fields, so a form written
    for KubeSpawner still works."""

    def first(key: str) -> str | None:
        values = formdata.get(key) or [None]
        value = values[0]
        if isinstance(value, bytes):
            value = value.decode("utf8", "replace")
        return value.strip() if isinstance(value, str) and value.strip() else None

    options = {key: value for key in OPTION_KEYS if (value := first(key)) is not None}
    profile = options.get("profile")
    if profile:
        prefix = f"profile-option-{profile}--"
        for key in formdata:
            if key.startswith(prefix) and key[len(prefix):] in OPTION_KEYS:
                value = first(key)
                if value is not None:
                    options.setdefault(key[len(prefix):], value)
    return options


def request_carries_options(handler: Any) -> bool:
    """Whether the request that started this spawn chose options itself (a form, a REST body
    with options, ``/hub/spawn?…``) rather than reusing those saved from the last start."""
    request = getattr(handler, "request", None)
    if request is None:
        return False
    if request.method == "GET":
        ignored = {"next", "display_name", "_xsrf"}
        return any(key not in ignored for key in request.query_arguments)
    if getattr(request, "body_arguments", None):
        return any(key != "_xsrf" for key in request.body_arguments)
    try:
        body = json.loads(request.body or b"null")
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    if "user_options" in body or "display_name" in body:  # the REST API's newer body shape
        return bool(body.get("user_options"))
    return bool(body)


# -- the spawn form --------------------------------------------------------------------------------


@dataclass
class ProfileView:
    profile: Profile
    available: bool
    reason: str | None = None
    note: str | None = None  # e.g. "1 of 2 GPUs free now"


@dataclass
class ImageView:
    image: Image
    available: bool
    reason: str | None = None


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cpu(value: float) -> str:
    return f"{value:g} CPU" if value == 1 else f"{value:g} CPUs"


def _profile_card(view: ProfileView, checked: bool) -> str:
    p = view.profile
    facts = [_cpu(p.cpu), p.memory]
    if p.gpu:
        facts.append(gpus(p.gpu) + (f" ({p.gpu_type})" if p.gpu_type else ""))
    facts.append(f"{p.price_per_hour:.2f} / h")
    if view.available:
        state = ('<span class="fermi-ok">available / 可用</span>'
                 + (f" · {_esc(view.note)}" if view.note else ""))
    else:
        state = f'<span class="fermi-bad">unavailable / 不可用: {_esc(view.reason)}</span>'
    groups = (f' <span class="fermi-tag">{_esc(", ".join(p.allowed_groups))}</span>'
              if p.allowed_groups else "")
    return f"""<label class="fermi-card{'' if view.available else ' fermi-disabled'}" data-profile="{_esc(p.slug)}">
<input type="radio" name="profile" value="{_esc(p.slug)}"{' checked' if checked else ''}{'' if view.available else ' disabled'}>
<span class="fermi-name">{_esc(p.name)}</span> <code>{_esc(p.slug)}</code>{groups}
<span class="fermi-facts">{' · '.join(_esc(f) for f in facts)}</span>
{f'<span class="fermi-desc">{_esc(p.description)}</span>' if p.description else ''}
<span class="fermi-state">{state}</span></label>"""


def render_form(profiles: list[ProfileView], images: list[ImageView],
                selected: dict[str, str | None]) -> str:
    """The HTML of the spawn form (inside JupyterHub's own ``<form>``): profiles as cards with
    CPU, memory, GPUs, price and availability; the image and its version as selects, with the
    image's description. ``selected``: ``profile``, ``image``, ``image_version`` to preselect.
    A link may preselect others with ``#image=…&image_version=…&profile=…`` (the images page
    does), read by the form's script: query arguments would start the server at once."""
    cards = "\n".join(_profile_card(v, v.profile.slug == selected.get("profile"))
                      for v in profiles)
    image_options, version_groups, details = [], [], {}
    for view in images:
        image = view.image
        marks = (" ★" if image.featured else "") + (" (deprecated / 已弃用)" if image.deprecated else "")
        disabled = "" if view.available else " disabled"
        chosen = " selected" if image.slug == selected.get("image") else ""
        suffix = "" if view.available else f" — {view.reason}"
        image_options.append(f'<option value="{_esc(image.slug)}"{chosen}{disabled}>'
                             f"{_esc(image.name)}{_esc(marks)}{_esc(suffix)}</option>")
        versions = []
        for version in image.versions:
            labels = ", ".join(f"{k} {v}" for k, v in version.labels.items())
            pick = (image.slug == selected.get("image")
                    and version.tag == selected.get("image_version"))
            versions.append(f'<option value="{_esc(version.tag)}"{" selected" if pick else ""}>'
                            f"{_esc(version.tag)}{_esc(f' ({labels})' if labels else '')}</option>")
        version_groups.append(f'<optgroup label="{_esc(image.name)}" data-image="{_esc(image.slug)}">'
                              + "".join(versions) + "</optgroup>")
        details[image.slug] = {
            "description": image.description,
            "deprecated": image.deprecated,
            "redirect": image.redirect_message or "",
            "kind": image.kind,
        }
    data = json.dumps(details).replace("</", "<\\/")
    return f"""<div class="fermi-spawn">
<style>
.fermi-spawn fieldset {{ border: 0; padding: 0; margin: 0 0 1rem; }}
.fermi-spawn legend {{ font-size: 1.05rem; font-weight: 600; margin-bottom: .4rem; }}
.fermi-card {{ display: block; border: 1px solid #d1d5db; border-radius: .5rem; padding: .5rem .8rem;
  margin: 0 0 .5rem; cursor: pointer; }}
.fermi-card:has(input:checked) {{ border-color: #2563eb; box-shadow: 0 0 0 1px #2563eb; }}
.fermi-card.fermi-disabled {{ opacity: .6; cursor: not-allowed; }}
.fermi-card span {{ display: block; }} .fermi-card .fermi-name {{ display: inline; font-weight: 600; }}
.fermi-facts, .fermi-desc {{ color: #4b5563; font-size: .9rem; }}
.fermi-ok {{ color: #15803d; display: inline !important; }} .fermi-bad {{ color: #b91c1c; }}
.fermi-state {{ font-size: .85rem; }}
.fermi-tag {{ display: inline !important; font-size: .75rem; background: #eef2ff; color: #3730a3;
  border-radius: .8rem; padding: 0 .4rem; }}
.fermi-spawn select {{ width: 100%; margin-bottom: .4rem; }}
.fermi-warn {{ color: #92400e; }}
</style>
<fieldset id="fermi-profiles"><legend>Resource profile / 资源规格</legend>
{cards}
</fieldset>
<fieldset><legend>Image / 镜像</legend>
<label for="fermi-image">Image / 镜像</label>
<select class="form-select" name="image" id="fermi-image">{''.join(image_options)}</select>
<label for="fermi-version">Version / 版本</label>
<select class="form-select" name="image_version" id="fermi-version">{''.join(version_groups)}</select>
<p id="fermi-image-description" class="fermi-desc"></p>
<p id="fermi-image-warning" class="fermi-warn"></p>
</fieldset>
<fieldset><legend>Datasets / 数据集</legend>
<label for="fermi-datasets">Attach datasets (comma-separated, e.g. <code>wine</code> or
<code>wine:2</code>); each appears at <code>datasets/NAME</code> in your home folder /
挂载数据集（逗号分隔），出现在主目录的 <code>datasets/名称</code></label>
<input class="form-control" name="datasets" id="fermi-datasets"
 value="{_esc(selected.get("datasets") or "")}" placeholder="wine, images:2">
</fieldset>
<script type="application/json" id="fermi-images">{data}</script>
<script>
(function () {{
  var images = JSON.parse(document.getElementById("fermi-images").textContent);
  var image = document.getElementById("fermi-image");
  var version = document.getElementById("fermi-version");
  function show() {{
    var slug = image.value, first = null, keep = false;
    Array.prototype.forEach.call(version.querySelectorAll("optgroup"), function (group) {{
      var mine = group.getAttribute("data-image") === slug;
      group.hidden = !mine; group.disabled = !mine;
      Array.prototype.forEach.call(group.querySelectorAll("option"), function (o) {{
        if (mine && !first) first = o;
        if (mine && o.selected) keep = true;
      }});
    }});
    if (!keep && first) first.selected = true;
    version.disabled = !first;
    var info = images[slug] || {{}};
    document.getElementById("fermi-image-description").textContent = info.description || "";
    document.getElementById("fermi-image-warning").textContent = info.deprecated ?
      "Deprecated / 已弃用" + (info.redirect ? ": " + info.redirect : "") : "";
  }}
  var wanted = {{}};
  location.hash.replace(/^#/, "").split("&").forEach(function (part) {{
    var kv = part.split("=");
    if (kv[0]) wanted[decodeURIComponent(kv[0])] = decodeURIComponent(kv[1] || "");
  }});
  if (wanted.image && images[wanted.image]) image.value = wanted.image;
  Array.prototype.forEach.call(document.querySelectorAll("#fermi-profiles input"), function (r) {{
    if (wanted.profile && r.value === wanted.profile && !r.disabled) r.checked = true;
  }});
  image.addEventListener("change", show);
  show();
  if (wanted.image_version) {{
    Array.prototype.forEach.call(version.querySelectorAll("optgroup:not([hidden]) option"), function (o) {{
      if (o.value === wanted.image_version) o.selected = true;
    }});
  }}
}})();
</script>
</div>"""
