"""Who may use what of the catalogue: the one rule behind the spawn form, the spawner, job
submissions, deployments, the catalogue API and pages, and cost previews.

- A profile with ``allowed_groups`` is offered only to members of one of them (and to admins);
  an empty list offers it to everyone. A profile that is not offered is neither listed nor run:
  naming it is refused (403) with the groups it is reserved for, so the user knows whom to ask.
- A hidden image is run by nobody (admins included: hiding retires it), and only admins read it
  in the catalogue (``readable_images``), to edit or unhide it.

The spawner turns these refusals into a fallback with a notice for options saved from an earlier
start (``fermi_spawner.options.resolve``); everything else refuses.
"""

from __future__ import annotations

from ..caller import Caller
from ..errors import Forbidden, InvalidInput
from .schema import Catalog, Image, Profile, parse_memory_bytes

# the platform's own reads (seeds, renders from a file): every profile is offered to it
PLATFORM = Caller("(platform)", admin=True)


def may_use_profile(profile: Profile, caller: Caller) -> bool:
    return (caller.admin or not profile.allowed_groups
            or bool(set(profile.allowed_groups) & set(caller.groups)))


def offered_profiles(catalog: Catalog, caller: Caller) -> list[Profile]:
    """The profiles ``caller`` may list and run, in catalogue order."""
    return [p for p in catalog.profiles if may_use_profile(p, caller)]


def runnable_images(catalog: Catalog) -> list[Image]:
    """The images anyone may run: not hidden, featured first, then catalogue order."""
    return sorted((i for i in catalog.images if not i.hidden), key=lambda i: not i.featured)


def readable_images(catalog: Catalog, caller: Caller) -> list[Image]:
    """The images ``caller`` reads in the catalogue (admins: hidden ones too), featured first."""
    return sorted((i for i in catalog.images if i.offered_to(caller)),
                  key=lambda i: not i.featured)


def default_profile(catalog: Catalog, offered: list[Profile]) -> Profile | None:
    """The catalogue's default profile if it is offered, else the first that is."""
    chosen = catalog.default_profile()
    return chosen if chosen in offered else (offered[0] if offered else None)


def choices(slugs: list[str]) -> str:
    return ", ".join(slugs) if slugs else "(none)"


def nothing_offered() -> str:
    return ("No profile of the catalogue is offered to you (each is reserved for groups you are "
            "not in); ask an admin to add you to a group.")


def reserved(profile: Profile, offered: list[Profile]) -> str:
    return (f"Profile {profile.slug!r} is reserved for members of the group(s) "
            f"{', '.join(profile.allowed_groups)}, and you are not one. Ask an admin to add you, "
            f"or choose one of: {choices([p.slug for p in offered])}.")


def image_not_offered(catalog: Catalog, slug: str) -> str:
    """Why ``slug`` cannot be run: unknown, or hidden (with the admin's redirect message)."""
    known = next((i for i in catalog.images if i.slug == slug), None)
    runnable = choices([i.slug for i in catalog.images if not i.hidden])
    if known is not None and known.redirect_message:
        return (f"Image {slug!r} is no longer offered: {known.redirect_message.rstrip('. ')}. "
                f"Choose one of: {runnable} (GET catalog/images lists them).")
    return f"Unknown image {slug!r}; choose one of: {runnable} (GET catalog/images lists them)."


def choose_profile(catalog: Catalog, caller: Caller, slug: str | None) -> Profile:
    """The profile a request names (or the default offered to ``caller``); refused with what to
    choose instead: 400 for an unknown slug, 403 for one reserved for other groups."""
    offered = offered_profiles(catalog, caller)
    if slug is None:
        chosen = default_profile(catalog, offered)
        if chosen is None:
            raise Forbidden(nothing_offered())
        return chosen
    profile = next((p for p in catalog.profiles if p.slug == slug), None)
    if profile is None:
        raise InvalidInput(f"Unknown profile {slug!r}; choose one of: "
                           f"{choices([p.slug for p in offered])} (GET catalog/profiles lists them).")
    if profile not in offered:
        raise Forbidden(reserved(profile, offered))
    return profile


def choose_image(catalog: Catalog, slug: str | None) -> Image:
    """The image a request names (or the catalogue's default); 400 naming the runnable ones."""
    if slug is None:
        return catalog.default_image()
    image = next((i for i in catalog.images if i.slug == slug), None)
    if image is None or image.hidden:
        raise InvalidInput(image_not_offered(catalog, slug))
    return image


def larger_profile(catalog: Catalog, caller: Caller, slug: str) -> Profile | None:
    """The profile to suggest when a workload outgrew ``slug``'s memory: the one with the least
    memory above it, among those offered to ``caller`` with as many GPUs (None: none is)."""
    current = next((p for p in catalog.profiles if p.slug == slug), None)
    if current is None:
        return None
    memory = parse_memory_bytes(current.memory)
    larger = [p for p in offered_profiles(catalog, caller)
              if parse_memory_bytes(p.memory) > memory and p.gpu >= current.gpu]
    return min(larger, key=lambda p: (parse_memory_bytes(p.memory), p.gpu), default=None)


def out_of_memory(catalog: Catalog, caller: Caller, slug: str, what: str = "The job") -> str:
    """What a workload killed at its memory limit tells its user: the limit, the profile, and a
    larger one to pick."""
    current = next((p for p in catalog.profiles if p.slug == slug), None)
    limit = current.memory if current else "memory"
    suggestion = larger_profile(catalog, caller, slug)
    advice = (f"pick {suggestion.slug} ({suggestion.memory})" if suggestion else
              "use less memory, or ask an admin for a profile with more")
    return (f"{what} exceeded the {limit} memory of profile {slug} and was stopped (out of "
            f"memory); {advice}.")
