// The preferences page: a reader with no time zone saved gets their browser's own chosen (IANA name from
// Intl.DateTimeFormat().resolvedOptions().timeZone), to save with the form. Without script the publication's
// zone stays chosen; nothing is saved until the reader presses Save.
(function () {
  var select = document.getElementById("timezone");
  if (!select || !select.hasAttribute("data-browser-default")) return;
  var zone;
  try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone; } catch (e) { return; }
  if (!zone) return;
  for (var i = 0; i < select.options.length; i++) {
    if (select.options[i].value === zone) {
      select.selectedIndex = i;
      var note = document.getElementById("timezone-note");
      if (note) { note.textContent = "Chosen from your browser: " + zone + ". Save to keep it."; note.hidden = false; }
      return;
    }
  }
})();
