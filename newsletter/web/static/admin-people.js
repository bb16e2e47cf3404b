// The import page refreshes itself while the import runs (no inline script: the CSP).
(function () {
  "use strict";
  var state = document.querySelector("[data-refresh]");
  if (!state) {
    return;
  }
  var seconds = parseFloat(state.getAttribute("data-refresh")) || 2;
  window.setTimeout(function () {
    window.location.reload();
  }, seconds * 1000);
})();
