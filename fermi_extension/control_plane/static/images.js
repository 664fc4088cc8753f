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
