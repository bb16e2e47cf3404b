// Fill the hidden time zone field with the browser's IANA zone, so later parts arrive in
// the reader's morning. Without JavaScript the server falls back to UTC.
(function () {
  var field = document.getElementById("time_zone");
  if (!field || field.value) return;
  try {
    field.value = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  } catch (e) { /* old browser: keep the UTC fallback */ }
})();
