// computeflow dashboard script (no library, nothing fetched from elsewhere).
//
// 1. Live updates of an operation page: while the operation runs, listen to
//    /api/v1/operations/{id}/events (server-sent events); each `update` event
//    carries the page's live part rendered by the server, swapped in without
//    a reload. `end` closes the stream. Without EventSource: poll every second.
// 2. Action buttons (forms of class "action"): ask for confirmation, then post
//    to the API with the CSRF token from its cookie, and show the answer; the
//    live update shows what the action changed.
(function () {
  "use strict";
  var live = document.getElementById("live");

  function cookie(name) {
    var m = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return m ? decodeURIComponent(m[1]) : "";
  }

  function swap(html) { if (live) { live.innerHTML = html; } }

  function listen(id) {
    var es = new EventSource("/api/v1/operations/" + id + "/events");
    es.addEventListener("update", function (ev) {
      var d = JSON.parse(ev.data);
      swap(d.html);
      live.dataset.state = d.state;
      live.dataset.lastRow = d.last_row;
    });
    es.addEventListener("end", function () { es.close(); live.dataset.active = "false"; });
  }

  function poll(id) {
    fetch("/operations/" + id + "?fragment=live", {credentials: "same-origin"})
      .then(function (r) { return r.text(); })
      .then(function (html) {
        swap(html);
        var state = document.getElementById("op-state");
        if (state && ["PENDING", "RUNNING", "REVERTING"].indexOf(state.textContent) >= 0) {
          setTimeout(function () { poll(id); }, 1000);
        }
      }, function () { setTimeout(function () { poll(id); }, 3000); });
  }

  if (live && live.dataset.active === "true") {
    if (window.EventSource) { listen(live.dataset.op); } else { poll(live.dataset.op); }
  }

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!form.classList || !form.classList.contains("action")) { return; }
    ev.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) { return; }
    var out = document.getElementById("action-result");
    var init = {method: "POST", credentials: "same-origin",
                headers: {"X-CSRF-Token": cookie("cf_csrf")}};
    if (form.dataset.body) { init.body = form.dataset.body; }
    if (out) { out.textContent = "…"; out.className = "muted"; }
    fetch(form.dataset.api, init)
      .then(function (r) { return r.json().then(function (body) { return [r.status, body]; }); })
      .then(function (res) {
        var body = res[1];
        if (out) {
          out.textContent = body.error ? body.error : (body.text || ("done: " + (body.state || "ok")));
          out.className = body.error ? "error" : "muted";
        }
        if (!body.error && live && live.dataset.active !== "true") {
          live.dataset.active = "true";  // e.g. a retried revert runs again
          listen(live.dataset.op);
        }
      });
  });
})();
