// ente-lab stand-in for the Ente Auth web app: show the API origin, ping it.
// Every request carries X-Client-Package like the real app (so it is CORS-preflighted).
"use strict";
(function () {
  var cfg = window.ENTE_LAB || {};
  var origin = String(cfg.apiOrigin || "").replace(/\/+$/, "");
  var out = document.getElementById("result");
  document.getElementById("api-origin").textContent = origin || "(not configured)";
  document.getElementById("ping").addEventListener("click", function () {
    out.textContent = "GET " + origin + "/ping ...";
    fetch(origin + "/ping", { headers: { "X-Client-Package": "io.ente.auth.web" } })
      .then(function (resp) {
        return resp.text().then(function (body) {
          out.textContent = "HTTP " + resp.status + "\n" + body;
        });
      })
      .catch(function (err) {
        out.textContent = "Network error: " + err;
      });
  });
})();
