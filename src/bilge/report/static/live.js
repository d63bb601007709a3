// bilge's live page: every data-refresh seconds, fetch the page's <main> as
// the server renders it now and swap it in. No library, no other request;
// when a fetch fails the status dot turns amber and the next one retries.
(function () {
  "use strict";
  var body = document.body;
  var every = Number(body.getAttribute("data-refresh")) * 1000;
  var refreshes = 0;
  function refresh() {
    fetch(window.location.pathname + "?part=main", { cache: "no-store", credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (html) {
        document.querySelector("main").innerHTML = html;
        refreshes += 1;
        body.setAttribute("data-refreshes", String(refreshes));
      })
      .catch(function () {
        var status = document.getElementById("live-status");
        if (status) { status.classList.add("stale"); }
      })
      .then(function () { window.setTimeout(refresh, every); });
  }
  if (every > 0) { window.setTimeout(refresh, every); }
})();
