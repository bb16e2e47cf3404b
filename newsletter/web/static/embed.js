// The embedded signup form (see /embed), sent in place. Without this file the form is a plain
// POST that lands on the "check your inbox" page; with it, the answer appears under the button.
// Only the sites in EMBED_ORIGINS may read the answer (CORS); elsewhere the browser blocks it.
(function () {
  "use strict";
  var FAILED = "The form could not be sent from this page. Try again later.";

  function firstMessage(data) {
    if (data && data.message) return data.message;
    return FAILED;
  }

  function wire(form) {
    var zone = form.querySelector("input[name=time_zone]");
    if (zone && !zone.value) {
      try {
        zone.value = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
      } catch (e) { /* old browser: the server falls back to UTC */ }
    }
    var answer = form.querySelector("[data-newsletter-answer]");
    var button = form.querySelector("button[type=submit]");
    form.addEventListener("submit", function (event) {
      if (!window.fetch || !window.URLSearchParams) return; // the plain POST instead
      event.preventDefault();
      if (button) button.disabled = true;
      fetch(form.action, {
        method: "POST",
        mode: "cors",
        credentials: "omit",
        headers: { "Accept": "application/json" },
        body: new URLSearchParams(new FormData(form))
      })
        .then(function (response) { return response.json(); })
        .then(function (data) {
          // textContent, never HTML: the answer may quote what was typed.
          if (answer) answer.textContent = data.ok ? data.message : firstMessage(data);
          form.setAttribute("data-newsletter-state", data.ok ? "sent" : "refused");
          if (data.ok) form.reset();
        })
        .catch(function () {
          if (answer) answer.textContent = FAILED;
          form.setAttribute("data-newsletter-state", "failed");
        })
        .then(function () {
          if (button) button.disabled = false;
        });
    });
  }

  Array.prototype.forEach.call(document.querySelectorAll("form[data-newsletter-embed]"), wire);
})();
