// The step editor's live preview: after the editor stops typing, the form's unsaved fields are
// posted (with their CSRF token) to the preview URL, into both sandboxed frames. Nothing is
// saved. Without this script the "Preview" buttons do the same by hand.
(function () {
  "use strict";
  var form = document.getElementById("step-form");
  if (!form) {
    return;
  }
  var previewUrl = form.getAttribute("data-preview-url");
  var status = document.getElementById("preview-status");
  var frames = ["preview-phone", "preview-desktop"];
  var DELAY_MS = 700;
  var timer = null;

  function refresh() {
    timer = null;
    var action = form.getAttribute("action");
    frames.forEach(function (name) {
      form.setAttribute("action", previewUrl);
      form.setAttribute("target", name);
      // HTMLFormElement.submit() sends the fields without a submit button's name and value,
      // and fires no submit event.
      HTMLFormElement.prototype.submit.call(form);
    });
    form.setAttribute("action", action);
    form.removeAttribute("target");
    if (status) {
      status.textContent = "(updated as you type)";
    }
  }

  function schedule() {
    if (timer !== null) {
      window.clearTimeout(timer);
    }
    if (status) {
      status.textContent = "(updating…)";
    }
    timer = window.setTimeout(refresh, DELAY_MS);
  }

  form.addEventListener("input", schedule);
  form.addEventListener("change", schedule);
  document.querySelectorAll(".preview-button").forEach(function (button) {
    button.hidden = true;
  });
})();
