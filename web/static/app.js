// Live refresh of an operation page: while the operation is active, poll the
// API every second; when its state or flow log changed, fetch the page's
// server-rendered live part and swap it in. Stops once the operation ended.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || live.dataset.active !== "true") { return; }
  var id = live.dataset.op, seen = null;
  function fingerprint(op) { return op.state + ":" + op.transitions.length; }
  function tick() {
    fetch("/api/v1/operations/" + id, {credentials: "same-origin"})
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
      .then(function (op) {
        var fp = fingerprint(op);
        var active = ["PENDING", "RUNNING", "REVERTING"].indexOf(op.state) >= 0;
        if (fp === seen) { return active; }
        seen = fp;
        return fetch("/operations/" + id + "?fragment=live", {credentials: "same-origin"})
          .then(function (r) { return r.text(); })
          .then(function (html) { live.innerHTML = html; return active; });
      })
      .then(function (active) { if (active) { setTimeout(tick, 1000); } },
            function () { setTimeout(tick, 3000); });
  }
  tick();
})();
