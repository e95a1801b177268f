// ente-lab stand-in for the Ente Auth web app: show the API origin, ask for a sign-up code
// (the real app's first step), ping the API. Every request carries X-Client-Package like the
// real app (so it is CORS-preflighted). Not Ente's app.
"use strict";
(function () {
  var cfg = window.ENTE_LAB || {};
  var origin = String(cfg.apiOrigin || "").replace(/\/+$/, "");
  var PACKAGE = "io.ente.auth.web";
  var out = document.getElementById("result");
  var state = document.getElementById("state");
  document.getElementById("api-origin").textContent = origin || "(not configured)";

  // #state: data-state idle | sending | code-sent | error (HTTP answer not 2xx) |
  // network-error (fetch rejected: unreachable, TLS, or a CORS failure the console explains).
  function show(name, text) {
    state.setAttribute("data-state", name);
    state.textContent = text;
  }

  document.getElementById("signup-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var email = document.getElementById("email").value.trim();
    if (!email) {
      show("error", "enter an email address");
      return;
    }
    show("sending", "POST " + origin + "/users/ott ...");
    fetch(origin + "/users/ott", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Client-Package": PACKAGE },
      body: JSON.stringify({ email: email, purpose: "signup" })
    })
      .then(function (resp) {
        return resp.text().then(function (body) {
          if (resp.ok) {
            show("code-sent", "code sent to " + email + " (HTTP " + resp.status + ")");
          } else {
            show("error", "error: HTTP " + resp.status + (body ? " " + body : ""));
          }
        });
      })
      .catch(function (err) {
        show("network-error", "network error: " + err);
      });
  });

  document.getElementById("ping").addEventListener("click", function () {
    out.textContent = "GET " + origin + "/ping ...";
    fetch(origin + "/ping", { headers: { "X-Client-Package": PACKAGE } })
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
