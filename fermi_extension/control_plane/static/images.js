/* The images page: search, filter by framework, and the start link from the chosen profile,
   version and server name. */
(function () {
  var list = document.getElementById("images");
  var search = document.getElementById("image-search");
  var framework = document.getElementById("image-framework");
  var featured = document.getElementById("image-featured");
  var empty = document.getElementById("images-empty");
  var user = list.getAttribute("data-user");
  function filter() {
    var words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
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

/* Admins: pull a tag of a custom image (checked and pinned by the server), and build one from a
   Dockerfile, following the build's log while the engine writes it. The messages come
   translated from the page (data-msg-*); the server's own messages are shown as they are. */
(function () {
  var admin = document.getElementById("image-admin");
  if (!admin) return;
  var API = admin.getAttribute("data-api");
  function msg(name, vars) {
    var text = admin.getAttribute("data-msg-" + name) || name;
    return text.replace(/\{(\w+)\}/g, function (m, k) { return k in vars ? String(vars[k]) : m; });
  }
  function cookie(name) {
    var found = document.cookie.split(";").map(function (c) { return c.trim(); })
      .filter(function (c) { return c.indexOf(name + "=") === 0; })[0];
    return found ? decodeURIComponent(found.slice(name.length + 1)) : null;
  }
  function call(method, path, body) {
    var meta = document.querySelector('meta[name="fermi-xsrf"]');
    var headers = { "Accept": "application/json",
      "X-XSRFToken": cookie("_xsrf") || (meta && meta.getAttribute("content")) || "" };
    var init = { method: method, headers: headers, credentials: "same-origin" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(API + path, init).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (!response.ok) throw new Error(data.message || response.statusText);
        return data;
      });
    });
  }

  Array.prototype.forEach.call(document.querySelectorAll(".admin-pull"), function (box) {
    var slug = box.getAttribute("data-slug");
    var tag = box.querySelector(".pull-tag");
    var result = box.querySelector(".pull-result");
    var button = box.querySelector("button.pull");
    button.addEventListener("click", function () {
      if (!tag.value.trim()) { tag.focus(); return; }
      button.disabled = true;
      result.textContent = msg("pulling", { reference: slug + ":" + tag.value.trim() });
      call("POST", "catalog/images/" + encodeURIComponent(slug) + "/pull",
           { tag: tag.value.trim() })
        .then(function (pulled) {
          result.textContent = msg("pinned", { digest: pulled.digest, tag: pulled.tag });
        })
        .catch(function (error) { result.textContent = msg("failed", { reason: error.message }); })
        .then(function () { button.disabled = false; });
    });
  });

  var slug = document.getElementById("build-slug");
  var reference = document.getElementById("build-reference");
  var dockerfile = document.getElementById("build-dockerfile");
  var start = document.getElementById("build-start");
  var status = document.getElementById("build-status");
  var log = document.getElementById("build-log");
  function suggest() {
    var option = slug.options[slug.selectedIndex];
    if (option) reference.value = option.getAttribute("data-reference") + ":1";
  }
  slug.addEventListener("change", suggest);
  suggest();
  function follow(id) {
    call("GET", "catalog/builds/" + encodeURIComponent(id)).then(function (build) {
      log.hidden = false;
      var atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.textContent = build.log;
      if (atEnd) log.scrollTop = log.scrollHeight;
      status.textContent = build.reason ? msg("failed", { reason: build.reason })
        : msg("build", { id: build.id, status: build.status });
      if (build.status === "succeeded" || build.status === "failed") start.disabled = false;
      else setTimeout(function () { follow(id); }, 1000);
    }).catch(function (error) {
      status.textContent = msg("failed", { reason: error.message });
      start.disabled = false;
    });
  }
  start.addEventListener("click", function () {
    start.disabled = true;
    call("POST", "catalog/builds", { slug: slug.value, reference: reference.value.trim(),
                                    dockerfile: dockerfile.value })
      .then(function (build) { follow(build.id); })
      .catch(function (error) {
        status.textContent = msg("failed", { reason: error.message });
        start.disabled = false;
      });
  });
})();
