"""The images page for users at ``{prefix}images``: browse, search and filter the image catalogue,
see an image's versions and labels, and start a dev environment with it.

Rendered on the server from the catalogue (it works without JavaScript); a small inline script
searches, filters by framework, and builds the start link from the chosen profile and server
name. The link opens the hub's spawn form with the image preselected (``/hub/spawn#image=…``):
a fragment, because query arguments would start the server without showing the form.
"""

from __future__ import annotations

import html
from urllib.parse import quote

from tornado import web

from ..catalog.schema import Image
from .admin_pages import AdminPage
from ..catalog.api import visible_profiles


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def frameworks(image: Image) -> list[str]:
    return sorted({v.labels["framework"] for v in image.versions if v.labels.get("framework")})


def start_link(image: Image, version: str | None = None, profile: str | None = None) -> str:
    fragment = f"image={quote(image.slug)}"
    if version:
        fragment += f"&image_version={quote(version)}"
    if profile:
        fragment += f"&profile={quote(profile)}"
    return f"/hub/spawn#{fragment}"


STYLE = """
.filters { display: flex; gap: .8rem; flex-wrap: wrap; align-items: end; margin: 0 0 1rem; }
.filters label { display: flex; flex-direction: column; font-size: .85rem; color: var(--muted); }
.filters input, .filters select { font: inherit; padding: .3rem .5rem; border: 1px solid #d1d5db;
  border-radius: .35rem; min-width: 14rem; }
article.image { background: #fff; border: 1px solid var(--line); border-radius: .6rem;
  padding: .7rem 1rem; margin: 0 0 .8rem; }
article.image h2 { font-size: 1.1rem; margin: 0 0 .3rem; display: flex; gap: .5rem;
  align-items: center; flex-wrap: wrap; }
article.image.deprecated { border-color: #fcd34d; }
.redirect { color: #92400e; background: #fffbeb; padding: .3rem .6rem; border-radius: .35rem; }
.start { display: flex; gap: .6rem; flex-wrap: wrap; align-items: end; margin-top: .6rem; }
.start label { display: flex; flex-direction: column; font-size: .8rem; color: var(--muted); }
.start select, .start input { font: inherit; font-size: .9rem; padding: .2rem .4rem; }
a.button { background: var(--accent); color: #fff; text-decoration: none; padding: .35rem .8rem;
  border-radius: .35rem; }
details { margin-top: .4rem; } summary { cursor: pointer; color: var(--accent); }
.empty { color: var(--muted); }
code { background: #f3f4f6; padding: 0 .25rem; border-radius: .2rem; }
"""

SCRIPT = """
(function () {
  var list = document.getElementById("images");
  var search = document.getElementById("image-search");
  var framework = document.getElementById("image-framework");
  var featured = document.getElementById("image-featured");
  var empty = document.getElementById("images-empty");
  var user = list.getAttribute("data-user");
  function filter() {
    var words = search.value.toLowerCase().split(/\\s+/).filter(Boolean);
    var shown = 0;
    Array.prototype.forEach.call(list.querySelectorAll("article.image"), function (a) {
      var text = a.getAttribute("data-search");
      var ok = words.every(function (w) { return text.indexOf(w) >= 0; });
      if (framework.value) ok = ok && (" " + a.getAttribute("data-frameworks") + " ")
        .indexOf(" " + framework.value + " ") >= 0;
      if (featured.checked) ok = ok && a.classList.contains("featured");
      a.hidden = !ok;
      if (ok) shown += 1;
    });
    empty.hidden = shown > 0;
  }
  function link(article) {
    var f = "image=" + encodeURIComponent(article.getAttribute("data-slug"));
    var version = article.querySelector("select.version");
    var profile = article.querySelector("select.profile");
    var name = article.querySelector("input.server-name");
    if (version && version.value) f += "&image_version=" + encodeURIComponent(version.value);
    if (profile && profile.value) f += "&profile=" + encodeURIComponent(profile.value);
    var server = name ? name.value.trim() : "";
    var path = server ? "/hub/spawn/" + encodeURIComponent(user) + "/" +
      encodeURIComponent(server) : "/hub/spawn";
    article.querySelector("a.button").href = path + "#" + f;
  }
  Array.prototype.forEach.call(list.querySelectorAll("article.image"), function (a) {
    Array.prototype.forEach.call(a.querySelectorAll("select, input"), function (el) {
      el.addEventListener("input", function () { link(a); });
      el.addEventListener("change", function () { link(a); });
    });
    link(a);
  });
  [search, framework, featured].forEach(function (el) {
    el.addEventListener("input", filter); el.addEventListener("change", filter);
  });
  var wanted = new URLSearchParams(location.search);
  if (wanted.get("q")) search.value = wanted.get("q");
  if (wanted.get("framework")) framework.value = wanted.get("framework");
  filter();
})();
"""


class ImagesPage(AdminPage):
    """Every user's view of the image catalogue (镜像管理), with a start link per image."""

    @web.authenticated
    def get(self):
        caller = self.caller
        catalog, _meta = self.settings["catalog"].snapshot()
        images = [i for i in catalog.images if i.offered_to(caller)]
        images.sort(key=lambda i: (not i.featured, i.deprecated))
        profiles = visible_profiles(self.settings, caller).profiles
        default_profile = catalog.default_profile().slug
        profile_options = "".join(
            f'<option value="{_esc(p.slug)}"{" selected" if p.slug == default_profile else ""}'
            f'{"" if p.available else " disabled"}>{_esc(p.name)} — {p.cpu:g} CPU, '
            f'{_esc(p.memory)}{f", {p.gpu} GPU" if p.gpu else ""}, {p.price_per_hour:.2f}/h'
            f'{"" if p.available else " (unavailable / 不可用)"}</option>'
            for p in profiles)
        every_framework = sorted({f for i in images for f in frameworks(i)})
        articles = "\n".join(self.article(i, profile_options) for i in images)
        prefix = self.settings["prefix"]
        body = f"""<div class="guide"><b>Images / 镜像管理</b> — the environments your dev
environments (开发环境) and training jobs (训练任务) run in: official, community and custom images,
each with its versions. Pick one and start a dev environment with it; admins add and edit images in
the <a style="color:#fff" href="{prefix}admin/catalog">catalogue</a>.
选择镜像即可启动开发环境；训练任务和推理服务也使用同一镜像目录。</div>
<div class="filters" role="search">
<label for="image-search">Search / 搜索<input id="image-search" type="search"
 placeholder="name, description, label… / 名称、描述、标签"></label>
<label for="image-framework">Framework / 框架<select id="image-framework">
<option value="">All / 全部</option>
{''.join(f'<option value="{_esc(f)}">{_esc(f)}</option>' for f in every_framework)}
</select></label>
<label><span><input id="image-featured" type="checkbox"> Featured only / 仅精选</span></label>
</div>
<div id="images" data-user="{_esc(caller.name)}">
{articles}
<p id="images-empty" class="empty" hidden>No image matches. 没有匹配的镜像。</p>
</div>"""
        self.page("Images / 镜像", body + f"<script>{SCRIPT}</script>",
                  head=f"<style>{STYLE}</style>")

    def article(self, image: Image, profile_options: str) -> str:
        marks = []
        if image.featured:
            marks.append('<span class="tag">★ featured / 精选</span>')
        marks.append(f'<span class="tag off">{_esc(image.kind)}</span>')
        if image.deprecated:
            marks.append('<span class="tag warn">deprecated / 已弃用</span>')
        if image.hidden:
            marks.append('<span class="tag off">hidden / 已隐藏 (admins only)</span>')
        redirect = (f'<p class="redirect">{_esc(image.redirect_message)}</p>'
                    if image.redirect_message else "")
        rows = "".join(
            f"<tr><td><code>{_esc(v.tag)}</code></td>"
            f"<td>{_esc(v.digest or '—')}</td>"
            f"<td>{' '.join(f'<span class=tag>{_esc(k)}: {_esc(x)}</span>' for k, x in v.labels.items()) or '—'}</td></tr>"
            for v in image.versions)
        versions = "".join(f'<option value="{_esc(v.tag)}">{_esc(v.tag)}</option>'
                           for v in image.versions)
        search = " ".join([image.slug, image.name, image.description, image.kind,
                           image.redirect_message or "",
                           *(f"{k} {x}" for v in image.versions for k, x in v.labels.items()),
                           *(v.tag for v in image.versions)]).lower()
        classes = "image" + (" featured" if image.featured else "") + (
            " deprecated" if image.deprecated else "")
        local = ("runs on this machine / 可在本机运行" if image.local
                 else "container image (Kubernetes) / 容器镜像")
        return f"""<article class="{classes}" data-slug="{_esc(image.slug)}"
 data-frameworks="{_esc(' '.join(frameworks(image)))}" data-search="{_esc(search)}">
<h2>{_esc(image.name)} <code>{_esc(image.slug)}</code> {' '.join(marks)}</h2>
<p>{_esc(image.description)}</p>{redirect}
<details><summary>Details and versions / 详情与版本 ({len(image.versions)})</summary>
<p class="muted">Reference / 镜像地址: <code>{_esc(image.reference)}</code> · {local}
· kernel <code>{_esc(image.kernel)}</code></p>
<table><thead><tr><th>Version / 版本</th><th>Digest</th><th>Labels / 标签</th></tr></thead>
<tbody>{rows or '<tr><td colspan="3">—</td></tr>'}</tbody></table></details>
<div class="start">
<label>Profile / 资源规格<select class="profile">{profile_options}</select></label>
{f'<label>Version / 版本<select class="version">{versions}</select></label>' if versions else ''}
<label>Server name (optional) / 服务器名称（可选）<input class="server-name" size="14"
 pattern="[A-Za-z0-9._-]*" placeholder="e.g. {_esc(image.slug[:20])}"></label>
<a class="button" href="{_esc(start_link(image))}">Start a dev environment / 启动开发环境</a>
</div></article>"""

