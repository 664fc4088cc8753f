/* The catalogue editor of the Fermi admin page (plain JavaScript, no build step).
 *
 * It calls the control-plane API with the hub login cookie. JupyterHub accepts that cookie only
 * with the XSRF token, so every request carries it as the X-XSRFToken header (the `_xsrf` cookie
 * of this service, or the token the page was rendered with). Every change sends the revision the
 * item was loaded at (If-Match), so that nobody overwrites someone else's change unseen.
 */
(function () {
  "use strict";

  var root = document.getElementById("catalog-admin");
  if (!root) return;
  var API = root.getAttribute("data-api");
  var KINDS = ["images", "profiles", "pools"];
  // the page's strings, translated by the server from the one message catalogue (msgid → text);
  // `{name}` placeholders are filled from `vars`
  var STRINGS = JSON.parse((document.getElementById("fermi-strings") || {}).textContent || "{}");
  function T(msgid, vars) {
    var text = STRINGS[msgid] || msgid;
    return vars ? text.replace(/\{(\w+)\}/g, function (m, k) {
      return k in vars ? String(vars[k]) : m;
    }) : text;
  }
  var LABEL = { images: T("Images"), profiles: T("Profiles"), pools: T("Pools") };
  var ONE = { images: T("image"), profiles: T("profile"), pools: T("pool") };
  var READ_ONLY = ["revision", "updated_at", "updated_by", "available", "unavailable_reason"];
  var TEMPLATE = {
    images: {
      slug: "", name: "", description: "", kind: "official",
      reference: "quay.io/jupyter/scipy-notebook", local: false, kernel: "python3",
      versions: [{ tag: "2025-06-30", labels: { python: "3.12" } }],
      featured: false, hidden: false, deprecated: false, redirect_message: null,
      pull_secret: null
    },
    profiles: {
      slug: "", name: "", description: "", cpu: 1, memory: "2Gi", gpu: 0,
      gpu_resource: "nvidia.com/gpu", gpu_type: null, pool: "cpu", node_selector: {},
      tolerations: [], price_per_hour: 0, allowed_groups: [], idle_cull_minutes: 60,
      default: false
    },
    pools: { slug: "", name: "", max_running_jobs: 2, gpus: 0, gpu_type: null }
  };
  var state = { catalog: null };

  // -- talking to the API --------------------------------------------------------------------

  function cookie(name) {
    var parts = document.cookie ? document.cookie.split(";") : [];
    for (var i = 0; i < parts.length; i++) {
      var kv = parts[i].trim();
      if (kv.indexOf(name + "=") === 0) return decodeURIComponent(kv.slice(name.length + 1));
    }
    return null;
  }

  function xsrfToken() {
    var meta = document.querySelector('meta[name="fermi-xsrf"]');
    return cookie("_xsrf") || (meta && meta.getAttribute("content")) || "";
  }

  function ApiError(status, message) {
    this.status = status;
    this.message = message;
  }

  function call(method, path, options) {
    options = options || {};
    var headers = { "Accept": "application/json", "X-XSRFToken": xsrfToken() };
    var init = { method: method, headers: headers, credentials: "same-origin" };
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    if (options.revision !== undefined && options.revision !== null) {
      headers["If-Match"] = '"' + options.revision + '"';
    }
    return fetch(API + path, init).then(function (response) {
      return response.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!response.ok) {
          var message = (data && data.message) || response.statusText || "request failed";
          if (response.status === 401 || response.status === 403) {
            message += response.status === 401
              ? T(" — your login may have expired: reload the page.")
              : "";
          }
          throw new ApiError(response.status, message);
        }
        return data;
      });
    });
  }

  // -- small DOM helpers (text only: nothing from the server is parsed as HTML) ----------------

  function h(tag, attrs) {
    var el = document.createElement(tag);
    attrs = attrs || {};
    Object.keys(attrs).forEach(function (key) {
      var value = attrs[key];
      if (value === null || value === undefined || value === false) return;
      if (key === "onclick") el.addEventListener("click", value);
      else if (key === "text") el.textContent = value;
      else el.setAttribute(key, value === true ? "" : value);
    });
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined || child === false) continue;
      if (Array.isArray(child)) child.forEach(function (c) { if (c) el.appendChild(c); });
      else el.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return el;
  }

  function tag(text, cls) { return h("span", { "class": "tag " + (cls || ""), text: text }); }

  function when(iso) {
    if (!iso) return "";
    return String(iso).replace("T", " ").slice(0, 19) + " UTC";
  }

  function showMessage(box, text, ok) {
    box.className = "msg " + (ok ? "ok" : "error");
    box.textContent = text;
  }

  function editable(item) {
    var copy = JSON.parse(JSON.stringify(item));
    READ_ONLY.forEach(function (key) { delete copy[key]; });
    return copy;
  }

  function same(a, b) { return JSON.stringify(a) === JSON.stringify(b); }

  // -- rendering the lists --------------------------------------------------------------------

  var COLUMNS = {
    images: [
      [T("Image"), function (i) {
        return [h("b", { text: i.slug }), h("div", { "class": "muted", text: i.name })];
      }],
      [T("Reference"), function (i) {
        return [h("code", { text: i.reference }), h("div", { "class": "muted",
          text: (i.versions || []).map(function (v) { return v.tag; }).join(", ") })];
      }],
      ["", function (i) {
        return [tag(i.kind), i.featured && tag(T("featured")),
          i.local && tag(T("local"), "off"), i.hidden && tag(T("hidden"), "off"),
          i.deprecated && tag(T("deprecated"), "warn"),
          i.redirect_message && h("div", { "class": "muted", text: "→ " + i.redirect_message })];
      }]
    ],
    profiles: [
      [T("Profile"), function (p) {
        return [h("b", { text: p.slug }), p["default"] && tag(T("default")),
          h("div", { "class": "muted", text: p.name })];
      }],
      [T("Size"), function (p) {
        return p.cpu + " CPU · " + p.memory + (p.gpu ? " · " + p.gpu + " GPU" +
          (p.gpu_type ? " (" + p.gpu_type + ")" : "") : "");
      }],
      [T("Pool"), function (p) { return p.pool; }],
      [T("Price"), function (p) { return Number(p.price_per_hour).toFixed(2) + T(" /h"); }],
      ["", function (p) {
        return [(p.allowed_groups || []).length ? tag("groups: " + p.allowed_groups.join(", "))
          : null, p.available === false ? h("div", { "class": "muted",
            text: T("unavailable here: {reason}", { reason: p.unavailable_reason || "" }) }) : null];
      }]
    ],
    pools: [
      [T("Pool"), function (p) {
        return [h("b", { text: p.slug }), h("div", { "class": "muted", text: p.name })];
      }],
      [T("Jobs at once"), function (p) { return String(p.max_running_jobs); }],
      ["GPUs", function (p) { return p.gpus + (p.gpu_type ? " × " + p.gpu_type : ""); }]
    ]
  };

  function render() {
    root.textContent = "";
    var status = h("div", { "class": "msg", id: "catalog-status", role: "status" });
    root.appendChild(status);
    KINDS.forEach(function (kind) { root.appendChild(renderKind(kind)); });
    root.appendChild(renderLookup());
  }

  function renderKind(kind) {
    var columns = COLUMNS[kind];
    var tbody = h("tbody");
    var head = h("tr", null, columns.map(function (c) { return h("th", { text: c[0] }); }),
      h("th", { text: T("Revision") }), h("th"));
    var section = h("section", { id: "section-" + kind },
      h("h2", null, LABEL[kind], h("button", {
        "class": "primary", "data-action": "new-" + kind,
        onclick: function () { openEditor(kind, null, tbody, null); }
      }, T("+ New"))),
      h("table", null, h("thead", null, head), tbody));
    state.catalog[kind].forEach(function (item) {
      var row = h("tr", { "data-slug": item.slug },
        columns.map(function (c) { return h("td", null, c[1](item)); }),
        h("td", { "class": "muted" }, "r" + item.revision,
          h("div", { text: (item.updated_by || "") + " " + when(item.updated_at) })),
        h("td", { "class": "actions" },
          h("button", { onclick: function () { openEditor(kind, item, tbody, row); } },
            T("Edit")),
          h("button", { onclick: function () { openHistory(kind, item.slug, tbody, row); } },
            T("History")),
          h("button", { "class": "danger",
            onclick: function () { removeItem(kind, item, tbody, row); } }, T("Delete"))));
      tbody.appendChild(row);
    });
    return section;
  }

  // one panel (editor or history) open under a row, or at the top of a table for "new"
  function openPanel(tbody, row, cols) {
    var status = document.getElementById("catalog-status");
    if (status) { status.textContent = ""; status.className = "msg"; }
    var old = tbody.querySelector("tr.panel");
    if (old) old.parentNode.removeChild(old);
    var cell = h("td", { colspan: String(cols) });
    var panel = h("tr", { "class": "panel" }, cell);
    if (row && row.nextSibling) tbody.insertBefore(panel, row.nextSibling);
    else if (row) tbody.appendChild(panel);
    else tbody.insertBefore(panel, tbody.firstChild);
    return { row: panel, cell: cell, close: function () {
      if (panel.parentNode) panel.parentNode.removeChild(panel);
    } };
  }

  function reloadButton() {
    return h("button", { onclick: function () { load(); } }, T("Reload"));
  }

  // -- create and edit (a JSON editor per item) -------------------------------------------------

  function openEditor(kind, item, tbody, row) {
    var cols = COLUMNS[kind].length + 2;
    var panel = openPanel(tbody, row, cols);
    var original = item ? editable(item) : TEMPLATE[kind];
    var area = h("textarea", { spellcheck: "false", "aria-label": "JSON" });
    area.value = JSON.stringify(original, null, 2);
    var message = h("div", { "class": "msg", role: "alert" });
    var save = h("button", { "class": "primary" }, item ? T("Save") : T("Create"));
    save.addEventListener("click", function () {
      var edited;
      try {
        edited = JSON.parse(area.value);
      } catch (e) {
        area.className = "invalid";
        showMessage(message, T("Not valid JSON: {error}", { error: e.message }));
        return;
      }
      area.className = "";
      if (!edited || typeof edited !== "object" || Array.isArray(edited)) {
        showMessage(message, T("The {kind} must be a JSON object.", { kind: ONE[kind] }));
        return;
      }
      var request;
      if (item) {
        var removed = Object.keys(original).filter(function (k) { return !(k in edited); });
        if (removed.length) {
          showMessage(message, T("Removed field(s) {fields}: to clear a field, set it to its empty value " +
            "(\"\", [], {}, null) instead.", { fields: removed.join(", ") }));
          return;
        }
        var changes = {};
        Object.keys(edited).forEach(function (k) {
          if (!same(edited[k], original[k])) changes[k] = edited[k];
        });
        if (!Object.keys(changes).length) {
          showMessage(message, T("No change to save."), true);
          return;
        }
        request = call("PATCH", "catalog/" + kind + "/" + encodeURIComponent(item.slug),
          { body: changes, revision: item.revision });
      } else {
        request = call("POST", "catalog/" + kind, { body: edited });
      }
      save.disabled = true;
      request.then(function (saved) {
        load(T("Saved {kind} {slug} (revision {revision}).",
          { kind: ONE[kind], slug: saved.slug, revision: saved.revision }));
      }, function (error) {
        save.disabled = false;
        showMessage(message, error.message + " (HTTP " + error.status + ")");
        if (error.status === 409 && item) message.appendChild(h("div", null, reloadButton()));
      });
    });
    panel.cell.appendChild(h("div", null,
      h("div", { "class": "hint", text: item
        ? T("Edit {kind} {slug} (revision {revision}). Only the fields you change are sent.",
          { kind: ONE[kind], slug: item.slug, revision: item.revision })
        : T("New {kind}: fill in slug and name; the fields are those of GET {url}.",
          { kind: ONE[kind], url: API + "catalog/" + kind }) }),
      area, message,
      h("div", null, save, h("button", { onclick: panel.close }, T("Cancel")))));
    area.focus();
  }

  // -- delete -------------------------------------------------------------------------------

  function removeItem(kind, item, tbody, row) {
    var question = T("Delete {kind} \"{slug}\"?\nIt stays in the history and can be restored with Revert.",
      { kind: ONE[kind], slug: item.slug });
    if (!window.confirm(question)) return;
    var panel = openPanel(tbody, row, COLUMNS[kind].length + 2);
    var message = h("div", { "class": "msg", role: "alert" });
    panel.cell.appendChild(message);
    call("DELETE", "catalog/" + kind + "/" + encodeURIComponent(item.slug),
      { revision: item.revision }).then(function () {
      load(T("Deleted {kind} {slug}.", { kind: ONE[kind], slug: item.slug }));
    }, function (error) {
      showMessage(message, error.message + " (HTTP " + error.status + ")");
      message.appendChild(h("div", null,
        error.status === 409 ? reloadButton() : null,
        h("button", { onclick: panel.close }, T("Close"))));
    });
  }

  // -- history, diff, revert ---------------------------------------------------------------------

  function openHistory(kind, slug, tbody, row) {
    var panel = openPanel(tbody, row, (COLUMNS[kind] || []).length + 2);
    showHistory(kind, slug, panel);
  }

  function showHistory(kind, slug, panel) {
    var base = "catalog/" + kind + "/" + encodeURIComponent(slug);
    var message = h("div", { "class": "msg", role: "alert" });
    var detail = h("div");
    panel.cell.textContent = "";
    panel.cell.appendChild(h("div", { "class": "hint",
      text: T("History of {kind} {slug}", { kind: ONE[kind], slug: slug }) }));
    panel.cell.appendChild(message);
    call("GET", base + "/history").then(function (history) {
      var body = h("tbody");
      history.revisions.forEach(function (rev) {
        var isCurrent = rev.revision === history.current_revision;
        body.appendChild(h("tr", { "data-revision": String(rev.revision) },
          h("td", null, "r" + rev.revision, isCurrent ? tag(T("current")) : null),
          h("td", { text: rev.action }), h("td", { text: rev.by }),
          h("td", { text: when(rev.at) }),
          h("td", { "class": "actions" },
            h("button", { onclick: function () { showRevision(base, rev.revision, detail); } },
              T("Diff")),
            rev.data && !isCurrent ? h("button", { onclick: function () {
              revert(kind, slug, rev.revision, history, message);
            } }, T("Revert to this")) : null)));
      });
      panel.cell.appendChild(h("table", null, h("thead", null, h("tr", null,
        h("th", { text: T("Revision") }), h("th", { text: T("Action") }),
        h("th", { text: T("By") }), h("th", { text: T("When") }), h("th"))), body));
      panel.cell.appendChild(detail);
      panel.cell.appendChild(h("button", { onclick: panel.close }, T("Close")));
    }, function (error) {
      showMessage(message, error.message + " (HTTP " + error.status + ")");
    });
  }

  function showRevision(base, number, box) {
    box.textContent = "";
    call("GET", base + "/history/" + number).then(function (rev) {
      var fields = Object.keys(rev.diff);
      var rows = fields.map(function (field) {
        return h("tr", null, h("td", { text: field }),
          h("td", null, h("code", { text: JSON.stringify(rev.diff[field][0]) })),
          h("td", null, h("code", { text: JSON.stringify(rev.diff[field][1]) })));
      });
      box.appendChild(h("div", { "class": "hint", text: (rev.previous_revision
        ? T("Revision {revision} ({action} by {by}) against revision {previous}", {
          revision: rev.revision, action: rev.action, by: rev.by, previous: rev.previous_revision })
        : T("Revision {revision} ({action} by {by}) against nothing", {
          revision: rev.revision, action: rev.action, by: rev.by })) }));
      box.appendChild(fields.length ? h("table", { "class": "diff" }, h("thead", null,
        h("tr", null, h("th", { text: T("Field") }), h("th", { text: T("Before") }),
          h("th", { text: T("After") }))), h("tbody", null, rows))
        : h("p", { "class": "muted", text: T("No field changed.") }));
    }, function (error) {
      box.appendChild(h("div", { "class": "msg error", text: error.message }));
    });
  }

  function revert(kind, slug, number, history, message) {
    if (!window.confirm(T("Restore {kind} \"{slug}\" to revision {number}? This makes a new revision.",
        { kind: ONE[kind], slug: slug, number: number }))) return;
    var current = history.current_revision !== null ? history.current_revision
      : history.revisions[0].revision;
    call("POST", "catalog/" + kind + "/" + encodeURIComponent(slug) + "/revert",
      { body: { revision: number }, revision: current }).then(function (saved) {
      load(T("Restored {kind} {slug} to revision {number} (now revision {revision}).",
        { kind: ONE[kind], slug: slug, number: number, revision: saved.revision }));
    }, function (error) {
      showMessage(message, error.message + " (HTTP " + error.status + ")");
      if (error.status === 409) message.appendChild(h("div", null, reloadButton()));
    });
  }

  // the history of any slug, including deleted items (to restore them)
  function renderLookup() {
    var kindSelect = h("select", { "aria-label": "kind" }, KINDS.map(function (k) {
      return h("option", { value: k, text: LABEL[k] });
    }));
    var slugInput = h("input", { placeholder: "slug", "aria-label": "slug" });
    var holder = h("div");
    var go = h("button", { onclick: function () {
      if (!slugInput.value.trim()) return;
      holder.textContent = "";
      var cell = h("div");
      holder.appendChild(cell);
      showHistory(kindSelect.value, slugInput.value.trim(), { cell: cell, close: function () {
        holder.textContent = "";
      } });
    } }, T("Show history"));
    return h("section", { id: "section-lookup" },
      h("h2", null, T("History of any item, deleted ones too")),
      h("div", { "class": "lookup" }, kindSelect, slugInput, go), holder);
  }

  // -- loading ------------------------------------------------------------------------------

  function load(notice) {
    return call("GET", "catalog").then(function (catalog) {
      state.catalog = catalog;
      render();
      if (notice) showMessage(document.getElementById("catalog-status"), notice, true);
    }, function (error) {
      root.textContent = "";
      root.appendChild(h("div", { "class": "msg error", role: "alert",
        text: T("Could not load the catalogue: {error} (HTTP {status})",
          { error: error.message, status: error.status }) }));
    });
  }

  load();
})();
